"""The seccomp-BPF filter that the guard installs inside a box before any untrusted code runs."""

import os
import sys

from .libc import NS_FLAGS, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, _libc, _prctl

_X86_64 = {
    "arch": 0xC000003E, "clone": 56, "fcntl": 72, "ioctl": 16, "truncate": 76, "x32": True,
    "deny": {"ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312, "mount": 165,
             "umount2": 166, "pivot_root": 155, "chroot": 161, "unshare": 272, "setns": 308, "keyctl": 250,
             "add_key": 248, "request_key": 249, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323,
             "kexec_load": 246, "kexec_file_load": 320, "init_module": 175, "finit_module": 313,
             "delete_module": 176, "reboot": 169, "swapon": 167, "swapoff": 168, "acct": 163, "socket": 41,
             "execve": 59, "execveat": 322, "setsid": 112, "setpgid": 109, "name_to_handle_at": 303,
             "open_by_handle_at": 304, "quotactl": 179},
    # metadata that Landlock has no right for: modes, owners, times, extended attributes
    "metadata": {"chmod": 90, "fchmod": 91, "fchmodat": 268, "chown": 92, "fchown": 93, "lchown": 94,
                 "fchownat": 260, "utime": 132, "utimes": 235, "futimesat": 261, "utimensat": 280,
                 "setxattr": 188, "lsetxattr": 189, "fsetxattr": 190, "removexattr": 197, "lremovexattr": 198,
                 "fremovexattr": 199},
    # System V IPC and POSIX message queues (shared with every process of the uid without an ipc namespace)
    "ipc": {"shmget": 29, "shmat": 30, "shmctl": 31, "shmdt": 67, "semget": 64, "semop": 65, "semctl": 66,
            "semtimedop": 220, "msgget": 68, "msgsnd": 69, "msgrcv": 70, "msgctl": 71, "mq_open": 240,
            "mq_unlink": 241, "mq_timedsend": 242, "mq_timedreceive": 243, "mq_notify": 244,
            "mq_getsetattr": 245},
    # may act on other processes of the uid (no signal involved): only on the caller itself (pid 0)
    "self_only": {"prlimit64": 302, "sched_setparam": 142, "sched_setscheduler": 144, "sched_setaffinity": 203,
                  "sched_setattr": 314},
    "who_self": {"setpriority": (141, 0), "ioprio_set": (251, 1)},  # (nr, the "which" of one process)
    "signals": {"kill": 62, "tkill": 200, "tgkill": 234, "rt_sigqueueinfo": 129, "rt_tgsigqueueinfo": 297},
}
_AARCH64 = {  # asm-generic numbers (include/uapi/asm-generic/unistd.h)
    "arch": 0xC00000B7, "clone": 220, "fcntl": 25, "ioctl": 29, "truncate": 45, "x32": False,
    "deny": {"ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "kcmp": 272, "mount": 40,
             "umount2": 39, "pivot_root": 41, "chroot": 51, "unshare": 97, "setns": 268, "keyctl": 219,
             "add_key": 217, "request_key": 218, "bpf": 280, "perf_event_open": 241, "userfaultfd": 282,
             "kexec_load": 104, "kexec_file_load": 294, "init_module": 105, "finit_module": 273,
             "delete_module": 106, "reboot": 142, "swapon": 224, "swapoff": 225, "acct": 89, "socket": 198,
             "execve": 221, "execveat": 281, "setsid": 157, "setpgid": 154, "name_to_handle_at": 264,
             "open_by_handle_at": 265, "quotactl": 60},
    "metadata": {"fchmod": 52, "fchmodat": 53, "fchownat": 54, "fchown": 55, "utimensat": 88, "setxattr": 5,
                 "lsetxattr": 6, "fsetxattr": 7, "removexattr": 14, "lremovexattr": 15, "fremovexattr": 16},
    "ipc": {"shmget": 194, "shmat": 196, "shmctl": 195, "shmdt": 197, "semget": 190, "semop": 193, "semctl": 191,
            "semtimedop": 192, "msgget": 186, "msgsnd": 189, "msgrcv": 188, "msgctl": 187, "mq_open": 180,
            "mq_unlink": 181, "mq_timedsend": 182, "mq_timedreceive": 183, "mq_notify": 184,
            "mq_getsetattr": 185},
    "self_only": {"prlimit64": 261, "sched_setparam": 118, "sched_setscheduler": 119, "sched_setaffinity": 122,
                  "sched_setattr": 274},
    "who_self": {"setpriority": (140, 0), "ioprio_set": (30, 1)},
    "signals": {"kill": 129, "tkill": 130, "tgkill": 131, "rt_sigqueueinfo": 138, "rt_tgsigqueueinfo": 240},
}
# the same on every architecture (the unified table, 424+)
_COMMON_DENY = {"pidfd_send_signal": 424, "pidfd_open": 434, "pidfd_getfd": 438, "io_uring_setup": 425,
                "io_uring_enter": 426, "io_uring_register": 427, "open_tree": 428, "move_mount": 429,
                "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442,
                "statmount": 457, "listmount": 458, "open_tree_attr": 467}  # (the mount table, without /proc)
_COMMON_METADATA = {"fchmodat2": 452, "setxattrat": 463, "removexattrat": 466, "file_setattr": 469}
_NEWEST_KNOWN = 469  # newer syscalls answer ENOSYS (a new way to change metadata cannot slip through)
# the ioctls a Python program needs (isatty, terminal size, close-on-exec, non-blocking, bytes available);
# any other (chattr's FS_IOC_SETFLAGS, FIOSETOWN + FIOASYNC, TIOCSTI, ...) answers ENOTTY
_IOCTLS = (0x5401, 0x5413, 0x540F, 0x5451, 0x5450, 0x5421, 0x541B)  # TCGETS TIOCGWINSZ TIOCGPGRP FIOCLEX ..

