"""Evaluation recipe: score a base model, an adapter checkpoint or a merged model on the paper's
benchmarks with open-instruct's protocols.

    python -m recipes.evaluate checkpoint=outputs/.../final tasks=[mmlu,tydiqa] data_dir=/data/eval
    python -m recipes.evaluate model=llama2_7b chat=false backend=vllm            # "Vanilla (no-chat)"
    python -m recipes.evaluate model=tiny tasks=[bbh,gsm] data_dir=tests/fixtures/eval max_new_tokens=8
    python -m recipes.evaluate ... protocol=quick        # subsets: GSM 200, BBH 40 per task, TyDi QA 100 per language

Protocols (``configs/protocol/``): ``authors`` (default: the PRoLoRA authors' eval scripts: full sets, their
MMLU suffix, TyDi QA exemplars drawn from the train file and their context cut, MMLU and GSM in 8-bit),
``upstream`` (open-instruct's own: MMLU "The answer is:", the pre-made TyDi QA one-shot file, the clean cut)
and ``quick`` (the authors' prompts on open-instruct's example subsets).  Every task's entry in eval.json says
how many examples it scored of how many there are (``subset``), so a subset number never passes for a paper
number; ``protocol`` records the preset.

``checkpoint`` is what the trainer writes (``<run>/final/``: compact adapter, ``peft/`` export,
``run.json``) or a run dir holding ``final/`` or a merged model dir; the base model comes from
``model=`` if given, else from ``run.json``'s ``config.model``. Writes ``eval.json`` and
``predictions/<task>.jsonl`` into ``output_dir`` (default: the Hydra run dir).

``checkpoints=[a,b,...]`` (adapters of one base model, hf backend, unmerged) scores them all in one pass
(:func:`run_together`): one base load, every adapter served compact, rows of all of them batched together; each
gets the eval.json and predictions it gets alone (greedy; sampled tasks run one adapter at a time with the same
seed), where it alone writes them (``output_dirs=[...]`` or ``<run>/eval/<time>/``), plus ``scored_together``. Task options sit under
the task's name: ``gsm.max_examples=50 bbh.max_per_task=10 humaneval.n_samples=5 mmlu.precision=null``;
each task's node IS its dataclass (``eval/tasks/<task>.py``), so every option and its default is the task's
own.  ``chat`` and ``seed`` are the run's (set once at the top level).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field, make_dataclass, replace
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from eval.tasks import PAPER_TASKS
from recipes import CONFIG_DIR, config_store, git_commit, one_line_errors
from recipes.schema import LoggerConfig, ModelConfig


@dataclass
class VLLMOptions:
    peft_subdir: str = "peft"  # the checkpoint's PEFT LoRA export served through LoRARequest
    dtype: str = "auto"
    quantization: str | None = None  # e.g. bitsandbytes
    gpu_memory_utilization: float = 0.9
    tensor_parallel_size: int = 1
    max_model_len: int | None = None
    max_lora_rank: int | None = None  # None: smallest supported rank >= the export's r


@dataclass
class RunOptions:
    model: ModelConfig | None = None  # None: the base named in the checkpoint's run.json
    checkpoint: str | None = None
    # score a checkpoint whose files differ from what training wrote (recorded in eval.json, marked in tables)
    allow_modified: bool = False
    checkpoints: list[str] | None = None  # several adapter checkpoints of one base, scored in one pass (hf, unmerged)
    output_dirs: list[str] | None = None  # with checkpoints: one output directory each (default <run>/eval/<time>/)
    tasks: list[str] = field(default_factory=lambda: list(PAPER_TASKS))
    backend: str = "hf"  # hf | vllm
    data_dir: str = "data/eval"  # holds mmlu/, bbh/, gsm/, tydiqa/ in open-instruct's layout
    chat: bool | None = None  # None: chat format for a finetuned checkpoint, plain for a base model
    precision: str | None = None  # nf4 | 8bit | full; None: model.quantize -> nf4, else full
    merge: bool = False  # hf backend: merge the adapter into the base it was trained on (NF4 dequantized), as the paper's authors did, then score in `precision`
    batch_size: int = 8
    kv_cache: str = "dynamic"  # hf backend: dynamic | static (preallocated: same outputs; faster on long prompts)
    # hf backend: prefill a shared few-shot prefix (GSM's 8 exemplars, a BBH task's 3) once per call and reuse its
    # keys/values; faster where prefill dominates (results/bench/generate-*.json), same math in another float order
    prefix_cache: bool = False
    # hf backend, greedy: the backend's own decoding loop, where a finished row leaves the batch (false: model.generate)
    evict_finished: bool = True
    max_new_tokens: int | None = None  # caps every task's protocol value (smoke tests)
    seed: int = 42
    device: str = "auto"
    # the compute dtype of the evaluated model (null: the model config's compute_dtype, i.e. auto = bf16 where
    # the GPU has it). The paper grids set float16: the authors' 8-bit runs kept fp16 for the rest, and their
    # vLLM runs served the merged model, saved as float32 by merge_lora.py, in vLLM's auto dtype: fp16
    dtype: str | None = None
    protocol: str = "authors"  # the preset the task settings came from (configs/protocol/): authors | upstream | quick
    output_dir: str | None = None  # None: the Hydra run directory (<run>/eval/<time>/ for a checkpoint of <run>/final)
    vllm: VLLMOptions = field(default_factory=VLLMOptions)
    # W&B: a run linked to the checkpoint's training run (same project, group and config columns), or for a base
    # model a "vanilla" run of its own; offline unless configured (recipes/tracking.py). logger=none: no W&B
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    experiment_name: str | None = None  # W&B group of a base-model evaluation (a checkpoint's: its training's)


def _eval_schema() -> type:
    """``EvalConfig``: the run's options plus one node per registered task, typed by the task's dataclass."""
    from eval.tasks import TASKS

    tasks = [(name, cls, field(default_factory=cls)) for name, cls in TASKS.items()]
    return make_dataclass("EvalConfig", tasks, bases=(RunOptions,))


EvalConfig = _eval_schema()


def register() -> None:
    """The shared schemas and resolvers (:mod:`recipes.config_store`) and this recipe's own schema."""
    config_store.register()
    ConfigStore.instance().store(name="evaluate_schema", node=EvalConfig)


