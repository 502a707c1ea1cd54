"""Extending the harness touches as few files as the architecture promises: a new adapter method is one module
(``prolora/methods/<name>.py``: config + layer + registration; the Hydra option comes from the registry); a new
benchmark is one module (``eval/tasks/<name>.py``).  The test adds a toy method and a toy benchmark to a copy of the repository,
in exactly those places, then trains the method on the tiny model with ``train.py`` and scores the checkpoint on
the benchmark with ``recipes.evaluate`` — the same commands a user types."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

TOY_METHOD = textwrap.dedent('''
    """Toy: LoRA with one learned scalar gate per layer, ΔW = g · (α/r) · B A (g starts at ``gate_init``)."""

    import math
    from dataclasses import dataclass
    from typing import ClassVar

    from torch import nn

    from prolora.config import AdapterConfig, invalid
    from prolora.methods.base import AdapterLayer, Method
    from prolora.methods.registry import register


    @dataclass
    class ToyGateConfig(AdapterConfig):
        method: ClassVar[str] = "toy_gate"
        gate_init: float = 1.0

        def __post_init__(self):
            super().__post_init__()
            if not isinstance(self.gate_init, (int, float)) or self.gate_init <= 0:
                raise invalid("ToyGateConfig", "gate_init", self.gate_init, "must be > 0", "use e.g. gate_init=1")


    class ToyGateLayer(AdapterLayer):
        adapter_params = ("lora_A", "lora_B", "gate")

        def __init__(self, base_layer, config, path, shared=None):
            super().__init__(base_layer, config, path, shared)
            self.scaling = config.alpha / config.r
            self.lora_A = self._param(config.r, self.in_features)
            self.lora_B = self._param(self.out_features, config.r)
            self.gate = self._param(1)
            if not self.lora_A.is_meta:
                nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
                nn.init.constant_(self.gate, config.gate_init)

        def factors(self):
            return self.lora_A, self.gate * self.lora_B


    @register
    class ToyGate(Method):
        name = "toy_gate"
        config_cls = ToyGateConfig
        layer_cls = ToyGateLayer
''')

TOY_TASK = textwrap.dedent('''
    """Toy benchmark: answer the demo's additions; exact match."""

    from dataclasses import dataclass

    from eval.tasks.base import Column, GenSpec, Task, chat_format, register


    @register
    @dataclass
    class ToySums(Task):
        name = "toy_sums"
        columns = {"toy_em": Column("Toy EM", "exact_match", "toy")}

        n: int = 4
        max_new_tokens: int = 8

        def load(self, data_dir=None):
            return [{"id": f"toy/{i}", "question": f"What is {10 + i} + {20 + i}?", "target": str(30 + 2 * i)}
                    for i in range(self.n)]

        def prompt(self, example, tokenizer=None):
            return chat_format(example["question"]) if self.chat else example["question"] + "\\n"

        def generation(self):
            return GenSpec(max_new_tokens=self.max_new_tokens, stop=[] if self.chat else ["\\n"])

        def parse(self, output, example):
            return output.strip()

        def score(self, examples, predictions):
            correct = [p[0] == ex["target"] for ex, p in zip(examples, predictions)]
            em = 100.0 * sum(correct) / len(correct)
            return {"score": em, "exact_match": em, "per_example": [{"correct": c} for c in correct]}
''')


def _copy_repo(dst: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("prolora", "eval", "recipes", "configs"):
        shutil.copytree(REPO / name, dst / name, ignore=ignore)
    shutil.copy(REPO / "train.py", dst / "train.py")


def test_a_new_method_is_one_file_and_a_new_benchmark_one(tmp_path):
    repo = tmp_path / "repo"
    _copy_repo(repo)
    added = {repo / "prolora" / "methods" / "toy_gate.py": TOY_METHOD,
             repo / "eval" / "tasks" / "toy_sums.py": TOY_TASK}
    for path, text in added.items():
        path.write_text(text)
    env = {**os.environ, "PYTHONPATH": str(repo), "PROLORA_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    run_dir = tmp_path / "run"
    train = subprocess.run(
        [sys.executable, "train.py", "model=tiny", "method=toy_gate", "rank=4", "method.gate_init=0.5",
         "dataset=demo", "logger=none", "trainer.max_steps=4", "trainer.batch_size=8", "trainer.micro_batch_size=8",
         "trainer.save_every=0", "trainer.gradient_checkpointing=false", "trainer.device=cpu", f"output_dir={run_dir}"],
        cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stderr[-3000:]
    run = json.loads((run_dir / "final" / "run.json").read_text())
    # LoRA r4 on the tiny model's 14 linears (2 layers x 4 x 1,216) plus one gate per linear
    assert run["adapter"]["method"] == "toy_gate" and run["adapter"]["gate_init"] == 0.5
    assert run["trainable_params"] == 2 * 4 * 1216 + 14
    assert (run_dir / "final" / "peft" / "adapter_model.safetensors").is_file()  # exported like any method

    out = tmp_path / "eval"
    evaluate = subprocess.run(
        [sys.executable, "-m", "recipes.evaluate", f"checkpoint={run_dir / 'final'}", "tasks=[toy_sums,demo]",
         "toy_sums.n=3", "demo.max_examples=2", "device=cpu", f"output_dir={out}"],
        cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    result = json.loads((out / "eval.json").read_text())
    assert result["tasks"]["toy_sums"]["n_examples"] == 3 and 0 <= result["scores"]["toy_sums"] <= 100
    assert result["config"]["toy_sums"]["n"] == 3  # its options are on the command line, from its fields
    columns = subprocess.run([sys.executable, "-c", "from recipes.paper.facts import COLUMNS; print(tuple(COLUMNS['toy_em']))"],
                             cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert columns.stdout.strip() == "('toy_sums', 'Toy EM', 'exact_match', 'toy')", columns.stderr[-2000:]
