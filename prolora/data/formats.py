"""Reformatters: each raw published training set -> records ``{"dataset", "id", "messages"}``.

Every converter returns ``(records, SkipReport)``. Malformed rows are skipped and reported with
``(path, line, reason)``; a source that yields nothing usable raises ``ValueError``; a missing file raises
``FileNotFoundError`` saying which file and how to get it.

By default (``template="open_instruct"``, ``seed=42``) superni, flan_v2, cot and code_alpaca reproduce
open-instruct's ``open_instruct/reformat_datasets.py`` at commit 5cf790a52 (2024-01-09), the processed files
``data/processed/<name>/<name>_data.jsonl`` the PRoLoRA paper trained on: same records, ids, dataset names,
random template choices and samples, and the message contents exactly as open-instruct writes them
(unstripped; its ``encode_with_messages_format`` and our :mod:`prolora.data.chat` strip every message, so
the token sequences are those of the stripped text). Randomness: each converter takes ``rng`` (default
``random.Random(seed)``) and consumes it in open-instruct's order. open-instruct converts all datasets in
one process sharing the global generator seeded once (``random.seed(args.seed)``), so a per-dataset
``random.Random(42)`` equals it only for the dataset converted first (or alone, e.g.
``python open_instruct/reformat_datasets.py --dataset super_ni``); its default run converts super_ni first,
then cot, flan_v2 (no draws), dolly, ... code_alpaca later. To replay a longer chain pass one shared
``rng`` to the converters in open-instruct's order. Template tables: :mod:`prolora.data.templates`.

Sources (open-instruct ``scripts/data/sft_v1_v2/prepare_tulu_v1_v2.sh``, the Tulu v1/v2 download script):

* **superni**: a clone of https://github.com/allenai/natural-instructions (``tasks/*.json`` +
  ``splits/<split>/train_tasks.txt``, open-instruct reads ``splits/xlingual``); see :func:`convert_superni`.
* **flan_v2**: ``hf://datasets/hamishivi/tulu_mix_store/flan_v2_resampled_50k.jsonl`` (Tulu v2's 50k
  resample; Tulu v1 used ``flan_v2_resampled_100k.jsonl``), rows ``{"inputs", "targets", ...}``.
* **cot**: ``hf://datasets/hamishivi/tulu_mix_store/cot_zsopt.jsonl`` and ``cot_fsopt.jsonl`` (the Flan V2
  chain-of-thought submix, zero-shot and few-shot options), rows ``{"inputs", "targets", ...}``.
* **code_alpaca**: https://github.com/sahil280114/codealpaca/raw/master/data/code_alpaca_20k.json, a JSON
  array of ``{"instruction", "input", "output"}`` (also on the hub as ``sahil2801/CodeAlpaca-20k``).
* **messages**: rows already in the messages shape (multi-turn allowed), or ShareGPT-style
  ``{"conversations": [{"from", "value"}]}``.

A source is a local path (``.jsonl``: one object a line; ``.json``: one array) or a hub reference read with
``datasets.load_dataset``: ``hf://datasets/<owner>/<repo>/<file>`` (a data file on the hub) or
``hub:<owner>/<name>[@split]`` (a hub dataset). Hub references are the real path and need a network.
"""

from __future__ import annotations

import json
import os
import random
import string
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from prolora.data.records import (
    SkipReport,
    empty_error,
    make_record,
    missing_file_error,
    validate_messages,
)
from prolora.data.templates import encode_few_shot_example, encode_instruction_example

Source = str | os.PathLike

OPEN_INSTRUCT_SEED = 42  # open-instruct reformat_datasets.py: --seed default 42, random.seed(args.seed)