register()


# ---------------------------------------------------------------------------------------------- helpers
def model_settings(cfg: DictConfig, run_model: dict) -> dict:
    """Loading options: the ``model`` group when given, else the checkpoint's run.json, else defaults."""
    defaults = OmegaConf.to_container(OmegaConf.structured(ModelConfig), resolve=False)
    source = OmegaConf.to_container(cfg.model, resolve=True) if cfg.model is not None else run_model
    merged = {k: v for k, v in defaults.items() if v != "???"}
    merged.update({k: v for k, v in (source or {}).items() if v is not None})
    return merged


def build_tasks(cfg: DictConfig, chat: bool):
    """The asked tasks as configured (their ``__post_init__`` checks the options), with the run's chat/seed."""
    from eval.tasks import TASKS

    unknown = [t for t in cfg.tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"tasks={list(cfg.tasks)}: unknown {unknown}; known: {sorted(TASKS)}")
    return [replace(OmegaConf.to_object(cfg[name]), chat=chat, seed=cfg.seed) for name in cfg.tasks]


class BackendPool:
    """Backends by precision, built on first use (MMLU may want 8-bit while the rest uses NF4)."""

    def __init__(self, cfg: DictConfig, spec, settings: dict, precision: str, adapter_dirs: dict | None = None):
        self.cfg, self.spec, self.settings, self.precision = cfg, spec, settings, precision
        self.adapter_dirs = adapter_dirs  # several adapters served on one base (run_together)
        self.dtype = cfg.dtype or settings.get("compute_dtype", "auto")
        self.backends: dict[str, Any] = {}
        self.cpu_4bit: dict[str, Any] = {}  # precision -> prolora.bnb_cpu report (which 4-bit CPU path ran)

    def precision_for(self, task) -> str:
        """A task's own precision (MMLU: 8-bit, as the paper) on the hf backend, else the run's."""
        if task.precision and self.cfg.backend == "hf":
            return task.precision
        return self.precision

    def __call__(self, task):
        precision = self.precision_for(task)
        if precision not in self.backends:
            for old in list(self.backends):  # one model in memory at a time
                self.backends.pop(old).close()
            self.backends[precision] = self._build(precision)
            model = getattr(self.backends[precision], "model", None)
            if model is not None:
                from prolora import bnb_cpu

                self.cpu_4bit[precision] = bnb_cpu.report(model)
        return self.backends[precision]

    def _build(self, precision: str):
        cfg, spec, s = self.cfg, self.spec, self.settings
        if cfg.backend == "hf":
            from eval.backends.hf import HFBackend

            return HFBackend.load(spec.model_path, adapter_dir=None if self.adapter_dirs else spec.adapter_dir,
                                  adapter_dirs=self.adapter_dirs, tokenizer_path=spec.tokenizer_path,
                                  precision=precision, compute_dtype=self.dtype,
                                  device=cfg.device, double_quant=s.get("double_quant", True), merge=cfg.merge,
                                  cpu_packed_4bit=bool(s.get("cpu_packed_4bit", False)),
                                  merge_from="nf4" if s.get("quantize", True) else "full",
                                  batch_size=cfg.batch_size, kv_cache=cfg.kv_cache, prefix_cache=cfg.prefix_cache,
                                  evict_finished=cfg.evict_finished)
        if cfg.backend == "vllm":
            from eval.backends.vllm import VLLMBackend

            require_vllm()  # before any merging work
            model_path, lora_dir, tokenizer_path = spec.model_path, spec.peft_dir, spec.tokenizer_path
            if spec.kind == "adapter" and cfg.merge:
                model_path = self._merged_dir()  # as the authors: serve the merged model, not the adapter
                lora_dir = None
            elif spec.kind == "adapter" and not spec.peft_dir:
                raise FileNotFoundError(f"backend=vllm serves the PEFT export <checkpoint>/{cfg.vllm.peft_subdir}/, "
                                        f"missing in {spec.adapter_dir}; export it with prolora.export_lora")
            v = cfg.vllm
            return VLLMBackend(model_path, tokenizer_path=tokenizer_path,
                               lora_dir=lora_dir, max_lora_rank=v.max_lora_rank, dtype=v.dtype if v.dtype != "auto" else
                               (self.cfg.dtype or "auto"),
                               quantization=v.quantization, gpu_memory_utilization=v.gpu_memory_utilization,
                               tensor_parallel_size=v.tensor_parallel_size, max_model_len=v.max_model_len,
                               seed=cfg.seed)
        raise ValueError(f"backend={cfg.backend!r}: use hf or vllm")

    def _merged_dir(self) -> str:
        """The adapter merged into the base it was trained on (NF4 dequantized for QLoRA) and saved in the
        evaluation dtype, for an engine that serves a plain model (vLLM), as the authors' merge_lora.py."""
        import tempfile

        from eval.checkpoint import merged_model
        from prolora.models import load_tokenizer

        s = self.settings
        self._tmp = tempfile.TemporaryDirectory(prefix="prolora-merged-")
        model = merged_model(self.spec.model_path, self.spec.adapter_dir, merge_from="nf4" if s.get("quantize", True)
                             else "full", dtype=self.dtype, double_quant=s.get("double_quant", True),
                             device=self.cfg.device)
        model.save_pretrained(self._tmp.name)
        load_tokenizer(self.spec.tokenizer_path).save_pretrained(self._tmp.name)
        print(f"merged {self.spec.adapter_dir} into {self.spec.model_path} for vLLM: {self._tmp.name}")
        return self._tmp.name

    def close(self) -> None:
        for b in self.backends.values():
            b.close()
        self.backends.clear()
        if getattr(self, "_tmp", None) is not None:
            self._tmp.cleanup()


