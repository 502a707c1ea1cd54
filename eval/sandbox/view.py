"""What a box sees of the file system: its *view*, the same in both isolation modes.

A view is a dict of host paths, all read-only: ``dirs`` (bound whole), ``files``, ``links`` (symlinks
re-created as they are on the host, so that the paths the interpreter and the dynamic loader use still
resolve) and ``masked`` (directories inside ``dirs`` that stay hidden: every ``site-packages`` /
``dist-packages``). With a mount namespace it is the box's whole root (an empty tmpfs holding only these
paths, then ``pivot_root``); without one, Landlock allows reads only there.

The interpreter's part of the view comes from running the interpreter once (trusted code, outside any
box): its own binary, its standard library (``sys.path`` under ``-I -S``: no site-packages), and the
directories of every shared object it loads once it has imported every extension module of its standard
library (libc, libpython, libssl, ... as the dynamic loader names them). The run adds its own files (the
sandbox's child library, the program's source or the tester's test).
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import threading

_MASK_PATTERNS = ("site-packages", "dist-packages", "python*/site-packages", "python*/dist-packages")
_PROBE = r"""
import ctypes, importlib, importlib.machinery, json, os, sys
for d in sys.path:
    if os.path.isdir(d):
        for f in sorted(os.listdir(d)):
            suffix = next((s for s in importlib.machinery.EXTENSION_SUFFIXES if f.endswith(s)), None)
            if suffix:
                try:
                    importlib.import_module(f[:-len(suffix)])
                except BaseException:
                    pass
class Info(ctypes.Structure):
    _fields_ = [("addr", ctypes.c_void_p), ("name", ctypes.c_char_p)]
names = []
callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(Info), ctypes.c_size_t, ctypes.c_void_p)(
    lambda info, size, data: names.append(info.contents.name or b"") or 0)
ctypes.CDLL(None).dl_iterate_phdr(callback, None)
with open("/proc/self/maps") as f:
    mapped = {line.split(None, 5)[5].strip() for line in f if len(line.split(None, 5)) == 6}
print(json.dumps({"python": os.path.realpath(sys.executable), "stdlib": sys.path,
                  "objects": sorted({n.decode() for n in names} | mapped)}))
"""
_NOT_LIBRARIES = ("/tmp/", "/var/tmp/", "/dev/", "/proc/", "/run/", "/sys/")
_CACHE: dict[str, tuple[str, dict]] = {}
_LOCK = threading.Lock()


def interpreter_view(python: str) -> tuple[str, dict]:
    """The interpreter's real path and the view it needs to run the standard library (cached per path)."""
    with _LOCK:
        if python not in _CACHE:
            _CACHE[python] = _probe_interpreter(python)
        return _CACHE[python]


def _probe_interpreter(python: str) -> tuple[str, dict]:
    proc = subprocess.run([python, "-I", "-S", "-c", _PROBE], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, cwd="/", env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    if proc.returncode != 0:
        raise RuntimeError(f"sandbox: {python} could not describe its own files ({proc.stderr.strip()[-300:]}); "
                           "set PROLORA_SANDBOX_PYTHON to a working interpreter")
    found = json.loads(proc.stdout.strip().splitlines()[-1])  # the last line: whatever a module printed
    python = found["python"]
    dirs, files, links = set(), {python}, {}
    for path in [*found["stdlib"], *found["objects"], "/etc/ld.so.cache"]:
        if not os.path.isabs(path) or path.startswith(_NOT_LIBRARIES):
            continue  # the vdso, [heap], anonymous or temporary mappings
        chain, real = symlink_chain(path)
        if real == python or not os.path.exists(real):
            continue
        links.update(chain)
        if os.path.isdir(real):
            dirs.add(real)  # a directory of the standard library
        elif real.endswith("/ld.so.cache"):
            files.add(real)
        else:
            dirs.add(os.path.dirname(real))  # a shared object's directory (libc, libpython, libssl, locale)
    return python, make_view(sorted(dirs), sorted(files), links)


def symlink_chain(path: str) -> tuple[dict[str, str], str]:
    """The symlinks met while resolving ``path`` (link path → its target, as written) and the real path."""
    links: dict[str, str] = {}
    parts = [p for p in path.split("/") if p]
    current = "/"
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            current = os.path.dirname(current)
            continue
        candidate = os.path.join(current, part)
        if os.path.islink(candidate) and hops < 40:
            hops += 1
            target = os.readlink(candidate)
            links[candidate] = target
            parts = [p for p in target.split("/") if p] + parts
            if target.startswith("/"):
                current = "/"
            continue
        current = candidate
    return links, current


def make_view(dirs: list[str], files: list[str], links: dict[str, str], masked: list[str] | None = None) -> dict:
    """A consistent view: no path inside another bound directory, links only where nothing is bound, every
    site-packages / dist-packages directory inside a bound directory masked (``masked``: those already
    found, instead of scanning every directory again)."""
    if "/" in dirs:
        raise RuntimeError("sandbox: the interpreter's files lie directly in /, so a box would see everything; "
                           "set PROLORA_SANDBOX_PYTHON to an interpreter installed under a prefix")
    dirs = sorted({os.path.normpath(d) for d in dirs})
    dirs = [d for d in dirs if not any(_inside(d, o) for o in dirs if o != d)]
    files = sorted({os.path.normpath(f) for f in files if not any(_inside(f, d) for d in dirs)})
    links = {k: v for k, v in sorted(links.items())
             if not any(_inside(k, d) or k == d for d in dirs) and k not in files}
    found = {m for d in dirs for m in _masks(d)} if masked is None else set(masked)
    found = {m for m in found if any(_inside(m, d) for d in dirs)}
    return {"dirs": dirs, "files": files, "links": [[k, v] for k, v in links.items()], "masked": sorted(found)}


def _masks(directory: str) -> set[str]:
    out = set()
    for pattern in _MASK_PATTERNS:
        for hit in glob.glob(os.path.join(glob.escape(directory), pattern)):
            real = os.path.realpath(hit)
            if os.path.isdir(real):
                out.add(real)
    return out


def with_paths(view: dict, dirs: list[str] = (), files: list[str] = ()) -> dict:
    """``view`` plus a run's own directories and files (only those are scanned for directories to mask)."""
    merged = make_view([*view["dirs"], *dirs], [*view["files"], *files], dict(view["links"]), masked=view["masked"])
    fresh = [d for d in dirs if os.path.normpath(d) in merged["dirs"]]
    masked = set(merged["masked"]) | {m for d in fresh for m in _masks(d)}
    return dict(merged, masked=sorted(masked))


def _inside(path: str, directory: str) -> bool:
    return path.startswith(directory.rstrip("/") + "/")
