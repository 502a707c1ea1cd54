"""recipes.sweep: the LR-sweep summary from result files, on hand-made run/eval files and on a real multirun."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recipes import sweep
from tests.conftest import REPO

FIX = REPO / "tests" / "fixtures" / "eval"


def _run(root: Path, name: str, *, lr: float, seed: int, loss: float, method: str = "lora", r: int = 2,
         steps: int = 100, scores: dict[str, float] | None = None, dataset: str = "gsm_ds",
         eval_tasks=("gsm",)) -> Path:
    """A finished run dir as train.py writes it (the fields the summary reads) + one eval.json per score set."""
    run_dir = root / name
    adapter = {"method": method, "r": r, "alpha": 16, "dropout": 0.05}
    config = {"dataset": {"name": dataset, "eval_tasks": list(eval_tasks)}, "optim": {"lr": lr}, "seed": seed,
              "trainer": {"max_steps": steps}}
    identity = {"adapter": adapter, "dataset": {"name": dataset}, "optim": {"lr": lr, "name": "adamw"},
                "trainer": {"max_steps": steps}, "seed": seed}
    (run_dir / "final").mkdir(parents=True)
    (run_dir / "final" / "run.json").write_text(json.dumps(
        {"identity": identity, "adapter": adapter, "method": method, "config": config, "final_loss": loss}))
    if scores is not None:
        ev = {"protocol": "authors", "model": {"kind": "adapter", "adapter_dir": str(run_dir / "final")},
              "tasks": {"gsm": {"exact_match": scores["gsm"], "n_examples": 1319, "subset": False}}}
        (run_dir / "eval" / "a").mkdir(parents=True)
        (run_dir / "eval" / "a" / "eval.json").write_text(json.dumps(ev))
    return run_dir


def test_best_lr_mean_std_over_seeds_and_final_loss(tmp_path):
    for lr, base in ((1e-4, 20.0), (2e-4, 30.0), (5e-4, 25.0)):
        for seed, bump in ((1, -1.0), (2, 1.0)):
            _run(tmp_path, f"lr{lr}_s{seed}", lr=lr, seed=seed, loss=1.0 + lr * 1000 + bump / 10,
                 scores={"gsm": base + bump})
    (group,) = sweep.summarize(sweep.collect(tmp_path))
    assert group.label == "lora_r2" and group.column == "gsm_em" and [row.lr for row in group.rows] == [1e-4, 2e-4, 5e-4]
    assert group.best is not None and group.best.lr == 2e-4
    mean, std = group.best.score
    assert mean == pytest.approx(30.0) and std == pytest.approx(2 ** 0.5)  # sample std of 29, 31
    assert group.best.loss[0] == pytest.approx(1.2) and group.best.seeds == [1, 2]


def test_groups_split_by_method_and_by_other_settings(tmp_path):
    _run(tmp_path, "a", lr=1e-4, seed=1, loss=1.0, scores={"gsm": 10.0})
    _run(tmp_path, "b", lr=1e-4, seed=1, loss=1.0, method="vera", r=256, scores={"gsm": 12.0})
    _run(tmp_path, "c", lr=1e-4, seed=1, loss=1.0, steps=50, scores={"gsm": 11.0})  # another max_steps
    groups = sweep.summarize(sweep.collect(tmp_path))
    labels = sorted(g.label for g in groups)
    assert len(groups) == 3 and labels[2] == "vera_r256"
    assert labels[0].startswith("lora_r2 [") and labels[1].startswith("lora_r2 [") and labels[0] != labels[1]


def test_an_unevaluated_lr_is_shown_but_never_best(tmp_path):
    _run(tmp_path, "a", lr=1e-4, seed=1, loss=0.5)  # lowest loss, but no score
    _run(tmp_path, "b", lr=2e-4, seed=1, loss=0.9, scores={"gsm": 5.0})
    (group,) = sweep.summarize(sweep.collect(tmp_path))
    assert group.best.lr == 2e-4 and group.rows[0].scores == [] and group.rows[0].losses == [0.5]
    assert "| gsm_ds | lora_r2 | 0.0001 | GSM EM — | 0/1 | 0.5000 |  |" in sweep.markdown([group], tmp_path)


def test_two_disagreeing_evaluations_of_one_checkpoint_are_an_error(tmp_path):
    run_dir = _run(tmp_path, "a", lr=1e-4, seed=1, loss=1.0, scores={"gsm": 10.0})
    ev = json.loads((run_dir / "eval" / "a" / "eval.json").read_text())
    ev["tasks"]["gsm"]["exact_match"] = 12.0
    (run_dir / "eval" / "b").mkdir()
    (run_dir / "eval" / "b" / "eval.json").write_text(json.dumps(ev))
    with pytest.raises(sweep.SweepError, match="2 evaluations score gsm_em differently.*--eval-glob"):
        sweep.collect(tmp_path)
    runs = sweep.collect(tmp_path, eval_glob="*/eval/b")
    assert runs[0].score == 12.0


def test_metric_by_short_name_and_bad_input(tmp_path, capsys):
    assert sweep.resolve_metric("gsm") == "gsm_em" and sweep.resolve_metric("humaneval_pass@1") == "humaneval_p1"
    with pytest.raises(sweep.SweepError, match="--metric nope: unknown"):
        sweep.resolve_metric("nope")
    assert sweep.main([str(tmp_path / "missing")]) == 2
    assert sweep.main([str(tmp_path)]) == 2
    assert "no finished training runs" in capsys.readouterr().err


def test_a_multirun_with_evaluations_lands_in_wandb_and_the_sweep_picks_the_best_lr(tmp_path):
    """The Done-when of the issue: a two-job multirun on the tiny model plus their evaluations with W&B offline;
    the offline run files (written by the real wandb) hold, per job, the config columns, the loss history and
    the benchmark summary keys; the sweep command prints the best LR and writes the PNG."""
    pytest.importorskip("wandb")
    from tests.wandb_offline import find_runs, read_run

    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PROLORA_NO_PROGRESS": "1"}
    root = tmp_path / "sweep"
    train = [sys.executable, "train.py", "-m", "model=tiny_pretrained", "dataset=demo", "method=prolora", "rank=4",
             "unshared=1", "sharing=3", "optim.lr=1e-2,3e-2", "trainer.max_steps=4", "trainer.batch_size=8",
             "trainer.micro_batch_size=8", "trainer.log_every=1", "trainer.save_every=0",
             "experiment_name=lrsweep", f"hydra.sweep.dir={root}"]
    proc = subprocess.run(train, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p.parent.parent for p in root.rglob("final/run.json"))
    assert len(runs) == 2
    every_task = ["tasks=[mmlu,bbh,gsm,tydiqa,humaneval,demo]", f"data_dir={FIX}", "max_new_tokens=4", "device=cpu",
                  "bbh.max_per_task=1", "gsm.max_examples=2", "gsm.precision=null", "mmlu.precision=null",
                  "tydiqa.dev_file=tydiqa-goldp-v1.1-dev-fixture.json",
                  "tydiqa.train_file=tydiqa-goldp-v1.1-train-fixture.json", "tydiqa.max_per_lang=1",
                  "humaneval.max_examples=1", "humaneval.n_samples=1", "demo.max_examples=8"]
    for run in runs:  # default output dir: <run>/eval/<time>/, so the sweep dir holds its scores
        proc = subprocess.run([sys.executable, "-m", "recipes.evaluate", f"checkpoint={run / 'final'}", *every_task],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    base = tmp_path / "vanilla"
    proc = subprocess.run([sys.executable, "-m", "recipes.evaluate", "model=tiny_pretrained", "tasks=[demo]",
                           "demo.max_examples=8", "device=cpu", "experiment_name=lrsweep", f"output_dir={base}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    logged = [read_run(d) for d in find_runs(root) + find_runs(base)]
    train_runs = {r.run["id"]: r for r in logged if r.run["job_type"] == "train"}
    eval_runs = [r for r in logged if r.run["job_type"] == "eval"]
    assert len(train_runs) == 2 and len(eval_runs) == 3
    assert {r.run["group"] for r in logged} == {"lrsweep"}
    columns = ("method", "r", "u", "m", "n", "dataset", "lr", "seed", "experiment")
    for run in runs:
        run_json = json.loads((run / "final" / "run.json").read_text())
        train_run = train_runs[run_json["wandb"]["id"]]
        expected = {"method": "prolora", "r": 4, "u": 1, "m": 3, "n": 3, "dataset": "demo",
                    "lr": run_json["config"]["optim"]["lr"], "seed": 1, "experiment": "lrsweep"}
        assert {k: train_run.config[k] for k in columns} == expected
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [row["_step"] for row in train_run.history] == [1, 2, 3, 4]
        assert [row["train/loss"] for row in train_run.history] == pytest.approx([m["loss"] for m in metrics])
        (ev_run,) = [r for r in eval_runs if r.config.get("train_run_id") == train_run.run["id"]]
        assert {k: ev_run.config[k] for k in columns} == expected
        ev = json.loads(next((run / "eval").rglob("eval.json")).read_text())
        assert ev["wandb"]["id"] == ev_run.run["id"]
        s = ev_run.summary
        for key in ("mmlu", "bbh", "gsm", "tydiqa_f1", "tydiqa_em", "humaneval_pass@1", "avg"):
            assert isinstance(s[key], float), key
        assert s["gsm"] == pytest.approx(ev["tasks"]["gsm"]["exact_match"]) and s["gsm/n"] == 2
        assert s["gsm/protocol"] == "authors" and s["gsm/subset"] is True and s["demo/n"] == 8
        assert s["avg"] == pytest.approx(sum(s[k] for k in ("mmlu", "bbh", "gsm", "tydiqa_f1", "tydiqa_em",
                                                              "humaneval_pass@1")) / 6)
        assert s["train/final_loss"] == pytest.approx(run_json["final_loss"])
    (vanilla,) = [r for r in eval_runs if r.config["method"] == "vanilla"]
    assert vanilla.config["experiment"] == "lrsweep" and vanilla.config["lr"] is None and "demo" in vanilla.summary

    proc = subprocess.run([sys.executable, "-m", "recipes.sweep", str(root)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    scores = {}
    for run in runs:
        lr = json.loads((run / "final" / "run.json").read_text())["config"]["optim"]["lr"]
        scores[lr] = json.loads(next((run / "eval").rglob("eval.json")).read_text())["tasks"]["demo"]["exact_match"]
    best = max(sorted(scores), key=lambda lr: scores[lr])  # the first of equals in LR order, as the summary
    assert f"prolora_r4_u1_m3_n3 on demo: best lr {best:g} (Demo EM {scores[best]:.2f}" in proc.stdout
    assert (root / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (root / "sweep.csv").exists()
