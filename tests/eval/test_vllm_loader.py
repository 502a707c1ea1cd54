"""vLLM's own code on what the harness hands it, on a CPU (the vLLM profile, ``make test-vllm``; skipped elsewhere).

* Every method's PEFT export (each registered method and preset, at its default rank and at r = 2, which pads
  to vLLM's rank 8) goes through vLLM's worker (``WorkerLoRAManager._load_adapter``: the expected modules and
  the weight-name mapper of vLLM's LlamaForCausalLM, ``PEFTHelper`` + ``validate_legal`` at the backend's
  ``max_lora_rank``, ``LoRAModel.from_local_checkpoint``), and vLLM's ΔW = B @ A · scaling of every module
  equals the harness's ``layer.delta_weight()`` in fp32.
* The merged model directory (``merge=true``) is read by vLLM's ``ModelConfig`` and loaded by its
  ``DefaultModelLoader`` into vLLM's LlamaForCausalLM, whose stacked qkv/gate-up weights hold the merged ones.
* The backend's ``LLM(...)`` kwargs build vLLM's ``EngineArgs`` and configs, its sampling settings build
  ``SamplingParams``, and MMLU's ``prompt_logprobs`` parsing reads vLLM's own ``Logprob`` objects.

vLLM ships no CPU build here (no ``vllm._C``, platform "unspecified"), so two platform hooks are patched for
these tests and nothing else: pinned memory is off (it needs a driver) and the attention backend class is named
(vLLM's CPU one; the model is built and loaded, never run).
"""

from __future__ import annotations

import dataclasses
import socket
from types import SimpleNamespace

import pytest
import torch

vllm = pytest.importorskip("vllm", reason="vLLM is not installed: the vLLM profile is `make test-vllm` (.venv-vllm)")

from vllm.config import DeviceConfig, VllmConfig, set_current_vllm_config  # noqa: E402
from vllm.config.lora import LoRAConfig  # noqa: E402
from vllm.engine.arg_utils import EngineArgs  # noqa: E402
from vllm.lora.peft_helper import PEFTHelper  # noqa: E402
from vllm.lora.request import LoRARequest  # noqa: E402
from vllm.lora.utils import get_supported_lora_modules, process_packed_modules_mapping  # noqa: E402
from vllm.lora.worker_manager import WorkerLoRAManager  # noqa: E402
from vllm.model_executor.model_loader import get_model  # noqa: E402

import prolora  # noqa: E402
from eval.backends.vllm import SCORE_SAMPLING, last_token_logprob, llm_kwargs, sampling_kwargs  # noqa: E402
from prolora.config import ConfigError  # noqa: E402
from prolora.export import VLLM_RANKS, vllm_rank  # noqa: E402
from prolora.models import TINY_DIR, build_tiny_llama  # noqa: E402

# every registered method and preset: methods added later are covered without touching this file.  DoRA's export
# is PEFT's DoRA format, which vLLM serves only merged (its loader refuses ``use_dora``): tested on its own below.
ALL_NAMES = [n for m in prolora.METHODS.values() for n in (m.name, *m.presets)]
UNMERGED_ONLY = {"dora"}
NAMES = [n for n in ALL_NAMES if n not in UNMERGED_ONLY]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def engine_config(kwargs: dict) -> VllmConfig:
    """The VllmConfig vLLM builds from ``LLM(**kwargs)``, but for the device (vLLM has no CPU platform here):
    EngineArgs, its model and load configs, and its LoRA config as ``create_engine_config`` makes it."""
    args = EngineArgs(**kwargs)
    lora = (LoRAConfig(max_lora_rank=args.max_lora_rank, max_loras=args.max_loras, lora_dtype=args.lora_dtype)
            if args.enable_lora else None)
    return VllmConfig(model_config=args.create_model_config(), load_config=args.create_load_config(),
                      lora_config=lora, device_config=DeviceConfig(device="cpu"))


@pytest.fixture(scope="module")
def cpu_vllm():
    """vLLM's process state for one rank on the CPU: gloo on loopback, no pinned memory, a named attention class."""
    from vllm.distributed import (
        destroy_distributed_environment,
        destroy_model_parallel,
        init_distributed_environment,
        initialize_model_parallel,
    )
    from vllm.platforms import current_platform
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    cpu_attention = AttentionBackendEnum.CPU_ATTN.get_path()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("vllm.lora.lora_model.PIN_MEMORY", False)
        mp.setattr(type(current_platform), "get_attn_backend_cls", classmethod(lambda cls, *a, **k: cpu_attention))
        with set_current_vllm_config(engine_config(llm_kwargs(str(TINY_DIR), dtype="float32"))):
            init_distributed_environment(world_size=1, rank=0, local_rank=0, backend="gloo",
                                         distributed_init_method=f"tcp://127.0.0.1:{_free_port()}")
            initialize_model_parallel(1, 1)
        yield
        destroy_model_parallel()
        destroy_distributed_environment()


