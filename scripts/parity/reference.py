"""The reference side: open-instruct's eval scripts, unmodified, from a checkout at the recorded commit, run through
:mod:`.oi_logger` in the reference interpreter, and their outputs gathered per example.

Writes, under ``<work>/reference/``: ``model/`` (the model as the reference interpreter's transformers converts the
GGUF file), ``logs/<variant>.jsonl`` (every prompt, its ids, its raw output), ``runs/<variant>/`` (the script's own
``--save_dir``), ``<variant>.jsonl`` (one record per example: ``id``, ``prompt``, ``input_ids``, ``raw_outputs``,
``prediction``, MMLU ``candidate_probs``, HumanEval ``passed``) and ``<variant>.json`` (checkout, command, wall
time, the script's ``metrics.json``, the interpreter's versions).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from scripts.parity.runs import FORK, SUBJECTS, UPSTREAM, Variant

LOGGER = Path(__file__).with_name("oi_logger.py")
VERSIONS = ["torch", "transformers", "tokenizers", "pandas", "numpy", "evaluate", "datasets", "accelerate"]


def checkout_error(path: Path | None, expected: dict, flag: str) -> str | None:
    """None when ``path`` is a git checkout of ``expected['commit']``, else the one line that says what to do."""
    fix = f"git clone https://github.com/{expected['repo']} DIR && git -C DIR checkout {expected['commit'][:12]}"
    if path is None:
        return f"{flag} is needed for this variant: a checkout of {expected['repo']} ({fix})"
    head = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        return f"{flag} {path}: not a git checkout ({fix})"
    if head.stdout.strip() != expected["commit"]:
        return (f"{flag} {path}: HEAD is {head.stdout.strip()[:12]}, the parity record is of {expected['commit'][:12]} "
                f"(git -C {path} checkout {expected['commit'][:12]})")
    return None


def checkout_of(variant: Variant, repos: dict[str, Path | None]) -> Path:
    path = repos[variant.checkout]
    expected, flag = (FORK, "--reference-repo") if variant.checkout == "fork" else (UPSTREAM, "--upstream-repo")
    error = checkout_error(path, expected, flag)
    if error:
        raise SystemExit(f"error: {error}")
    return path


def interpreter_versions(python: str) -> dict:
    code = ("import json, platform; from importlib import metadata as m\n"
            "def v(n):\n    try: return m.version(n)\n    except m.PackageNotFoundError: return None\n"
            f"print(json.dumps({{**{{n: v(n) for n in {VERSIONS!r}}}, 'python': platform.python_version()}}))")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def convert_model(python: str, work: Path) -> Path:
    """``<work>/reference/model``: converted once by the reference interpreter (tokenizer: the project's)."""
    from prolora import gguf

    out = work / "reference" / "model"
    if (out / "config.json").is_file():
        return out
    tmp = out.with_name("model.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer_json = gguf.smollm2_dir() / "tokenizer.json"
    subprocess.run([python, str(LOGGER), "convert", str(gguf.smollm2_file()), str(tokenizer_json), str(tmp)],
                   check=True, cwd=work, env={**os.environ, "OMP_NUM_THREADS": "1"})
    tmp.rename(out)
    return out


def run_variant(name: str, variant: Variant, python: str, checkout: Path, work: Path, data: Path,
                metrics_dir: Path | None) -> dict:
    """Run the variant's script through the logger; write the per-example records and the run's record."""
    ref = work / "reference"
    model = convert_model(python, work)
    save, log = ref / "runs" / name, ref / "logs" / f"{name}.jsonl"
    shutil.rmtree(save, ignore_errors=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    options = ([f"--metrics-dir={metrics_dir.resolve()}"] if metrics_dir else []) + \
        ([f"--seed={variant.seed}"] if variant.seed is not None else []) + \
        (["--prompts-only"] if variant.prompts_only else [])
    args = variant.reference_args(str(data.resolve()), str(model.resolve()), str(save.resolve()))
    env = {**os.environ, "PYTHONPATH": str(checkout.resolve()), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    print(f"reference {name}: {variant.module} in {checkout}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run([python, str(LOGGER), "run", f"--log={log.resolve()}", *options, variant.module, *args],
                          cwd=checkout, env=env)
    wall = time.perf_counter() - t0
    metrics, note = script_metrics(variant, proc.returncode, save)
    records = ASSEMBLE[variant.task]([json.loads(line) for line in log.open(encoding="utf-8")], save, data)
    write_jsonl(ref / f"{name}.jsonl", records)
    shown = variant.reference_args("<data>", "<reference model>", "<save dir>")
    record = {
        "variant": name, "checkout": FORK if variant.checkout == "fork" else UPSTREAM,
        "command": " ".join(["OMP_NUM_THREADS=1 PYTHONPATH=<checkout> <reference python> scripts/parity/oi_logger.py",
                             "run --log <log>", *(o.split("=")[0] + "=<evaluate metrics>" if o.startswith("--metrics")
                                                  else o for o in options), variant.module, *shown]),
        "wall_s": round(wall, 2), "prompts_only": variant.prompts_only,
        "metrics": metrics, **({"metrics_note": note} if note else {}),
        "versions": interpreter_versions(python),
    }
    (ref / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return record


def script_metrics(variant: Variant, returncode: int, save: Path) -> tuple[dict, str | None]:
    """The script's ``metrics.json``; for MMLU on a subject subset, its weighted accuracy from the per-subject
    files it wrote before it stopped (its subcategory means ``np.concatenate`` nothing for subcategories none of
    the subjects belong to)."""
    if returncode == 0:
        return json.loads((save / "metrics.json").read_text()), None
    files = [save / f"{s}.csv" for s in SUBJECTS]
    if variant.task != "mmlu" or not all(f.is_file() for f in files):
        raise SystemExit(f"error: the reference script {variant.module} failed (exit status {returncode}; "
                         "its output is above)")
    correct = [row["correct"] == "True" for f in files for row in csv.DictReader(f.open(encoding="utf-8"))]
    return {"average_acc": sum(correct) / len(correct)}, (
        "the script stopped after writing every subject's file (its subcategory means concatenate nothing for "
        "the subcategories of subjects not run); average_acc is its weighted_acc: the mean of the files' "
        "correct column")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def entry_record(entry: dict, id_: str, prediction, **extra) -> dict:
    return {"id": id_, "prompt": entry["prompt"], "input_ids": entry["input_ids"],
            "raw_outputs": entry.get("outputs"), "prediction": prediction, **extra}


# -- per task: which example each logged prompt is (the scripts' own output files, in the order they ran) ----------
def assemble_mmlu(log: list[dict], save: Path, data: Path) -> list[dict]:
    """One call per subject, in ``--subjects`` order; row i of the subject's test file is ``<subject>/<i>``."""
    calls = sorted({e["call"] for e in log})
    out = []
    for subject, call in zip(SUBJECTS, calls, strict=True):
        rows = [e for e in log if e["call"] == call]
        for i, e in enumerate(rows):
            out.append(entry_record(e, f"{subject}/{i}", "ABCD"[e["prediction"]], candidate_probs=e["probs"]))
    return out


def assemble_bbh(log: list[dict], save: Path, data: Path) -> list[dict]:
    """One call per task in the script's (directory listing) order; each example's id is its index in the task file."""
    out = []
    for call in sorted({e["call"] for e in log}):
        rows = [e for e in log if e["call"] == call]
        task = next(t.stem for t in sorted((save / "predictions").glob("*.jsonl"))
                    if read_jsonl(t)[0]["input"] in rows[0]["prompt"])
        examples = json.loads((data / "bbh" / "bbh" / f"{task}.json").read_text(encoding="utf-8"))["examples"]
        for e, saved in zip(rows, read_jsonl(save / "predictions" / f"{task}.jsonl"), strict=True):
            index = next(i for i, ex in enumerate(examples) if ex["input"] == saved["input"])
            out.append(entry_record(e, f"{task}/{index}", saved["prediction"], task=task))
    return out


def assemble_gsm(log: list[dict], save: Path, data: Path) -> list[dict]:
    """The id is the question's line index in ``gsm/test.jsonl``."""
    questions = [json.loads(line)["question"] for line in (data / "gsm" / "test.jsonl").open(encoding="utf-8")]
    saved = read_jsonl(save / "predictions.jsonl")
    return [entry_record(e, f"gsm/{questions.index(s['question'])}", s["prediction"])
            for e, s in zip(log, saved, strict=True)]


def assemble_tydiqa(log: list[dict], save: Path, data: Path) -> list[dict]:
    saved = read_jsonl(save / "tydiaqa_predictions.jsonl")
    return [entry_record(e, s["id"], s["prediction_text"]) for e, s in zip(log, saved, strict=True)]


def assemble_humaneval(log: list[dict], save: Path, data: Path) -> list[dict]:
    """One call per sampling round, every problem in each; the verdicts from the script's results file."""
    calls = sorted({e["call"] for e in log})
    rounds = [[e for e in log if e["call"] == c] for c in calls]
    results = read_jsonl(save / "codex_eval_predictions.jsonl_results.jsonl")
    out = []
    for i, first in enumerate(rounds[0]):
        mine = results[i * len(rounds):(i + 1) * len(rounds)]
        out.append({**entry_record(first, mine[0]["task_id"], None),
                    "raw_outputs": [r[i]["outputs"][0] for r in rounds], "passed": [m["passed"] for m in mine]})
    return out


ASSEMBLE = {"mmlu": assemble_mmlu, "bbh": assemble_bbh, "gsm": assemble_gsm, "tydiqa": assemble_tydiqa,
            "humaneval": assemble_humaneval}
