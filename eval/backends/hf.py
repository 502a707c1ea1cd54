"""Plain transformers backend (any machine, CPU included).  What it guarantees:

* a prompt's result does not depend on what it is batched with: batches are left-padded with a mask, position
  ids come from the mask, and greedy rows prefill alone and decode together (a finished row leaves the batch);
* decoding uses only the task's settings: a fresh ``GenerationConfig`` per call, never the checkpoint's own
  sampling defaults; greedy when ``temperature == 0``; sampling is top-p only (``top_k=0``, vLLM's default),
  seeded; a row stops at EOS or as soon as its decoded text holds a stop sequence, and is cut before it;
* the opt-in speed paths give the default path's tokens: ``kv_cache="static"`` (tested token for token) and
  ``prefix_cache=True`` (a shared few-shot prefix prefilled once; the same math in another float order, so ties
  at ~1e-6 may differ: ``scripts/bench_generate.py`` counts them).  Measurements: README, Speed;
* adapters are served (:mod:`prolora.serving`): one checkpoint or several on one base model, every prompt naming
  its adapter (``adapters=``), rows of different adapters batched together; a prompt's result is the one it gets
  served alone (the same code runs one checkpoint and K), and a shared prefix is only shared within an adapter.

The model is loaded by ``prolora.models.load_base_model`` (NF4, 8-bit or full precision), then optionally
compact adapters (``prolora.serving.MultiAdapter``, each checkpoint through ``prolora.load_adapter``), or one
adapter merged (``prolora.merge``); a merged model directory loads like a base model.
"""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Sequence

import torch

from eval.backends.base import Backend, truncate_at_stop
from prolora.data.chat import common_prefix

PRECISIONS = ("nf4", "8bit", "full")
KV_CACHES = ("dynamic", "static")
MIN_PREFIX = 64  # tokens: shorter shared prefixes are not worth a separate forward pass


def prefix_groups(rows: Sequence[Sequence[int]], min_prefix: int = MIN_PREFIX) -> list[tuple[int, list[int]]]:
    """``(prefix_len, row indices)`` groups of rows that share their first ``prefix_len`` tokens
    (``prefix_len >= min_prefix``, and shorter than every row of the group so each keeps one token of its
    own); rows sharing no such prefix come back in groups with ``prefix_len == 0``.  Rows are taken in
    lexicographic order, where rows with a common prefix are neighbours."""
    order = sorted(range(len(rows)), key=lambda i: list(rows[i]))
    groups: list[tuple[int, list[int]]] = []
    for i in order:
        if groups:
            shared, members = groups[-1]
            first = rows[members[0]]
            n = min(common_prefix(first, rows[i]), len(first) - 1, len(rows[i]) - 1)
            if len(members) > 1:
                n = min(n, shared)
            if n >= min_prefix:
                groups[-1] = (n, members + [i])
                continue
        groups.append((0, [i]))
    merged: list[tuple[int, list[int]]] = []
    for length, members in groups:  # consecutive prefix-less rows into one group
        if length == 0 and merged and merged[-1][0] == 0:
            merged[-1][1].extend(members)
        else:
            merged.append((length, list(members)))
    return merged


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=bool(os.environ.get("PROLORA_NO_PROGRESS")))


