"""Training recipe: config → data → 4-bit base model → adapter → train → save (compact + PEFT export) → run.json.

    python train.py method=prolora rank=8 unshared=1 sharing=7 dataset=superni seed=1
    python train.py -m optim.lr=1e-4,2e-4 seed=1,2,3            # one job per cell, each in its own dir
    python train.py model=tiny dataset=demo logger=none trainer.max_steps=30   # seconds on a CPU

Everything here is setup and glue: the math is in ``prolora.methods``, the loop and its settings in
``prolora.trainer``.  The run directory (named from the choices and the hash of the run's identity:
model/dataset/method tag/lrX_seedS_<hash>) receives ``metrics.jsonl``, ``checkpoints/step_*`` and, when training
completed, ``final/`` with the compact adapter, ``peft/`` (a standard PEFT LoRA that vLLM serves) and
``run.json``.

Trust: every setting, the weights and the data are checked before any model or network work (one line
naming what is wrong); a run holds its directory's lock (a second run into it stops at once); resume continues
only a checkpoint of the same identity (:func:`recipes.run_config.run_identity`, the training data's hash included);
a finished run or another run's checkpoints are never replaced without ``overwrite=true``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from prolora.io import read_json_object
from recipes import CONFIG_DIR, config_store, git_commit, one_line_errors, run_config
from recipes.run_config import RunConfig

config_store.register()


@dataclass(frozen=True)
class TrainingJob:
    """A checked training run: its settings (built once, :mod:`recipes.run_config`) and its files."""

    run: RunConfig
    train_file: Path
    output_dir: Path


def train_file_path(cfg: DictConfig) -> Path:
    path = Path(cfg.dataset.train_file)
    return path if path.is_absolute() else Path(cfg.data_dir) / path


def missing_data(cfg: DictConfig) -> str | None:
    path = train_file_path(cfg)
    if path.is_file():
        return None
    return (f"training data for dataset={cfg.dataset.name} not found: {path} (create it with `python -m "
            f"scripts.prepare_data {cfg.dataset.name} --raw <{cfg.dataset.raw_source or 'raw file'}> --out {path}`, "
            f"or point data_dir= / dataset.train_file= at it)")


def missing_weights(path: str) -> str | None:
    """Whether ``model.path`` can be loaded without asking the network anything it cannot answer: a local
    directory with config.json, a GGUF file (``*.gguf``, ``gguf:<dist>/<file>``: converted once, cached), or a
    hub model in the local cache or with a hub token to download it."""
    from prolora import gguf

    if gguf.is_gguf_ref(path):
        return gguf.missing(path)
    p = Path(path)
    if p.is_dir():
        return None if (p / "config.json").is_file() else f"model.path={path} is a directory without config.json"
    if p.exists() or path.startswith((".", "/", "~")):
        return f"model.path={path} is not a model directory"
    import huggingface_hub

    if huggingface_hub.try_to_load_from_cache(path, "config.json") not in (None, huggingface_hub._CACHED_NO_EXIST):
        return None
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "") or \
        os.environ.get("TRANSFORMERS_OFFLINE", "0") not in ("0", "")
    if offline or huggingface_hub.get_token() is None:
        return (f"the weights of {path} are not on this machine ({'offline' if offline else 'no hub token'}): pass "
                f"model.path=/path/to/the/model, or accept the model's licence on the hub and run "
                f"`huggingface-cli login` so that they download")
    return None


def output_dir(cfg: DictConfig) -> Path:
    if cfg.output_dir:
        return Path(cfg.output_dir)
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def plan(cfg: DictConfig) -> TrainingJob:
    """Check every setting (method, loop, optimizer, device, the adapter on the model's shapes) and that the data
    and weights exist, before anything is loaded; every problem found goes in one error."""
    import torch

    from prolora import gguf

    run = run_config.build(cfg).check()
    if str(run.trainer.device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"trainer.device={run.trainer.device} but no CUDA device is visible: use trainer.device=auto "
                         "or cpu")
    problems = [p for p in (missing_weights(str(cfg.model.path)), missing_data(cfg)) if p]
    if problems:
        raise FileNotFoundError("; ".join(problems))
    ref = run_config.counting_ref(cfg.model)
    if Path(ref).is_dir() or ref == cfg.model.name or gguf.is_gguf_ref(ref):  # the adapter on the real shapes (meta)
        import prolora

        prolora.count_for(ref, run.adapter)  # a sharing rate wider than a layer fails here, naming the layer
    return TrainingJob(run, train_file_path(cfg), output_dir(cfg))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def claim_output_dir(cfg: DictConfig, job: TrainingJob, identity: dict) -> Path | None:
    """Decide what the run directory allows: returns the final dir when this very run is already finished
    (nothing to do), None to train; raises when it holds another run's work and ``overwrite`` is not set."""
    from prolora.trainer import identity_diff, list_checkpoints

    final = job.output_dir / "final"
    done = read_json_object(final / "run.json")
    if done is not None:
        diff = identity_diff(done.get("identity") or {}, identity)
        if not diff and not cfg.overwrite:
            return final
        if diff and not cfg.overwrite:
            raise ValueError(f"{job.output_dir} holds a finished run of another configuration ({'; '.join(diff[:6])}): "
                             "train into another output_dir, or pass overwrite=true to replace it")
    ckpts = list_checkpoints(job.output_dir / "checkpoints")
    if ckpts and not job.run.trainer.resume and not cfg.overwrite:
        raise ValueError(f"{job.output_dir} holds an unfinished run (checkpoints up to {ckpts[-1].name}): "
                         "trainer.resume=true continues it (when it is this run), overwrite=true starts over")
    if cfg.overwrite:
        for name in ("final", "checkpoints"):
            shutil.rmtree(job.output_dir / name, ignore_errors=True)
        (job.output_dir / "metrics.jsonl").unlink(missing_ok=True)
    return None


def build_batches(cfg: DictConfig, tokenizer, args, train_file: Path):
    """Tokenize the records (chat format, loss on assistant tokens) and plan group-by-length batches; returns the
    step function and ``{"train_examples", "tokens"}``."""
    from prolora import data

    records, report = data.read_records(train_file)
    if report.skipped:
        print(f"{train_file}: {report.summary()}")
    if args.max_train_samples:
        records = records[: args.max_train_samples]
    dataset = data.TokenizedDataset(records, tokenizer, cfg.dataset.max_seq_len)
    if dataset.n_dropped:
        print(f"dropped {dataset.n_dropped} example(s) whose assistant turn was cut away by max_seq_len="
              f"{cfg.dataset.max_seq_len}")
    batches = dataset.step_fn(args.micro_batch_size, seed=cfg.seed, micro_per_step=args.grad_accum,
                              group_by_length=args.group_by_length)
    return batches, {"train_examples": len(dataset), "tokens": sum(dataset.lengths)}


def autocast_dtype(cfg: DictConfig, device: str):
    """bf16/fp16 autocast on CUDA when the compute dtype is one (HF Trainer's ``--bf16``, as the authors
    trained); None (plain fp32) elsewhere."""
    import torch

    from prolora.models import resolve_dtype

    dtype = resolve_dtype(cfg.model.compute_dtype, device)
    return dtype if device.startswith("cuda") and dtype in (torch.bfloat16, torch.float16) else None


def run(cfg: DictConfig) -> Path:
    """Train one cell; returns the ``final/`` directory."""
    from prolora.io import FileLock

    job = plan(cfg)
    job.output_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(job.output_dir / ".train.lock")
    if not lock.acquire({"started": time.time()}):
        holder = FileLock.holder(lock.path) or {}
        raise ValueError(f"{job.output_dir} is in use by another training (pid {holder.get('pid', '?')}): wait for it, "
                         "or train into another output_dir")
    try:
        return _train(cfg, job)
    finally:
        lock.release()


def _train(cfg: DictConfig, job: TrainingJob) -> Path:
    """The steps of one training run, in order; each is a function below."""
    from prolora.models import load_tokenizer
    from prolora.trainer import Trainer, seed_everything

    identity = {**job.run.identity, "data_sha256": file_sha256(job.train_file)}
    finished = claim_output_dir(cfg, job, identity)
    if finished is not None:
        print(f"already finished: {finished} (overwrite=true trains it again)")
        return finished
    seed_everything(cfg.seed)
    tokenizer = load_tokenizer(cfg.model.path)
    batches, data_info = build_batches(cfg, tokenizer, job.run.trainer, job.train_file)
    args = job.run.trainer
    print(f"{data_info['train_examples']} training examples ({data_info['tokens']} tokens); {args.max_steps} steps "
          f"of {args.batch_size} sequences ({args.grad_accum} x {args.micro_batch_size})")
    model, device = load_model(cfg, job)
    logger = make_logger(cfg, job, model)
    trainer = Trainer(model, batches, job.run.trainer, job.run.optim, job.output_dir, save_fn=_save,
                      load_fn=_load, log_fn=logger.log if logger else None,
                      autocast_dtype=autocast_dtype(cfg, device), identity=identity)
    result = trainer.train()
    report_checkpointing(trainer)
    summary = run_summary(cfg, job, model, result, identity, device, data_info, logger)
    final_dir = write_final(job, model, summary)
    if logger:
        logger.finish({"final_loss": result.final_loss, "trainable_params": summary["trainable_params"],
                       "tokens_per_s": result.tokens_per_s})
    print(f"loss {result.initial_loss:.4f} -> {result.final_loss:.4f} in {result.wall_time_s:.1f}s; "
          f"adapter, PEFT export and run.json in {final_dir}")
    return final_dir


def _save(model, directory):
    import prolora

    return prolora.save_adapter(model, directory)


def _load(model, directory):
    import prolora

    return prolora.load_adapter(model, directory)


def load_model(cfg: DictConfig, job: TrainingJob):
    """The base model loaded as configured (4-bit NF4 by default) and prepared for QLoRA as the authors did, with
    the adapter attached (its init depends only on the seed, not on what loading consumed); and its device."""
    import prolora
    from prolora.models import load_base_model, prepare_for_training, resolve_device
    from prolora.trainer import seed_everything

    device = resolve_device(job.run.trainer.device)
    model = load_base_model(cfg.model.path, quantize=cfg.model.quantize, double_quant=cfg.model.double_quant,
                            compute_dtype=cfg.model.compute_dtype, device=device,
                            cpu_packed_4bit=cfg.model.cpu_packed_4bit)
    model = prepare_for_training(model, quantized=cfg.model.quantize)
    seed_everything(cfg.seed)
    model = prolora.attach(model, job.run.adapter)
    print(f"method={job.run.adapter.name} trainable parameters: {prolora.count_trainable(model):,}")
    return model, device


def make_logger(cfg: DictConfig, job: TrainingJob, model):
    """The W&B run of this training (offline unless configured), or None with ``logger=none``."""
    if cfg.logger.name != "wandb":
        return None
    import prolora
    from recipes.tracking import TrainLogger

    adapter = job.run.adapter
    return TrainLogger(OmegaConf.to_container(cfg.logger.wandb, resolve=True), OmegaConf.to_container(cfg, resolve=True),
                       adapter.to_dict(), adapter.name, job.output_dir,
                       name=f"{adapter.tag()}-{cfg.dataset.name}-lr{cfg.optim.lr}-s{cfg.seed}",
                       trainable=prolora.count_trainable(model))


def report_checkpointing(trainer) -> None:
    info = trainer.checkpointing_probe
    if info:
        print(f"gradient checkpointing auto: {info['checkpointed']} of {info['layers']} decoder layers recomputed "
              f"(a step adds {info['peak_all_bytes'] / 2**30:.2f} GiB with all recomputed, "
              f"+{info['per_layer_bytes'] / 2**20:.0f} MiB per layer that keeps its activations; "
              f"{info['budget_bytes'] / 2**30:.1f} GiB free)")


def run_summary(cfg: DictConfig, job: TrainingJob, model, result, identity: dict, device: str, data_info: dict,
                logger) -> dict:
    """``run.json``: the run's identity, full config, adapter, counts, losses, timings and environment."""
    import torch

    import prolora
    from prolora import bnb_cpu, checkpointing

    base_layer_type = next((type(m.base_layer).__name__ for m in model.modules() if hasattr(m, "base_layer")), None)
    return {
        "identity": identity,
        "identity_hash": job.run.identity_hash,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "method": job.run.adapter.name,
        "adapter": job.run.adapter.to_dict(),
        "trainable_params": prolora.count_trainable(model),
        "base_layer_type": base_layer_type,
        "git_commit": git_commit(),
        "steps": result.steps,
        "initial_loss": result.initial_loss,
        "final_loss": result.final_loss,
        "wall_time_s": result.wall_time_s,
        "tokens": result.tokens,
        "tokens_per_s": result.tokens_per_s,
        "resumed_from_step": result.resumed_from,
        "train_examples": data_info["train_examples"],
        "device": device,
        "cpu_4bit_path": bnb_cpu.report(model),
        "checkpointed_layers": checkpointing.recomputed(model),
        "torch": torch.__version__,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "wandb": logger.record() if logger else None,  # the run an evaluation of this checkpoint links to
    }


def write_final(job: TrainingJob, model, summary: dict) -> Path:
    """``final/``: the compact adapter, its PEFT export and run.json, written atomically together, with the sha256
    of every file (``checksums.json``; the adapter's and the export's also in run.json), which evaluation, merge,
    export and the grid runner verify."""
    import prolora
    from prolora import integrity
    from prolora.io import write_dir_atomic, write_json_atomic

    def write(tmp: Path) -> None:
        prolora.save_adapter(model, tmp)
        prolora.export_lora(model, tmp / "peft")
        summary["checkpoint_sha256"] = integrity.digest(tmp)  # the adapter and its export, as written
        write_json_atomic(tmp / "run.json", summary)
        integrity.write_manifest(tmp)  # every file, run.json included

    return write_dir_atomic(job.output_dir / "final", write)


def job_config_overrides(argv: list[str]) -> list[str] | None:
    """The overrides of a ``--cfg job`` call this module answers itself (checked and annotated), or None for
    every other command line (Hydra's own: training, ``-m``, ``--cfg hydra``, ``--help``, ...)."""
    overrides, asked = [], False
    args = iter(argv)
    for arg in args:
        if arg in ("--cfg", "-c") or arg.startswith("--cfg="):
            asked = (arg.split("=", 1)[1] if "=" in arg else next(args, "")) == "job"
        elif arg in ("--resolve",):
            continue
        elif arg.startswith("-"):
            return None
        else:
            overrides.append(arg)
    return overrides if asked else None


def check_run_dir(argv: list[str]) -> int:
    """Before Hydra creates the run directory (its first write, which a read-only disk would turn into a
    traceback): for a plain run (overrides only), compose the config, and say in one line, exit status 2, when its
    run directory cannot be written.  Anything else (flags, a bad override) is left to Hydra and the recipe."""
    from hydra import compose, initialize_config_dir

    if any(arg.startswith("-") for arg in argv):
        return 0
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(argv), return_hydra_config=True)
        run_dir = Path(cfg.hydra.run.dir)
    except Exception:  # noqa: BLE001  (the recipe reports a bad config in its own words)
        return 0
    problem = unwritable(run_dir)
    if problem:
        print(f"error: the run directory {run_dir} cannot be written ({problem}): point output_dir= at a writable "
              "directory", file=sys.stderr)
        return 2
    return 0