HUB_SOURCES: dict[str, list[str]] = {
    "flan_v2": ["hf://datasets/hamishivi/tulu_mix_store/flan_v2_resampled_50k.jsonl"],
    "cot": ["hf://datasets/hamishivi/tulu_mix_store/cot_zsopt.jsonl",
            "hf://datasets/hamishivi/tulu_mix_store/cot_fsopt.jsonl"],
    "code_alpaca": ["hub:sahil2801/CodeAlpaca-20k"],
}
DOWNLOADS: dict[str, str] = {
    "superni": "git clone https://github.com/allenai/natural-instructions  (tasks/ + splits/xlingual/)",
    "flan_v2": "wget https://huggingface.co/datasets/hamishivi/tulu_mix_store/resolve/main/flan_v2_resampled_50k.jsonl",
    "cot": "wget https://huggingface.co/datasets/hamishivi/tulu_mix_store/resolve/main/cot_zsopt.jsonl "
           "https://huggingface.co/datasets/hamishivi/tulu_mix_store/resolve/main/cot_fsopt.jsonl",
    "code_alpaca": "wget https://github.com/sahil280114/codealpaca/raw/master/data/code_alpaca_20k.json",
    "messages": "any jsonl of {\"messages\": [{\"role\", \"content\"}, ...]} rows",
}


def _is_hub(src: Source) -> bool:
    s = str(src)
    return s.startswith(("hf://", "hub:"))


def _missing_raw(path: Source, name: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"raw {name} source not found: {path}\n  get it with: {DOWNLOADS.get(name, '')}\n"
        f"  then: python scripts/prepare_data.py {name} --raw {path} --out data/{name}.jsonl")


def iter_rows(src: Source, report: SkipReport, name: str) -> Iterator[tuple[int | None, str, object]]:
    """``(line, label, row)`` of a raw source: ``.jsonl`` rows carry their line number; items of a
    ``.json`` array and hub rows carry ``line=None`` and a label such as ``"item 3: "`` for reasons."""
    if _is_hub(src):
        import datasets  # the real path (network); never exercised by the tests

        s = str(src)
        if s.startswith("hf://"):
            ds = datasets.load_dataset("json", data_files=s, split="train")
        else:
            ref, _, split = s[len("hub:"):].partition("@")
            ds = datasets.load_dataset(ref, split=split or "train")
        for i, row in enumerate(ds, start=1):
            yield None, f"row {i}: ", row
        return
    path = Path(src)
    if not path.is_file():
        raise _missing_raw(path, name)
    if path.suffix == ".json":
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            report.skip(path, e.lineno, f"invalid JSON ({e.msg} at column {e.colno}): whole file unreadable")
            return
        if isinstance(data, dict):  # some mirrors wrap the array
            data = next((v for v in data.values() if isinstance(v, list)), None)
        if not isinstance(data, list):
            report.skip(path, None, "a .json source must hold a JSON array of rows")
            return
        for i, row in enumerate(data, start=1):
            yield None, f"item {i}: ", row
        return
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield lineno, "", json.loads(line)
            except json.JSONDecodeError as e:
                report.skip(path, lineno, f"invalid JSON ({e.msg} at column {e.colno})")


def _str_field(row: dict, key: str) -> str | None:
    v = row.get(key)
    return v if isinstance(v, str) else None


def _finish(records: list[dict], report: SkipReport, where: Source) -> tuple[list[dict], SkipReport]:
    report.kept = len(records)
    if not records:
        raise empty_error(where, report)
    return records, report


def _as_list(sources: Source | Sequence[Source]) -> list[Source]:
    if isinstance(sources, (str, os.PathLike)):
        return [sources]
    return list(sources)


def _sample_indices(n: int, k: int | None, rng: random.Random) -> list[int]:
    """All of ``range(n)`` or, if ``k < n``, a seeded sample of ``k`` of them kept in source order."""
    if k is None or k <= 0 or k >= n:
        return list(range(n))
    return sorted(rng.sample(range(n), k))


# ---------------------------------------------------------------------------------------------------
# Flan V2 and its CoT split: {"inputs", "targets"} -> user = inputs (+ "\n"), assistant = targets
# ---------------------------------------------------------------------------------------------------
def _flan_prompt(inputs: str) -> str:
    """open-instruct ``convert_flan_v2_data`` / ``convert_cot_data``: ``inputs`` plus ``"\n"`` unless it
    already ends in ``"\n"`` or (after ``rstrip``) in ``":"``."""
    if not inputs.endswith("\n") and not inputs.rstrip().endswith(":"):
        return inputs + "\n"
    return inputs


