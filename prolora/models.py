"""Model builders: the embedded tiny Llama (tests, demo) and LLaMA-2-shaped models on the meta device.

The tiny model has real Llama module names (``q_proj`` … ``down_proj``) and deliberately awkward
shapes: hidden 64 and intermediate 192 are not divisible by the sharing rate 7 used in the paper's
headline setting (so PRoLoRA's truncated last chunk is exercised), and grouped-query attention makes
``k_proj``/``v_proj`` 32 wide (like LLaMA2-70B's 1024-wide k/v).  Every linear width is a multiple of 32
and every input width a multiple of 64, so bitsandbytes' packed AVX512-BF16 CPU path could run each
layer (:mod:`prolora.bnb_cpu`; ``tests/prolora/test_bnb_cpu.py`` fails on any CPU if this breaks).  Its tokenizer is a byte-level BPE the project ships (see
``scripts/build_tiny_assets.py``).

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
HUB_NAMES = {"llama2_7b": "meta-llama/Llama-2-7b-hf", "llama2_13b": "meta-llama/Llama-2-13b-hf",
             "llama2_70b": "meta-llama/Llama-2-70b-hf"}

TINY_CONFIG = dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5,
                   hidden_act="silu", tie_word_embeddings=False)


def load_tiny_tokenizer():
    """The shipped byte-level BPE tokenizer of the tiny model (BOS ``<s>`` added, EOS ``</s>``)."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(str(TINY_DIR))
    tok.padding_side = "right"
    return tok


def tiny_llama_config(**overrides):
    from transformers import LlamaConfig

    tok = load_tiny_tokenizer()
    fields = dict(TINY_CONFIG, vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    fields.update(overrides)
    return LlamaConfig(**fields)


def build_tiny_llama(seed: int = 0, dtype: torch.dtype = torch.float32, **overrides):
    """A randomly initialised tiny ``LlamaForCausalLM`` (deterministic for a given seed)."""
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


def load_tokenizer(path: str):
    """Tokenizer of ``path`` (``tiny`` = the shipped one). LLaMA-2's has no pad token: use EOS's id."""
    if path == "tiny":
        return load_tiny_tokenizer()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_base_model(path: str, *, quantize: bool = True, load_in_8bit: bool = False, double_quant: bool = True,
                    compute_dtype: str | torch.dtype = "auto", device: str = "auto", tiny_seed: int = 0,
                    cpu_packed_4bit: bool = False):
    """Load a causal LM the way QLoRA does: 4-bit NF4 with double quantisation (bitsandbytes), or 8-bit
    (MMLU evaluation), or full precision (``quantize=False``).

    ``path`` is a hub name or a local directory; ``"tiny"`` builds the embedded tiny Llama, writes it to a
    temporary directory and loads it back through the same ``from_pretrained`` path, so tests exercise
    the real loading code (bitsandbytes NF4 layers run on the CPU too).  A 4-bit model on the CPU runs
    every layer on bitsandbytes' portable path, the same numbers on every CPU, unless ``cpu_packed_4bit``
    asks for the AVX512-BF16 packed path where the CPU has it (:mod:`prolora.bnb_cpu`).
    """
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    device = resolve_device(device)
    dtype = resolve_dtype(compute_dtype, device)
    if path == "tiny":
        import tempfile

        with tempfile.TemporaryDirectory(prefix="prolora-tiny-") as tmp:
            build_tiny_llama(seed=tiny_seed).save_pretrained(tmp)
            return load_base_model(tmp, quantize=quantize, load_in_8bit=load_in_8bit, double_quant=double_quant,
                                   compute_dtype=compute_dtype, device=device, cpu_packed_4bit=cpu_packed_4bit)
    kwargs: dict = {"dtype": dtype}
    if load_in_8bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    elif quantize:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=double_quant,
            bnb_4bit_compute_dtype=dtype)
    model = AutoModelForCausalLM.from_pretrained(path, device_map=device, **kwargs)
    if quantize and not load_in_8bit:
        from prolora import bnb_cpu

        bnb_cpu.configure(model, packed=cpu_packed_4bit)
    return model.eval()


def decoder_layers(model) -> list:
    """The model's decoder layers (the modules transformers can checkpoint), in order."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def parse_checkpointing(value, n_layers: int) -> int | str:
    """``trainer.gradient_checkpointing`` → the number of decoder layers to checkpoint, or ``"auto"``.

    ``true``/``"all"`` = every layer (the authors' setting), ``false``/``0`` = none, an integer ``k`` = the
    first ``k`` layers, ``"auto"`` = as few as fit in memory (:func:`prolora.trainer.fit_checkpointing`)."""
    if isinstance(value, bool):
        return n_layers if value else 0
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"trainer.gradient_checkpointing={value}: use true, false, auto or 0..{n_layers}")
        return min(value, n_layers)
    text = str(value).strip().lower()
    if text in ("true", "all", "yes", "on"):
        return n_layers
    if text in ("false", "none", "no", "off"):
        return 0
    if text == "auto":
        return "auto"
    if text.isdigit():
        return parse_checkpointing(int(text), n_layers)
    raise ValueError(f"trainer.gradient_checkpointing={value!r}: use true (all layers), false, auto "
                     f"(as few as fit in memory) or a number of layers 0..{n_layers}")


def set_checkpointing(model, n_layers: int) -> int:
    """Recompute the activations of the first ``n_layers`` decoder layers in the backward pass (non-reentrant
    ``torch.utils.checkpoint``); the others keep theirs.  The math is unchanged: only memory is traded for
    time (each checkpointed layer runs its forward twice).  Returns the number of checkpointed layers."""
    layers = decoder_layers(model)
    n = max(0, min(int(n_layers), len(layers)))
    if n == 0:
        if getattr(model, "is_gradient_checkpointing", False):
            model.gradient_checkpointing_disable()
        for layer in layers:
            layer.gradient_checkpointing = False
        return 0
    if not getattr(model, "is_gradient_checkpointing", False):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the deprecated alias; same call on old versions
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for i, layer in enumerate(layers):
        layer.gradient_checkpointing = i < n
    return n


def prepare_for_training(model, *, quantized: bool, checkpoint_layers: int = 0):
    """Get a loaded base model ready for adapter training, as QLoRA does: no KV cache; with a quantized base
    PEFT's ``prepare_model_for_kbit_training`` (the unquantized embeddings, norms and head in fp32, input
    gradients on, as the authors' open-instruct trainer); then checkpoint ``checkpoint_layers`` layers."""
    model.config.use_cache = False  # the KV cache is useless in training (and clashes with recomputation)
    if quantized:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    set_checkpointing(model, checkpoint_layers)
    return model
