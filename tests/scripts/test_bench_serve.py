"""The serving benchmark runs end to end on the tiny model: resident bytes are the adapters' saved tensors, every
way of serving the mixed batch decodes the same greedy tokens, and K checkpoints scored in one pass get the
predictions of K separate runs.  Nothing here is timed: the speed numbers are for people to read."""

from __future__ import annotations

import json

from prolora.models import TINY_DIR
from scripts import bench_serve
from tests.conftest import REPO


def test_bench_serve_on_the_tiny_model(tmp_path):
    out = tmp_path / "serve.json"
    bench_serve.main(["--model", str(TINY_DIR), "--model-config", "tiny", "--data-dir",
                      str(REPO / "tests" / "fixtures" / "eval"), "--adapters", "3", "--prompt-tokens", "5",
                      "--decode-steps", "3", "--rounds", "1", "--memory-n", "1,4", "--together-k", "2",
                      "--together-examples", "2", "--together-max-new-tokens", "4", "--together-batch", "4",
                      "--train-tokens", "2x8", "--layer-reps", "1", "--out", str(out)])
    report = json.loads(out.read_text())
    layers = report["layers"]["layers"]
    assert set(layers) == {f"prolora_r{r}_u{u}_m7_n7:{a}x{b}" for r, u in ((8, 1), (32, 4))
                           for a, b in ((64, 64), (64, 192), (192, 64))}
    assert all(t["compact_s"] > 0 and t["expanded_s"] > 0 for row in layers.values() for t in row.values())
    memory = report["memory"]
    per = memory["bytes_per_adapter"]
    assert per["compact"] == per["trainable_x_4"] < per["expanded"] and per["peft_resident"] == per["expanded"]
    assert memory["n"]["4"]["compact_bytes"] == 4 * per["compact"] == memory["n"]["4"]["compact_allocated"]
    ways = report["throughput"]["ways"]
    assert set(ways) == {"base", "compact", "expanded", "peft", "one_after_another"}
    for way in ("expanded", "peft", "one_after_another"):
        assert ways[way]["greedy_tokens_equal_to_compact"] == ways[way]["greedy_tokens"] == 3 * 3, way
    assert all(w["decode_tokens_per_s"] > 0 and w["prefill_tokens_per_s"] > 0 for w in ways.values())
    together = report["together"]
    assert together["k"] == 2 and together["predictions_identical"] == together["predictions"] == 4