_LD, _JEQ, _JGT, _JSET, _RET = 0x20, 0x15, 0x25, 0x45, 0x06
_ALLOW, _KILL = 0x7FFF0000, 0x80000000
_NR, _ARG0, _ARG1 = 0, 16, 24  # offsets in struct seccomp_data (low 32 bits of each argument)


def _errno(e: int) -> int:
    return 0x00050000 | e


def _when(nr: int, body: list) -> list:
    """``body`` (which always returns) for syscall ``nr``; other syscalls skip it."""
    return [(_JEQ, 0, len(body), nr)] + body


def _arg_is(offset: int, value: int, deny: int) -> list:
    return [(_LD, 0, 0, offset), (_JEQ, 0, 1, value), (_RET, 0, 0, _ALLOW), (_RET, 0, 0, deny)]


def _filter(table: dict, deny_signals: bool, landlock_abi: int) -> list:
    """The BPF program, as (code, jt, jf, k) tuples."""
    deny = dict(table["deny"], **_COMMON_DENY, **table["metadata"], **_COMMON_METADATA, **table["ipc"])
    if deny_signals:
        deny.update(table["signals"])
    if landlock_abi < 3:  # Landlock cannot refuse truncate(path) before ABI 3
        deny["truncate"] = table["truncate"]
    prog = [(_LD, 0, 0, 4), (_JEQ, 1, 0, table["arch"]), (_RET, 0, 0, _KILL), (_LD, 0, 0, _NR)]
    if table["x32"]:
        prog += [(_JGT, 0, 1, 0x3FFFFFFF), (_RET, 0, 0, _errno(1))]
    prog += [(_JGT, 0, 1, _NEWEST_KNOWN), (_RET, 0, 0, _errno(38))]
    for nr in sorted(set(deny.values())):
        prog += [(_JEQ, 0, 1, nr), (_RET, 0, 0, _errno(1))]
    prog += [(_JEQ, 0, 1, 435), (_RET, 0, 0, _errno(38))]  # clone3 → ENOSYS (libc falls back to clone)
    # fcntl(F_SETOWN / F_SETOWN_EX / F_SETSIG): O_ASYNC would let the kernel signal any pid for us
    prog += _when(table["fcntl"], [(_LD, 0, 0, _ARG1), (_JEQ, 2, 0, 8), (_JEQ, 1, 0, 15), (_JEQ, 0, 1, 10),
                                   (_RET, 0, 0, _errno(1)), (_RET, 0, 0, _ALLOW)])
    prog += _when(table["clone"], [(_LD, 0, 0, _ARG0), (_JSET, 0, 1, NS_FLAGS), (_RET, 0, 0, _errno(1)),
                                   (_RET, 0, 0, _ALLOW)])
    n = len(_IOCTLS)
    prog += _when(table["ioctl"], [(_LD, 0, 0, _ARG1)] + [(_JEQ, n - i, 0, cmd) for i, cmd in enumerate(_IOCTLS)]
                  + [(_RET, 0, 0, _errno(25)), (_RET, 0, 0, _ALLOW)])
    for nr in sorted(table["self_only"].values()):
        prog += _when(nr, _arg_is(_ARG0, 0, _errno(1)))
    for nr, which in sorted(table["who_self"].values()):
        prog += _when(nr, [(_LD, 0, 0, _ARG0), (_JEQ, 0, 4, which)] + _arg_is(_ARG1, 0, _errno(1))
                      + [(_RET, 0, 0, _errno(1))])
    return prog + [(_RET, 0, 0, _ALLOW)]


def _install_seccomp(deny_signals: bool, landlock_abi: int = 0) -> bool:
    """A seccomp-BPF filter (refusing with EPERM): no exec, no sockets, no ptrace / process_vm / kcmp, no
    pidfds, no fcntl F_SETOWN/F_SETSIG (SIGIO to another process), no new namespaces, mounts or chroot, no
    listmount / statmount (the mount table without /proc), no setsid/setpgid (the box's process group stays
    whole), no io_uring, bpf, keyrings, perf, modules, kexec, reboot; no chmod / chown / utime / xattr calls of any variant (Landlock has no right for them), no System
    V IPC or POSIX message queues; prlimit, sched_set*, setpriority and ioprio_set only on the caller itself;
    ioctl only for the few requests a Python program makes (else ENOTTY); truncate(path) where Landlock
    cannot refuse it (ABI < 3); without a pid namespace or a Landlock signal scope also no
    kill/tkill/tgkill/sigqueue. clone3 and syscalls newer than this table answer ENOSYS."""
    import ctypes
    import struct

    table = {"x86_64": _X86_64, "amd64": _X86_64, "aarch64": _AARCH64, "arm64": _AARCH64}.get(
        os.uname().machine.lower())
    if table is None or struct.calcsize("P") != 8 or sys.byteorder != "little":
        return False
    prog = _filter(table, deny_signals, landlock_abi)
    raw = b"".join(struct.pack("=HBBI", *insn) for insn in prog)
    buf = ctypes.create_string_buffer(raw, len(raw))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(prog), ctypes.addressof(buf))
    if not _prctl(PR_SET_NO_NEW_PRIVS, 1):
        return False
    lib = _libc()
    lib.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
    try:
        return lib.prctl(PR_SET_SECCOMP, 2, ctypes.addressof(fprog), 0, 0) == 0
    finally:
        lib.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
