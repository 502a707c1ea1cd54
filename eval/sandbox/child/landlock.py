"""Landlock (5.13+, unprivileged): the workload's last restriction before its exec."""

import os

from .libc import (
    PR_SET_NO_NEW_PRIVS,
    SYS_LANDLOCK_ADD_RULE,
    SYS_LANDLOCK_CREATE_RULESET,
    SYS_LANDLOCK_RESTRICT_SELF,
    _libc,
    _prctl,
)


def _landlock(writable: list, scope: bool) -> dict:
    """Landlock (5.13+, unprivileged): no file-system writes outside ``writable`` (and /dev/null), no TCP
    (ABI 4), no signals and no abstract unix sockets outside the domain (ABI 6). Returns the ABI applied."""
    import ctypes
    import struct

    lib = _libc()
    abi = lib.syscall(SYS_LANDLOCK_CREATE_RULESET, None, 0, 1)
    if abi < 1:
        return {"landlock": 0}
    fs = 0
    for bit in (1, 4, 5, 6, 7, 8, 9, 10, 11, 12):  # write_file, remove_*, make_*
        fs |= 1 << bit
    if abi >= 2:
        fs |= 1 << 13  # refer
    if abi >= 3:
        fs |= 1 << 14  # truncate
    net = 0x3 if abi >= 4 else 0  # bind_tcp | connect_tcp
    scoped = 0x3 if (abi >= 6 and scope) else 0  # abstract unix socket | signal
    if abi >= 6:
        raw = struct.pack("=QQQ", fs, net, scoped)
    elif abi >= 4:
        raw = struct.pack("=QQ", fs, net)
    else:
        raw = struct.pack("=Q", fs)
    attr = ctypes.create_string_buffer(raw, len(raw))
    rs = lib.syscall(SYS_LANDLOCK_CREATE_RULESET, attr, len(raw), 0)
    if rs < 0:
        return {"landlock": 0}
    try:
        file_rights = (1 << 1) | ((1 << 14) if abi >= 3 else 0)
        rules = [(p, fs) for p in writable] + [("/dev/null", file_rights)]
        for path, rights in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                rule = ctypes.create_string_buffer(struct.pack("=Qi", rights, fd), 12)
                if lib.syscall(SYS_LANDLOCK_ADD_RULE, rs, 1, rule, 0) != 0:
                    return {"landlock": 0}
            finally:
                os.close(fd)
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
        if lib.syscall(SYS_LANDLOCK_RESTRICT_SELF, rs, 0) != 0:
            return {"landlock": 0}
    finally:
        os.close(rs)
    return {"landlock": int(abi), "landlock_scoped": bool(scoped)}
