"""The training benchmark script runs end to end at a small shape and its loss-parity phase shows that the
harness's LoRA r8 step is HF Trainer + PEFT LoRA r8's step (same init, dropout 0, same batches).

Nothing here is timed: the script's speed numbers are for people to read, not for tests to assert."""

from __future__ import annotations

import json

from scripts import bench_train


def test_bench_train_small_shape_runs_and_matches_the_hf_peft_losses(tmp_path):
    bench = bench_train
    out = tmp_path / "train.json"
    result = bench.main(["--device", "cpu", "--shape", "small", "--batch", "2", "--seq", "64", "--steps", "2",
                         "--rounds", "1", "--methods", "lora_r8,prolora_r8_u1_m7", "--variants", "before,auto",
                         "--parity-steps", "3", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["rows"].keys() == result["rows"].keys() == {
        "hf_peft_lora_r8", "lora_r8@before", "lora_r8", "prolora_r8_u1_m7"}
    rows = saved["rows"]
    assert rows["hf_peft_lora_r8"]["trainable_params"] == rows["lora_r8"]["trainable_params"]
    assert rows["prolora_r8_u1_m7"]["trainable_params"] < rows["lora_r8"]["trainable_params"]
    assert rows["lora_r8@before"]["checkpointed_layers"] == 2 and rows["lora_r8"]["checkpointed_layers"] == 0
    for row in rows.values():
        assert row["step_s_median"] > 0 and row["tokens_per_s"] > 0 and row["peak_mib"] > 0
        assert row["tokens_per_step"] > 0 and len(row["losses"]) == 2
    assert rows["prolora_r8_u1_m7"]["time_vs_lora_r8"] > 0 and "tokens_per_s_vs_baseline" in rows["lora_r8"]
    assert saved["settings"]["batch"] == 2 and saved["versions"]["peft"]
    parity = saved["parity"]
    assert len(parity["harness_losses"]) == len(parity["baseline_losses"]) == 3
    assert parity["harness_losses"][-1] != parity["harness_losses"][0]  # it trained
    assert parity["max_abs_diff"] < 1e-4, parity


def test_training_arguments_gives_the_warmup_as_a_ratio_on_either_transformers_api():
    import dataclasses

    @dataclasses.dataclass
    class V5:  # transformers 5: a float warmup_steps below 1 is a ratio; there is no warmup_ratio
        warmup_steps: float = 0
        max_steps: int = -1

    @dataclasses.dataclass
    class V4:  # transformers 4.x: an integer warmup_steps and a warmup_ratio
        warmup_steps: int = 0
        warmup_ratio: float = 0.0
        max_steps: int = -1

    args, notes = bench_train.training_arguments(V5, warmup_ratio=0.03, max_steps=4, use_cpu=True)
    assert args == V5(warmup_steps=0.03, max_steps=4)
    assert notes[0].startswith("warmup_steps=0.03") and "use_cpu" in notes[1]
    args, notes = bench_train.training_arguments(V4, warmup_ratio=0.03, max_steps=4)
    assert args == V4(warmup_steps=0, warmup_ratio=0.03, max_steps=4) and len(notes) == 1
