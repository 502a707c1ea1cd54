"""Super-NaturalInstructions -> chat records (open-instruct's ``convert_super_ni_data``, or Tk-Instruct's
encoding): :func:`convert_superni` reads a clone of allenai/natural-instructions (``tasks/*.json`` +
``splits/<split>/train_tasks.txt``)."""

from __future__ import annotations

import json
import random
import string
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from prolora.data.records import SkipReport, make_record
from prolora.data.sources import (
    DOWNLOADS,
    OPEN_INSTRUCT_SEED,
    Source,
    finish,
    missing_raw,
    sample_indices,
)
from prolora.data.templates import encode_few_shot_example, encode_instruction_example

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
            f"  then: python -m scripts.prepare_data superni --raw <natural-instructions dir> --out data/superni.jsonl")
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
        raise missing_raw(raw, "superni")
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
        for i in sample_indices(len(instances), max_per_task, random.Random(f"{seed}:{task}")):
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
    return finish(records, report, raw)