# ---------------------------------------------------------------------------------------------- run
def run(cfg: DictConfig) -> dict:
    """Evaluate; returns the eval.json content.  Every setting, the checkpoint and every task's files are
    checked before a model is loaded; each task's result is written as soon as it is scored, and a task that
    fails is recorded (``tasks_failed``) while the others go on."""
    from eval.checkpoint import resolve_checkpoint
    from eval.driver import ResultWriter, evaluate

    if cfg.checkpoints:
        raise ValueError("checkpoints=[...] is scored by run_together(cfg)")
    started = time.time()
    if cfg.output_dir:
        output_dir = Path(cfg.output_dir)
    else:
        from hydra.core.hydra_config import HydraConfig

        output_dir = Path(HydraConfig.get().runtime.output_dir)
    if cfg.backend not in ("hf", "vllm"):
        raise ValueError(f"backend={cfg.backend!r}: use hf or vllm")
    if cfg.backend == "vllm":
        require_vllm()
    model_path = cfg.model.path if cfg.model is not None else None
    spec = resolve_checkpoint(cfg.checkpoint, model_path, peft_subdir=cfg.vllm.peft_subdir,
                              allow_modified=cfg.allow_modified)
    if cfg.backend == "vllm" and spec.kind == "adapter" and not cfg.merge:
        refuse_unmerged_dora(spec.peft_dir)
    settings = model_settings(cfg, spec.run_model)
    chat = cfg.chat if cfg.chat is not None else spec.kind != "base"
    precision = cfg.precision or ("nf4" if settings.get("quantize", True) else "full")
    if precision not in ("nf4", "8bit", "full"):
        raise ValueError(f"precision={precision!r}: use nf4, 8bit or full")
    tasks = build_tasks(cfg, chat)  # validates task names and options before any model is loaded
    for task in tasks:  # a missing or malformed benchmark file fails here, before any model is loaded
        task.load(cfg.data_dir)
    print(f"evaluating {spec.kind} model {spec.model_path}"
          + (f" + adapter {spec.adapter_dir}" if spec.adapter_dir else "")
          + f" on {[t.name for t in tasks]} ({cfg.backend}, {precision}, chat={chat}, protocol={cfg.protocol})")
    pool = BackendPool(cfg, spec, settings, precision)
    writer = ResultWriter(output_dir, [t.name for t in tasks], eval_record(cfg, spec, settings, chat, pool, tasks,
                                                                         started))
    try:
        evaluate(tasks, pool, data_dir=cfg.data_dir, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, writer=writer)
    finally:
        pool.close()
        path = writer.write(cpu_4bit_path=pool.cpu_4bit, wall_time_s=time.time() - started)
    summary = json.loads(path.read_text())
    if cfg.logger.name == "wandb":
        summary = log_to_wandb(cfg, summary, output_dir, spec)
    print("scores: " + ", ".join(f"{k} {v:.2f}" for k, v in summary["scores"].items() if v is not None))
    print(f"wrote {path} and {output_dir / 'predictions'}/")
    for name, error in writer.failed.items():
        print(f"FAILED {name}: {error}", file=sys.stderr)
    return summary