def convert_inputs_targets(sources: Source | Sequence[Source], dataset: str, *,
                           max_per_source: int | None = None, seed: int = OPEN_INSTRUCT_SEED,
                           rng: random.Random | None = None) -> tuple[list[dict], SkipReport]:
    """open-instruct ``convert_flan_v2_data`` / ``convert_cot_data`` (commit 5cf790a52): user =
    ``inputs`` + ``"\n"`` unless it ends in ``"\n"`` or ``":"`` (see :func:`_flan_prompt`), assistant =
    ``targets``, both unstripped as open-instruct writes them (its chat encoder strips every message, so the
    token sequences are those of the stripped text). Sources are read in order; of a source with more than
    ``max_per_source`` rows, ``rng.sample(rows, k=max_per_source)`` is kept, in sampled order (open-instruct's
    CoT: ``random.sample`` of 50k rows of ``cot_zsopt.jsonl`` then of ``cot_fsopt.jsonl``; Flan V2 samples
    nothing). Ids are ``{dataset}_{idx}``, ``idx`` counting every row kept by the sampling over all sources,
    so a row skipped here (missing field, blank target: open-instruct would crash or write a record our
    reader rejects) leaves a gap instead of renumbering the rest. ``rng`` defaults to
    ``random.Random(seed)``; pass one to share it across conversions as open-instruct's single process does."""
    rng = rng if rng is not None else random.Random(seed)
    report = SkipReport()
    records: list[dict] = []
    srcs = _as_list(sources)
    idx = 0
    for src in srcs:
        rows = list(iter_rows(src, report, dataset))
        if max_per_source and max_per_source < len(rows):
            rows = rng.sample(rows, k=max_per_source)
        for line, label, row in rows:
            rid = f"{dataset}_{idx}"
            idx += 1
            if not isinstance(row, dict):
                report.skip(src, line, label + "row is not a JSON object")
                continue
            inputs, targets = _str_field(row, "inputs"), _str_field(row, "targets")
            if inputs is None or targets is None:
                missing = [k for k, v in (("inputs", inputs), ("targets", targets)) if v is None]
                report.skip(src, line, label + f"missing field {missing[0]!r}")
                continue
            if not targets.strip():
                report.skip(src, line, label + "empty target")
                continue
            records.append(make_record(dataset, rid, [{"role": "user", "content": _flan_prompt(inputs)},
                                                      {"role": "assistant", "content": targets}]))
    return _finish(records, report, srcs[0] if len(srcs) == 1 else ", ".join(map(str, srcs)))


def convert_flan_v2(sources: Source | Sequence[Source] | None = None, **kw) -> tuple[list[dict], SkipReport]:
    """open-instruct ``convert_flan_v2_data``: every row, ids ``flan_v2_{idx}`` (no sampling by default).

    Source file: open-instruct's ``convert_flan_v2_data`` defaults to the Tulu v1 100k resample
    (``tulu_v1_resampled_flan_100k.jsonl`` = ``flan_v2_resampled_100k.jsonl``), i.e. its processed
    ``data/processed/flan_v2/flan_v2_data.jsonl``; its Tulu v2 mixture reads the 50k one, which is the hub
    default here (``HUB_SOURCES``, ``configs/dataset/flan_v2.yaml``). Pass the file explicitly."""
    return convert_inputs_targets(sources or HUB_SOURCES["flan_v2"], "flan_v2", **kw)


COT_ROWS_PER_SOURCE = 50_000  # open-instruct convert_cot_data's num_zero_shot_examples / num_few_shot_examples


def convert_cot(sources: Source | Sequence[Source] | None = None, *,
                max_per_source: int | None = COT_ROWS_PER_SOURCE, **kw) -> tuple[list[dict], SkipReport]:
    """open-instruct ``convert_cot_data`` with its defaults: give ``cot_zsopt.jsonl`` then ``cot_fsopt.jsonl``
    (that order: the RNG is consumed zero-shot file first); each is cut to a random sample of 50k rows when
    longer. (open-instruct reads the zero-shot file only when ``num_few_shot_examples > 0``, a typo that
    never matters with its settings.)"""
    return convert_inputs_targets(sources or HUB_SOURCES["cot"], "cot", max_per_source=max_per_source, **kw)


