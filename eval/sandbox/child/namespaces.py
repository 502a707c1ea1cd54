"""Namespaces of a box and its view of the file system: unshare (as root without, otherwise inside a user
namespace), the id maps, the uid switch, and the mounts that make everything read-only, hide /tmp, /run,
/root, /home, ..., give /dev only a few harmless nodes, the working directory a tmpfs and /proc the box's."""

import os

from .libc import (
    CLONE_NEWCGROUP,
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWUSER,
    CLONE_NEWUTS,
    MS_BIND,
    MS_NOATIME,
    MS_NODEV,
    MS_NODIRATIME,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_RELATIME,
    MS_REMOUNT,
    SYS_MOUNT_SETATTR,
    _errno,
    _libc,
    _mount,
    _unshare,
)

# directories replaced (inside the box's mount namespace) by an empty read-only tmpfs; the paths the box
# needs (the interpreter's prefix, the run's directory) are bound back into them read-only
HIDDEN_DIRS = ("/tmp", "/var/tmp", "/run", "/root", "/home", "/mnt", "/media", "/srv")
# /dev is a read-only tmpfs with only these device nodes bound in (else: /dev/shm and /dev/pts hidden)
DEV_NODES = ("null", "zero", "full", "random", "urandom")


def _switch_uid(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


def _write_id_maps(uid: int, gid: int) -> None:
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"0 {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"0 {gid} 1")


def _enter_namespaces(spec: dict, box: dict) -> dict:
    """New mount, pid, net, ipc, uts (and cgroup) namespaces. Root: without a user namespace (the
    workload then switches to its leased unprivileged uid). Not root: inside a new user namespace where
    uid 0 is the harness's user (the workload drops every capability before its exec)."""
    info = {"user_ns": False, "mount_ns": False, "pid_ns": False, "net_ns": False, "ipc_ns": False,
            "early_uid": False}
    if "namespaces" in spec.get("disable", []):
        return info
    full = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
    if os.geteuid() == 0:
        for flags in (full | CLONE_NEWCGROUP, full):
            if _unshare(flags):
                info.update(mount_ns=True, pid_ns=True, net_ns=True, ipc_ns=True)
                return info
        if box.get("uid") is None:
            return info
        # root that may not unshare (a locked-down container): become the leased uid, then as a user
        _switch_uid(box["uid"], box["gid"])
        info["early_uid"] = True
    uid, gid = os.geteuid(), os.getegid()
    for flags in (CLONE_NEWUSER | full | CLONE_NEWCGROUP, CLONE_NEWUSER | full, CLONE_NEWUSER | CLONE_NEWNET):
        if _unshare(flags):
            _write_id_maps(uid, gid)
            info.update(user_ns=True, mount_ns=bool(flags & CLONE_NEWNS), pid_ns=bool(flags & CLONE_NEWPID),
                        net_ns=True, ipc_ns=bool(flags & CLONE_NEWIPC))
            break
    return info


def _mountpoints() -> list:
    import re

    out = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                out.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4]))
    except OSError:
        pass
    return out


def _readonly_everything() -> bool:
    """Every mount of this (private) mount namespace read-only and nosuid: mount_setattr(AT_RECURSIVE)
    where available (5.12+), else one bind-remount per mount point."""
    import ctypes
    import struct

    attr = ctypes.create_string_buffer(struct.pack("=QQQQ", 0x1 | 0x2, 0, 0, 0))  # RDONLY | NOSUID
    if _libc().syscall(SYS_MOUNT_SETATTR, -100, b"/", 0x8000, attr, 32) == 0:
        return True
    ok = True
    names = {1024: MS_NOATIME, 2048: MS_NODIRATIME, 4096: MS_RELATIME}
    for mp in _mountpoints():
        try:
            f = os.statvfs(mp).f_flag
        except OSError:
            continue
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | (f & (MS_NODEV | MS_NOEXEC))
        for st, ms in names.items():
            if f & st:
                flags |= ms
        if not _mount(None, mp, None, flags):
            ok = False
    return ok


def _setup_mounts(spec: dict, box: dict, ns: dict) -> dict:
    """The box's view: everything read-only; /tmp, /run, /root, /home, ... replaced by empty read-only
    tmpfs (the interpreter and the run directory bound back read-only); a minimal /dev; the workload's
    working directory a fresh size-limited tmpfs (the only writable place); a /proc of its own pid
    namespace."""
    info = {"readonly_fs": False, "private_proc": False, "minimal_dev": False}
    if not _mount(None, "/", None, MS_REC | MS_PRIVATE):
        raise OSError(_errno(), "making / private: " + os.strerror(_errno()))
    keeps = sorted({os.path.normpath(k) for k in spec["keep"] if os.path.exists(k)}, key=len)
    keeps = [k for i, k in enumerate(keeps) if not any(k.startswith(o.rstrip("/") + "/") for o in keeps[:i])]
    keep_fds = {k: os.open(k, os.O_PATH | os.O_CLOEXEC) for k in keeps}
    info["readonly_fs"] = _readonly_everything()
    for d in HIDDEN_DIRS:
        if os.path.islink(d) or not os.path.isdir(d):
            continue
        if any(k == d or d.startswith(k.rstrip("/") + "/") for k in keeps):
            continue  # a kept tree contains it: stays visible, read-only
        if not _mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, "size=256k,nr_inodes=256,mode=0755"):
            raise OSError(_errno(), f"hiding {d}: " + os.strerror(_errno()))
        for k, fd in keep_fds.items():
            if k.startswith(d.rstrip("/") + "/"):
                os.makedirs(k, 0o755, exist_ok=True)
                if not _mount(f"/proc/self/fd/{fd}", k, None, MS_BIND | MS_REC):
                    raise OSError(_errno(), f"binding {k}: " + os.strerror(_errno()))
        _mount(None, d, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    for fd in keep_fds.values():
        os.close(fd)
    info["minimal_dev"] = _minimal_dev()
    if not info["minimal_dev"]:
        for d in ("/dev/shm", "/dev/pts", "/dev/mqueue"):
            if os.path.isdir(d) and not os.path.islink(d):
                _mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, "size=4k")
    if box.get("writable"):
        opts = f"size={int(spec['work_mb'])}m,nr_inodes=4096,mode=0700"
        if box.get("uid") is not None and not ns.get("user_ns"):
            opts += f",uid={box['uid']},gid={box['gid']}"
        if not _mount("tmpfs", box["cwd"], "tmpfs", MS_NOSUID | MS_NODEV, opts):
            raise OSError(_errno(), "work tmpfs: " + os.strerror(_errno()))
    if ns.get("pid_ns"):
        if _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY):
            info["private_proc"] = True
        elif _mount("tmpfs", "/proc", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, "size=4k"):
            info["private_proc"] = True  # no /proc at all rather than the host's
    return info


def _minimal_dev() -> bool:
    """A read-only tmpfs on /dev holding bind mounts of a few harmless device nodes and the fd symlinks:
    no terminals (/dev/pts), no /dev/shm, /dev/fuse, /dev/kvm, /dev/net/tun, ..."""
    fds = {}
    try:
        for name in DEV_NODES:
            try:
                fds[name] = os.open(f"/dev/{name}", os.O_PATH | os.O_CLOEXEC)
            except OSError:
                pass
        if "null" not in fds or not _mount("tmpfs", "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC,
                                           "size=64k,nr_inodes=64,mode=0755"):
            return False
        for name, fd in fds.items():
            os.close(os.open(f"/dev/{name}", os.O_CREAT | os.O_WRONLY, 0o644))
            if not _mount(f"/proc/self/fd/{fd}", f"/dev/{name}", None, MS_BIND):
                raise OSError(_errno(), f"binding /dev/{name}: " + os.strerror(_errno()))
        for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                             ("stderr", "/proc/self/fd/2")):
            os.symlink(target, f"/dev/{name}")
        for d in ("shm", "pts"):
            os.mkdir(f"/dev/{d}", 0o755)
        return _mount(None, "/dev", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NOEXEC)
    finally:
        for fd in fds.values():
            os.close(fd)
