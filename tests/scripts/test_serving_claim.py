"""The serving-claim table: counts at LLaMA2-7B shapes (meta device), vLLM's rank padding, and the table rendered
from the JSON alone."""

from __future__ import annotations

import json

from scripts import serving_claim


def test_claim_counts_pad_and_render_from_the_json(tmp_path):
    out = tmp_path / "claim.json"
    assert serving_claim.main(["--out", str(out)]) == 0
    data = json.loads(out.read_text())
    rows = {v["variant"]: v for v in data["variants"]}
    lora8, lora2, pro = rows["lora_r8"], rows["lora_r2"], rows["prolora_r8_u1_m7_n7"]
    assert lora8["trainable_params"] == 19_988_480 and lora8["compact_bytes"] == lora8["vllm_bytes"] == 2 * 19_988_480
    assert lora8["per_20GB_compact"] == 20 * 10**9 // (2 * 19_988_480) == 500
    assert lora2["vllm_rank"] == 8 and lora2["vllm_bytes"] == lora8["vllm_bytes"]  # vLLM serves no rank 2
    assert pro["trainable_params"] == 4_999_520 and pro["vllm_bytes"] == lora8["vllm_bytes"]
    assert rows["prolora_r32_u4_m7_n7"]["vllm_rank"] == 32 and rows["vera_r256"]["shared_frozen_bytes"] > 0
    table = out.with_suffix(".md").read_text()
    assert "| PRoLoRA | 8 | `prolora_r8_u1_m7_n7` | 4,999,520 | 10.0 | 2,000 | 8 | 40.0 | 500 | 4.0x |" in table
    data["variants"] = data["variants"][:1]  # --render reads the JSON and recomputes nothing
    out.write_text(json.dumps(data))
    assert serving_claim.main(["--render", "--out", str(out)]) == 0
    assert out.with_suffix(".md").read_text().count("| LoRA |") == 1
