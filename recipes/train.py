"""Training recipe: config → data → 4-bit base model → adapter → train → save (compact + PEFT export) → run.json.

    python train.py method=prolora rank=8 unshared=1 sharing=7 dataset=superni seed=1
    python train.py -m optim.lr=1e-4,2e-4 seed=1,2,3            # one job per cell, each in its own dir
    python train.py model=tiny dataset=demo logger=none trainer.max_steps=30   # seconds on a CPU

Everything below is setup and glue; the math is in ``prolora`` (methods), the loop in ``prolora.trainer``.
The run directory (named from the choices: model/dataset/method_rN_uN_mN_nN/lrX_seedS) receives
``metrics.jsonl``, ``checkpoints/step_*`` and, when training completed, ``final/`` with the compact
adapter, ``peft/`` (a standard PEFT LoRA that vLLM serves) and ``run.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from recipes import CONFIG_DIR, git_commit, schema  # noqa: F401  (schema registers the structured configs)


def resolve_train_file(cfg: DictConfig) -> Path:
    path = Path(cfg.dataset.train_file)
    if not path.is_absolute():
        path = Path(cfg.data_dir) / path
    if not path.is_file():
        raise FileNotFoundError(
            f"training data for dataset={cfg.dataset.name} not found: {path}. Create it with "
            f"`python scripts/prepare_data.py {cfg.dataset.name} --raw <{cfg.dataset.raw_source or 'raw file'}> "
            f"--out {path}` or point data_dir= / dataset.train_file= at it.")
    return path


def method_config(cfg: DictConfig):
    import prolora

    fields = OmegaConf.to_container(cfg.method, resolve=True)
    return prolora.make_config(**fields)


def train_args(cfg: DictConfig):
    from prolora.trainer import TrainArgs

    t, o = cfg.trainer, cfg.optim
    return TrainArgs(max_steps=t.max_steps, batch_size=t.batch_size, micro_batch_size=t.micro_batch_size,
                     lr=float(o.lr), shared_lr=None if o.shared_lr is None else float(o.shared_lr),
                     optimizer=o.name, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay,
                     max_grad_norm=o.max_grad_norm, scheduler=o.scheduler, warmup_ratio=o.warmup_ratio,
                     group_by_length=t.group_by_length, save_every=t.save_every, keep_last=t.keep_last,
                     log_every=t.log_every, seed=cfg.seed, resume=t.resume,
                     progress=os.environ.get("PROLORA_NO_PROGRESS") is None)


def build_batches(cfg: DictConfig, tokenizer, args):
    """Tokenize the records (chat format, loss on assistant tokens) and plan group-by-length batches."""
    from prolora import data

    path = resolve_train_file(cfg)
    records, report = data.read_records(path)
    if report.skipped:
        print(f"{path}: {report.summary()}")
    if cfg.trainer.max_train_samples:
        records = records[: cfg.trainer.max_train_samples]
    dataset = data.TokenizedDataset(records, tokenizer, cfg.dataset.max_seq_len)
    if dataset.n_dropped:
        print(f"dropped {dataset.n_dropped} example(s) whose assistant turn was cut away by max_seq_len="
              f"{cfg.dataset.max_seq_len}")
    batches = dataset.step_fn(args.micro_batch_size, seed=args.seed, micro_per_step=args.grad_accum,
                              group_by_length=args.group_by_length)
    return batches, len(dataset), sum(dataset.lengths)


class WandbLogger:
    """One W&B run per training job: offline unless the user configured it (WANDB_MODE / logger.wandb.mode)."""

    def __init__(self, cfg: DictConfig, output_dir: Path, trainable: int):
        import wandb

        w = cfg.logger.wandb
        mode = w.mode or os.environ.get("WANDB_MODE") or "offline"
        m = cfg.method
        tags = [f"method:{m.name}", f"r:{m.r}", f"dataset:{cfg.dataset.name}", f"seed:{cfg.seed}",
                f"model:{cfg.model.name}"] + [f"{k}:{m[k]}" for k in ("u", "m", "n") if m.get(k) is not None]
        config = OmegaConf.to_container(cfg, resolve=True)
        config["trainable_params"] = trainable
        self.run = wandb.init(project=w.project, entity=w.entity, group=w.group or cfg.experiment_name,
                              name=f"{schema.method_tag(m)}-{cfg.dataset.name}-s{cfg.seed}",
                              tags=tags + list(w.tags), config=config, dir=str(output_dir), mode=mode,
                              reinit="finish_previous")

    def log(self, step: int, row: dict) -> None:
        self.run.log({f"train/{k}": v for k, v in row.items() if k != "step"}, step=step)

    def finish(self, summary: dict) -> None:
        self.run.summary.update(summary)
        self.run.finish()


def autocast_dtype(cfg: DictConfig, device: str):
    """bf16/fp16 autocast on CUDA when the compute dtype is one (HF Trainer's ``--bf16``, as the authors
    trained); None (plain fp32) elsewhere."""
    import torch

    from prolora.models import resolve_dtype

    dtype = resolve_dtype(cfg.model.compute_dtype, device)
    return dtype if device.startswith("cuda") and dtype in (torch.bfloat16, torch.float16) else None


def run(cfg: DictConfig) -> Path:
    """Train one cell; returns the ``final/`` directory."""
    import torch

    import prolora
    from prolora.models import (
        decoder_layers,
        load_base_model,
        load_tokenizer,
        parse_checkpointing,
        prepare_for_training,
        resolve_device,
    )
    from prolora.trainer import Trainer, seed_everything

    if cfg.output_dir:
        output_dir = Path(cfg.output_dir)
    else:
        from hydra.core.hydra_config import HydraConfig

        output_dir = Path(HydraConfig.get().runtime.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    final_dir = output_dir / "final"
    if (final_dir / "run.json").is_file() and not cfg.trainer.resume:
        print(f"note: {final_dir} exists and will be replaced (pass trainer.resume=true to keep finished work)")
    elif (final_dir / "run.json").is_file():
        print(f"already finished: {final_dir}")
        return final_dir

    # Check everything cheap before loading a 7B model: method fields, trainer fields, the data.
    adapter_config = method_config(cfg)
    args = train_args(cfg)
    parse_checkpointing(cfg.trainer.gradient_checkpointing, n_layers=1 << 30)  # a bad value fails before loading
    seed_everything(cfg.seed)
    tokenizer = load_tokenizer(cfg.model.path)
    batches, n_examples, n_tokens = build_batches(cfg, tokenizer, args)
    print(f"{n_examples} training examples ({n_tokens} tokens); {args.max_steps} steps of "
          f"{args.batch_size} sequences ({args.grad_accum} x {args.micro_batch_size})")

    device = resolve_device(cfg.trainer.device)
    model = load_base_model(cfg.model.path, quantize=cfg.model.quantize, double_quant=cfg.model.double_quant,
                            compute_dtype=cfg.model.compute_dtype, device=device, tiny_seed=0,
                            cpu_packed_4bit=cfg.model.cpu_packed_4bit)
    from prolora import bnb_cpu

    cpu_4bit = bnb_cpu.report(model)
    # QLoRA's preparation (as the authors' open-instruct trainer) and gradient checkpointing of as many layers
    # as trainer.gradient_checkpointing asks (true = all, as the authors ran; an int = that many; auto = fit).
    n_layers = len(decoder_layers(model))
    checkpointing = parse_checkpointing(cfg.trainer.gradient_checkpointing, n_layers)
    model = prepare_for_training(model, quantized=cfg.model.quantize,
                                 checkpoint_layers=0 if checkpointing == "auto" else checkpointing)
    seed_everything(cfg.seed)  # adapter init depends only on the seed, not on what loading consumed
    model = prolora.attach(model, adapter_config)
    trainable = prolora.count_trainable(model)
    base_layer_type = next((type(m.base_layer).__name__ for m in model.modules() if hasattr(m, "base_layer")), None)
    print(f"method={cfg.method.name} trainable parameters: {trainable:,}")

    logger = WandbLogger(cfg, output_dir, trainable) if cfg.logger.name == "wandb" else None
    trainer = Trainer(model, batches, args, output_dir, save_fn=prolora.save_adapter,
                      load_fn=lambda m, d: prolora.load_adapter(m, d), log_fn=logger.log if logger else None,
                      device=device, autocast_dtype=autocast_dtype(cfg, device))
    if checkpointing == "auto":
        k = trainer.fit_checkpointing()
        info = trainer.checkpointing_probe
        print(f"gradient checkpointing auto: {k} of {info['layers']} decoder layers recomputed "
              f"(a step adds {info['peak_all_bytes'] / 2**30:.2f} GiB with all recomputed, +{info['per_layer_bytes'] / 2**20:.0f} "
              f"MiB per layer that keeps its activations; {info['budget_bytes'] / 2**30:.1f} GiB free)")
    result = trainer.train()

    tmp = output_dir / f".tmp-final-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    prolora.save_adapter(model, tmp)
    prolora.export_lora(model, tmp / "peft")
    summary = {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "method": cfg.method.name,
        "trainable_params": trainable,
        "base_layer_type": base_layer_type,
        "git_commit": git_commit(),
        "steps": result.steps,
        "initial_loss": result.initial_loss,
        "final_loss": result.final_loss,
        "wall_time_s": result.wall_time_s,
        "tokens": result.tokens,
        "tokens_per_s": result.tokens_per_s,
        "resumed_from_step": result.resumed_from,
        "train_examples": n_examples,
        "device": device,
        "cpu_4bit_path": cpu_4bit,
        "checkpointed_layers": sum(bool(getattr(m, "gradient_checkpointing", False)) for m in decoder_layers(model)),
        "torch": torch.__version__,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    (tmp / "run.json").write_text(json.dumps(summary, indent=2) + "\n")
    if final_dir.exists():
        shutil.rmtree(final_dir)
    os.replace(tmp, final_dir)
    if logger:
        logger.finish({"final_loss": result.final_loss, "trainable_params": trainable,
                       "tokens_per_s": result.tokens_per_s})
    print(f"loss {result.initial_loss:.4f} -> {result.final_loss:.4f} in {result.wall_time_s:.1f}s; "
          f"adapter, PEFT export and run.json in {final_dir}")
    return final_dir


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
