"""The first act of a box's interpreter after its exec: the seccomp filter and the audit hook, the box's
last report, then the workload (``serve`` / ``test`` / ``run``)."""

import json
import os
import sys

from .libc import PR_SET_DUMPABLE, _prctl, _send
from .seccomp import _install_seccomp
from .workloads import _run, _serve, _test


def _audit_hook(work):
    """An extra rail (not the boundary): no sockets, subprocesses, exec, kill, ctypes; no writes,
    deletions, renames, chmods outside ``work`` (nowhere at all when ``work`` is None) nor through a dir_fd."""
    root = os.path.abspath(work) if work else None
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    allowed = {"/dev/null"}
    path_events = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.link",
                   "os.symlink", "os.truncate", "os.utime", "os.chflags", "os.lchflags", "os.mkfifo",
                   "os.mknod", "shutil.rmtree", "shutil.copyfile", "shutil.copymode", "shutil.copystat",
                   "shutil.copytree", "shutil.move", "shutil.chown", "os.setxattr", "os.removexattr"}
    denied = {"os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.startfile", "subprocess.Popen",
              "os.kill", "os.killpg", "signal.pthread_kill", "os.chroot", "pty.spawn", "os.forkpty"}
    dir_fd_args = {"os.remove": (1,), "os.rmdir": (1,), "os.mkdir": (2,), "os.rename": (2, 3), "os.link": (2, 3),
                   "os.symlink": (2,), "os.chmod": (2,), "os.chown": (3,), "os.utime": (3,), "os.mkfifo": (2,),
                   "os.mknod": (3,)}

    def inside(path) -> bool:
        if isinstance(path, int):
            return True
        try:
            p = os.fsdecode(path)
        except TypeError:
            return False
        if root is None:
            return os.path.normpath(p) in allowed
        p = os.path.normpath(os.path.join(root, p))
        return p == root or p.startswith(root + os.sep) or p in allowed

    def hook(event, args):
        if event.startswith("socket.") or event.startswith("ctypes.") or event in denied:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags > 0 and flags & write_flags)
            if writing and path is not None and not inside(path):
                raise PermissionError(f"sandbox: writing {path!r} outside the working directory")
        elif event in path_events:
            for i in dir_fd_args.get(event, ()):
                if i < len(args) and args[i] not in (None, -1, -100):
                    raise PermissionError(f"sandbox: {event} relative to a directory descriptor")
            for arg in args:
                if isinstance(arg, (str, bytes, os.PathLike)) and not inside(arg):
                    raise PermissionError(f"sandbox: {event} on {arg!r} outside the working directory")

    return hook


def guard(cfg_json: str) -> None:
    cfg = json.loads(cfg_json)
    sys.dont_write_bytecode = True
    status_fd = int(cfg["status_fd"])
    info = {}
    if cfg["mode"] == "test":
        _prctl(PR_SET_DUMPABLE, 0)
    try:
        info["seccomp"] = "seccomp" not in cfg.get("disable", []) and _install_seccomp(
            deny_signals=not cfg.get("signals_confined"), landlock_abi=int(cfg.get("landlock_abi") or 0))
    except Exception:
        info["seccomp"] = False
    info["seccomp_metadata"] = info["seccomp"]  # the filter refuses chmod / chown / utime / xattr calls
    sys.addaudithook(_audit_hook(cfg.get("work")))
    info["audit_hook"] = True
    _send(status_fd, info)
    os.close(status_fd)  # nothing the program does can add to the box's report
    with open(cfg["source"], encoding="utf-8") as f:
        source = f.read()
    if cfg["mode"] == "serve":
        _serve(source, cfg["entry"])
    elif cfg["mode"] == "test":
        _test(source, cfg["entry"])
    else:
        _run(source)
