"""A box, from the supervisor's fork to the workload's exec: the supervisor's handle on it (its status
pipe), the keeper C (unshares the namespaces, waits), the init I (pid 1 of the box: file-system view, forks
the workload, reaps) and the workload W (rlimits, uid switch or capability drop, no_new_privs, Landlock,
then ``execve`` of the interpreter running the ``guard``)."""

import json
import os

from .landlock import _landlock
from .libc import (
    PR_CAP_AMBIENT,
    PR_CAP_AMBIENT_CLEAR_ALL,
    PR_CAPBSET_DROP,
    PR_SET_DUMPABLE,
    PR_SET_NO_NEW_PRIVS,
    PR_SET_PDEATHSIG,
    _close_fds_except,
    _prctl,
    _send,
)
from .namespaces import _enter_namespaces, _setup_mounts, _switch_uid


class _Box:
    def __init__(self, role: str, pid: int, status_fd: int):
        self.role, self.pid, self.status_fd = role, pid, status_fd
        self.info: dict = {}
        self.buf = b""

    def drain(self) -> None:
        """Read whatever the box reported so far (non-blocking)."""
        import fcntl

        if self.status_fd is None:
            return
        fl = fcntl.fcntl(self.status_fd, fcntl.F_GETFL)
        fcntl.fcntl(self.status_fd, fcntl.F_SETFL, fl | os.O_NONBLOCK)
        while True:
            try:
                chunk = os.read(self.status_fd, 65536)
            except BlockingIOError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                os.close(self.status_fd)
                self.status_fd = None
                break
            self.buf += chunk
        *lines, self.buf = self.buf.split(b"\n")
        for line in lines:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if isinstance(msg, dict):
                if "error" in msg:
                    self.info.setdefault("errors", []).append(str(msg["error"]))
                else:
                    self.info.update(msg)


def _spawn_box(spec: dict, role: str, fds: list, guard_cfg: dict) -> _Box:
    st_r, st_w = os.pipe()
    supervisor = os.getpid()
    pid = os.fork()
    if pid == 0:  # keeper C: never returns into the supervisor's code
        try:
            os.close(st_r)
            _keeper(spec, role, fds, guard_cfg, st_w, supervisor)
        except BaseException as e:  # noqa: BLE001
            _send(st_w, {"error": f"{role} keeper: {type(e).__name__}: {e}"})
        os._exit(125)
    os.close(st_w)
    try:
        os.setpgid(pid, pid)
    except OSError:
        pass
    return _Box(role, pid, st_r)


def _keeper(spec, role, fds, guard_cfg, st_w, supervisor) -> None:
    import signal

    try:
        os.setpgid(0, 0)
    except OSError:
        pass
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != supervisor:
        os._exit(1)
    _close_fds_except(set(fds) | {0, 1, 2, st_w})
    box = spec["boxes"][role]
    _prctl(PR_SET_DUMPABLE, 1)  # (inherited 0 from the supervisor) a non-dumpable process may not write
    ns = _enter_namespaces(spec, box)  # its own uid_map; nothing untrusted exists yet
    _prctl(PR_SET_DUMPABLE, 0)
    _send(st_w, ns)
    init = os.fork()
    if init == 0:
        try:
            _init(spec, box, role, fds, guard_cfg, st_w, ns)
        except BaseException as e:  # noqa: BLE001
            _send(st_w, {"error": f"{role} init: {type(e).__name__}: {e}"})
        os._exit(125)
    _close_fds_except({1, 2})  # the box's pipes must close with their last real user (EOF for the peer)
    while True:
        try:
            _, status = os.waitpid(init, 0)
            break
        except InterruptedError:
            continue
        except ChildProcessError:
            status = 1
            break
    os._exit(0 if status == 0 else 1)


