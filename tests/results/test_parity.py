"""The harness side of ``results/parity/open_instruct_smollm2.json`` (parity with open-instruct as the PRoLoRA
authors ran it, on SmolLM2-135M-Instruct), re-checked so it cannot drift from the code.  (Re-running the
reference side too: ``python -m scripts.parity``, ``results/parity/README.md``.)

* The file itself: every variant's counts agree with its example list, every difference is explained or open.
* Prompts, for every task and variant (MMLU chat/no-chat/upstream, BBH, GSM, TyDi QA, HumanEval): the task
  configs are composed the way ``python -m recipes.evaluate`` composes them, with the recorded overrides, on the
  real benchmark files (``../shared/data``; skipped where absent) laid out as the parity run saw them (BBH: a
  directory holding only the 3 tasks, so the draw is the recorded one; TyDi QA: the dev_ini questions and the
  train fixture ``tests/fixtures/parity/tydiqa-goldp-v1.1-train.json``), and each prompt's sha256 must equal the
  recorded one.  With the real SmolLM2 tokenizer (the ``real`` extra: ``make real-model``), also the token ids
  (the backend's ``encode``) and TyDi QA's 512-token context cut.
* Scores, where a full re-run is cheap (``recheck.scores`` in the file: TyDi QA no-chat, 9 questions; HumanEval
  chat, 10 problems x 2 seeded samples): the recorded run again through the driver on the hf backend, fp32,
  batch 1; every prediction, raw output (hash) and score must be the recorded one.  MMLU (487 forward passes),
  BBH and GSM (up to 512 new tokens) and TyDi QA chat (50 new tokens a question) take minutes on 2 cores: their
  prompts and token ids only.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from recipes import CONFIG_DIR
from scripts.parity.build import digest, sha
from scripts.parity.layout import TRAIN_FIXTURE, lay_out
from tests.conftest import REPO, SHARED_DATA

RESULT = REPO / "results" / "parity" / "open_instruct_smollm2.json"
TRAIN_FIXTURE_SHA256 = "9b3c5c01f2c7a7ea3059481b76d9ca192ad3dfb659e7bd58e8dacf8c04a7fa66"

PARITY = json.loads(RESULT.read_text(encoding="utf-8"))
VARIANTS = PARITY["variants"]
RESCORED = [name for name, v in VARIANTS.items() if v["recheck"]["scores"]]


def smollm2_dir() -> Path:
    """The converted SmolLM2-135M-Instruct directory (``prolora.gguf``), or skip without the real-model extra."""
    try:
        import gguf  # noqa: F401  (the reader transformers needs)

        from prolora import gguf as pgguf

        return Path(pgguf.smollm2_dir())
    except ImportError as e:
        pytest.skip(f"the real-model extra is not installed ({e}): make real-model")
    except FileNotFoundError as e:  # prolora.gguf.GGUFUnavailable
        pytest.skip(f"SmolLM2 is not available ({e}): make real-model")


@pytest.fixture(scope="module")
def tokenizer():
    from prolora.models import load_tokenizer

    return load_tokenizer(str(smollm2_dir()))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """The benchmark files as the parity runs saw them (``python -m scripts.parity``'s layout)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present")
    return lay_out(SHARED_DATA, tmp_path_factory.mktemp("parity_data"))


def task_of(variant: str, data_dir: Path):
    """The variant's task as the recipe builds it from the recorded overrides (protocol presets included)."""
    from recipes.evaluate import build_tasks

    h = VARIANTS[variant]["harness"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=[*h["overrides"], f"data_dir={data_dir}"])
    cfg.tasks = [h["task"]]
    (task,) = build_tasks(cfg, bool(cfg.chat))
    return task


# ---------------------------------------------------------------------------------------- the file itself
def test_the_file_is_consistent():
    assert len(RESULT.read_bytes()) < 1_000_000
    assert hashlib.sha256(TRAIN_FIXTURE.read_bytes()).hexdigest() == TRAIN_FIXTURE_SHA256
    assert PARITY["reference"]["open_instruct_fork"]["commit"] == "2e2b1eedd75f248c7df5f94bd3228a906bc880f1"
    assert PARITY["reference"]["open_instruct_upstream"]["commit"] == "d61037f5f1259ed04766f9f5b33300d45fbed86f"
    assert PARITY["model"]["project_conversion_check"]["tensors_bit_identical"] is True
    assert set(RESCORED) >= {"tydiqa_nochat"}
    open_items = []
    for d in PARITY["common_differences"]:
        assert d["status"] in ("explained", "open") and d["what"] and d["explanation"], d
        if d["status"] == "open":
            open_items.append(f"common: {d['what']}")
    for name, v in VARIANTS.items():
        n = v["n_prompts_compared"]
        assert len(v["examples"]) == n and len({e["id"] for e in v["examples"]}) == n, name
        assert v["prompts_digest"] == digest((e["id"], e["prompt_sha256"]) for e in v["examples"]), name
        assert 0 <= v["n_prompts_byte_identical"] <= n and 0 <= v["n_token_ids_identical"] <= n, name
        for d in v["differences"]:
            assert d["status"] in ("explained", "open") and d["what"] and d["explanation"], (name, d)
            if d["status"] == "open":
                open_items.append(f"{name}: {d['what']}")
        if v["n_prompts_byte_identical"] < n:  # every prompt difference must be accounted for
            assert any(d.get("kind") == "prompt" for d in v["differences"]), name
        preds = v.get("n_predictions_equal")
        if preds is not None and preds < n:
            assert any(d.get("kind") in ("prediction", "output") for d in v["differences"]), name
    assert sorted(open_items) == sorted(PARITY["open_items"])


# ---------------------------------------------------------------------------------------- prompts
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_prompts_are_the_recorded_ones(variant, data_dir, request):
    v = VARIANTS[variant]
    task = task_of(variant, data_dir)
    needs_tokenizer = v["harness"]["task"] == "tydiqa"  # its 512-token context cut
    tok = request.getfixturevalue("tokenizer") if needs_tokenizer else None
    examples = task.load(data_dir)
    got = [(ex["id"], sha(task.prompt(ex, tok))) for ex in examples]
    want = [(e["id"], e["prompt_sha256"]) for e in v["examples"]]
    assert sorted(got) == sorted(want)
    assert [i for i, _ in got] == [e["id"] for e in v["examples"]]  # the order the driver runs them in


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_token_ids_are_the_recorded_ones(variant, data_dir, tokenizer):
    from types import SimpleNamespace

    from eval.backends.base import Backend

    task = task_of(variant, data_dir)
    encoder = SimpleNamespace(tokenizer=tokenizer)
    lines = [(ex["id"], ",".join(map(str, Backend.encode(encoder, task.prompt(ex, tokenizer)))))
             for ex in task.load(data_dir)]
    assert digest(lines) == VARIANTS[variant]["token_ids_digest"]


# ---------------------------------------------------------------------------------------- scores
@pytest.fixture(scope="module")
def backend():
    from eval.backends.hf import HFBackend

    b = HFBackend.load(str(smollm2_dir()), precision="full", compute_dtype="float32", device="cpu", batch_size=1)
    yield b
    b.close()


@pytest.mark.slow
@pytest.mark.parametrize("variant", RESCORED)
def test_rescored_as_recorded(variant, data_dir, backend):
    """The whole recorded run again (TyDi QA no-chat: 9 questions, stops at the first newline; HumanEval chat: 10
    problems x 2 samples, seeded, executed in the sandbox): about 10-30 s each on one CPU thread."""
    from eval.driver import evaluate_task

    v = VARIANTS[variant]
    task = task_of(variant, data_dir)
    result = evaluate_task(task, backend, data_dir, seed=42)
    recorded = {e["id"]: e for e in v["examples"]}
    assert [r["id"] for r in result.records] == [e["id"] for e in v["examples"]]
    for rec in result.records:
        want = recorded[rec["id"]]
        assert sha(rec["prompt"]) == want["prompt_sha256"], rec["id"]
        if "output_sha256" in want:  # greedy: one output
            assert sha(rec["outputs"][0]) == want["output_sha256"], rec["id"]
            assert rec["predictions"][0] == want["prediction"], rec["id"]
        else:  # sampled (seeded): every sample and its verdict
            assert rec["outputs"] == want["outputs"], rec["id"]
            assert rec["passed"] == want["passed"], rec["id"]
    assert_same_scores(result.metrics, v["scores_percent"]["harness"])


def assert_same_scores(got: dict, recorded: dict, where: str = "") -> None:
    """Every recorded number (nested: per language, per task) is what the run gave now."""
    for key, want in recorded.items():
        assert key in got, f"{where}{key}"
        if isinstance(want, dict):
            assert_same_scores(got[key], want, f"{where}{key}.")
        else:
            assert got[key] == pytest.approx(want, abs=1e-9), f"{where}{key}"