# ---------------------------------------------------------------------------------------------------
# CodeAlpaca: [{"instruction", "input", "output"}]
# ---------------------------------------------------------------------------------------------------
CODE_ALPACA_TEMPLATES = ("open_instruct", "fixed")


def code_alpaca_prompt(instruction: str, input: str | None) -> str:
    """The ``fixed`` CodeAlpaca prompt: ``instruction`` + ``"\n\n" + input`` when the input is not blank
    (both stripped), i.e. open-instruct's ``encode_instruction_example(..., random_template=False)`` after the
    chat encoder's strip. Not what open-instruct's ``convert_code_alpaca_data`` (hence the paper) used: that
    draws one of 14 / 14 weighted templates per example (the default ``open_instruct`` template)."""
    prompt = instruction.strip()
    if input is not None and input.strip():
        prompt += "\n\n" + input.strip()
    return prompt


def convert_code_alpaca(sources: Source | Sequence[Source] | None = None, *, template: str = "open_instruct",
                        max_examples: int | None = None, seed: int = OPEN_INSTRUCT_SEED,
                        rng: random.Random | None = None) -> tuple[list[dict], SkipReport]:
    """CodeAlpaca rows -> single-turn records ``{"dataset": "code_alpaca", "id": "code_alpaca_{idx}"}``.

    ``template="open_instruct"`` (default): open-instruct ``convert_code_alpaca_data`` (commit 5cf790a52)
    exactly. If ``max_examples``: ``rng.sample(rows, k=max_examples)`` first (sampled order; open-instruct's
    ``num_examples``, ``None`` for the processed file); then, row by row in order, one template draw
    (:func:`prolora.data.templates.encode_instruction_example`: ``rng.choices`` over the with-input table
    when ``input.strip()`` is non-empty, else the without-input table); user = the prompt, assistant = the
    completion, unstripped as open-instruct writes them. ``idx`` is the row's position after sampling; a row
    skipped here (malformed; blank output, which our reader would reject) leaves a gap, and a blank-output
    row still consumes its template draw so the rows after it get open-instruct's templates.

    ``template="fixed"``: user = :func:`code_alpaca_prompt`, assistant = ``output.strip()``, ids numbered over
    the kept rows in source order (``max_examples`` keeps a sample in source order); no template draws.
    ``rng`` defaults to ``random.Random(seed)``."""
    if template not in CODE_ALPACA_TEMPLATES:
        raise ValueError(f"unknown CodeAlpaca template {template!r}; known: {', '.join(CODE_ALPACA_TEMPLATES)}")
    rng = rng if rng is not None else random.Random(seed)
    report = SkipReport()
    srcs = _as_list(sources or HUB_SOURCES["code_alpaca"])
    rows = [(src, line, label, row) for src in srcs for line, label, row in iter_rows(src, report, "code_alpaca")]
    if template == "open_instruct" and max_examples:
        # open-instruct: ``if num_examples: examples = random.sample(examples, k=num_examples)`` (it raises
        # when k exceeds the rows; here k is capped, i.e. a random permutation of all of them)
        rows = rng.sample(rows, k=min(max_examples, len(rows)))
    records: list[dict] = []
    pairs: list[tuple[str, str]] = []
    for idx, (src, line, label, row) in enumerate(rows):
        if not isinstance(row, dict):
            report.skip(src, line, label + "row is not a JSON object")
            continue
        instruction, output = _str_field(row, "instruction"), _str_field(row, "output")
        inp = row.get("input", "")
        if instruction is None or output is None:
            report.skip(src, line, label + f"missing field {'instruction' if instruction is None else 'output'!r}")
            continue
        if inp is not None and not isinstance(inp, str):
            report.skip(src, line, label + "field 'input' is not a string")
            continue
        if template == "open_instruct":
            enc = encode_instruction_example(instruction, inp, output, rng, random_template=True)
            if not output.strip():
                report.skip(src, line, label + "empty target")
                continue
            records.append(make_record("code_alpaca", f"code_alpaca_{idx}",
                                       [{"role": "user", "content": enc["prompt"]},
                                        {"role": "assistant", "content": enc["completion"]}]))
            continue
        if not output.strip():
            report.skip(src, line, label + "empty target")
            continue
        if not instruction.strip():
            report.skip(src, line, label + "empty instruction")
            continue
        pairs.append((code_alpaca_prompt(instruction, inp), output.strip()))
    if template == "fixed":
        records = [make_record("code_alpaca", f"code_alpaca_{j}",
                               [{"role": "user", "content": pairs[i][0]},
                                {"role": "assistant", "content": pairs[i][1]}])
                   for j, i in enumerate(_sample_indices(len(pairs), max_examples, rng))]
    return _finish(records, report, srcs[0])


