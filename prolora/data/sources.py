"""Reading raw training sources (local ``.jsonl``/``.json`` files, hub references) for the reformatters, and the
helpers every converter shares.  The published sources themselves are listed in ``HUB_SOURCES``/``DOWNLOADS``.

A source is a local path (``.jsonl``: one object a line; ``.json``: one array) or a hub reference read with
``datasets.load_dataset``: ``hf://datasets/<owner>/<repo>/<file>`` (a data file on the hub),
``https://...`` (a jsonl file on the web, e.g. the authors' Beaker download) or ``hub:<owner>/<name>[@split]``
(a hub dataset). Remote references are the real path and need a network.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

from prolora.data.records import SkipReport, empty_error, iter_jsonl

Source = str | os.PathLike

OPEN_INSTRUCT_SEED = 42  # open-instruct reformat_datasets.py: --seed default 42, random.seed(args.seed)

HUB_SOURCES: dict[str, list[str]] = {
    # the Tulu v1 100k resample the PRoLoRA authors trained on (their scripts/prepare_train_data.sh downloads it
    # as tulu_v1_resampled_flan_100k.jsonl); Tulu v2's 50k resample (flan_v2_resampled_50k.jsonl) is half of it
    "flan_v2": ["https://beaker.org/api/v3/datasets/01GZTTS2EJFPA83PXS4FQCS1SA/files/flan_v2_resampled_100k.jsonl"],
    "cot": ["hf://datasets/hamishivi/tulu_mix_store/cot_zsopt.jsonl",
            "hf://datasets/hamishivi/tulu_mix_store/cot_fsopt.jsonl"],
    "code_alpaca": ["hub:sahil2801/CodeAlpaca-20k"],
}
DOWNLOADS: dict[str, str] = {
    "superni": "git clone https://github.com/allenai/natural-instructions  (tasks/ + splits/xlingual/)",
    "flan_v2": "wget -O tulu_v1_resampled_flan_100k.jsonl "
               "https://beaker.org/api/v3/datasets/01GZTTS2EJFPA83PXS4FQCS1SA/files/flan_v2_resampled_100k.jsonl",
    "cot": "wget https://huggingface.co/datasets/hamishivi/tulu_mix_store/resolve/main/cot_zsopt.jsonl "
           "https://huggingface.co/datasets/hamishivi/tulu_mix_store/resolve/main/cot_fsopt.jsonl",
    "code_alpaca": "wget https://github.com/sahil280114/codealpaca/raw/master/data/code_alpaca_20k.json",
    "messages": "any jsonl of {\"messages\": [{\"role\", \"content\"}, ...]} rows",
}


def is_hub(src: Source) -> bool:
    """A remote source (hub file, hub dataset, web URL), read through ``datasets``."""
    s = str(src)
    return s.startswith(("hf://", "hub:", "http://", "https://"))


def missing_raw(path: Source, name: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"raw {name} source not found: {path}\n  get it with: {DOWNLOADS.get(name, '')}\n"
        f"  then: python -m scripts.prepare_data {name} --raw {path} --out data/{name}.jsonl")


def iter_rows(src: Source, report: SkipReport, name: str) -> Iterator[tuple[int | None, str, object]]:
    """``(line, label, row)`` of a raw source: ``.jsonl`` rows carry their line number; items of a
    ``.json`` array and hub rows carry ``line=None`` and a label such as ``"item 3: "`` for reasons."""
    if is_hub(src):
        import datasets  # the real path (network); never exercised by the tests

        s = str(src)
        if s.startswith(("hf://", "http://", "https://")):
            ds = datasets.load_dataset("json", data_files=s, split="train")
        else:
            ref, _, split = s[len("hub:"):].partition("@")
            ds = datasets.load_dataset(ref, split=split or "train")
        for i, row in enumerate(ds, start=1):
            yield None, f"row {i}: ", row
        return
    path = Path(src)
    if not path.is_file():
        raise missing_raw(path, name)
    if path.suffix == ".json":
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            report.skip(path, e.lineno, f"invalid JSON ({e.msg} at column {e.colno}): whole file unreadable")
            return
        except UnicodeDecodeError as e:
            report.skip(path, None, f"not valid UTF-8 (byte 0x{e.object[e.start]:02x} at offset {e.start}): "
                                    "whole file unreadable")
            return
        if isinstance(data, dict):  # some mirrors wrap the array
            data = next((v for v in data.values() if isinstance(v, list)), None)
        if not isinstance(data, list):
            report.skip(path, None, "a .json source must hold a JSON array of rows")
            return
        for i, row in enumerate(data, start=1):
            yield None, f"item {i}: ", row
        return
    for lineno, row in iter_jsonl(path, report):
        yield lineno, "", row


def str_field(row: dict, key: str) -> str | None:
    v = row.get(key)
    return v if isinstance(v, str) else None


def finish(records: list[dict], report: SkipReport, where: Source) -> tuple[list[dict], SkipReport]:
    report.kept = len(records)
    if not records:
        raise empty_error(where, report)
    return records, report


def as_list(sources: Source | Sequence[Source]) -> list[Source]:
    if isinstance(sources, (str, os.PathLike)):
        return [sources]
    return list(sources)


def sample_indices(n: int, k: int | None, rng: random.Random) -> list[int]:
    """All of ``range(n)`` or, if ``k < n``, a seeded sample of ``k`` of them kept in source order."""
    if k is None or k <= 0 or k >= n:
        return list(range(n))
    return sorted(rng.sample(range(n), k))
