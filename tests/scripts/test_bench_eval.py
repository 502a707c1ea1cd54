"""python -m scripts.bench_eval counts the tokens the hf backend generated, whichever loop generated them: the
backend's own greedy loop (dynamic KV cache, the evaluators' default) as well as ``model.generate`` (static cache).

Nothing here is timed: the script's speed numbers are for people to read, not for tests to assert."""

from types import SimpleNamespace

import pytest
import torch

from prolora.models import TINY_DIR
from scripts import bench_eval


@pytest.mark.parametrize("kv_cache", ["dynamic", "static"])
def test_hf_counts_every_generated_token(kv_cache):
    from eval.backends.hf import HFBackend

    backend = HFBackend.load(str(TINY_DIR), precision="full", device="cpu", batch_size=2, kv_cache=kv_cache)
    with torch.no_grad():  # as the benchmark does: EOS (logit 0) never wins, so every row runs to max_new_tokens
        backend.model.lm_head.weight[list(backend.eos_ids)] = 0
    args = SimpleNamespace(warmup_prompts=["red cat"] * 2, seed=0, max_new_tokens=5)
    r = bench_eval.time_hf(backend, ["red green blue", "dog", "sun moon"], [], args, "cpu", "test")
    assert sorted(r["per_row"]) == [5, 5, 5]
    assert r["generated_tokens"] == 15
