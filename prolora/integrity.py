"""What a checkpoint held when it was written: the sha256 of every file, and the check that it still does.

A checkpoint directory carries ``checksums.json`` (``{relative path: sha256}`` of every file below it, the
manifest itself aside).  :func:`verify` compares the directory with it: a changed, missing or added file is a
:class:`ModifiedCheckpoint` (one line naming the file and the fix) unless the caller allows it; a directory
without a manifest (written before manifests existed) is reported as ``unverified``, never silently as verified.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

MANIFEST = "checksums.json"


class ModifiedCheckpoint(ValueError):
    """A checkpoint's files differ from what training wrote; the message names the first one and the fix."""


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def digest(directory: str | os.PathLike) -> dict[str, str]:
    """``{path relative to directory: sha256}`` of every regular file below ``directory``, the manifest aside."""
    root = Path(directory)
    return {p.relative_to(root).as_posix(): file_sha256(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).as_posix() != MANIFEST}


def write_manifest(directory: str | os.PathLike) -> dict[str, str]:
    """Record the digest of ``directory`` in its ``checksums.json``; returns it."""
    files = digest(directory)
    (Path(directory) / MANIFEST).write_text(json.dumps({"sha256": files}, indent=1, sort_keys=True) + "\n")
    return files


@dataclass
class Verification:
    """``status``: verified | unverified (no manifest) | modified (allowed by the caller); ``modified``: what differs."""

    status: str
    modified: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"status": self.status, "modified": self.modified}


def differences(recorded: dict[str, str], found: dict[str, str]) -> list[str]:
    """Human-readable differences: ``"adapter_config.json (changed)"``, ``"... (missing)"``, ``"... (added)"``."""
    out = [f"{k} (changed)" for k in sorted(recorded) if k in found and found[k] != recorded[k]]
    out += [f"{k} (missing)" for k in sorted(recorded) if k not in found]
    out += [f"{k} (added)" for k in sorted(found) if k not in recorded]
    return out


def verify(directory: str | os.PathLike, *, allow_modified: bool = False,
           expected: dict[str, str] | None = None) -> Verification:
    """Compare ``directory`` with its manifest (and with ``expected``, the copy ``run.json`` keeps, when given)."""
    root = Path(directory)
    manifest = root / MANIFEST
    found = digest(root)
    if not manifest.is_file():
        return Verification("unverified", files=found)
    try:
        recorded = json.loads(manifest.read_text())["sha256"]
    except (ValueError, KeyError, TypeError):
        recorded = {}
    diffs = differences(recorded, found) if recorded else [f"{MANIFEST} (unreadable)"]
    if expected is not None and {k: recorded.get(k) for k in expected} != expected:
        diffs = diffs or [f"{MANIFEST} (differs from the copy in run.json)"]
    if not diffs:
        return Verification("verified", files=found)
    if allow_modified:
        return Verification("modified", modified=diffs, files=found)
    more = f" and {len(diffs) - 1} more" if len(diffs) > 1 else ""
    raise ModifiedCheckpoint(f"checkpoint {root}: {diffs[0]}{more} differs from what training wrote; restore it or "
                             "train again, or pass allow_modified=true to use it anyway (recorded and marked)")
