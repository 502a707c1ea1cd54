"""The evaluation recipe: config composition, checkpoint resolution, the CLI end to end."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from eval.checkpoint import resolve_checkpoint
from prolora.models import TINY_DIR
from recipes import CONFIG_DIR
from recipes import evaluate as recipe
from tests.conftest import REPO

FIX = REPO / "tests" / "fixtures" / "eval"


def _compose(overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="evaluate", overrides=overrides)


def test_defaults_are_the_paper_protocol():
    cfg = _compose([])
    assert list(cfg.tasks) == ["mmlu", "bbh", "gsm", "tydiqa", "humaneval"]
    assert cfg.model is None and cfg.checkpoint is None and cfg.backend == "hf" and cfg.chat is None
    assert cfg.protocol == "authors" and cfg.dtype is None
    assert (cfg.mmlu.ntrain, cfg.mmlu.precision, cfg.mmlu.answer_prefix, cfg.mmlu.reader) == (
        0, "8bit", "The answer is ", "pandas")
    assert cfg.bbh.max_per_task is None and cfg.gsm.max_examples is None and cfg.gsm.n_shot == 8
    assert cfg.gsm.precision == "8bit"
    assert cfg.tydiqa.max_per_lang is None and cfg.tydiqa.max_context_tokens == 512
    assert (cfg.tydiqa.exemplars, cfg.tydiqa.context_cut) == ("train", "authors")
    assert (cfg.humaneval.n_samples, cfg.humaneval.temperature, cfg.humaneval.top_p) == (20, 0.1, 0.95)
    assert list(cfg.humaneval.ks) == [1] and cfg.humaneval_p10.temperature == 0.8
    assert cfg.vllm.peft_subdir == "peft"


def test_protocol_presets():
    quick = _compose(["protocol=quick"])
    assert (quick.protocol, quick.gsm.max_examples, quick.bbh.max_per_task, quick.tydiqa.max_per_lang) == (
        "quick", 200, 40, 100)
    up = _compose(["protocol=upstream"])
    assert (up.protocol, up.mmlu.answer_prefix, up.tydiqa.exemplars, up.tydiqa.context_cut) == (
        "upstream", "The answer is:", "oneshot", "clean")
    assert up.gsm.max_examples is None


def test_model_group_reuses_model_configs():
    cfg = _compose(["model=llama2_7b", "gsm.max_examples=5"])
    assert cfg.model.path == "meta-llama/Llama-2-7b-hf" and cfg.model.quantize is True
    assert cfg.gsm.max_examples == 5
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        _compose(["gsm.no_such_option=1"])


def test_resolve_checkpoint(tmp_path):
    assert resolve_checkpoint(None, "some/model").kind == "base"
    with pytest.raises(ValueError, match="nothing to evaluate"):
        resolve_checkpoint(None, None)
    final = tmp_path / "run" / "final"
    (final / "peft").mkdir(parents=True)
    (final / "adapter_config.json").write_text("{}")
    (final / "peft" / "adapter_config.json").write_text('{"r": 8}')
    with pytest.raises(ValueError, match="names no base model"):
        resolve_checkpoint(str(final))
    (final / "run.json").write_text(json.dumps({"config": {"model": {"path": "meta-llama/Llama-2-7b-hf",
                                                                     "quantize": True}}}))
    spec = resolve_checkpoint(str(final.parent))  # a run dir resolves to its final/
    assert (spec.kind, spec.model_path, spec.adapter_dir, spec.peft_dir) == (
        "adapter", "meta-llama/Llama-2-7b-hf", str(final), str(final / "peft"))
    assert resolve_checkpoint(str(final), "some/model").model_path == "some/model"  # model= wins over run.json
    assert resolve_checkpoint(str(final), peft_subdir="lora").peft_dir is None
    merged = tmp_path / "merged"
    merged.mkdir()
    (merged / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="without tokenizer files"):
        resolve_checkpoint(str(merged))
    spec = resolve_checkpoint(str(merged), "some/model")
    assert (spec.kind, spec.model_path, spec.tokenizer_path) == ("merged", str(merged), "some/model")
    with pytest.raises(FileNotFoundError):
        resolve_checkpoint(str(tmp_path / "nowhere"))


def test_unknown_task_fails_before_loading(tmp_path):
    cfg = _compose(["model=tiny", "tasks=[gsm,squad]", f"output_dir={tmp_path}"])
    with pytest.raises(ValueError, match="unknown \\['squad'\\]"):
        recipe.run(cfg)


def test_cli_writes_eval_json_and_predictions(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "recipes.evaluate", "model=tiny", "tasks=[bbh,gsm,demo]", f"data_dir={FIX}",
           "chat=false", "max_new_tokens=4", "bbh.max_per_task=1", "gsm.max_examples=2", "demo.max_examples=2",
           "device=cpu", f"output_dir={out}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "PROLORA_NO_PROGRESS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "eval.json").read_text())
    assert set(data["scores"]) == {"bbh", "gsm", "demo"}
    assert data["chat"] is False and data["backend"] == "hf" and data["precision"] == {
        "bbh": "nf4", "gsm": "8bit", "demo": "nf4"}  # the authors' GSM run is 8-bit
    assert data["protocol"] == "authors" and data["status"] == "complete" and data["dtype"] == "float32"
    assert data["tasks"]["gsm"]["subset"] is True and data["tasks"]["demo"]["subset"] is True
    assert data["config"]["model"]["path"] == str(TINY_DIR) and data["config"]["gsm"]["max_examples"] == 2
    assert "git_commit" in data and data["wall_time_s"] > 0
    assert data["tasks"]["bbh"]["n_examples"] == 2 and "timings_s" in data["tasks"]["gsm"]
    gsm = [json.loads(line) for line in (out / "predictions" / "gsm.jsonl").read_text().splitlines()]
    assert len(gsm) == 2 and gsm[0]["prompt"].endswith("\nAnswer:") and gsm[0]["target"]


def test_a_missing_benchmark_file_stops_before_any_model_is_loaded(tmp_path):
    """tasks=[gsm,bbh,tydiqa] with no TyDi QA dev file: one line naming it, before loading the model (a run
    scored gsm and bbh first and then lost them)."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "recipes.evaluate", "model=tiny", "tasks=[gsm,bbh,tydiqa]",
                           f"data_dir={FIX}", f"output_dir={out}"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and lines[-1].startswith("error: tydiqa: "), proc.stderr[-2000:]
    assert "tydiqa-goldp-v1.1-dev.json not found" in lines[-1]
    assert "evaluating" not in proc.stdout and not (out / "eval.json").exists()


