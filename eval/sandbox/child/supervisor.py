"""The supervisor S (``launch``): starts the boxes of one run, enforces the wall-clock limit, reads the
verdict, kills and reaps everything, and writes the run's result (status, reason, isolation) for the
harness."""

import json
import os

from .box import _spawn_box
from .libc import PR_SET_CHILD_SUBREAPER, PR_SET_DUMPABLE, PR_SET_PDEATHSIG, _libc, _prctl


def launch(spec_path: str) -> None:
    # everything the boxes need before their exec is imported now (this package's modules were imported
    # with this one): once a box has its own view of the file system, this interpreter's library may not be
    # visible there
    import ctypes  # noqa: F401
    import fcntl  # noqa: F401
    import re  # noqa: F401
    import resource  # noqa: F401
    import select  # noqa: F401
    import signal
    import struct  # noqa: F401
    import time  # noqa: F401

    with open(spec_path) as f:
        spec = json.load(f)
    _libc()
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # the harness thread that started us is gone: so are we
    _prctl(PR_SET_DUMPABLE, 0)  # no same-uid access to our memory or descriptors through /proc
    if os.getppid() != spec["harness_pid"]:
        os._exit(3)
    _prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphans (degraded mode) come back to us, to be killed and reaped
    result = {"status": "error", "passed": False, "returncode": None, "timed_out": False, "reason": "",
              "isolation": {}}
    boxes: list = []
    try:
        _supervise(spec, boxes, result)
    except BaseException as e:  # noqa: BLE001
        result.update(status="error", passed=False, reason=f"supervisor: {type(e).__name__}: {e}")
    finally:
        try:
            _kill_boxes(boxes, spec)
        except BaseException:  # noqa: BLE001
            pass
        tmp = spec["result"] + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f)
        os.rename(tmp, spec["result"])
    os._exit(0)