def eval_record(cfg: DictConfig, spec, settings: dict, chat: bool, pool: BackendPool, tasks: list,
                started: float) -> dict:
    """What eval.json says about the run besides the scores: protocol, model, backend, settings, config, commit."""
    return {
        "protocol": cfg.protocol, "model": {**spec.to_dict(), "settings": settings}, "backend": cfg.backend,
        "checkpoint_integrity": spec.integrity, "chat": chat,
        "precision": {t.name: pool.precision_for(t) for t in tasks}, "dtype": pool.dtype,
        "config": OmegaConf.to_container(cfg, resolve=True), "git_commit": git_commit(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "host": {"python": platform.python_version(), "machine": platform.machine(),
                 "torch": _version("torch"), "transformers": _version("transformers")}}


# ---------------------------------------------------------------------------------------------- K checkpoints
def run_together(cfg: DictConfig) -> dict[str, dict]:
    """Score every checkpoint of ``cfg.checkpoints`` in one pass (the module docstring says what each gets);
    returns ``{checkpoint: its eval.json content}``.  Every checkpoint is resolved (``resolve_checkpoint``) and
    checked, and every task's files, before the base model is loaded."""
    from eval.driver import ResultWriter, evaluate_together

    started = time.time()
    specs, settings = together_specs(cfg)
    dirs = together_output_dirs(cfg, specs)
    chat = cfg.chat if cfg.chat is not None else True
    precision = cfg.precision or ("nf4" if settings.get("quantize", True) else "full")
    if precision not in ("nf4", "8bit", "full"):
        raise ValueError(f"precision={precision!r}: use nf4, 8bit or full")
    tasks = build_tasks(cfg, chat)
    for task in tasks:
        task.load(cfg.data_dir)
    names = [spec.adapter_dir for spec in specs]
    print(f"evaluating {len(specs)} adapters of {specs[0].model_path} in one pass on {[t.name for t in tasks]} "
          f"(hf, {precision}, chat={chat}, protocol={cfg.protocol})")
    pool = BackendPool(cfg, specs[0], settings, precision, adapter_dirs={name: name for name in names})
    together = {"checkpoints": list(cfg.checkpoints), "output_dirs": [str(d) for d in dirs]}
    alone = {name: _alone_cfg(cfg, checkpoint, out) for name, checkpoint, out in zip(names, cfg.checkpoints, dirs)}
    writers = {name: ResultWriter(out, [t.name for t in tasks], {
        **eval_record(alone[name], spec, settings, chat, pool, tasks, started), "scored_together": together})
        for name, spec, out in zip(names, specs, dirs)}
    try:
        evaluate_together(tasks, pool, names, writers, data_dir=cfg.data_dir, max_new_tokens=cfg.max_new_tokens,
                          seed=cfg.seed)
    finally:
        pool.close()
        paths = {name: w.write(cpu_4bit_path=pool.cpu_4bit, wall_time_s=time.time() - started)
                 for name, w in writers.items()}
    summaries = {}
    for name, checkpoint, spec, out in zip(names, cfg.checkpoints, specs, dirs):
        summary = json.loads(paths[name].read_text())
        if cfg.logger.name == "wandb":
            summary = log_to_wandb(alone[name], summary, out, spec)
        print(f"{checkpoint}: " + ", ".join(f"{k} {v:.2f}" for k, v in summary["scores"].items() if v is not None)
              + f" -> {out}")
        for task, error in writers[name].failed.items():
            print(f"FAILED {checkpoint} {task}: {error}", file=sys.stderr)
        summaries[checkpoint] = summary
    return summaries


def together_specs(cfg: DictConfig) -> tuple[list, dict]:
    """Each checkpoint resolved (``resolve_checkpoint``), and checked to be an adapter of the same base model
    loaded the same way; ``(specs, the model settings)``."""
    from eval.checkpoint import resolve_checkpoint

    checkpoints = [str(c) for c in cfg.checkpoints]
    for bad, why in ((cfg.checkpoint is not None, "give checkpoint= (one) or checkpoints=[...] (several), not both"),
                     (cfg.backend != "hf", f"backend={cfg.backend} scores one checkpoint per run: use backend=hf"),
                     (cfg.merge, "merge=true scores each checkpoint's merged model: use merge=false"),
                     (len(set(checkpoints)) < len(checkpoints), f"checkpoints={checkpoints} names one twice")):
        if bad:
            raise ValueError(f"checkpoints=[...]: {why}")
    model_path = cfg.model.path if cfg.model is not None else None
    specs = [resolve_checkpoint(c, model_path, peft_subdir=cfg.vllm.peft_subdir, allow_modified=cfg.allow_modified)
             for c in checkpoints]
    settings = model_settings(cfg, specs[0].run_model)
    for checkpoint, spec in zip(checkpoints, specs):
        if spec.kind != "adapter":
            raise ValueError(f"checkpoints=[...]: {checkpoint} is a {spec.kind} model, not an adapter checkpoint")
        theirs = model_settings(cfg, spec.run_model)
        differ = sorted(k for k in set(theirs) | set(settings) if theirs.get(k) != settings.get(k))
        if spec.model_path != specs[0].model_path or differ:
            raise ValueError(f"checkpoints=[...]: {checkpoint} was trained on {spec.model_path} "
                             f"({', '.join(f'{k}={theirs.get(k)}' for k in differ) or 'same settings'}), "
                             f"{checkpoints[0]} on {specs[0].model_path}: score adapters of one base model together")
    return specs, settings


def together_output_dirs(cfg: DictConfig, specs: list) -> list[Path]:
    """Where each checkpoint's evaluation goes: ``output_dirs``, else where it alone would go by default
    (``<run>/eval/<time>/``, one time for all)."""
    if cfg.output_dirs is not None:
        if len(cfg.output_dirs) != len(specs):
            raise ValueError(f"output_dirs has {len(cfg.output_dirs)} entries for {len(specs)} checkpoints: give one "
                             "per checkpoint")
        return [Path(d) for d in cfg.output_dirs]
    if cfg.output_dir:
        raise ValueError("checkpoints=[...] writes one evaluation per checkpoint: use output_dirs=[...] (one each), "
                         "not output_dir")
    from hydra.core.hydra_config import HydraConfig

    from recipes.config_store import eval_home

    stamp = Path(HydraConfig.get().runtime.output_dir).name if HydraConfig.initialized() else \
        time.strftime("%Y-%m-%d_%H-%M-%S")
    return [Path(eval_home(c)) / stamp for c in cfg.checkpoints]


def _alone_cfg(cfg: DictConfig, checkpoint: str, output_dir: Path) -> DictConfig:
    """The config one checkpoint's own run would have had (what its eval.json and W&B run record)."""
    one = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    one.checkpoint, one.output_dir, one.checkpoints, one.output_dirs = checkpoint, str(output_dir), None, None
    return one


def log_to_wandb(cfg: DictConfig, summary: dict, output_dir: Path, spec) -> dict:
    """The scores as a W&B run linked to the checkpoint's training run; eval.json records it.  A W&B failure
    is a warning: eval.json and the predictions are already complete."""
    from prolora.io import write_json_atomic
    from recipes import tracking

    run_json = None
    if spec.kind == "adapter" and spec.adapter_dir and (Path(spec.adapter_dir) / "run.json").exists():
        run_json = json.loads((Path(spec.adapter_dir) / "run.json").read_text())
    try:
        record = tracking.log_evaluation(OmegaConf.to_container(cfg.logger.wandb, resolve=True), summary,
                                         output_dir, run_json, experiment=cfg.experiment_name)
    except Exception as e:  # noqa: BLE001  (W&B is a view of the result files, never their source)
        tracking.warn("logging of the scores", e)
        record = {"error": f"{type(e).__name__}: {e}"}
    summary = {**summary, "wandb": record}
    write_json_atomic(output_dir / "eval.json", summary)
    return summary


def refuse_unmerged_dora(peft_dir: str | None) -> None:
    """vLLM's LoRA loader refuses a DoRA export (``use_dora``): such an adapter is served merged; say so before
    any work."""
    config = Path(peft_dir) / "adapter_config.json" if peft_dir else None
    if config is not None and config.is_file() and json.loads(config.read_text()).get("use_dora"):
        raise ValueError(f"backend=vllm merge=false: {peft_dir} is a DoRA adapter, which vLLM serves only merged; "
                         "use merge=true (or backend=hf)")


def require_vllm() -> None:
    """backend=vllm needs the vllm package (CUDA); say so before any work."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise ValueError("backend=vllm: the vllm package is not installed (it needs CUDA: pip install -e '.[vllm]'); "
                         "use backend=hf")


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:
        return None


@hydra.main(config_path=CONFIG_DIR, config_name="evaluate", version_base="1.3")
@one_line_errors
def main(cfg: DictConfig) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    summaries = list(run_together(cfg).values()) if cfg.checkpoints else [run(cfg)]
    if any(summary.get("tasks_failed") for summary in summaries):  # the others are scored; the run still failed
        sys.exit(1)


if __name__ == "__main__":
    main()