# ---------------------------------------------------------------------------------------------------
# Rows already in the messages shape (multi-turn), or ShareGPT conversations
# ---------------------------------------------------------------------------------------------------
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant",
                  "assistant": "assistant", "bard": "assistant", "system": "system"}


def convert_messages(sources: Source | Sequence[Source], *, dataset: str = "messages") -> tuple[list[dict], SkipReport]:
    """Validate rows already shaped ``{"dataset"?, "id"?, "messages": [...]}`` (any number of turns), or
    ShareGPT rows ``{"id"?, "conversations": [{"from", "value"}]}``. Contents are stripped; a row's own
    ``dataset``/``id`` are kept (defaults ``dataset`` and ``{dataset}_{i}``)."""
    report = SkipReport()
    records: list[dict] = []
    srcs = _as_list(sources)
    for src in srcs:
        for line, label, row in iter_rows(src, report, "messages"):
            if not isinstance(row, dict):
                report.skip(src, line, label + "row is not a JSON object")
                continue
            if "messages" in row:
                msgs = row["messages"]
            elif "conversations" in row and isinstance(row["conversations"], list):
                msgs = []
                for turn in row["conversations"]:
                    who = turn.get("from") if isinstance(turn, dict) else None
                    if who not in SHAREGPT_ROLES:
                        msgs = f"unknown ShareGPT sender {who!r}"
                        break
                    msgs.append({"role": SHAREGPT_ROLES[who], "content": turn.get("value")})
                if isinstance(msgs, str):
                    report.skip(src, line, label + msgs)
                    continue
            else:
                report.skip(src, line, label + "missing field 'messages'")
                continue
            reason = validate_messages(msgs)
            if reason:
                report.skip(src, line, label + reason)
                continue
            ds = row.get("dataset") or dataset
            rid = row.get("id")
            rid = str(rid) if rid not in (None, "") else f"{ds}_{len(records)}"
            records.append(make_record(str(ds), rid, [{"role": m["role"], "content": m["content"].strip()}
                                                      for m in msgs]))
    return _finish(records, report, srcs[0])


# ---------------------------------------------------------------------------------------------------
# Super-NaturalInstructions
# ---------------------------------------------------------------------------------------------------
SUPERNI_TEMPLATES = ("open_instruct", "tk_instruct")


def _tk_period(s: str) -> str:
    """Tk-Instruct appends "." to a field whose text does not already end in punctuation."""
    return s if s and s[-1] in string.punctuation else s + "."


