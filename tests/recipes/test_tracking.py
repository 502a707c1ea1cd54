"""recipes.tracking: the W&B summary of an evaluation, and a W&B failure that loses no result."""

import json

import pytest
from hydra import compose, initialize_config_dir

from recipes import CONFIG_DIR, tracking
from recipes import evaluate as recipe


def _task(metric: str, value: float, n: int, subset: bool) -> dict:
    return {metric: value, "score": value, "n_examples": n, "full_size": 99, "subset": subset}


def test_eval_summary_uses_the_table2_names_with_sample_size_and_protocol():
    ev = {"protocol": "authors", "chat": True, "backend": "hf", "status": "incomplete",
          "tasks_failed": {"humaneval": "RuntimeError: boom"},
          "tasks": {"mmlu": _task("accuracy", 40.0, 14042, False), "bbh": _task("exact_match", 30.0, 6511, False),
                    "gsm": _task("exact_match", 10.0, 200, True),
                    "tydiqa": {**_task("f1", 50.0, 100, True), "exact_match": 35.0}}}
    s = tracking.eval_summary(ev)
    assert (s["mmlu"], s["bbh"], s["gsm"], s["tydiqa_f1"], s["tydiqa_em"]) == (40.0, 30.0, 10.0, 50.0, 35.0)
    assert s["gsm/n"] == 200 and s["gsm/subset"] is True and s["mmlu/subset"] is False
    assert s["tydiqa_em/n"] == 100 and all(s[f"{k}/protocol"] == "authors" for k in ("mmlu", "tydiqa_em"))
    assert "humaneval_pass@1" not in s and s["eval/tasks_failed"] == ["humaneval"]  # never filled in
    assert s["avg"] == pytest.approx((40 + 30 + 10 + 50 + 35) / 5)
    assert s["avg/keys"] == "mmlu,bbh,gsm,tydiqa_f1,tydiqa_em" and s["avg/subset"] is True


def test_a_wandb_failure_keeps_the_evaluation(tmp_path, capsys):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=[
            "model=tiny", "tasks=[demo]", "demo.max_examples=2", "max_new_tokens=2", "device=cpu",
            f"output_dir={tmp_path}", "logger.wandb.mode=no-such-mode"])
    summary = recipe.run(cfg)
    ev = json.loads((tmp_path / "eval.json").read_text())
    assert ev["status"] == "complete" and "demo" in ev["scores"] and (tmp_path / "predictions" / "demo.jsonl").exists()
    assert "error" in ev["wandb"] and summary["wandb"] == ev["wandb"]
    assert "warning: W&B logging of the scores skipped" in capsys.readouterr().err
