"""Unprivileged uids for the programs of a run as root: leased exclusively (one ``flock``-ed lock file per
uid in a private directory) from ``uid_base`` .. ``uid_base + UID_RANGE - 1``, skipping uids that have an
account or running processes."""

from __future__ import annotations

import os
import stat
import tempfile

# leased uids start above 62000..62099: the previous version ran programs as fixed uids 62000 + slot and
# killed every process of them before each run, which would hit programs leased there meanwhile
DEFAULT_UID_BASE = int(os.environ.get("PROLORA_SANDBOX_UID_BASE", "62100"))
UID_RANGE = 2000


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


def _lock_dir() -> str:
    d = os.environ.get("PROLORA_SANDBOX_LOCK_DIR") or (
        "/run/lock/prolora-sandbox" if os.path.isdir("/run/lock")
        else os.path.join(tempfile.gettempdir(), f"prolora-sandbox-locks-{os.geteuid()}"))
    os.makedirs(d, mode=0o700, exist_ok=True)
    st = os.lstat(d)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise RuntimeError(f"{d} is not a private directory of uid {os.geteuid()}; set PROLORA_SANDBOX_LOCK_DIR")
    return d


class _UidLease:
    """Unprivileged uids held exclusively (an ``flock`` on one lock file per uid) for one run, so that no
    other Sandbox — in this process or any other — runs programs as them meanwhile."""

    def __init__(self, uids: list[int], fds: list[int]):
        self.uids, self._fds = uids, fds

    @classmethod
    def acquire(cls, n: int, base: int, hint: int = 0) -> _UidLease:
        import fcntl
        import pwd

        directory = _lock_dir()
        uids: list[int] = []
        fds: list[int] = []
        try:
            for k in range(UID_RANGE):
                uid = base + (hint + k) % UID_RANGE
                try:
                    pwd.getpwuid(uid)
                    continue  # a real account: never borrow it
                except KeyError:
                    pass
                fd = os.open(os.path.join(directory, f"uid-{uid}.lock"),
                             os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    os.close(fd)
                    continue
                if _uid_processes(uid):  # someone else's processes run as it: not ours to use (or kill)
                    os.close(fd)
                    continue
                uids.append(uid)
                fds.append(fd)
                if len(uids) == n:
                    return cls(uids, fds)
            raise RuntimeError(f"no free sandbox uid in {base}..{base + UID_RANGE - 1}")
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise

    def release(self) -> None:
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = []
