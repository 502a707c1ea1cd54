"""Namespaces of a box and its file system: unshare (as root without, otherwise inside a user namespace),
the id maps, the uid switch, and the box's own root holding only its view (see ``eval/sandbox/view.py``),
read-only, with a few harmless /dev nodes, its own /proc and a tmpfs working directory."""

import os

from .libc import (
    CLONE_NEWCGROUP,
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWUSER,
    CLONE_NEWUTS,
    MNT_DETACH,
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
    SYS_PIVOT_ROOT,
    _errno,
    _libc,
    _mount,
    _unshare,
)

# the box's /dev is a read-only tmpfs with only these device nodes bound in
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


def _make(root: str, path: str, directory: bool) -> str:
    """``root + path`` created on the box's root tmpfs (parents included), never through a symlink: nothing
    is created outside the tmpfs, whatever the view says."""
    current = root
    parts = [q for q in path.split("/") if q]
    for i, part in enumerate(parts):
        current = os.path.join(current, part)
        if part in (".", "..") or os.path.islink(current):
            raise OSError(f"the view's path {path} goes through {current}")
        last = i == len(parts) - 1
        if os.path.exists(current):
            continue
        if last and not directory:
            os.close(os.open(current, os.O_CREAT | os.O_WRONLY | os.O_EXCL | os.O_NOFOLLOW, 0o644))
        else:
            os.mkdir(current, 0o755)
    return current


def _bind(source: str, target: str) -> None:
    if not _mount(source, target, None, MS_BIND):  # not recursive: what is mounted below stays out
        raise OSError(_errno(), f"binding {source}: " + os.strerror(_errno()))


def _setup_mounts(spec: dict, box: dict, ns: dict) -> dict:
    """The box's root: an empty tmpfs holding only the box's view (read-only binds of its directories and
    files, its links, empty tmpfs over the masked directories), a minimal /dev, the box's own /proc; then
    ``pivot_root`` into it (the host's mounts are detached: not even the mount table is left), everything
    read-only, and the workload's working directory a fresh size-limited tmpfs (the only writable place)."""
    info = {"readonly_fs": False, "private_proc": False, "minimal_dev": False, "minimal_root": False}
    if not _mount(None, "/", None, MS_REC | MS_PRIVATE):
        raise OSError(_errno(), "making / private: " + os.strerror(_errno()))
    root, view = spec["root"], box["view"]
    if not _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=4096,mode=0755"):
        raise OSError(_errno(), "root tmpfs: " + os.strerror(_errno()))
    binds = [(d, _make(root, d, True)) for d in view["dirs"]] + [(f, _make(root, f, False)) for f in view["files"]]
    for d in ("/dev", "/proc", box["cwd"]):
        _make(root, d, True)
    for source, target in binds:
        _bind(source, target)
    for d in view["masked"]:
        if not _mount("tmpfs", root + d, "tmpfs", MS_NOSUID | MS_NODEV, "size=4k,nr_inodes=4,mode=0755"):
            raise OSError(_errno(), f"masking {d}: " + os.strerror(_errno()))
    info["minimal_dev"] = _minimal_dev(root + "/dev")
    if ns.get("pid_ns") and _mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY):
        info["private_proc"] = True
    for link, target in view["links"]:
        parent = _make(root, os.path.dirname(link), True)
        os.symlink(target, os.path.join(parent, os.path.basename(link)))
    info["minimal_root"] = _enter_root(root)
    info["readonly_fs"] = _readonly_everything()
    if box.get("writable"):
        opts = f"size={int(spec['work_mb'])}m,nr_inodes=4096,mode=0700"
        if box.get("uid") is not None and not ns.get("user_ns"):
            opts += f",uid={box['uid']},gid={box['gid']}"
        if not _mount("tmpfs", box["cwd"], "tmpfs", MS_NOSUID | MS_NODEV, opts):
            raise OSError(_errno(), "work tmpfs: " + os.strerror(_errno()))
    return info


def _enter_root(root: str) -> bool:
    """pivot_root into ``root`` and detach the old root (chroot where pivot_root is refused)."""
    os.chdir(root)
    if _libc().syscall(SYS_PIVOT_ROOT, b".", b".") == 0:
        if _libc().umount2(b".", MNT_DETACH) != 0:
            raise OSError(_errno(), "detaching the old root: " + os.strerror(_errno()))
    else:
        os.chroot(".")
    os.chdir("/")
    return True


def _minimal_dev(dev: str) -> bool:
    """A tmpfs for /dev holding bind mounts of a few harmless device nodes and the fd symlinks: no
    terminals (/dev/pts), no /dev/shm, /dev/fuse, /dev/kvm, /dev/net/tun, ..."""
    if not _mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "size=64k,nr_inodes=64,mode=0755"):
        return False
    for name in DEV_NODES:
        if os.path.exists(f"/dev/{name}"):
            os.close(os.open(f"{dev}/{name}", os.O_CREAT | os.O_WRONLY, 0o644))
            _bind(f"/dev/{name}", f"{dev}/{name}")
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{dev}/{name}")
    for d in ("shm", "pts"):
        os.mkdir(f"{dev}/{d}", 0o755)
    return os.path.exists(f"{dev}/null")