def _supervise(spec: dict, boxes: list, result: dict) -> None:
    import time

    logs = spec["logs"]

    def logfile(name: str) -> int:
        return os.open(os.path.join(logs, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)

    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    check = spec["mode"] == "check"
    verdict_r = None
    start = time.monotonic()
    if check:
        req_r, req_w = os.pipe()  # T → P: calls
        resp_r, resp_w = os.pipe()  # P → T: hello, return values
        verdict_r, verdict_w = os.pipe()  # T → S
        p_out, p_err, t_out, t_err = (logfile(n) for n in ("p.out", "p.err", "t.out", "t.err"))
        program = _spawn_box(spec, "program", [devnull, p_out, p_err, req_r, resp_w],
                             {"mode": "serve", "source": spec["solution"], "entry": spec["entry_point"]})
        boxes.append(program)
        tester = _spawn_box(spec, "tester", [devnull, t_out, t_err, resp_r, req_w, verdict_w],
                            {"mode": "test", "source": spec["test"], "entry": spec["entry_point"]})
        boxes.append(tester)
        for fd in (req_r, req_w, resp_r, resp_w, verdict_w, p_out, p_err, t_out, t_err, devnull):
            os.close(fd)
        watched = tester
    else:
        p_out, p_err = logfile("p.out"), logfile("p.err")
        program = _spawn_box(spec, "program", [devnull, p_out, p_err], {"mode": "run", "source": spec["main"]})
        boxes.append(program)
        for fd in (p_out, p_err, devnull):
            os.close(fd)
        watched = program
    deadline = start + float(spec["timeout_s"])
    reaped: dict = {}
    pidfd = None
    try:
        pidfd = os.pidfd_open(watched.pid)
    except (AttributeError, OSError):
        pass
    timed_out = False
    while True:
        _reap(reaped)
        if watched.pid in reaped:
            break
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        if pidfd is not None:
            import select

            select.select([pidfd], [], [], min(left, 1.0))
        else:
            time.sleep(min(left, 0.005))
    if pidfd is not None:
        os.close(pidfd)
    _kill_boxes(boxes, spec)
    for box in boxes:
        box.drain()
    verdict = None
    if verdict_r is not None:
        data = b""
        os.set_blocking(verdict_r, False)
        try:
            while len(data) < 65536:
                chunk = os.read(verdict_r, 65536)
                if not chunk:
                    break
                data += chunk
        except BlockingIOError:
            pass
        os.close(verdict_r)
        try:
            verdict = json.loads(data.split(b"\n")[0]) if data else None
        except ValueError:
            verdict = None
    result["isolation"] = _combine([b.info for b in boxes], check)
    errors = [e for b in boxes for e in b.info.get("errors", [])]
    exit_status = watched.info.get("exit")
    returncode = os.waitstatus_to_exitcode(exit_status) if isinstance(exit_status, int) else None
    result.update(timed_out=timed_out, returncode=returncode)
    if timed_out:
        result.update(status="timeout", passed=False, reason=f"timed out after {spec['timeout_s']} s")
    elif check:
        if isinstance(verdict, dict) and verdict.get("passed") is True and exit_status == 0:
            result.update(status="passed", passed=True, reason="check() returned")
        elif isinstance(verdict, dict) and not verdict.get("error"):
            result.update(status="failed", passed=False, reason=str(verdict.get("reason", ""))[:500])
        else:
            why = (verdict or {}).get("reason") or "; ".join(errors) or f"tester exit status {exit_status}"
            result.update(status="error", passed=False, reason=str(why)[:500])
    else:
        if errors and exit_status is None:
            result.update(status="error", passed=False, reason="; ".join(errors)[:500])
        else:
            ok = exit_status == 0
            result.update(status="passed" if ok else "failed", passed=ok,
                          reason="exit status 0" if ok else f"exit status {returncode}")


def _combine(infos: list, check: bool) -> dict:
    keys = ("user_ns", "pid_ns", "mount_ns", "net_ns", "ipc_ns", "minimal_root", "readonly_fs", "private_proc",
            "minimal_dev", "seccomp", "seccomp_metadata", "landlock", "landlock_reads", "uid_switch",
            "caps_dropped", "no_new_privs", "rlimits", "audit_hook")
    out = {}
    for k in keys:
        out[k] = bool(infos) and all(bool(i.get(k)) for i in infos)
    out["verdict_channel"] = bool(check)
    # every box reached its guard (the last to report): a report cut short says nothing about the machine
    out["complete"] = bool(infos) and all(i.get("audit_hook") is not None for i in infos)
    return out


_REAPED: dict = {}  # the supervisor's reaped children → wait status (never signal a reaped pid again)


def _reap(reaped: dict) -> bool:
    """Reap every exited child, recording its wait status; True while some child remains."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True
        reaped[pid] = status
        _REAPED[pid] = status


def _children_of(pid: int) -> list:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    out.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return out


def _kill_boxes(boxes: list, spec: dict) -> None:
    """SIGKILL every box: its process group (the workload cannot leave it: setsid/setpgid are refused by
    seccomp) and its keeper, whose death takes the init (PDEATHSIG) and with it the whole pid namespace.
    Then reap everything, including orphans handed to us as subreaper; as root without pid namespaces also
    sweep the run's own (flock-leased, so exclusive) uids."""
    import signal
    import time

    reaped = _REAPED
    sweep = [u for u in spec.get("sweep_uids") or [] if u]
    for box in boxes:
        box.drain()
    gone: set = set()  # pids and groups never to signal again (reaped / empty: the number may be reused)
    for attempt in range(300):
        for box in boxes:
            for target in (-box.pid, box.pid):
                if target in gone or box.pid in reaped and target == box.pid:
                    continue
                try:
                    os.kill(target, signal.SIGKILL)
                except ProcessLookupError:
                    gone.add(target)
                except PermissionError:
                    pass
        for child in _children_of(os.getpid()) if attempt else []:
            try:
                os.kill(child, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if sweep and not all(b.info.get("pid_ns") for b in boxes):
            for uid in sweep:
                _fork_kill_uid(uid)
        remaining = _reap(reaped)
        if not remaining and all(b.pid in reaped for b in boxes):
            return
        time.sleep(0.002 if attempt < 50 else 0.02)


def _fork_kill_uid(uid: int) -> None:
    pid = os.fork()
    if pid == 0:
        try:
            kill_uid(str(uid))
        finally:
            os._exit(0)
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def kill_uid(uid: str) -> None:
    import signal

    os.setgroups([])
    os.setresgid(int(uid), int(uid), int(uid))
    os.setresuid(int(uid), int(uid), int(uid))
    try:
        os.kill(-1, signal.SIGKILL)  # every process this uid may signal, except this one; atomic in the kernel
    except ProcessLookupError:
        pass