def test_a_damaged_benchmark_file_is_named(tmp_path):
    import shutil

    from eval.tasks import get_task
    from eval.tasks.base import BadBenchmarkFile

    data = tmp_path / "data"
    shutil.copytree(FIX, data)
    gsm = data / "gsm" / "test.jsonl"
    gsm.write_text(gsm.read_text()[:-40])  # cut mid-row
    with pytest.raises(BadBenchmarkFile, match=f"gsm: {gsm}:\\d+ does not parse"):
        get_task("gsm").load(data)
    bbh = data / "bbh" / "bbh" / "boolean_expressions.json"
    bbh.write_text(bbh.read_text()[:50])
    with pytest.raises(BadBenchmarkFile, match=f"bbh: {bbh} is not valid JSON"):
        get_task("bbh").load(data)
    mmlu = data / "mmlu" / "test" / "astronomy_test.csv"
    mmlu.write_text("")
    with pytest.raises(BadBenchmarkFile, match=f"mmlu: {mmlu} does not parse as CSV"):
        get_task("mmlu").load(data)


# ----------------------------------------------------------------------------- K checkpoints in one pass

TOGETHER = ["tasks=[mmlu,gsm,demo]", f"data_dir={FIX}", "max_new_tokens=6", "mmlu.precision=null",
            "gsm.precision=null", "gsm.max_examples=3", "demo.max_examples=4", "device=cpu", "logger=none"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three trained-looking runs (<run>/final with run.json) of three methods on the tiny model."""
    import torch

    import prolora

    finals = []
    for i, cfg in enumerate([prolora.PRoLoRAConfig(r=4, u=1, m=2), prolora.LoRAConfig(r=2),
                             prolora.TiedLoRAConfig(r=8)]):
        model = prolora.attach(prolora.models.build_tiny_llama(0), cfg)
        gen = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for _, p in model.named_parameters():
                if p.requires_grad:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        final = tmp_path_factory.mktemp(f"run{i}") / "final"
        prolora.save_adapter(model, final)
        (final / "run.json").write_text(json.dumps({"config": {"model": {
            "name": "tiny", "path": str(TINY_DIR), "quantize": True, "compute_dtype": "float32"}}}))
        finals.append(final)
    return finals


def _records(out: Path, task: str) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions" / f"{task}.jsonl").read_text().splitlines()]


def test_checkpoints_scored_in_one_pass_equal_each_scored_alone(runs, tmp_path):
    outs = [tmp_path / f"together{i}" for i in range(len(runs))]
    summaries = recipe.run_together(_compose(TOGETHER + [f"checkpoints=[{','.join(map(str, runs))}]",
                                                         f"output_dirs=[{','.join(map(str, outs))}]"]))
    assert list(summaries) == [str(r) for r in runs]
    for final, out in zip(runs, outs):
        alone = recipe.run(_compose(TOGETHER + [f"checkpoint={final}", f"output_dir={tmp_path / 'alone'}"]))
        together = json.loads((out / "eval.json").read_text())
        assert together["scores"] == alone["scores"] and together["status"] == "complete"
        assert together["model"] == alone["model"] and together["model"]["adapter_dir"] == str(final)
        assert together["config"]["checkpoint"] == str(final) and together["config"]["checkpoints"] is None
        assert together["scored_together"]["checkpoints"] == [str(r) for r in runs]
        for task in ("mmlu", "gsm", "demo"):
            for a, b in zip(_records(out, task), _records(tmp_path / "alone", task)):
                assert a.get("outputs") == b.get("outputs") and a.get("prediction") == b.get("prediction")
    answers = {tuple(r["outputs"][0] for r in _records(out, "gsm")) for out in outs}
    assert len(answers) == len(runs)  # three different adapters answered: rows were not crossed


def test_checkpoints_in_one_pass_default_to_where_each_alone_writes(runs, tmp_path):
    from recipes.config_store import eval_home

    cfg = _compose(TOGETHER[:-1] + ["logger=none", "tasks=[demo]", f"checkpoints=[{runs[0]},{runs[1]}]"])
    dirs = recipe.together_output_dirs(cfg, [None, None])
    assert [d.parent for d in dirs] == [Path(eval_home(str(runs[0]))), Path(eval_home(str(runs[1])))]
    assert dirs[0].name == dirs[1].name  # one time stamp for the pass


def test_checkpoints_in_one_pass_refuse_what_cannot_share_a_pass(runs, tmp_path):
    both = f"checkpoints=[{runs[0]},{runs[1]}]"
    cases = {"merge=true": "merge=false", "backend=vllm": "use backend=hf", f"checkpoint={runs[0]}": "not both",
             f"output_dir={tmp_path}": "output_dirs", f"output_dirs=[{tmp_path}]": "one per checkpoint"}
    for override, message in cases.items():
        with pytest.raises(ValueError, match=message):
            recipe.run_together(_compose(TOGETHER + [both, override]))
    with pytest.raises(ValueError, match="names one twice"):
        recipe.run_together(_compose(TOGETHER + [f"checkpoints=[{runs[0]},{runs[0]}]"]))
    other = json.loads((runs[2] / "run.json").read_text())
    other["config"]["model"]["quantize"] = False
    (runs[2] / "run.json").write_text(json.dumps(other))
    try:
        with pytest.raises(ValueError, match="quantize=False.*of one base model"):
            recipe.run_together(_compose(TOGETHER + [f"checkpoints=[{runs[0]},{runs[2]}]",
                                                     f"output_dirs=[{tmp_path / 'a'},{tmp_path / 'b'}]"]))
    finally:
        other["config"]["model"]["quantize"] = True
        (runs[2] / "run.json").write_text(json.dumps(other))