def load_vllm_model(config: VllmConfig) -> torch.nn.Module:
    """vLLM's model for ``config``, built and loaded by its own loader (``get_model``), on the CPU."""
    with set_current_vllm_config(config):
        return get_model(vllm_config=config)


@pytest.fixture(scope="module")
def vllm_tiny(cpu_vllm):
    return load_vllm_model(engine_config(llm_kwargs(str(TINY_DIR), dtype="float32")))


def lookup_names(model: torch.nn.Module) -> set[str]:
    """The module names vLLM's LoRA manager looks an adapter's weights up by: every LoRA-capable module of the
    model, a packed one (qkv_proj, gate_up_proj) by the names of its parts. A weight named otherwise is never used."""
    supported = set(get_supported_lora_modules(model))
    packed = process_packed_modules_mapping(model)
    names = set()
    for name, _ in model.named_modules():
        last = name.rsplit(".", 1)[-1]
        if last in supported:
            prefix = name.rsplit(".", 1)[0] + "." if "." in name else ""
            names.update(prefix + part for part in packed.get(last, [last]))
    return names


def worker_load(model: torch.nn.Module, config: VllmConfig, peft_dir) -> object:
    """vLLM's worker loading an adapter for ``model``: ``WorkerLoRAManager._load_adapter`` with the two facts its
    LoRA model manager computes from the model (supported modules, packed-module mapping) by vLLM's functions."""
    worker = WorkerLoRAManager(config, torch.device("cpu"), type(model).embedding_modules)
    worker._adapter_manager = SimpleNamespace(
        supported_lora_modules=get_supported_lora_modules(model), packed_modules_mapping=process_packed_modules_mapping(model),
        model=model, moe_ep_load_spec=None)
    return worker._load_adapter(LoRARequest("adapter", 1, str(peft_dir)))


# at r = 2, the first of these that the config accepts (the PRoLoRA presets' defaults, u 4-7 and m 7-9, exceed it)
R2_FITS = ({}, {"u": 1}, {"u": 0, "m": 2}, {"u": 1, "m": 1})


# the defaults the tiny model cannot take: MoS r8's public ranks are drawn from (e - p)·L = 2 vectors' shards on
# 2 layers; VB-LoRA's vectors of 256 do not divide its widths of 32-192
TINY_DEFAULTS = {"mos": {"r": 3, "pool_rank": 2, "private_rank": 1, "shards": 2}, "vblora": {"vector_length": 16}}


def method_config(name: str, r: int | None):
    """``name`` at its defaults, or at rank ``r`` with the first of ``R2_FITS`` the config accepts."""
    if r is None:
        return prolora.make_config(name, **TINY_DEFAULTS.get(name, {}))
    fields = {f.name for f in dataclasses.fields(prolora.make_config(name))}
    for fit in (f for f in R2_FITS if set(f) <= fields):
        try:
            return prolora.make_config(name, **{**TINY_DEFAULTS.get(name, {}), **fit, "r": r})
        except ConfigError as e:
            error = e
    raise error