class _StopOnSequences:
    """Per-row stop check on the decoded tail of the new tokens: ``model.generate``'s stopping criterion (called
    with the whole ids, returns a bool tensor) and the backend's own greedy loop (``hit``, one row's new ids)."""

    def __init__(self, tokenizer, prompt_len: int, stop: Sequence[str]):
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        self.stop = [s for s in stop if s]
        self.window = max((len(s) for s in self.stop), default=0) + 8  # tokens are at least ~1 char; generous

    def hit(self, new_ids: Sequence[int]) -> bool:
        text = self.tokenizer.decode(list(new_ids[-self.window:]), skip_special_tokens=True)
        return any(s in text for s in self.stop)

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        done = [self.hit(row) for row in input_ids[:, self.prompt_len:].tolist()]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class HFBackend(Backend):
    name = "hf"

    def __init__(self, model, tokenizer, batch_size: int = 8, kv_cache: str = "dynamic", prefix_cache: bool = False,
                 evict_finished: bool = True):
        self.model = model.eval()
        self.tokenizer = tokenizer
        from prolora.serving import MultiAdapter

        self.served = MultiAdapter.of(model)  # adapters rows may name (None: a plain or merged model)
        names = self.served.names if self.served is not None else []
        self.default_adapter = names[0] if len(names) == 1 else None  # what a prompt naming none runs with
        self.batch_size = max(1, int(batch_size))
        if kv_cache not in KV_CACHES:
            raise ValueError(f"kv_cache={kv_cache!r}: use one of {KV_CACHES}")
        self.kv_cache = kv_cache
        if prefix_cache and kv_cache != "dynamic":
            raise ValueError(f"prefix_cache=true needs kv_cache=dynamic (got {kv_cache!r})")
        self.prefix_cache = bool(prefix_cache)
        self.evict_finished = bool(evict_finished)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ValueError("tokenizer has neither a pad nor an EOS token")
        self.pad_id = int(pad)
        eos = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
        cfg_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        if isinstance(cfg_eos, int):
            eos.add(cfg_eos)
        elif cfg_eos:
            eos.update(cfg_eos)
        self.eos_ids = sorted(eos)
        # transformers fills every unset field of a passed GenerationConfig from model.generation_config
        # (LLaMA-2 ships temperature 0.6 / top-p 0.9): neutralise it so only the protocol's settings count
        from transformers import GenerationConfig

        if getattr(model, "generation_config", None) is not None:
            model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                                       eos_token_id=self.eos_ids or None, pad_token_id=self.pad_id)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, model_path: str, adapter_dir: str | None = None, tokenizer_path: str | None = None,
             precision: str = "nf4", compute_dtype: str = "auto", device: str = "auto", double_quant: bool = True,
             merge: bool = False, merge_from: str = "nf4", batch_size: int = 8, kv_cache: str = "dynamic",
             cpu_packed_4bit: bool = False, prefix_cache: bool = False, evict_finished: bool = True,
             adapter_dirs: dict[str, str] | None = None) -> HFBackend:
        """``merge=True`` does what the paper's authors did (open-instruct ``merge_lora.py --qlora``, then
        loading the merged model for evaluation): the adapter is loaded onto the base in the precision it
        was trained on (``merge_from``: nf4 for QLoRA), merged (4-bit weights dequantized first), and the
        merged dense model is served in ``precision`` (re-quantized through a temporary save when that is
        nf4 or 8bit, e.g. MMLU's 8-bit).  Unmerged, ``adapter_dir`` (named by its path) or ``adapter_dirs``
        (``{name: dir}``, several on one base load) are served compact; prompts name theirs (``adapters=``)."""
        from prolora.models import load_base_model, load_tokenizer

        for name, value in (("precision", precision), ("merge_from", merge_from)):
            if value not in PRECISIONS:
                raise ValueError(f"{name}={value!r}: use one of {PRECISIONS}")

        def base(path: str, prec: str):
            return load_base_model(path, quantize=prec == "nf4", load_in_8bit=prec == "8bit",
                                   double_quant=double_quant, compute_dtype=compute_dtype, device=device,
                                   cpu_packed_4bit=cpu_packed_4bit)

        if adapter_dirs and (merge or adapter_dir):
            raise ValueError("adapter_dirs serves several adapters unmerged: drop merge=true and adapter_dir")
        if adapter_dir and merge:
            import tempfile

            from eval.checkpoint import merged_model

            model = merged_model(model_path, adapter_dir, merge_from=merge_from, dtype=compute_dtype,
                                 double_quant=double_quant, device=device)
            if precision != "full":
                with tempfile.TemporaryDirectory(prefix="prolora-merged-") as tmp:
                    model.save_pretrained(tmp)
                    del model
                    model = base(tmp, precision)
        else:
            model = base(model_path, precision)
            dirs = adapter_dirs or ({adapter_dir: adapter_dir} if adapter_dir else {})
            if dirs:
                from prolora.serving import MultiAdapter

                served = MultiAdapter(model)
                for name, directory in dirs.items():
                    served.load(name, directory)
        return cls(model.eval(), load_tokenizer(tokenizer_path or model_path), batch_size=batch_size, kv_cache=kv_cache,
                   prefix_cache=prefix_cache, evict_finished=evict_finished)

    # ------------------------------------------------------------------ helpers
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _pad_left(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
        return ids.to(self.device), mask.to(self.device)

    def _batches(self, rows: list[list[int]], among: Sequence[int] | None = None) -> list[list[int]]:
        order = sorted(range(len(rows)) if among is None else among, key=lambda i: -len(rows[i]))
        return [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def _pad_middle(self, prefix_len: int, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """``[prefix][pad…][suffix]`` per row (the prefix is common to all), the pad masked out."""
        prefix = rows[0][:prefix_len]
        ids, mask = self._pad_left([r[prefix_len:] for r in rows])
        head = torch.tensor(prefix, dtype=torch.long, device=ids.device).expand(len(rows), -1)
        return torch.cat([head, ids], dim=1), torch.cat([torch.ones_like(head), mask], dim=1)

    def _prefix_kv(self, prefix: list[int], adapter: str | None):
        self._use([adapter])
        ids = torch.tensor([prefix], dtype=torch.long, device=self.device)
        return self._row_cache(self.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True))

    def _plan(self, rows: list[list[int]], adapters: list[str | None] | None = None) -> list[tuple[int, list[int]]]:
        """``(prefix_len, batch)`` in the order they run: without prefix reuse, length-sorted batches (rows of
        any adapters together); with it, prefix groups within each adapter (a prefix's keys depend on it)."""
        if not self.prefix_cache:
            return [(0, b) for b in self._batches(rows)]
        adapters = adapters if adapters is not None else [self.default_adapter] * len(rows)
        plan = []
        for adapter in dict.fromkeys(adapters):
            members = [i for i, a in enumerate(adapters) if a == adapter]
            for length, group in prefix_groups([rows[i] for i in members]):
                plan += [(length, b) for b in self._batches(rows, [members[j] for j in group])]
        return plan

    def _use(self, adapters: Sequence[str | None]) -> None:
        """The adapters of the rows of the next forwards (a plain or merged model: every row None)."""
        if self.served is not None:
            self.served.use(adapters)
        elif any(a is not None for a in adapters):
            raise ValueError(f"this backend serves no adapters; rows name {sorted(set(adapters) - {None})}")

    def _row_adapters(self, adapters: Sequence[str | None] | None, count: int) -> list[str | None]:
        if adapters is None:
            return [self.default_adapter] * count
        if len(adapters) != count:
            raise ValueError(f"adapters= names {len(adapters)} adapters for {count} prompts: give one per prompt")
        return list(adapters)

    def _completion_text(self, prompt_ids: list[int], new_ids: list[int], stop: Sequence[str] | None) -> str:
        for j, t in enumerate(new_ids):
            if t in self.eos_ids:
                new_ids = new_ids[:j]
                break
        tok = self.tokenizer
        full = tok.decode(prompt_ids + new_ids, skip_special_tokens=True)
        head = tok.decode(prompt_ids, skip_special_tokens=True)
        text = full[len(head):] if full.startswith(head) else tok.decode(new_ids, skip_special_tokens=True)
        return truncate_at_stop(text, stop)

    # ------------------------------------------------------------------ interface
    def _row_cache(self, out):
        """The KV cache a forward returned (``out.cache`` in transformers >= 5.x, ``past_key_values`` before)."""
        cache = getattr(out, "cache", None)
        return cache if cache is not None else out.past_key_values

    def _greedy(self, rows: list[list[int]], max_new_tokens: int, stops: Sequence[str], prefix_len: int = 0,
                prefix_kv=None, adapters: Sequence[str | None] | None = None) -> list[list[int]]:
        """Greedy new tokens per row (EOS excluded).  Each row's prompt is prefilled ALONE (no padding: the
        causal fast path, and what batch 1 computes; after ``prefix_kv``, the keys/values of a shared prefix of
        ``prefix_len`` tokens, only its own suffix), then the rows decode together, left-padded in the cache and
        masked, each with its adapter (``adapters``), and a finished row leaves the batch."""
        from transformers import DynamicCache

        kw, device = self._cache_kwarg, self.device
        adapters = list(adapters) if adapters is not None else [self.default_adapter] * len(rows)
        firsts, caches = [], []
        for r, adapter in zip(rows, adapters):
            self._use([adapter])
            kv = copy.deepcopy(prefix_kv) if prefix_len else None
            x = torch.tensor([r[prefix_len:]], dtype=torch.long, device=device)
            positions = torch.arange(prefix_len, len(r), device=device)[None]
            out = self.model(input_ids=x, position_ids=positions, use_cache=True, logits_to_keep=1,
                             **({kw: kv} if kv is not None else {}))
            firsts.append(out.logits[:, -1, :])
            caches.append(self._row_cache(out))
        width = max(len(r) for r in rows)
        if len(rows) == 1:
            cache = caches[0]
        else:
            cache = DynamicCache()
            for i in range(len(caches[0].layers)):
                keys, values = [], []
                for c, r in zip(caches, rows):
                    pad = (0, 0, width - len(r), 0)  # left-pad the sequence dimension
                    keys.append(torch.nn.functional.pad(c.layers[i].keys, pad))
                    values.append(torch.nn.functional.pad(c.layers[i].values, pad))
                cache.update(torch.cat(keys), torch.cat(values), i)
        del caches
        mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
        for j, r in enumerate(rows):
            mask[j, width - len(r):] = 1
        last = torch.tensor([len(r) - 1 for r in rows], device=device)
        logits = torch.cat(firsts)
        new: list[list[int]] = [[] for _ in rows]
        active = list(range(len(rows)))
        eos = set(self.eos_ids)
        stopper = _StopOnSequences(self.tokenizer, 0, stops)
        for _ in range(max_new_tokens):
            nxt = logits.argmax(-1)
            keep = []
            for j, (row, token) in enumerate(zip(active, nxt.tolist())):
                if token in eos:
                    continue
                new[row].append(token)
                if len(new[row]) >= max_new_tokens:
                    continue
                if stops and stopper.hit(new[row]):
                    continue
                keep.append(j)
            if not keep:
                break
            if len(keep) < len(active):
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                mask, nxt, last = mask[index], nxt[index], last[index]
                active = [active[j] for j in keep]
            mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
            last = last + 1
            self._use([adapters[row] for row in active])
            out = self.model(input_ids=nxt[:, None], attention_mask=mask, position_ids=last[:, None],
                             use_cache=True, **{kw: cache})
            cache = self._row_cache(out)
            logits = out.logits[:, -1, :]
        return new

    @functools.cached_property
    def _cache_kwarg(self) -> str:
        """transformers >= 5.x names the forward's KV-cache argument ``cache`` (``past_key_values`` before)."""
        import inspect

        params = inspect.signature(self.model.forward).parameters
        return "cache" if "cache" in params else "past_key_values"

    @torch.no_grad()
    def generate(self, prompts, max_new_tokens=512, temperature=0.0, top_p=1.0, n=1, stop=None, seed=42,
                 desc="generate", adapters=None) -> list[list[str]]:
        """``adapters``: the adapter of each prompt (None: the backend's one adapter, or the base model)."""
        from transformers import GenerationConfig, StoppingCriteriaList

        encoded = [self.encode(p) for p in prompts]
        per_prompt = self._row_adapters(adapters, len(prompts))
        rows = [ids for ids in encoded for _ in range(n)]  # n samples per prompt, consecutive
        row_adapters = [a for a in per_prompt for _ in range(n)]
        texts: list[str] = [""] * len(rows)
        sampling = temperature > 0
        config = GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=sampling, num_beams=1,
            temperature=temperature if sampling else None, top_p=top_p if sampling else None,
            top_k=0 if sampling else None, pad_token_id=self.pad_id, eos_token_id=self.eos_ids or None,
            bos_token_id=self.tokenizer.bos_token_id,
            cache_implementation="static" if self.kv_cache == "static" else None,
            disable_compile=True)
        bar = _progress(len(rows), desc)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            prefix, prefix_kv = None, None
            own_loop = not sampling and self.evict_finished and self.kv_cache == "dynamic"
            stops = [s for s in stop or [] if s]  # an empty stop string stops nothing (vLLM ignores it too)
            for prefix_len, batch in self._plan(rows, row_adapters):
                if prefix_len and prefix != (rows[batch[0]][:prefix_len], row_adapters[batch[0]]):
                    prefix = (rows[batch[0]][:prefix_len], row_adapters[batch[0]])
                    prefix_kv = self._prefix_kv(*prefix)
                if own_loop:
                    new = self._greedy([rows[i] for i in batch], max_new_tokens, stops, prefix_len, prefix_kv,
                                       [row_adapters[i] for i in batch])
                    for row, gen in zip(batch, new):
                        texts[row] = self._completion_text(rows[row], gen, stop)
                    bar.update(len(batch))
                    continue
                kv = None
                if prefix_len:
                    ids, mask = self._pad_middle(prefix_len, [rows[i] for i in batch])
                    kv = copy.deepcopy(prefix_kv)
                    kv.batch_repeat_interleave(len(batch))
                else:
                    ids, mask = self._pad_left([rows[i] for i in batch])
                cache = {self._cache_kwarg: kv} if kv is not None else {}
                criteria = StoppingCriteriaList([_StopOnSequences(self.tokenizer, ids.shape[1], stops)]) if stops else None
                self._use([row_adapters[i] for i in batch])
                out = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                          stopping_criteria=criteria, **cache)
                new = out[:, ids.shape[1]:].tolist()
                for row, gen in zip(batch, new):
                    texts[row] = self._completion_text(rows[row], gen, stop)
                bar.update(len(batch))
        bar.close()
        return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]

    @torch.no_grad()
    def next_token_logprobs(self, prompts, candidate_token_ids, desc="score", adapters=None) -> list[list[float]]:
        """``adapters``: the adapter of each prompt (None: the backend's one adapter, or the base model)."""
        rows = [self.encode(p) for p in prompts]
        row_adapters = self._row_adapters(adapters, len(rows))
        cands = torch.tensor(list(candidate_token_ids), dtype=torch.long)
        result: list[list[float]] = [[] for _ in rows]
        bar = _progress(len(rows), desc)
        for batch in self._batches(rows):
            self._use([row_adapters[i] for i in batch])
            ids, mask = self._pad_left([rows[i] for i in batch])
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1, :]
            logprobs = torch.log_softmax(logits.float(), dim=-1)[:, cands.to(logits.device)].cpu()
            for row, lp in zip(batch, logprobs.tolist()):
                result[row] = lp
            bar.update(len(batch))
        bar.close()
        return result

    def close(self) -> None:
        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