def superni_prompt(definition: str, examples: Sequence[dict], input: str, *, template: str = "tk_instruct") -> str:
    """The user turn of one SuperNI instance (definition + positive examples + the instance input).

    ``tk_instruct`` (default): the official SuperNI "Definition + k positive examples" encoding of
    Tk-Instruct (yizhongw/Tk-Instruct ``src/ni_collator.py``, ``DataCollatorForNI`` with
    ``add_task_definition=True, num_pos_examples=2, num_neg_examples=0, add_explanation=False``)::

        "Definition: {definition}.\\n\\n"
        " Positive Example 1 -\\nInput: {input_1}.\\n Output: {output_1}.\\n\\n"
        " Positive Example 2 -\\nInput: {input_2}.\\n Output: {output_2}.\\n\\n"
        "Now complete the following example -\\nInput: {input}.\\nOutput: "

    every field stripped and followed by "." only where it does not already end in punctuation; the leading
    spaces before "Positive Example" and "Output" are Tk-Instruct's. Unlike Tk-Instruct (a 1024-token T5
    encoder) examples are never dropped for length: the whole sequence is truncated at ``max_len`` later.

    ``open_instruct``: open-instruct's few-shot SuperNI encoding (``encode_few_shot_example`` in
    ``open_instruct/instruction_encode_templates.py``, used by ``convert_super_ni_data`` for its few-shot
    instances)::

        "{definition}\\n\\nInput:\\n{input_1}\\nOutput:\\n{output_1}\\n\\n ... Input:\\n{input}\\nOutput:\\n"
    """
    if template == "tk_instruct":
        text = _tk_period("Definition: " + definition.strip()) + "\n\n"
        for i, ex in enumerate(examples, start=1):
            text += f" Positive Example {i} -\n" + _tk_period(f"Input: {ex['input'].strip()}") + "\n"
            text += _tk_period(f" Output: {ex['output'].strip()}") + "\n\n"
        text += "Now complete the following example -\n" + _tk_period(f"Input: {input.strip()}") + "\n"
        return text + "Output: "
    if template == "open_instruct":
        return encode_few_shot_example(definition, examples, input, "")["prompt"]
    raise ValueError(f"unknown SuperNI template {template!r}; known: {', '.join(SUPERNI_TEMPLATES)}")


