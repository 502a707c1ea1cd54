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

EXECUTE, WRITE_FILE, READ_FILE, READ_DIR, TRUNCATE = 1 << 0, 1 << 1, 1 << 2, 1 << 3, 1 << 14
READ = EXECUTE | READ_FILE | READ_DIR
# the box's device nodes: null and full writable, the others read-only
DEVICES = {"/dev/null": READ_FILE | WRITE_FILE | TRUNCATE, "/dev/full": READ_FILE | WRITE_FILE | TRUNCATE,
           "/dev/zero": READ_FILE, "/dev/random": READ_FILE, "/dev/urandom": READ_FILE}


def _read_rules(view: dict, masks_mounted: bool) -> list:
    """(path, rights) that let the workload read its view and nothing else. Without a mount namespace (the
    masked directories are not covered by empty mounts) a directory that holds a masked directory is
    listable, and everything in it readable except the masked directory."""
    masked = set() if masks_mounted else set(view["masked"])

    def holds_masked(d: str) -> bool:
        return any(m.startswith(d.rstrip("/") + "/") for m in masked)

    rules = [(f, EXECUTE | READ_FILE) for f in view["files"]]
    todo = list(view["dirs"])
    while todo:
        d = todo.pop()
        if not holds_masked(d):
            rules.append((d, READ))
            continue
        rules.append((d, READ_DIR))
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for name in names:
            path = os.path.join(d, name)
            if path in masked or os.path.islink(path):
                continue
            if os.path.isdir(path):
                todo.append(path)
            else:
                rules.append((path, EXECUTE | READ_FILE))
    return rules


def _landlock(view: dict, writable: list, scope: bool, masks_mounted: bool) -> dict:
    """Landlock (5.13+, unprivileged): no reads outside the box's ``view`` (and a few /dev nodes), no
    file-system writes outside ``writable``, no TCP (ABI 4), no signals and no abstract unix sockets outside
    the domain (ABI 6). Returns the ABI applied."""
    import ctypes
    import struct

    lib = _libc()
    abi = lib.syscall(SYS_LANDLOCK_CREATE_RULESET, None, 0, 1)
    if abi < 1:
        return {"landlock": 0, "landlock_reads": False}
    fs = READ
    for bit in (1, 4, 5, 6, 7, 8, 9, 10, 11, 12):  # write_file, remove_*, make_*
        fs |= 1 << bit
    if abi >= 2:
        fs |= 1 << 13  # refer
    if abi >= 3:
        fs |= TRUNCATE
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
        return {"landlock": 0, "landlock_reads": False}
    file_only = EXECUTE | WRITE_FILE | READ_FILE | (TRUNCATE if abi >= 3 else 0)
    try:
        rules = _read_rules(view, masks_mounted) + [(p, fs) for p in writable] + list(DEVICES.items())
        for path, rights in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                if not os.path.isdir(path):
                    rights &= file_only
                rule = ctypes.create_string_buffer(struct.pack("=Qi", rights, fd), 12)
                if lib.syscall(SYS_LANDLOCK_ADD_RULE, rs, 1, rule, 0) != 0:
                    return {"landlock": 0, "landlock_reads": False}
            finally:
                os.close(fd)
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
        if lib.syscall(SYS_LANDLOCK_RESTRICT_SELF, rs, 0) != 0:
            return {"landlock": 0, "landlock_reads": False}
    finally:
        os.close(rs)
    return {"landlock": int(abi), "landlock_scoped": bool(scoped), "landlock_reads": True}