def adapted_tiny(config, seed: int = 1):
    """The tiny Llama (fp32) with ``config`` attached and random nonzero values in every trainable tensor."""
    model = prolora.attach(build_tiny_llama(0), config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


# ------------------------------------------------------------------------------------------ adapter export


@pytest.mark.parametrize("r", [None, 2], ids=["default_rank", "r2"])
@pytest.mark.parametrize("name", NAMES)
def test_vllm_worker_loads_every_methods_export_with_the_same_delta_w(vllm_tiny, tmp_path, name, r):
    config = method_config(name, r)
    model = adapted_tiny(config)
    peft_dir = prolora.export_lora(model, tmp_path / "peft")
    kwargs = llm_kwargs(str(TINY_DIR), lora_dir=str(peft_dir), dtype="float32")
    assert kwargs["max_lora_rank"] == vllm_rank(config.r)
    lora = worker_load(vllm_tiny, engine_config(kwargs), peft_dir)

    layers = prolora.adapter_layers(model)
    assert lora.rank == vllm_rank(config.r)  # r = 2: zero-padded to 8
    assert set(lora.loras) == set(layers)
    assert set(lora.loras) <= lookup_names(vllm_tiny), "weights vLLM would load but never apply"
    for path, layer in layers.items():
        w = lora.loras[path]
        torch.testing.assert_close(w.lora_b @ w.lora_a * w.scaling, layer.delta_weight().detach(),
                                   msg=lambda m, path=path: f"{path}: {m}")

    smaller = [k for k in VLLM_RANKS if k < lora.rank]
    if smaller:  # validate_legal refuses the export at a max_lora_rank below its rank
        with pytest.raises(ValueError, match="greater than max_lora_rank"):
            PEFTHelper.from_local_dir(str(peft_dir), None).validate_legal(LoRAConfig(max_lora_rank=smaller[-1]))


def test_vllm_refuses_a_dora_export_and_the_harness_says_so_first(vllm_tiny, tmp_path):
    """vLLM 0.30's loader refuses ``use_dora``; recipes.evaluate names that before any work (merge=true serves it)."""
    from recipes.evaluate import refuse_unmerged_dora

    model = adapted_tiny(prolora.make_config("dora"))
    peft_dir = prolora.export_lora(model, tmp_path / "peft")
    kwargs = llm_kwargs(str(TINY_DIR), lora_dir=str(peft_dir), dtype="float32")
    with pytest.raises(ValueError, match="DoRA"):
        worker_load(vllm_tiny, engine_config(kwargs), peft_dir)
    with pytest.raises(ValueError, match="merge=true"):
        refuse_unmerged_dora(str(peft_dir))
    refuse_unmerged_dora(str(prolora.export_lora(adapted_tiny(prolora.make_config("lora")), tmp_path / "lora")))


def test_vllm_refuses_an_export_named_for_another_model(vllm_tiny, tmp_path):
    """The loader test can fail: a module vLLM's Llama does not have is refused by the worker."""
    from safetensors.torch import load_file, save_file

    peft_dir = prolora.export_lora(adapted_tiny(prolora.make_config("lora", r=8)), tmp_path / "peft")
    weights = peft_dir / "adapter_model.safetensors"
    renamed = {k.replace(".q_proj.", ".query."): v for k, v in load_file(weights).items()}
    save_file(renamed, str(weights))
    kwargs = llm_kwargs(str(TINY_DIR), lora_dir=str(peft_dir), dtype="float32")
    with pytest.raises(ValueError, match="expected target modules"):
        worker_load(vllm_tiny, engine_config(kwargs), peft_dir)


# ------------------------------------------------------------------------------------------ merged model


@pytest.mark.parametrize("method", ["prolora", "dora"])
def test_merged_model_directory_loads_into_vllms_llama(cpu_vllm, vllm_tiny, tmp_path, method):
    """merge=true as recipes.evaluate does it for vLLM: the compact adapter merged into the NF4 base
    (eval.checkpoint.merged_model), saved with the tokenizer; vLLM's loader reads it into its own layout."""
    import warnings

    from eval.checkpoint import merged_model
    from prolora.models import load_base_model, load_tokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = load_base_model(str(TINY_DIR), quantize=True, device="cpu")
    adapted = prolora.attach(base, prolora.make_config(method))
    with torch.no_grad():
        for p in adapted.parameters():
            if p.requires_grad:
                p.add_(0.1)  # ΔW ≠ 0
    ckpt = prolora.save_adapter(adapted, tmp_path / "ckpt")
    merged = merged_model(str(TINY_DIR), str(ckpt), merge_from="nf4", dtype=torch.float32, device="cpu")
    merged_dir = tmp_path / "merged"
    merged.save_pretrained(merged_dir)
    load_tokenizer(str(TINY_DIR)).save_pretrained(merged_dir)

    config = engine_config(llm_kwargs(str(merged_dir), dtype="float32"))
    assert config.model_config.architectures == ["LlamaForCausalLM"]
    assert config.model_config.quantization is None  # no leftover bitsandbytes config from the NF4 base
    assert config.model_config.dtype == torch.float32 and config.model_config.max_model_len == 512
    model = load_vllm_model(config)
    got = dict(model.named_parameters())
    want = merged.state_dict()
    for i in range(merged.config.num_hidden_layers):
        pre = f"model.layers.{i}."
        fused = {"self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                 "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
                 "self_attn.o_proj": ("self_attn.o_proj",), "mlp.down_proj": ("mlp.down_proj",)}
        for mine, parts in fused.items():
            expect = torch.cat([want[f"{pre}{p}.weight"] for p in parts])
            torch.testing.assert_close(got[f"{pre}{mine}.weight"], expect, rtol=0, atol=0)
        # the merged weights are not the base's: vLLM serves W + ΔW
        assert not torch.equal(got[f"{pre}self_attn.qkv_proj.weight"],
                               dict(vllm_tiny.named_parameters())[f"{pre}self_attn.qkv_proj.weight"])
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"):
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0)