def read_task_list(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(
            f"SuperNI split file not found: {path}\n  get it with: {DOWNLOADS['superni']}\n"
            f"  then: python scripts/prepare_data.py superni --raw <natural-instructions dir> --out data/superni.jsonl")
    return [t.strip() for t in path.read_text(encoding="utf-8").splitlines() if t.strip()]


SUPERNI_SPLIT = "xlingual"  # open-instruct convert_super_ni_data reads splits/xlingual/train_tasks.txt
SUPERNI_FALLBACK_SPLIT = "default"


def superni_split_file(raw: Path, split: str | None) -> Path:
    """``{raw}/splits/{split}/train_tasks.txt``. ``split=None``: open-instruct's ``xlingual``, or, with a
    warning, ``default`` where the copy has no xlingual split (a different task list: the English tasks only)."""
    if split is not None:
        return raw / "splits" / split / "train_tasks.txt"
    path = raw / "splits" / SUPERNI_SPLIT / "train_tasks.txt"
    fallback = raw / "splits" / SUPERNI_FALLBACK_SPLIT / "train_tasks.txt"
    if not path.is_file() and fallback.is_file():
        warnings.warn(f"{path} not found: using {fallback} (open-instruct, hence the paper, used the xlingual "
                      f"train split; pass split='default' to silence this)", UserWarning, stacklevel=3)
        return fallback
    return path


def _read_task(path: Path, report: SkipReport) -> tuple[dict, str, list] | None:
    """``(task json, Definition[0], Instances)`` or ``None`` with the reason reported."""
    if not path.is_file():
        report.skip(path, None, "task file missing")
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        report.skip(path, e.lineno, f"invalid JSON ({e.msg} at column {e.colno})")
        return None
    definition = data.get("Definition") if isinstance(data, dict) else None
    if isinstance(definition, list):
        definition = definition[0] if definition else None
    if not isinstance(definition, str) or not definition.strip():
        report.skip(path, None, "task: missing or empty 'Definition'")
        return None
    instances = data.get("Instances")
    if not isinstance(instances, list):
        report.skip(path, None, "task: missing field 'Instances'")
        return None
    return data, definition, instances


def _instance_target(inst: object) -> tuple[str | None, str | None]:
    """``(input, output[0])`` of an instance, ``None`` where absent or not a string."""
    if not isinstance(inst, dict):
        return None, None
    inp = inst.get("input") if isinstance(inst.get("input"), str) else None
    outputs = inst.get("output")
    target = outputs[0] if isinstance(outputs, list) and outputs else outputs
    return inp, target if isinstance(target, str) else None


def _is_example(ex: object) -> bool:
    return isinstance(ex, dict) and isinstance(ex.get("input"), str) and isinstance(ex.get("output"), str)


def _superni_open_instruct_task(task: str, path: Path, data: dict, definition: str, instances: list,
                                rng: random.Random, report: SkipReport, zero_shot_per_task: int,
                                few_shot_per_task: int, n_few_shot: int) -> list[dict]:
    """One task of open-instruct ``convert_super_ni_data`` (commit 5cf790a52); see :func:`convert_superni`."""
    n = zero_shot_per_task + few_shot_per_task
    # random.sample(population, k) picks by index only, so sampling range(len) draws the same instances
    order = rng.sample(range(len(instances)), k=n) if n < len(instances) else range(len(instances))
    positives = data.get("Positive Examples") or []
    records = []
    for pos, i in enumerate(order):
        inst, label = instances[i], f"instance {i + 1}: "
        inp, target = _instance_target(inst)
        if pos < zero_shot_per_task:
            if inp is None:
                report.skip(path, None, label + "missing field 'input'")
                continue
            enc = encode_instruction_example(definition, inp, target or "", rng, random_template=True)
        else:
            if not isinstance(positives, list):
                positives = []
            examplars = rng.sample(positives, k=n_few_shot) if n_few_shot < len(positives) else positives
            if inp is None:
                report.skip(path, None, label + "missing field 'input'")
                continue
            if not all(_is_example(ex) for ex in examplars):
                report.skip(path, None, label + "a sampled 'Positive Examples' item lacks a string input/output")
                continue
            enc = encode_few_shot_example(definition, examplars, inp, target or "")
        if target is None or not target.strip():
            report.skip(path, None, label + "empty target")
            continue
        iid = inst.get("id") or f"{task}-{i}"
        records.append(make_record("super_ni", f"super_ni_{iid}", [{"role": "user", "content": enc["prompt"]},
                                                                  {"role": "assistant", "content": enc["completion"]}]))
    return records


def convert_superni(raw_dir: Source, *, template: str = "open_instruct", split: str | None = None,
                    seed: int = OPEN_INSTRUCT_SEED, rng: random.Random | None = None,
                    zero_shot_per_task: int = 60, few_shot_per_task: int = 20, n_few_shot: int = 2,
                    max_per_task: int | None = 100, num_pos_examples: int = 2,
                    tasks: Sequence[str] | None = None, drop_mmmlu: bool = True,
                    progress: Callable[[Sequence[str]], Sequence[str]] | None = None) -> tuple[list[dict], SkipReport]:
    """SuperNI train tasks -> single-turn records.

    Tasks: the lines of ``{raw_dir}/splits/{split}/train_tasks.txt`` (``split=None``: open-instruct's
    ``xlingual``, falling back to ``default`` with a warning, see :func:`superni_split_file`), or ``tasks`` if
    given, in that order. Names containing ``_mmmlu_`` are dropped as open-instruct does (``drop_mmmlu``): they
    are MMLU questions (57 of the 756 default train tasks), i.e. MMLU test leakage. Each task file is
    ``{raw_dir}/tasks/{task}.json``; a listed task whose file is absent is a reported skip.

    ``template="open_instruct"`` (default): open-instruct ``convert_super_ni_data`` (commit 5cf790a52), the
    processed ``super_ni_data.jsonl`` the paper trained on. Per task, with ``n = zero_shot_per_task +
    few_shot_per_task`` (60 + 20): if ``n < len(Instances)`` the instances are ``rng.sample(Instances, k=n)``
    (in sampled order), else all of them in file order. The first ``zero_shot_per_task`` of those are encoded
    zero-shot (:func:`~prolora.data.templates.encode_instruction_example`, ``instruction=Definition[0]``: one
    ``rng.choices`` template draw each), the rest few-shot
    (:func:`~prolora.data.templates.encode_few_shot_example` with ``rng.sample(Positive Examples,
    k=n_few_shot)`` when there are more than ``n_few_shot`` of them, else all, drawn per instance). Assistant =
    ``output[0].strip()``; record ``{"dataset": "super_ni", "id": "super_ni_{instance id}"}``; contents as
    open-instruct writes them (prompts keep their trailing newlines; the chat encoder strips them).
    ``rng`` defaults to ``random.Random(seed)``: open-instruct's records when super_ni is the first (or only)
    dataset its ``reformat_datasets.py`` converts after ``random.seed(seed)`` (so in its default run, and
    with ``--dataset super_ni``), given the complete task files (a task missing here draws nothing, unlike
    there). Blank targets are skipped (reported) after their draws are made.

    ``template="tk_instruct"``: :func:`superni_prompt` Tk-Instruct encoding with the first
    ``num_pos_examples`` positive examples, at most ``max_per_task`` instances per task (a sample seeded by
    ``(seed, task)``, in file order; ``None`` keeps all), record ``{"dataset": "superni", "id":
    "superni_{instance id}"}``, contents stripped."""
    if template not in SUPERNI_TEMPLATES:
        raise ValueError(f"unknown SuperNI template {template!r}; known: {', '.join(SUPERNI_TEMPLATES)}")
    raw = Path(raw_dir)
    if not raw.is_dir():
        raise _missing_raw(raw, "superni")
    names = list(tasks) if tasks is not None else read_task_list(superni_split_file(raw, split))
    if drop_mmmlu:
        names = [t for t in names if "_mmmlu_" not in t]
    rng = rng if rng is not None else random.Random(seed)
    report = SkipReport()
    records: list[dict] = []
    for task in (progress(names) if progress else names):
        path = raw / "tasks" / f"{task}.json"
        got = _read_task(path, report)
        if got is None:
            continue
        data, definition, instances = got
        if template == "open_instruct":
            records += _superni_open_instruct_task(task, path, data, definition, instances, rng, report,
                                                   zero_shot_per_task, few_shot_per_task, n_few_shot)
            continue
        examples = [ex for ex in data.get("Positive Examples") or [] if _is_example(ex)][:num_pos_examples]
        for i in _sample_indices(len(instances), max_per_task, random.Random(f"{seed}:{task}")):
            inst = instances[i]
            label = f"instance {i + 1}: "
            inp, target = _instance_target(inst)
            if inp is None:
                report.skip(path, None, label + "missing field 'input'")
                continue
            if target is None or not target.strip():
                report.skip(path, None, label + "empty target")
                continue
            iid = inst.get("id") or f"{task}-{i}"
            prompt = superni_prompt(definition, examples, inp, template="tk_instruct")
            records.append(make_record("superni", f"superni_{iid}",
                                       [{"role": "user", "content": prompt},
                                        {"role": "assistant", "content": target.strip()}]))
    return _finish(records, report, raw)


# ---------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------
CONVERTERS: dict[str, Callable[..., tuple[list[dict], SkipReport]]] = {
    "superni": convert_superni,
    "flan_v2": convert_flan_v2,
    "cot": convert_cot,
    "code_alpaca": convert_code_alpaca,
    "messages": convert_messages,
}


def get_converter(name: str) -> Callable[..., tuple[list[dict], SkipReport]]:
    try:
        return CONVERTERS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(CONVERTERS))}") from None


def convert(name: str, raw, **options) -> tuple[list[dict], SkipReport]:
    """Run the converter of dataset ``name`` on ``raw`` (a directory for superni, else path(s)/hub refs)."""
    return get_converter(name)(raw, **options)


__all__ = ["CODE_ALPACA_TEMPLATES", "CONVERTERS", "DOWNLOADS", "HUB_SOURCES", "OPEN_INSTRUCT_SEED",
           "SUPERNI_TEMPLATES", "code_alpaca_prompt", "convert",
           "convert_code_alpaca", "convert_cot", "convert_flan_v2", "convert_inputs_targets", "convert_messages",
           "convert_superni", "get_converter", "iter_rows", "missing_file_error", "read_task_list",
           "superni_prompt", "superni_split_file"]
