"""Group-by-length sampler (deterministic, exact resume) and the padding collator."""

import numpy as np
import pytest
import torch

from prolora.data import (
    IGNORE_INDEX,
    LengthGroupedSampler,
    PadCollator,
    TokenizedDataset,
    load_records,
)
from prolora.models import DEMO_DATA_DIR, TINY_DIR, load_tokenizer

RNG = np.random.default_rng(0)
LENGTHS = RNG.integers(5, 500, size=1003).tolist()


def test_deterministic_and_each_index_once_per_epoch():
    a = LengthGroupedSampler(LENGTHS, batch_size=16, seed=1)
    b = LengthGroupedSampler(LENGTHS, batch_size=16, seed=1)
    assert a.epoch_batches(0) == b.epoch_batches(0) and a.epoch_batches(3) == b.epoch_batches(3)
    assert a.epoch_batches(0) != a.epoch_batches(1)  # a new shuffle each epoch
    assert LengthGroupedSampler(LENGTHS, 16, seed=2).epoch_batches(0) != a.epoch_batches(0)
    for epoch in range(3):
        plan = a.epoch_batches(epoch)
        flat = [i for batch in plan for i in batch]
        assert sorted(flat) == list(range(len(LENGTHS)))
        assert len(plan) == a.num_batches == -(-1003 // 16)
        assert all(len(batch) == 16 for batch in plan[:-1]) and len(plan[-1]) == 1003 % 16
    dropped = LengthGroupedSampler(LENGTHS, 16, seed=1, drop_last=True)
    assert all(len(batch) == 16 for batch in dropped.epoch_batches(0)) and dropped.num_batches == 1003 // 16


def test_batches_are_length_grouped_and_longest_first():
    s = LengthGroupedSampler(LENGTHS, batch_size=16, seed=1)
    lengths = np.asarray(LENGTHS)
    plan = s.epoch_batches(0)
    assert lengths[plan[0]].max() == lengths.max()  # an out-of-memory shows on step 1
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in plan[:-1]])
    random_plan = LengthGroupedSampler(LENGTHS, 16, seed=1, group_by_length=False).epoch_batches(0)
    random_spread = np.mean([lengths[b].max() - lengths[b].min() for b in random_plan[:-1]])
    assert spread < 0.2 * random_spread
    # padding waste: grouped batches pad far less than random ones
    waste = sum(len(b) * lengths[b].max() - lengths[b].sum() for b in plan)
    random_waste = sum(len(b) * lengths[b].max() - lengths[b].sum() for b in random_plan)
    assert waste < 0.2 * random_waste


def test_resume_from_step_k_replays_the_same_batches():
    micro = 2
    full = LengthGroupedSampler(LENGTHS, 8, seed=5)
    uninterrupted = [full.step_batches(step, micro) for step in range(200)]  # crosses epoch boundaries
    restarted = LengthGroupedSampler(LENGTHS, 8, seed=5)  # a fresh process after a crash at step 77
    assert [restarted.step_batches(step, micro) for step in range(77, 200)] == uninterrupted[77:]

    # the iterator form: save the state mid-epoch, load it into a new sampler, continue identically
    it_a = LengthGroupedSampler(LENGTHS, 8, seed=5)
    stream = iter(it_a)
    head = [next(stream) for _ in range(150)]
    state = it_a.state_dict()
    rest_a = [next(stream) for _ in range(100)]
    it_b = LengthGroupedSampler(LENGTHS, 8, seed=5)
    it_b.load_state_dict(state)
    stream_b = iter(it_b)
    assert [next(stream_b) for _ in range(100)] == rest_a
    assert head + rest_a == [full.batch(i) for i in range(250)]
    with pytest.raises(ValueError, match="seed"):
        LengthGroupedSampler(LENGTHS, 8, seed=6).load_state_dict(state)


def test_pad_collator_right_pads():
    batch = PadCollator(pad_token_id=0)([
        {"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "attention_mask": [1, 1, 1]},
        {"input_ids": [8], "labels": [8], "attention_mask": [1]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert all(t.dtype == torch.long for t in batch.values())
    assert PadCollator(0, pad_to_multiple_of=8)([{"input_ids": [1], "labels": [1]}])["input_ids"].shape == (1, 8)


def test_tokenized_dataset_on_demo_records_feeds_the_trainer():
    tok = load_tokenizer(TINY_DIR)
    records = load_records(DEMO_DATA_DIR / "train.jsonl")
    ds = TokenizedDataset(records, tok, max_len=64)
    assert len(ds) == len(records) and ds.n_dropped == 0
    batches = ds.step_fn(batch_size=4, seed=1, micro_per_step=2)
    step0 = batches(0)
    assert len(step0) == 2
    for b in step0:
        assert b["input_ids"].shape == b["labels"].shape == b["attention_mask"].shape
        assert b["input_ids"].shape[0] == 4
        pad = b["attention_mask"] == 0
        assert (b["labels"][pad] == IGNORE_INDEX).all() and (b["input_ids"][pad] == tok.pad_token_id).all()
        assert ((b["labels"] != IGNORE_INDEX).sum(dim=1) > 0).all()
    assert [x["input_ids"].tolist() for x in batches(3)] == [x["input_ids"].tolist() for x in ds.step_fn(4, 1, 2)(3)]


def test_padded_positions_of_a_real_batch_are_never_learned():
    """The dataset's own collation of rows of different lengths (length grouping makes the trainer's batches
    nearly equal, so this pins the padding down where there is some): every padded label is -100, even though
    the tiny tokenizer's pad id is its EOS, which the labels do learn at the end of each answer."""
    tok = load_tokenizer(TINY_DIR)
    ds = TokenizedDataset(load_records(DEMO_DATA_DIR / "train.jsonl"), tok, max_len=64)
    short, long = min(range(len(ds)), key=ds.lengths.__getitem__), max(range(len(ds)), key=ds.lengths.__getitem__)
    assert ds.lengths[short] < ds.lengths[long]
    batch = ds.collate([short, long])
    pad = batch["attention_mask"] == 0
    assert pad.sum() == ds.lengths[long] - ds.lengths[short] > 0
    assert (batch["labels"][pad] == IGNORE_INDEX).all()
    assert (batch["labels"] == tok.eos_token_id).any()  # EOS is learned where it ends an answer, not as padding
