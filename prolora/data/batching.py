"""Tokenized training set, deterministic group-by-length batching with exact resume, padding collator.

* :class:`TokenizedDataset` tokenizes records once (:func:`prolora.data.chat.tokenize_example`), dropping and
  counting the examples truncation left without an assistant token.
* :class:`LengthGroupedSampler` is the idea of HF's ``LengthGroupedSampler`` made a pure function of
  ``(seed, epoch)``: shuffle the indices with the seed, cut them into mega-batches of
  ``mega_batch_mult * batch_size``, sort each mega-batch by length (longest first), cut it into batches, and
  put the longest example of the epoch in the first batch (an out-of-memory shows at once). Micro-batch
  ``i`` of the endless stream of epochs is ``batch(i)``, so a run restarted at step ``k`` sees exactly the
  batches an uninterrupted run would; ``state_dict``/``load_state_dict`` do the same for iteration.
* :class:`PadCollator` right-pads ``input_ids`` with the pad id, ``labels`` with ``-100`` and
  ``attention_mask`` with 0. No packing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from prolora.data.chat import IGNORE_INDEX, tokenize_example

__all__ = ["LengthGroupedSampler", "PadCollator", "TokenizedDataset"]


class PadCollator:
    """List of ``{"input_ids", "labels", "attention_mask"}`` -> right-padded ``LongTensor`` batch."""

    def __init__(self, pad_token_id: int, label_pad_id: int = IGNORE_INDEX, pad_to_multiple_of: int | None = None):
        self.pad_token_id, self.label_pad_id, self.pad_to_multiple_of = pad_token_id, label_pad_id, pad_to_multiple_of

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty batch")
        width = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            width = (width + m - 1) // m * m
        n = len(features)
        ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, width), self.label_pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, f in enumerate(features):
            k = len(f["input_ids"])
            ids[i, :k] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            labels[i, :k] = torch.as_tensor(f["labels"], dtype=torch.long)
            mask[i, :k] = torch.as_tensor(f.get("attention_mask", [1] * k), dtype=torch.long)
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}



class TokenizedDataset(torch.utils.data.Dataset):
    """Records tokenized in the chat format, truncated at ``max_len``.

    ``dropped`` lists the ids of records whose assistant part was cut away entirely (they are not in the
    dataset); ``lengths`` are the token counts the sampler groups by; ``collate(indices)`` pads a batch."""

    def __init__(self, records: Sequence[dict], tokenizer, max_len: int, *, progress: bool = False):
        if max_len < 2:
            raise ValueError(f"max_len must be at least 2, got {max_len}")
        self.max_len = max_len
        self.examples: list[dict] = []
        self.ids: list[str] = []
        self.dropped: list[str] = []
        items: Iterable[dict] = records
        if progress:
            from tqdm.auto import tqdm

            items = tqdm(records, desc="tokenize", unit="ex", dynamic_ncols=True)
        for rec in items:
            ex = tokenize_example(rec, tokenizer, max_len)
            if ex is None:
                self.dropped.append(rec.get("id", "?"))
                continue
            self.examples.append(ex)
            self.ids.append(rec.get("id", "?"))
        if not self.examples:
            raise ValueError(f"no example has an assistant token within max_len={max_len} "
                             f"({len(self.dropped)} dropped by truncation)")
        self.lengths = [len(e["input_ids"]) for e in self.examples]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.collator = PadCollator(pad)

    @property
    def n_dropped(self) -> int:
        return len(self.dropped)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        return self.examples[i]

    def collate(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        return self.collator([self.examples[i] for i in indices])

    def sampler(self, batch_size: int, seed: int, **kw) -> LengthGroupedSampler:
        return LengthGroupedSampler(self.lengths, batch_size, seed=seed, **kw)

    def step_fn(self, batch_size: int, seed: int, micro_per_step: int = 1, **kw) -> Callable[[int], list[dict]]:
        """``batches(step)`` for :class:`prolora.trainer.Trainer`: the collated micro-batches of optimizer
        step ``step`` (micro-batches ``step*k … step*k+k-1`` of the sampler's stream)."""
        sampler = self.sampler(batch_size, seed, **kw)
        return lambda step: [self.collate(b) for b in sampler.step_batches(step, micro_per_step)]


class LengthGroupedSampler:
    """Deterministic group-by-length batches (lists of dataset indices), endless over epochs.

    ``lengths``: token count per example. ``group_by_length=False`` gives plain shuffled batches.
    The batches of epoch ``e`` depend only on ``(seed, e, lengths, batch_size, mega_batch_mult, drop_last)``."""

    def __init__(self, lengths: Sequence[int], batch_size: int, *, seed: int = 0, mega_batch_mult: int = 50,
                 group_by_length: bool = True, drop_last: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not len(lengths):
            raise ValueError("no examples to sample from")
        if drop_last and len(lengths) < batch_size:
            raise ValueError(f"drop_last with {len(lengths)} examples < batch_size {batch_size} leaves no batch")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size, self.seed, self.mega_batch_mult = batch_size, seed, max(1, mega_batch_mult)
        self.group_by_length, self.drop_last = group_by_length, drop_last
        self._cache: dict[int, list[list[int]]] = {}
        self.epoch, self.position = 0, 0  # iteration state

    # -- the plan ----------------------------------------------------------------------------------
    @property
    def num_batches(self) -> int:
        """Batches per epoch (the same for every epoch)."""
        n = len(self.lengths)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __len__(self) -> int:
        return self.num_batches

    def _plan(self, epoch: int) -> list[list[int]]:
        rng = np.random.Generator(np.random.PCG64([self.seed, epoch]))
        perm = rng.permutation(len(self.lengths))
        bs = self.batch_size
        if not self.group_by_length:
            batches = [perm[i:i + bs].tolist() for i in range(0, len(perm), bs)]
        else:
            mb = self.mega_batch_mult * bs
            megas = []
            for i in range(0, len(perm), mb):
                chunk = perm[i:i + mb]
                order = np.argsort(-self.lengths[chunk], kind="stable")
                megas.append(chunk[order].tolist())
            # the longest example of the epoch goes first (HF does the same swap)
            heads = [self.lengths[m[0]] for m in megas]
            k = int(np.argmax(heads))
            megas[0][0], megas[k][0] = megas[k][0], megas[0][0]
            # cut the index stream into batches as HF's DataLoader does: only the last one can be short
            flat = [i for m in megas for i in m]
            batches = [flat[i:i + bs] for i in range(0, len(flat), bs)]
        if self.drop_last and batches and len(batches[-1]) < bs:
            batches.pop()
        return batches

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The batches of epoch ``epoch`` (a pure function of the seed and the epoch)."""
        if epoch not in self._cache:
            if len(self._cache) >= 2:
                self._cache.pop(min(self._cache))
            self._cache[epoch] = self._plan(epoch)
        return self._cache[epoch]

    def batch(self, i: int) -> list[int]:
        """Micro-batch ``i`` of the endless stream epoch 0, epoch 1, …"""
        epoch, j = divmod(i, self.num_batches)
        return self.epoch_batches(epoch)[j]

    def step_batches(self, step: int, micro_per_step: int = 1) -> list[list[int]]:
        """The micro-batches of optimizer step ``step`` (``micro_per_step`` per step)."""
        return [self.batch(i) for i in range(step * micro_per_step, (step + 1) * micro_per_step)]

    # -- iteration with resumable state ---------------------------------------------------------------
    def __iter__(self) -> Iterator[list[int]]:
        while True:
            plan = self.epoch_batches(self.epoch)
            while self.position < len(plan):
                b = plan[self.position]
                self.position += 1
                yield b
            self.epoch, self.position = self.epoch + 1, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.position = epoch, 0

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position,
                "batch_size": self.batch_size, "num_examples": len(self.lengths)}

    def load_state_dict(self, state: dict) -> None:
        for key, mine in (("seed", self.seed), ("batch_size", self.batch_size), ("num_examples", len(self.lengths))):
            if key in state and state[key] != mine:
                raise ValueError(f"sampler state has {key}={state[key]} but this sampler has {mine}: "
                                 "resuming would not replay the same batches")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