def _init(spec, box, role, fds, guard_cfg, st_w, ns) -> None:
    import signal

    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # keeper gone → init gone → the whole pid namespace gone
    _prctl(PR_SET_DUMPABLE, 0)  # no /proc/<pid>/mem, fd, environ access by same-uid processes
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)
    os.umask(0o022)
    mounts = {}
    if ns.get("mount_ns"):
        mounts = _setup_mounts(spec, box, ns)
    _send(st_w, mounts)
    workload = os.fork()
    if workload == 0:
        try:
            _exec_workload(spec, box, role, fds, guard_cfg, st_w, ns)
        except BaseException as e:  # noqa: BLE001
            _send(st_w, {"error": f"{role} start: {type(e).__name__}: {e}"})
        os._exit(127)
    _close_fds_except({st_w})
    status = None
    while True:  # as pid 1 we also reap the namespace's orphans
        try:
            pid, st = os.waitpid(-1, 0)
        except InterruptedError:
            continue
        except ChildProcessError:
            break
        if pid == workload:
            status = st
            break
    _send(st_w, {"exit": status})
    os._exit(0)  # as pid 1: the kernel kills whatever is left in the namespace


def _count_uid_processes(uid: int) -> int:
    n = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    n += 1
            except OSError:
                pass
    return n


def _drop_capabilities() -> bool:
    """Empty the bounding and ambient sets: the exec'd interpreter gets no capability, even as uid 0 of
    its user namespace."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read())
    except (OSError, ValueError):
        last = 63
    ok = True
    for cap in range(last + 1):
        if not _prctl(PR_CAPBSET_DROP, cap):
            ok = False
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    return ok


def _exec_workload(spec, box, role, fds, guard_cfg, st_w, ns) -> None:
    import fcntl
    import resource

    os.chdir(box["cwd"])
    # the box's descriptors at 0..n-1, the status pipe at n, nothing else
    layout = list(fds) + [st_w]
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 32) for fd in layout]
    for i, fd in enumerate(high):
        os.dup2(fd, i, inheritable=True)
    _close_fds_except(range(len(layout)))
    status_fd = len(layout) - 1
    info = {}
    root_switch = box.get("uid") is not None and os.geteuid() == 0 and not ns.get("user_ns")
    if ns.get("user_ns"):  # per-user-namespace count: keeper + init + the workload's processes
        nproc = int(spec["max_procs"]) + 2
    elif root_switch:
        nproc = int(spec["max_procs"])
    else:
        nproc = _count_uid_processes(os.getuid()) + int(spec["max_procs"])
    ok = True
    for res, value in ((resource.RLIMIT_CPU, int(spec["cpu_s"])), (resource.RLIMIT_AS, int(spec["memory_bytes"])),
                       (resource.RLIMIT_FSIZE, int(spec["file_bytes"])),
                       (resource.RLIMIT_NOFILE, int(spec["open_files"])), (resource.RLIMIT_CORE, 0),
                       (resource.RLIMIT_NPROC, nproc)):
        try:
            resource.setrlimit(res, (value, value))
        except (ValueError, OSError):
            ok = False
    info["rlimits"] = ok
    if root_switch:
        _switch_uid(box["uid"], box["gid"])
        info["uid_switch"] = True
        info["caps_dropped"] = True
    else:
        info["uid_switch"] = bool(ns.get("early_uid"))
        info["caps_dropped"] = _drop_capabilities() if (ns.get("user_ns") or os.geteuid() == 0) else True
    info["no_new_privs"] = _prctl(PR_SET_NO_NEW_PRIVS, 1)
    info.update(landlock=0, landlock_reads=False)
    if "landlock" not in spec.get("disable", []):
        try:
            info.update(_landlock(box["view"], [box["cwd"]] if box.get("writable") else [], scope=True,
                                  masks_mounted=bool(ns.get("mount_ns"))))
        except Exception:
            info.update(landlock=0, landlock_reads=False)
    _send(status_fd, info)
    cfg = dict(guard_cfg, status_fd=status_fd, work=box["cwd"] if box.get("writable") else None,
               signals_confined=bool(ns.get("pid_ns") or info.get("landlock_scoped")),
               landlock_abi=int(info.get("landlock") or 0), disable=list(spec.get("disable", [])))
    env = dict(spec["env"], HOME=box["cwd"], TMPDIR=box["cwd"])
    python = spec["python"]
    os.execve(python, [python, "-I", "-B", spec["script"], "guard", json.dumps(cfg)], env)
