"""Read W&B offline run files (``<dir>/wandb/offline-run-<date>-<id>/run-<id>.wandb``) without the network.

wandb ships no public Python reader for these files (wandb-core, in Go, writes and syncs them).  Their
format, checked against the bytes wandb 0.31 writes:

* a 7-byte W&B header: ``":W&B"``, magic ``0xBEE1`` (uint16 little-endian), version ``0`` (uint8);
* then LevelDB log framing, the header counting as the first 7 bytes of block 0: 32 KiB blocks, each
  physical record a 7-byte header — checksum (uint32 LE), length (uint16 LE), type (FULL=1, FIRST=2,
  MIDDLE=3, LAST=4) — and its data; a block's last < 7 bytes are zero padding;
* the checksum is the plain (unmasked) IEEE CRC-32 (``zlib.crc32``) of the type byte followed by the
  data — not LevelDB's masked CRC-32C;
* each logical record a serialized ``wandb.proto.wandb_internal_pb2.Record``.

    run = read_run(tmp_path)            # the .wandb file, its offline-run dir, or a dir holding one run
    run.config["lr"], run.history[-1]["_step"], run.summary["mmlu"], run.run["group"]
    for d in find_runs(tmp_path): ...   # every offline run below a directory

Config, history and summary values are JSON-decoded; keys given as ``nested_key`` (e.g.
``["_wandb", "runtime"]``) become nested dicts.  A corrupt or truncated file raises
:class:`CorruptRunFile`.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HEADER_IDENT = b":W&B"
HEADER_MAGIC = 0xBEE1
HEADER_VERSION = 0
FILE_HEADER_LEN = 7
BLOCK_LEN = 32 * 1024
RECORD_HEADER_LEN = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
_TYPE_NAMES = {FULL: "FULL", FIRST: "FIRST", MIDDLE: "MIDDLE", LAST: "LAST"}


class CorruptRunFile(ValueError):
    """The .wandb file is not a well-formed W&B transaction log (bad header, checksum, framing, truncation)."""


@dataclass
class OfflineRun:
    path: Path  # the .wandb file
    run: dict[str, Any]  # id, entity, project, group, name, job_type, tags, notes, resumed, start_time
    config: dict[str, Any]
    history: list[dict[str, Any]]  # one dict per history record, with "_step"
    summary: dict[str, Any]
    exit_code: int | None
    records: list[Any] = field(repr=False)  # every wandb_internal_pb2.Record, in file order


# --------------------------------------------------------------------------- framing
def iter_record_bytes(data: bytes, source: str = "<bytes>") -> Iterator[bytes]:
    """The logical records (serialized protobufs) of a .wandb file's contents; CorruptRunFile on damage."""
    if len(data) < FILE_HEADER_LEN:
        raise CorruptRunFile(f"{source}: {len(data)} bytes, too short for the 7-byte W&B header")
    ident, magic, version = struct.unpack("<4sHB", data[:FILE_HEADER_LEN])
    if ident != HEADER_IDENT or magic != HEADER_MAGIC:
        raise CorruptRunFile(f"{source}: not a W&B run file (header {data[:FILE_HEADER_LEN]!r}, expected "
                             f"{HEADER_IDENT!r} + magic 0x{HEADER_MAGIC:04X})")
    if version != HEADER_VERSION:
        raise CorruptRunFile(f"{source}: W&B log version {version}, this reader knows version {HEADER_VERSION}")

    pos, end = FILE_HEADER_LEN, len(data)
    pending: list[bytes] | None = None  # chunks of a FIRST..LAST record being assembled
    pending_at = 0
    while pos < end:
        left_in_block = BLOCK_LEN - pos % BLOCK_LEN
        if left_in_block < RECORD_HEADER_LEN:
            trailer = data[pos:pos + left_in_block]
            if trailer.strip(b"\x00"):
                raise CorruptRunFile(f"{source}: non-zero block trailer at offset {pos}")
            pos += left_in_block
            continue
        if end - pos < RECORD_HEADER_LEN:
            raise CorruptRunFile(f"{source}: truncated: {end - pos} stray bytes at offset {pos}, "
                                 f"shorter than a record header")
        checksum, length, rtype = struct.unpack("<IHB", data[pos:pos + RECORD_HEADER_LEN])
        if rtype == 0 and length == 0 and checksum == 0 and not data[pos:pos + left_in_block].strip(b"\x00"):
            # Zero-filled rest of a block (preallocated space); LevelDB readers skip it too.
            pos += left_in_block
            continue
        if rtype not in _TYPE_NAMES:
            raise CorruptRunFile(f"{source}: unknown record type {rtype} at offset {pos}")
        if length > left_in_block - RECORD_HEADER_LEN:
            raise CorruptRunFile(f"{source}: record at offset {pos} claims {length} bytes, more than the "
                                 f"{left_in_block - RECORD_HEADER_LEN} left in its block")
        start = pos + RECORD_HEADER_LEN
        if start + length > end:
            raise CorruptRunFile(f"{source}: truncated: record at offset {pos} needs {length} bytes, "
                                 f"the file has {end - start}")
        chunk = data[start:start + length]
        if zlib.crc32(bytes([rtype]) + chunk) != checksum:
            raise CorruptRunFile(f"{source}: checksum mismatch in {_TYPE_NAMES[rtype]} record at offset {pos}")
        if rtype == FULL:
            if pending is not None:
                raise CorruptRunFile(f"{source}: FULL record at offset {pos} inside a fragmented record "
                                     f"begun at offset {pending_at}")
            yield chunk
        elif rtype == FIRST:
            if pending is not None:
                raise CorruptRunFile(f"{source}: FIRST record at offset {pos} inside a fragmented record "
                                     f"begun at offset {pending_at}")
            pending, pending_at = [chunk], pos
        else:
            if pending is None:
                raise CorruptRunFile(f"{source}: {_TYPE_NAMES[rtype]} record at offset {pos} without a FIRST")
            pending.append(chunk)
            if rtype == LAST:
                yield b"".join(pending)
                pending = None
        pos = start + length
    if pending is not None:
        raise CorruptRunFile(f"{source}: truncated: fragmented record begun at offset {pending_at} has no LAST")


