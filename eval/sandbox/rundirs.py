"""Run directories: each run's files (the child library, the program, the test, the logs) live in a
directory of its own, ``run-*`` under one private directory per user (``$TMPDIR/prolora-sandbox-<euid>``).
The run holds an ``flock`` on its directory from before anything is written there until it is removed,
so a directory whose lock can be taken belongs to a dead run (e.g. a SIGKILLed scoring) and
:func:`sweep_dead_runs` removes it; a live run's directory, in whatever process, is never touched."""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import tempfile

RUN_PREFIX = "run-"


def runs_root() -> str:
    """This user's directory of run directories (created 0711: the boxes' leased uids must traverse it)."""
    root = os.path.join(tempfile.gettempdir(), f"prolora-sandbox-{os.geteuid()}")
    try:
        os.mkdir(root, 0o711)
    except FileExistsError:
        pass
    st = os.lstat(root)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise RuntimeError(f"sandbox: {root} is not a private directory of uid {os.geteuid()}; remove it or "
                           "point TMPDIR elsewhere")
    if stat.S_IMODE(st.st_mode) != 0o711:
        os.chmod(root, 0o711)
    return root


def _open_dir(path: str) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


class RunDir:
    """A fresh run directory, locked (``flock``) until :meth:`remove`."""

    def __init__(self, path: str, fd: int):
        self.path, self._fd = path, fd

    @classmethod
    def create(cls) -> RunDir:
        root = runs_root()
        for _ in range(100):
            path = tempfile.mkdtemp(prefix=RUN_PREFIX, dir=root)
            fd = _open_dir(path)
            fcntl.flock(fd, fcntl.LOCK_EX)  # waits while a sweep that saw it unlocked removes it
            try:
                ours = os.path.samestat(os.lstat(path), os.fstat(fd))
            except FileNotFoundError:
                ours = False
            if ours:
                os.chmod(path, 0o711)
                return cls(path, fd)
            os.close(fd)  # swept before we locked it: take another
        raise RuntimeError(f"sandbox: could not create a run directory in {root}")

    def remove(self) -> None:
        try:
            rmtree(self.path)
        finally:
            os.close(self._fd)


def sweep_dead_runs() -> list[str]:
    """Remove the run directories that no live run holds (their lock is free); returns their paths."""
    root = runs_root()
    removed = []
    for name in sorted(os.listdir(root)):
        if not name.startswith(RUN_PREFIX):
            continue
        path = os.path.join(root, name)
        try:
            fd = _open_dir(path)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # a live run holds it
        try:
            rmtree(path)
            removed.append(path)
        finally:
            os.close(fd)
    return removed


def rmtree(path: str) -> None:
    """Remove a run directory whatever the boxes left in it (read-only directories of a leased uid)."""

    def fix(func, p, exc):
        try:
            os.chmod(os.path.dirname(p), 0o700)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=fix)
