"""The seccomp-BPF filter that the guard installs inside a box before any untrusted code runs."""

import os
import sys

from .libc import NS_FLAGS, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, _libc, _prctl

_X86_64 = {
    "arch": 0xC000003E, "clone": 56, "fcntl": 72, "x32": True,
    "deny": {"ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312, "mount": 165,
             "umount2": 166, "pivot_root": 155, "chroot": 161, "unshare": 272, "setns": 308, "keyctl": 250,
             "add_key": 248, "request_key": 249, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323,
             "kexec_load": 246, "kexec_file_load": 320, "init_module": 175, "finit_module": 313,
             "delete_module": 176, "reboot": 169, "swapon": 167, "swapoff": 168, "acct": 163, "socket": 41,
             "execve": 59, "execveat": 322, "setsid": 112, "setpgid": 109, "name_to_handle_at": 303,
             "open_by_handle_at": 304, "quotactl": 179},
    "signals": {"kill": 62, "tkill": 200, "tgkill": 234, "rt_sigqueueinfo": 129, "rt_tgsigqueueinfo": 297},
}
_AARCH64 = {  # asm-generic numbers (include/uapi/asm-generic/unistd.h)
    "arch": 0xC00000B7, "clone": 220, "fcntl": 25, "x32": False,
    "deny": {"ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "kcmp": 272, "mount": 40,
             "umount2": 39, "pivot_root": 41, "chroot": 51, "unshare": 97, "setns": 268, "keyctl": 219,
             "add_key": 217, "request_key": 218, "bpf": 280, "perf_event_open": 241, "userfaultfd": 282,
             "kexec_load": 104, "kexec_file_load": 294, "init_module": 105, "finit_module": 273,
             "delete_module": 106, "reboot": 142, "swapon": 224, "swapoff": 225, "acct": 89, "socket": 198,
             "execve": 221, "execveat": 281, "setsid": 157, "setpgid": 154, "name_to_handle_at": 264,
             "open_by_handle_at": 265, "quotactl": 60},
    "signals": {"kill": 129, "tkill": 130, "tgkill": 131, "rt_sigqueueinfo": 138, "rt_tgsigqueueinfo": 240},
}
# the same on every architecture
_COMMON_DENY = {"pidfd_send_signal": 424, "pidfd_open": 434, "pidfd_getfd": 438, "io_uring_setup": 425,
                "io_uring_enter": 426, "io_uring_register": 427, "open_tree": 428, "move_mount": 429,
                "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442}


def _install_seccomp(deny_signals: bool) -> bool:
    """A seccomp-BPF filter (refusing with EPERM): no exec, no sockets, no ptrace / process_vm / kcmp, no
    pidfds, no fcntl F_SETOWN/F_SETSIG (SIGIO to another process), no new namespaces, mounts or chroot, no
    setsid/setpgid (the box's process group stays whole),
    no io_uring, bpf, keyrings, perf, modules, kexec, reboot; without a pid namespace or a Landlock signal
    scope also no kill/tkill/tgkill/sigqueue. clone3 answers ENOSYS (libc falls back to clone, whose flags
    the filter can see)."""
    import ctypes
    import struct

    table = {"x86_64": _X86_64, "amd64": _X86_64, "aarch64": _AARCH64, "arm64": _AARCH64}.get(
        os.uname().machine.lower())
    if table is None or struct.calcsize("P") != 8 or sys.byteorder != "little":
        return False
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, kill = 0x7FFF0000, 0x80000000

    def errno(e):
        return 0x00050000 | e

    deny = dict(table["deny"], **_COMMON_DENY)
    if deny_signals:
        deny.update(table["signals"])
    prog = [(ld, 0, 0, 4), (jeq, 1, 0, table["arch"]), (ret, 0, 0, kill), (ld, 0, 0, 0)]
    if table["x32"]:
        prog += [(jge, 0, 1, 0x40000000), (ret, 0, 0, errno(1))]
    for nr in sorted(set(deny.values())):
        prog += [(jeq, 0, 1, nr), (ret, 0, 0, errno(1))]
    prog += [(jeq, 0, 1, 435), (ret, 0, 0, errno(38))]  # clone3 → ENOSYS
    # fcntl(F_SETOWN / F_SETOWN_EX / F_SETSIG): O_ASYNC would let the kernel signal any pid for us
    prog += [(jeq, 0, 6, table["fcntl"]), (ld, 0, 0, 24), (jeq, 2, 0, 8), (jeq, 1, 0, 15), (jeq, 0, 1, 10),
             (ret, 0, 0, errno(1)), (ret, 0, 0, allow)]
    prog += [(jeq, 0, 3, table["clone"]), (ld, 0, 0, 16), (jset, 0, 1, NS_FLAGS), (ret, 0, 0, errno(1))]
    prog += [(ret, 0, 0, allow)]
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
