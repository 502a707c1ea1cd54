"""vLLM backend (CUDA machines; ``make install VLLM=1``: vLLM 0.30.0 in ``.venv-vllm``). ``vllm`` is imported
lazily, inside :class:`VLLMBackend`, never at module import. What the backend hands vLLM is built by plain
functions (:func:`llm_kwargs`, :func:`sampling_kwargs`, ``SCORE_SAMPLING``) and read back by
:func:`last_token_logprob`, so that ``tests/eval/test_vllm_loader.py`` checks them against vLLM's own
``EngineArgs``, ``SamplingParams`` and ``Logprob`` objects on a CPU machine.

Serving an adapter: vLLM knows no PRoLoRA/VeRA/Tied LoRA, so a checkpoint is served either through its
exact rank-r PEFT LoRA export (``<checkpoint>/peft/``: ``adapter_config.json`` +
``adapter_model.safetensors``; the subdirectory name is a parameter of
:func:`eval.checkpoint.resolve_checkpoint`) on top of the base model, with ``enable_lora=True`` and
``max_lora_rank`` the smallest vLLM-supported rank >= the export's ``r``; or as a merged model
directory.

Parity with the hf backend (same greedy outputs on the same prompts), and its caveats:

* prompts are tokenized by the project (:meth:`Backend.encode`, one BOS, never two) and handed to vLLM
  as token ids, so both backends see identical inputs; vLLM does no padding at all (no left-padding
  concerns), the hf backend left-pads with a mask;
* stop sequences, EOS and special-token skipping follow vLLM's semantics in both;
* precision must match: vLLM loads the base in ``dtype`` (bf16/fp16) unless ``quantization=
  "bitsandbytes"``; compare against the hf backend with ``precision=full`` (or NF4 on both).
  Different kernels (paged attention, fused LoRA) give bit-level differences, so greedy ties can break
  differently on long generations; scores agree, individual strings usually do.
* MMLU: log-probabilities come from ``prompt_logprobs`` of prompt + candidate (one request per
  candidate), i.e. the log-softmax over the full vocabulary at the last prompt position.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from eval.backends.base import Backend
from prolora.export import vllm_rank

# The smallest vLLM-supported max_lora_rank >= r (one table, kept where the export pads to it).
max_lora_rank_for = vllm_rank


def lora_rank(peft_dir: str | Path) -> int:
    config = json.loads((Path(peft_dir) / "adapter_config.json").read_text())
    return int(config["r"])


def llm_kwargs(model_path: str, tokenizer_path: str | None = None, lora_dir: str | None = None,
               max_lora_rank: int | None = None, dtype: str = "auto", quantization: str | None = None,
               gpu_memory_utilization: float = 0.9, tensor_parallel_size: int = 1, max_model_len: int | None = None,
               seed: int = 0, enforce_eager: bool = False) -> dict:
    """The keyword arguments :class:`VLLMBackend` passes to ``vllm.LLM`` (which hands them to vLLM's
    ``EngineArgs``): GGUF paths resolved to their converted directories, and with ``lora_dir`` LoRA enabled
    for one adapter at ``max_lora_rank`` (default: the smallest vLLM rank >= the export's ``r``)."""
    from prolora.models import resolve_model_path

    model_path = resolve_model_path(model_path)  # a GGUF file: its converted directory, as the hf backend loads
    kwargs: dict = dict(model=model_path, tokenizer=resolve_model_path(tokenizer_path) if tokenizer_path else model_path,
                        dtype=dtype, seed=seed, gpu_memory_utilization=gpu_memory_utilization,
                        tensor_parallel_size=tensor_parallel_size, enforce_eager=enforce_eager)
    if max_model_len:
        kwargs["max_model_len"] = max_model_len
    if quantization:
        kwargs["quantization"] = quantization
    if lora_dir:
        kwargs.update(enable_lora=True, max_loras=1,
                      max_lora_rank=max_lora_rank or max_lora_rank_for(lora_rank(lora_dir)))
    return kwargs


def sampling_kwargs(max_new_tokens: int = 512, temperature: float = 0.0, top_p: float = 1.0, n: int = 1,
                    stop: Sequence[str] | None = None, seed: int = 42) -> dict:
    """``SamplingParams`` of :meth:`VLLMBackend.generate`: greedy (top_p 1, no seed) at temperature 0."""
    return dict(n=n, temperature=temperature, top_p=top_p if temperature > 0 else 1.0, max_tokens=max_new_tokens,
                stop=list(stop) if stop else None, seed=seed if temperature > 0 else None)


# ``SamplingParams`` of :meth:`VLLMBackend.next_token_logprobs`: one token, and the prompt's own log-probabilities
SCORE_SAMPLING = dict(max_tokens=1, temperature=0.0, prompt_logprobs=0)


def last_token_logprob(token_ids: Sequence[int], prompt_logprobs: Sequence) -> float:
    """The log-probability vLLM reports for the last token of a prompt (``prompt_logprobs`` of its
    ``RequestOutput``: one ``{token id: Logprob}`` per position, or a ``FlatLogprobs``), i.e. the
    log-softmax over the full vocabulary at the position before it."""
    entry = prompt_logprobs[-1][token_ids[-1]]
    return float(getattr(entry, "logprob", entry))


class VLLMBackend(Backend):
    name = "vllm"

    def __init__(self, model_path: str, tokenizer_path: str | None = None, lora_dir: str | None = None,
                 max_lora_rank: int | None = None, dtype: str = "auto", quantization: str | None = None,
                 gpu_memory_utilization: float = 0.9, tensor_parallel_size: int = 1,
                 max_model_len: int | None = None, seed: int = 0, enforce_eager: bool = False):
        try:
            import vllm
        except ImportError as e:
            raise ImportError("backend=vllm needs vLLM (CUDA only): make install VLLM=1 (.venv-vllm); "
                              "or use backend=hf") from e
        from prolora.models import load_tokenizer

        self._vllm = vllm
        kwargs = llm_kwargs(model_path, tokenizer_path, lora_dir=lora_dir, max_lora_rank=max_lora_rank,
                            dtype=dtype, quantization=quantization,
                            gpu_memory_utilization=gpu_memory_utilization,
                            tensor_parallel_size=tensor_parallel_size, max_model_len=max_model_len, seed=seed,
                            enforce_eager=enforce_eager)
        self.lora_request = None
        if lora_dir:
            from vllm.lora.request import LoRARequest

            self.lora_request = LoRARequest("adapter", 1, str(lora_dir))
        self.llm = vllm.LLM(**kwargs)
        self.tokenizer = load_tokenizer(kwargs["tokenizer"])

    def _inputs(self, prompts: Sequence[str] | Sequence[list[int]]) -> list:
        from vllm.inputs import TokensPrompt

        return [TokensPrompt(prompt_token_ids=p if isinstance(p, list) else self.encode(p)) for p in prompts]

    def generate(self, prompts, max_new_tokens=512, temperature=0.0, top_p=1.0, n=1, stop=None, seed=42,
                 desc="generate") -> list[list[str]]:
        params = self._vllm.SamplingParams(**sampling_kwargs(max_new_tokens, temperature, top_p, n, stop, seed))
        outputs = self.llm.generate(self._inputs(prompts), params, lora_request=self.lora_request, use_tqdm=True)
        return [[o.text for o in out.outputs] for out in outputs]

    def next_token_logprobs(self, prompts, candidate_token_ids, desc="score") -> list[list[float]]:
        cands = list(candidate_token_ids)
        requests = [self.encode(p) + [c] for p in prompts for c in cands]
        params = self._vllm.SamplingParams(**SCORE_SAMPLING)
        outputs = self.llm.generate(self._inputs(requests), params, lora_request=self.lora_request, use_tqdm=True)
        flat = [last_token_logprob(ids, out.prompt_logprobs) for ids, out in zip(requests, outputs)]
        k = len(cands)
        return [flat[i * k:(i + 1) * k] for i in range(len(prompts))]

    def close(self) -> None:
        self.llm = None