def read_records(path: str | Path) -> list[Any]:
    """Every ``wandb_internal_pb2.Record`` of one .wandb file, in order."""
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2 as pb

    path = Path(path)
    out = []
    for i, raw in enumerate(iter_record_bytes(path.read_bytes(), str(path))):
        rec = pb.Record()
        try:
            rec.ParseFromString(raw)
        except DecodeError as e:
            raise CorruptRunFile(f"{path}: logical record {i} is not a wandb Record protobuf: {e}") from e
        out.append(rec)
    return out


# --------------------------------------------------------------------------- locating runs
def find_runs(root: str | Path) -> list[Path]:
    """Every offline-run directory (``offline-run-*`` holding a ``run-*.wandb``) below ``root``, sorted
    by name (i.e. by start time); the ``latest-run`` symlink is not followed."""
    root = Path(root)
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        here = Path(dirpath)
        if here.name.startswith("offline-run-") and any(f.endswith(".wandb") for f in filenames):
            found.append(here)
            dirnames[:] = []
    return sorted(found, key=lambda p: (p.name, str(p)))


def _wandb_file(path: Path) -> Path:
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or directory")
    here = sorted(path.glob("run-*.wandb"))
    if len(here) == 1:
        return here[0]
    if len(here) > 1:
        raise ValueError(f"{path} holds {len(here)} .wandb files; pass one: {[p.name for p in here]}")
    runs = find_runs(path)
    if not runs:
        raise FileNotFoundError(f"no W&B offline run (offline-run-*/run-*.wandb) under {path}")
    if len(runs) > 1:
        raise ValueError(f"{path} holds {len(runs)} offline runs; pass one of them (see find_runs): "
                         f"{[str(r.relative_to(path)) for r in runs]}")
    return _wandb_file(runs[0])


# --------------------------------------------------------------------------- decoding
def _key_path(item: Any) -> list[str]:
    return [item.key] if item.key else list(item.nested_key)


def _set(target: dict, keys: list[str], value: Any) -> None:
    for k in keys[:-1]:
        nxt = target.get(k)
        if not isinstance(nxt, dict):
            nxt = target[k] = {}
        target = nxt
    target[keys[-1]] = value


def _remove(target: dict, keys: list[str]) -> None:
    for k in keys[:-1]:
        target = target.get(k)
        if not isinstance(target, dict):
            return
    target.pop(keys[-1], None)


def _decode(item: Any, where: str) -> Any:
    try:
        return json.loads(item.value_json)
    except json.JSONDecodeError as e:
        raise CorruptRunFile(f"{where}: value of {_key_path(item)} is not JSON: {item.value_json[:80]!r}") from e


def _apply(target: dict, updates: Any, removes: Any, where: str) -> None:
    for item in updates:
        keys = _key_path(item)
        if keys:
            _set(target, keys, _decode(item, where))
    for item in removes:
        keys = _key_path(item)
        if keys:
            _remove(target, keys)


def read_run(path_or_dir: str | Path) -> OfflineRun:
    """Parse one offline run: the .wandb file, its ``offline-run-*`` directory, or a directory with
    exactly one offline run below it (ValueError listing them when there are several)."""
    path = _wandb_file(Path(path_or_dir))
    records = read_records(path)
    where = str(path)
    run: dict[str, Any] = {}
    config: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    exit_code: int | None = None
    for rec in records:
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            fields = {"id": r.run_id, "entity": r.entity, "project": r.project, "group": r.run_group,
                      "name": r.display_name, "job_type": r.job_type, "notes": r.notes}
            run.update({k: v for k, v in fields.items() if v or k not in run})
            if r.tags or "tags" not in run:
                run["tags"] = list(r.tags)
            run["resumed"] = bool(r.resumed) or run.get("resumed", False)
            if r.HasField("start_time"):
                run["start_time"] = r.start_time.seconds + r.start_time.nanos / 1e9
            _apply(config, r.config.update, r.config.remove, where)
            _apply(summary, r.summary.update, r.summary.remove, where)
        elif kind == "config":
            _apply(config, rec.config.update, rec.config.remove, where)
        elif kind == "summary":
            _apply(summary, rec.summary.update, rec.summary.remove, where)
        elif kind == "history":
            row: dict[str, Any] = {}
            _apply(row, rec.history.item, (), where)
            if "_step" not in row and rec.history.HasField("step"):
                row["_step"] = rec.history.step.num
            history.append(row)
        elif kind == "exit":
            exit_code = rec.exit.exit_code
    run.setdefault("start_time", None)
    return OfflineRun(path=path, run=run, config=config, history=history, summary=summary,
                      exit_code=exit_code, records=records)
