"""Atomic writes and file locks, the one owner of both.

A reader (another process, a resumed run, a crash half-way) sees the old file or directory or the new one, never
a half-written one: every result file, checkpoint and prepared dataset of the harness is written through
:func:`open_atomic`, :func:`write_text_atomic`, :func:`write_json_atomic` or :func:`write_dir_atomic`."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def open_atomic(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """A file opened for writing under a temporary name in ``path``'s directory; on a clean exit it is flushed,
    fsynced and renamed to ``path``; on an error it is removed and ``path`` keeps its old content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (:func:`open_atomic`)."""
    with open_atomic(path) as f:
        f.write(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, data: Any, **dumps_kw: Any) -> Path:
    """``data`` as indented JSON (``default=str`` for paths and the like), atomically."""
    dumps_kw.setdefault("indent", 2)
    dumps_kw.setdefault("default", str)
    return write_text_atomic(path, json.dumps(data, **dumps_kw) + "\n")


def write_dir_atomic(directory: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Run ``write(tmp_dir)`` then move ``tmp_dir`` into place (replacing an existing directory of that name);
    the files are fsynced first.  On any error the temporary directory is removed and the old one stays."""
    target = Path(directory).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        write(tmp)
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".old-{target.name}-", dir=target.parent))
            os.replace(target, old / target.name)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except Exception as e:
        full = _device_full(target.parent, e)  # before the partial files go (they hold the last free bytes)
        shutil.rmtree(tmp, ignore_errors=True)
        if full:
            cause = e.cause if isinstance(e, DeviceFull) else f"{type(e).__name__}: {' '.join(str(e).split())[:120]}"
            raise DeviceFull(target, cause) from e
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(target.parent)
    return target


class DeviceFull(OSError):
    """A write failed because the device is full; nothing was replaced (the message says where and what to do)."""

    def __init__(self, target: Path, cause: str):
        self.target, self.cause = target, cause
        super().__init__(errno.ENOSPC, f"no space left on the device of {target.parent} while writing {target.name} "
                         f"({cause}); nothing was replaced: free some space or write elsewhere")

    def __str__(self) -> str:
        return self.strerror


def _device_full(directory: Path, error: BaseException) -> bool:
    """Whether ``error`` (raised while writing under ``directory``) came from a full device: ENOSPC, or a library
    error without an errno (torch.save, safetensors) while less than 1 MiB is free."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    try:
        return shutil.disk_usage(directory).free < (1 << 20)
    except OSError:
        return False


def read_json(path: str | os.PathLike) -> Any:
    """The parsed file, or None when it is missing or not valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def read_json_object(path: str | os.PathLike) -> dict | None:
    """The parsed file when it is a JSON object; None when it is missing, not valid JSON, or another JSON value
    (a list, a number: a damaged result file, never a half-read one)."""
    data = read_json(path)
    return data if isinstance(data, dict) else None


def read_tail(path: str | os.PathLike, chars: int) -> str:
    """The last ``chars`` characters of a text file (decoding errors replaced), or "" when it is unreadable."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 4 * chars))
            return f.read().decode("utf-8", errors="replace")[-chars:]
    except OSError:
        return ""


class FileLock:
    """An exclusive ``flock`` on ``path``: taken atomically by the kernel, released when the holder closes it or
    dies (so a lock is never stale on its host and two processes can never both hold it). The file itself is
    never deleted (deleting it while another process waits on the old inode would let two hold "the" lock);
    while held it says who holds it (``info``: pid, host, ...)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self, info: dict | None = None) -> bool:
        """Take the lock without waiting; False when another process holds it."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        self.write(info or {})
        return True

    def write(self, info: dict) -> None:
        """Replace what the lock file says (only while held)."""
        if self._fd is None:
            return
        data = json.dumps({"pid": os.getpid(), **info}).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    @staticmethod
    def holder(path: str | os.PathLike) -> dict | None:
        """What the holder of the lock at ``path`` wrote, or None when nobody holds it."""
        import fcntl

        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                return json.loads(os.pread(fd, 1 << 16, 0) or b"{}")
            except ValueError:
                return {}
            finally:
                os.close(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        return None

    def __enter__(self) -> FileLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
