"""libc calls (through ctypes, loaded once before any box exists) and the kernel's constants, for the
supervisor and the boxes; the one-line JSON messages on status and verdict pipes."""

import json
import os

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
NS_FLAGS = CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 0x4000, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21

PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_SECCOMP, PR_CAPBSET_DROP = 1, 4, 22, 24
PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 36, 38, 47, 4

SYS_MOUNT_SETATTR = 442  # same number on every architecture (unified table)
SYS_PIVOT_ROOT = {"x86_64": 155, "amd64": 155, "aarch64": 41, "arm64": 41}.get(os.uname().machine.lower(), -1)
MNT_DETACH = 2
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446


_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:
        import ctypes

        lib = ctypes.CDLL(None, use_errno=True)
        lib.syscall.restype = ctypes.c_long
        lib.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
        lib.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        lib.unshare.argtypes = [ctypes.c_int]
        lib.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
        _LIBC = lib
    return _LIBC


def _errno() -> int:
    import ctypes

    return ctypes.get_errno()


def _prctl(option: int, arg2: int = 0, arg3: int = 0) -> bool:
    try:
        return _libc().prctl(option, arg2, arg3, 0, 0) == 0
    except Exception:
        return False


def _unshare(flags: int) -> bool:
    try:
        return _libc().unshare(flags) == 0
    except Exception:
        return False


def _b(s):
    return None if s is None else os.fsencode(s)


def _mount(source, target, fstype, flags: int, data=None) -> bool:
    return _libc().mount(_b(source), _b(target), _b(fstype), flags, _b(data)) == 0


def _send(fd: int, obj) -> None:
    """One JSON line on a status / verdict pipe (small: one write, atomic)."""
    try:
        os.write(fd, (json.dumps(obj) + "\n").encode())
    except OSError:
        pass


def _close_fds_except(keep) -> None:
    low = 0
    for fd in sorted(set(keep)) + [1 << 20]:
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
