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
* **flan_v2**: the Tulu v1 100k resample the PRoLoRA authors trained on (``flan_v2_resampled_100k.jsonl``,
  saved by their ``prepare_train_data.sh`` as ``tulu_v1_resampled_flan_100k.jsonl``; Tulu v2's
  ``flan_v2_resampled_50k.jsonl`` is half of it), rows ``{"inputs", "targets", ...}``.
* **cot**: ``hf://datasets/hamishivi/tulu_mix_store/cot_zsopt.jsonl`` and ``cot_fsopt.jsonl`` (the Flan V2
  chain-of-thought submix, zero-shot and few-shot options), rows ``{"inputs", "targets", ...}``.
* **code_alpaca**: https://github.com/sahil280114/codealpaca/raw/master/data/code_alpaca_20k.json, a JSON
  array of ``{"instruction", "input", "output"}`` (also on the hub as ``sahil2801/CodeAlpaca-20k``).
* **messages**: rows already in the messages shape (multi-turn allowed), or ShareGPT-style
  ``{"conversations": [{"from", "value"}]}``.

Sources and the shared readers: :mod:`prolora.data.sources`; SuperNI: :mod:`prolora.data.superni`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from prolora.data.records import SkipReport, make_record, validate_messages
from prolora.data.sources import (
    DOWNLOADS,
    HUB_SOURCES,
    OPEN_INSTRUCT_SEED,
    Source,
    as_list,
    finish,
    iter_rows,
    sample_indices,
    str_field,
)
from prolora.data.superni import SUPERNI_TEMPLATES, convert_superni, superni_prompt
from prolora.data.templates import encode_instruction_example


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
    srcs = as_list(sources)
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
            inputs, targets = str_field(row, "inputs"), str_field(row, "targets")
            if inputs is None or targets is None:
                missing = [k for k, v in (("inputs", inputs), ("targets", targets)) if v is None]
                report.skip(src, line, label + f"missing field {missing[0]!r}")
                continue
            if not targets.strip():
                report.skip(src, line, label + "empty target")
                continue
            records.append(make_record(dataset, rid, [{"role": "user", "content": _flan_prompt(inputs)},
                                                      {"role": "assistant", "content": targets}]))
    return finish(records, report, srcs[0] if len(srcs) == 1 else ", ".join(map(str, srcs)))


def convert_flan_v2(sources: Source | Sequence[Source] | None = None, **kw) -> tuple[list[dict], SkipReport]:
    """open-instruct ``convert_flan_v2_data``: every row, ids ``flan_v2_{idx}`` (no sampling by default).

    Source file: the Tulu v1 100k resample (``tulu_v1_resampled_flan_100k.jsonl`` =
    ``flan_v2_resampled_100k.jsonl``), the default of open-instruct's ``convert_flan_v2_data`` and what the
    PRoLoRA authors trained on, is the default here too (``HUB_SOURCES``); the Tulu v2 mixture's 50k
    resample is half as much data (other epochs, other BBH numbers): pass it explicitly to use it."""
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
    srcs = as_list(sources or HUB_SOURCES["code_alpaca"])
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
        instruction, output = str_field(row, "instruction"), str_field(row, "output")
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
                   for j, i in enumerate(sample_indices(len(pairs), max_examples, rng))]
    return finish(records, report, srcs[0])


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
    srcs = as_list(sources)
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
    return finish(records, report, srcs[0])


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


__all__ = ["CODE_ALPACA_TEMPLATES", "CONVERTERS", "DOWNLOADS", "HUB_SOURCES", "OPEN_INSTRUCT_SEED",
           "SUPERNI_TEMPLATES", "code_alpaca_prompt", "convert_code_alpaca", "convert_cot", "convert_flan_v2",
           "convert_inputs_targets", "convert_messages", "convert_superni", "get_converter", "superni_prompt"]
