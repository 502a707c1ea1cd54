"""A scored PRoLoRA checkpoint (compact adapter on the tiny model) and its merged model score the same."""

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import prolora
from prolora import integrity
from prolora.models import TINY_DIR
from recipes import CONFIG_DIR
from recipes import evaluate as recipe
from tests.conftest import REPO

FIX = REPO / "tests" / "fixtures" / "eval"
COMMON = ["tasks=[mmlu,bbh,gsm,tydiqa,demo]", f"data_dir={FIX}", "max_new_tokens=8", "mmlu.precision=null",
          "gsm.precision=null",
          "device=cpu", "tydiqa.dev_file=tydiqa-goldp-v1.1-dev-fixture.json", "bbh.max_per_task=2",
          "gsm.max_examples=3", "demo.max_examples=6"]


def _run(overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=COMMON + overrides)
    return recipe.run(cfg)


def _predictions(out, task):
    return [json.loads(line) for line in (out / "predictions" / f"{task}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from prolora.models import load_base_model

    tmp = tmp_path_factory.mktemp("ckpt")
    model = load_base_model(str(TINY_DIR), quantize=False, device="cpu")
    model = prolora.attach(model, prolora.PRoLoRAConfig(r=4, u=1, m=2))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.requires_grad:  # B starts at zero: randomize every trainable tensor so ΔW matters
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    final = tmp / "run" / "final"
    prolora.save_adapter(model, final)
    prolora.export_lora(model, final / "peft")
    (final / "run.json").write_text(json.dumps({"config": {"model": {
        "name": "tiny", "path": str(TINY_DIR), "quantize": False, "compute_dtype": "float32"}}}))
    integrity.write_manifest(final)  # as training does
    merged = tmp / "merged"
    prolora.merge(model).save_pretrained(merged)
    return final, merged


def test_adapter_and_merged_model_score_the_same(checkpoints, tmp_path):
    final, merged = checkpoints
    a = _run([f"checkpoint={final.parent}", f"output_dir={tmp_path / 'adapter'}"])  # run dir → final/
    m = _run([f"checkpoint={merged}", "model=tiny", "precision=full", "chat=true", f"output_dir={tmp_path / 'merged'}"])
    _run(["model=tiny", "precision=full", "chat=true", f"output_dir={tmp_path / 'base'}"])
    assert a["model"]["kind"] == "adapter" and a["model"]["model_path"] == str(TINY_DIR) and a["chat"] is True
    assert a["precision"]["gsm"] == "full" and m["model"]["kind"] == "merged"
    assert a["scores"] == m["scores"]
    differs = False
    for task in ("bbh", "gsm", "tydiqa", "demo"):
        pa, pm, pb = (_predictions(tmp_path / d, task) for d in ("adapter", "merged", "base"))
        assert [r["outputs"] for r in pa] == [r["outputs"] for r in pm]
        differs |= [r["outputs"] for r in pa] != [r["outputs"] for r in pb]
    for ra, rm in zip(_predictions(tmp_path / "adapter", "mmlu"), _predictions(tmp_path / "merged", "mmlu")):
        assert ra["logprobs"] == pytest.approx(rm["logprobs"], abs=1e-3)
    assert differs, "the randomized adapter should change some greedy output"


def test_merge_option_matches_adapter(checkpoints, tmp_path):
    final, _ = checkpoints
    a = _run([f"checkpoint={final}", "tasks=[gsm,demo]", f"output_dir={tmp_path / 'a'}"])
    b = _run([f"checkpoint={final}", "tasks=[gsm,demo]", "merge=true", f"output_dir={tmp_path / 'b'}"])
    assert a["scores"] == b["scores"]
    for task in ("gsm", "demo"):
        assert ([r["outputs"] for r in _predictions(tmp_path / "a", task)]
                == [r["outputs"] for r in _predictions(tmp_path / "b", task)])


def test_merge_as_the_authors_did_from_an_nf4_base(tmp_path):
    """merge=True: the adapter goes onto the NF4 base it was trained on, is merged (NF4 dequantized), and the
    merged model is served in the asked precision; full precision scores as the unmerged adapter on NF4."""
    from eval.backends.hf import HFBackend
    from prolora.models import load_base_model

    model = prolora.attach(load_base_model(str(TINY_DIR), device="cpu"), prolora.PRoLoRAConfig(r=4, u=1, m=2))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    adapter = prolora.save_adapter(model, tmp_path / "adapter")
    prompts = ["<|user|>\nWhat is 12 + 30?\n<|assistant|>\n", "<|user|>\nReverse: red cat sun\n<|assistant|>\n"]
    common = dict(adapter_dir=str(adapter), compute_dtype="float32", device="cpu", batch_size=2)
    unmerged = HFBackend.load(str(TINY_DIR), precision="nf4", **common)
    merged = HFBackend.load(str(TINY_DIR), precision="full", merge=True, merge_from="nf4", **common)
    eight = HFBackend.load(str(TINY_DIR), precision="8bit", merge=True, merge_from="nf4", **common)
    assert not any(type(m).__name__ == "Linear4bit" for m in merged.model.modules())
    assert any(type(m).__name__ == "Linear8bitLt" for m in eight.model.modules())
    assert merged.generate(prompts, max_new_tokens=8) == unmerged.generate(prompts, max_new_tokens=8)
    lp_u = torch.tensor(unmerged.next_token_logprobs(prompts, [5, 6, 7, 8]))
    lp_m = torch.tensor(merged.next_token_logprobs(prompts, [5, 6, 7, 8]))
    torch.testing.assert_close(lp_m, lp_u, atol=1e-3, rtol=0)  # dequantize-then-merge vs on-the-fly NF4
    assert len(eight.generate(prompts, max_new_tokens=4)) == 2


def test_vllm_merge_serves_the_merged_model_or_says_why(checkpoints, tmp_path):
    """backend=vllm merge=true: the adapter is merged into its NF4 base and saved for the engine (a plain model
    directory, not the LoRA); without vllm installed the run stops before any work with one line."""
    import subprocess
    import sys

    from omegaconf import OmegaConf

    from eval.checkpoint import merged_model, resolve_checkpoint
    from prolora.models import load_base_model

    final, _ = checkpoints
    cfg = OmegaConf.create({"dtype": "float32", "device": "cpu", "merge": True})
    spec = resolve_checkpoint(str(final))
    pool = recipe.BackendPool(cfg, spec, {"quantize": True, "double_quant": True}, "full")
    served = pool._merged_dir()
    try:
        assert (Path(served) / "config.json").is_file() and (Path(served) / "tokenizer.json").is_file()
        ids = torch.tensor([[1, 5, 9, 13, 17]])
        a = load_base_model(served, quantize=False, device="cpu", compute_dtype="float32")
        b = merged_model(spec.model_path, spec.adapter_dir, merge_from="nf4", dtype="float32", device="cpu")
        with torch.no_grad():
            torch.testing.assert_close(a(ids).logits, b(ids).logits)
    finally:
        pool.close()
    assert not Path(served).exists()
    try:
        import vllm  # noqa: F401
    except ImportError:
        out = subprocess.run([sys.executable, "-m", "recipes.evaluate", f"checkpoint={final}", "backend=vllm",
                              "merge=true", "tasks=[demo]", f"output_dir={tmp_path}"], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and out.stderr.strip().splitlines() == [
            "error: backend=vllm: the vllm package is not installed (it needs CUDA: pip install -e '.[vllm]'); "
            "use backend=hf"]
