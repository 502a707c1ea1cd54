"""The record format the trainer reads, its validation, and the skip report shared by every reader.

A record is one JSON object per line of a ``.jsonl`` file (open-instruct's processed format)::

    {"dataset": "superni", "id": "superni_task062-...", "messages": [
        {"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}, ...]}

Rules checked by :func:`validate_messages` (a violation skips the row, it never crashes a run):

* ``messages`` is a non-empty list of ``{"role", "content"}`` with string content;
* an optional ``system`` message comes first, then turns alternate ``user``, ``assistant``, ``user``, …;
* the conversation ends with an ``assistant`` turn (a trailing user turn would carry no loss) and every
  assistant turn has non-blank content (it is the training target).

Malformed rows are counted in a :class:`SkipReport` with ``(path, line, reason)``; a file that yields no
usable row at all is an error (``ValueError`` naming the file and the first reasons).
"""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from prolora.io import open_atomic

ROLES = ("system", "user", "assistant")
PREPARE_HINT = "python -m scripts.prepare_data {name} --raw <raw source> --out {path}"


@dataclass(frozen=True)
class Skip:
    """One rejected row. ``line`` is the 1-based line of a ``.jsonl`` file; for a JSON file (SuperNI task,
    CodeAlpaca array) it is ``None`` and ``reason`` starts with the item it refers to."""

    path: str
    line: int | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else self.path
        return f"{where}: {self.reason}"


@dataclass
class SkipReport:
    """Counts of kept rows and the list of skipped ones (with where and why)."""

    kept: int = 0
    skipped: list[Skip] = field(default_factory=list)

    def skip(self, path: str | os.PathLike, line: int | None, reason: str) -> None:
        self.skipped.append(Skip(str(path), line, reason))

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    def reasons(self) -> Counter:
        """How many rows were skipped per reason (item prefixes such as ``item 3:`` removed)."""
        return Counter(s.reason.split(": ", 1)[-1] if s.reason.startswith(("item ", "row ", "instance "))
                       else s.reason for s in self.skipped)

    def summary(self, max_lines: int = 10) -> str:
        lines = [f"kept {self.kept}, skipped {self.n_skipped}"]
        for reason, n in self.reasons().most_common():
            lines.append(f"  {n:>6} x {reason}")
        for s in self.skipped[:max_lines]:
            lines.append(f"  - {s}")
        if self.n_skipped > max_lines:
            lines.append(f"  ... and {self.n_skipped - max_lines} more")
        return "\n".join(lines)


def missing_file_error(path: str | os.PathLike, name: str | None = None, what: str = "file") -> FileNotFoundError:
    """A FileNotFoundError that says which file and how to create it."""
    hint = PREPARE_HINT.format(name=name or "<dataset>", path=path)
    return FileNotFoundError(f"{what} not found: {path}\n  create it with: {hint}\n"
                             f"  (datasets: superni, flan_v2, cot, code_alpaca, messages; see --help)")


def empty_error(path: str | os.PathLike, report: SkipReport, max_reasons: int = 5) -> ValueError:
    first = "; ".join(str(s) for s in report.skipped[:max_reasons]) or "the file has no rows"
    return ValueError(f"no usable rows in {path} ({report.n_skipped} skipped): {first}")


def validate_messages(messages: object) -> str | None:
    """``None`` if ``messages`` is a valid conversation, else the reason it is not."""
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list"
    expected = "user"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            return f"message {i} lacks 'role' or 'content'"
        role, content = m["role"], m["content"]
        if role not in ROLES:
            return f"message {i} has unknown role {role!r}"
        if not isinstance(content, str):
            return f"message {i} content is not a string"
        if role == "system":
            if i != 0:
                return f"message {i}: a system message may only come first"
            continue
        if role != expected:
            return f"wrong role order: message {i} is {role!r}, expected {expected!r}"
        if role == "assistant" and not content.strip():
            return f"message {i}: empty assistant content"
        expected = "assistant" if role == "user" else "user"
    if not any(m["role"] == "assistant" for m in messages):
        return "no assistant turn"
    if messages[-1]["role"] != "assistant":
        return "conversation does not end with an assistant turn"
    return None


def make_record(dataset: str, id: str, messages: list[dict]) -> dict:
    return {"dataset": dataset, "id": id, "messages": messages}


def decode_line(raw: bytes) -> tuple[str | None, str | None]:
    """``(text, None)`` or ``(None, reason)`` for one line of a UTF-8 file."""
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as e:
        return None, f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})"


def iter_jsonl(path: str | os.PathLike, report: SkipReport) -> Iterator[tuple[int, object]]:
    """``(line_number, parsed_object)`` for each non-blank line; invalid JSON or UTF-8 lines go to ``report``."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            line, why = decode_line(raw)
            if why:
                report.skip(path, lineno, why)
                continue
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                report.skip(path, lineno, f"invalid JSON ({e.msg} at column {e.colno})")


def read_records(path: str | os.PathLike, *, dataset: str | None = None,
                 name: str | None = None) -> tuple[list[dict], SkipReport]:
    """Records of a processed ``.jsonl`` file (already in the messages shape) plus the skip report.

    Rows without ``id`` get ``{dataset}_{line}``; rows without ``dataset`` get ``dataset`` (or the file
    stem). ``name`` only improves the hint of the FileNotFoundError."""
    path = Path(path)
    if not path.is_file():
        raise missing_file_error(path, name)
    report = SkipReport()
    out: list[dict] = []
    ds_default = dataset or path.stem
    for lineno, obj in iter_jsonl(path, report):
        if not isinstance(obj, dict):
            report.skip(path, lineno, "row is not a JSON object")
            continue
        if "messages" not in obj:
            report.skip(path, lineno, "missing field 'messages'")
            continue
        reason = validate_messages(obj["messages"])
        if reason:
            report.skip(path, lineno, reason)
            continue
        ds = obj.get("dataset") or ds_default
        rid = obj.get("id")
        rid = str(rid) if rid not in (None, "") else f"{ds}_{lineno}"
        msgs = [{"role": m["role"], "content": m["content"]} for m in obj["messages"]]
        out.append(make_record(str(ds), rid, msgs))
    report.kept = len(out)
    if not out:
        raise empty_error(path, report)
    return out, report


def load_records(path: str | os.PathLike, *, name: str | None = None, verbose: bool = True) -> list[dict]:
    """The trainer's reader: the valid records of ``path``; skipped rows are reported with a warning."""
    records, report = read_records(path, name=name)
    if report.n_skipped and verbose:
        warnings.warn(f"{path}: {report.summary()}", stacklevel=2)
    return records


def write_records(records: Iterable[dict], path: str | os.PathLike) -> int:
    """Write records as jsonl, atomically (:func:`prolora.io.open_atomic`). Returns the count."""
    n = 0
    with open_atomic(path) as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    return n