# ------------------------------------------------------------------------------------------ engine settings


@pytest.mark.parametrize("extra", [{}, {"max_model_len": 256, "max_lora_rank": 16}, {"quantization": "bitsandbytes"}],
                         ids=["defaults", "len_rank", "bitsandbytes"])
def test_backend_llm_kwargs_are_vllm_engine_args(tmp_path, extra):
    peft_dir = prolora.export_lora(adapted_tiny(prolora.make_config("lora", r=2)), tmp_path / "peft")
    kwargs = llm_kwargs(str(TINY_DIR), lora_dir=str(peft_dir), dtype="float32", seed=3, **extra)
    args = EngineArgs(**kwargs)  # an unknown or misspelled key is a TypeError here, as in vllm.LLM
    assert (args.model, args.tokenizer, args.enable_lora, args.max_loras) == (str(TINY_DIR), str(TINY_DIR), True, 1)
    assert args.max_lora_rank == extra.get("max_lora_rank", 8) and args.seed == 3
    assert args.quantization == extra.get("quantization")
    if "quantization" not in extra:  # (vLLM checks bitsandbytes against the platform, which has none here)
        model_config = args.create_model_config()
        assert model_config.max_model_len == extra.get("max_model_len", 512)
    with pytest.raises(TypeError):
        EngineArgs(**{**kwargs, "max_lora_ranks": 8})


def test_backend_sampling_params_are_vllm_sampling_params():
    from vllm import SamplingParams

    greedy = SamplingParams(**sampling_kwargs(max_new_tokens=7, temperature=0.0, top_p=0.9, stop=["\n\n"], seed=5))
    assert (greedy.max_tokens, greedy.temperature, greedy.top_p, greedy.seed, greedy.stop, greedy.n) == \
        (7, 0.0, 1.0, None, ["\n\n"], 1)
    sampled = SamplingParams(**sampling_kwargs(max_new_tokens=7, temperature=0.8, top_p=0.95, n=4, seed=5))
    assert (sampled.temperature, sampled.top_p, sampled.seed, sampled.n, sampled.stop) == (0.8, 0.95, 5, 4, [])
    score = SamplingParams(**SCORE_SAMPLING)
    assert (score.max_tokens, score.prompt_logprobs, score.temperature) == (1, 0, 0.0)


@pytest.mark.parametrize("flat", [False, True], ids=["dict_logprobs", "flat_logprobs"])
def test_mmlu_logprobs_read_from_vllms_prompt_logprobs(flat):
    """vLLM's own path from log-probabilities to ``RequestOutput.prompt_logprobs`` (its sampler's gather, its
    LogprobsProcessor, with SCORE_SAMPLING's settings), fed the tiny model's logits: the backend reads back the
    hf backend's numbers."""
    from vllm import SamplingParams
    from vllm.v1.engine.logprobs import LogprobsProcessor
    from vllm.v1.sample.sampler import Sampler

    from eval.backends.hf import HFBackend
    from prolora.models import load_tokenizer

    model = build_tiny_llama(0).eval()
    hf = HFBackend(model, load_tokenizer(str(TINY_DIR)))
    prompts, cands = ["The answer is", "Question: 2 + 2 = ?\nAnswer:"], [hf.encode(" A")[-1], hf.encode(" B")[-1], 7]
    got = []
    for prompt in prompts:
        row = []
        for cand in cands:
            ids = hf.encode(prompt) + [cand]
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0, :-1].float()
            with torch.compiler.set_stance("force_eager"):  # vLLM compiles its rank count; eager is enough here
                tensors = Sampler.gather_logprobs(Sampler.compute_logprobs(logits),
                                                  SCORE_SAMPLING["prompt_logprobs"], torch.tensor(ids[1:]))
            request = SimpleNamespace(sampling_params=SamplingParams(**SCORE_SAMPLING, flat_logprobs=flat))
            processor = LogprobsProcessor.from_new_request(None, request)
            processor._update_prompt_logprobs(tensors)
            prompt_logprobs = processor.pop_prompt_logprobs()
            assert len(prompt_logprobs) == len(ids) and not prompt_logprobs[0]  # none for the first token
            row.append(last_token_logprob(ids, prompt_logprobs))
        got.append(row)
    want = hf.next_token_logprobs(prompts, cands)
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=0, atol=1e-5)