def unwritable(directory: Path) -> str | None:
    """Why ``directory`` cannot be created and written (None when it can): a 64 KiB probe file (Hydra's own files
    need about that much) is written and removed."""
    probe = directory / f".write-probe-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"\0" * (64 << 10))
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        return e.strerror or type(e).__name__
    finally:
        probe.unlink(missing_ok=True)
    return None


def show_job_config(overrides: list[str]) -> int:
    """Print the job config with each field's help as a comment, once its values pass the checks training makes
    (a bad value: one line on stderr, status 2).  Files and weights are not looked at here."""
    from hydra import compose, initialize_config_dir

    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
        run_config.build(cfg).check()
    except Exception as e:  # noqa: BLE001  (Hydra's override and composition errors, the library's checks)
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        return 2
    print(annotated_yaml(cfg))
    print("# values checked (the data and weights are checked when training starts)", file=sys.stderr)
    return 0


def annotated_yaml(cfg: DictConfig) -> str:
    """The resolved job config as YAML, each field followed by its help text (:func:`recipes.schema.help_lines`)."""
    from recipes.schema import TrainConfig, help_lines

    helps = {key: text for key, _, text in help_lines(TrainConfig) if text}
    job = OmegaConf.to_container(cfg, resolve=True)
    job.pop("hydra", None)
    lines, parents = [], []
    for line in OmegaConf.to_yaml(job).splitlines():
        body = line.lstrip(" ")
        indent = len(line) - len(body)
        if body.startswith("- ") or ":" not in body:
            lines.append(line)
            continue
        while parents and parents[-1][0] >= indent:
            parents.pop()
        name = body.split(":", 1)[0].strip("'\"")
        key = ".".join([k for _, k in parents] + [name])
        parents.append((indent, name))
        lines.append(f"{line}  # {helps[key]}" if key in helps else line)
    return "\n".join(lines)


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
@one_line_errors
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
