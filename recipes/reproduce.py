"""Reproduce a paper artefact: ``python -m recipes.reproduce experiment=table2 [--plan] [flags] [overrides]``.

Experiments: ``table2`` (LLaMA2-7B), ``table3`` (13B), ``table4`` (share/rotate variants, BBH), ``figure2``
(unshared rank x LR), ``demo`` (tiny model, minutes on a CPU).  ``make reproduce-table2 ARGS="--plan"``.

    --plan              list every cell with its state (done / running / failed / to do), Param. counts
                        (beside the paper's printed ones, mismatches flagged) and GPU-hour estimates
    --rows a,b          only these rows (ids from configs/experiment/<name>.yaml)
    --datasets a,b      only these training datasets
    --seeds 1,2         only these seeds
    --dry-run           print the commands of the cells that would run, run nothing
    --max-cells N       stop after N cells have run
    --gpus 0,1,...      run one cell per local GPU at once (each cell's processes see CUDA_VISIBLE_DEVICES=<id>;
                        the cells' locks share the work with any other runner); devices=[0,1] in the config
    --lr-sweep          rows with an lr_sweep list (VeRA, Tied LoRA) train at every LR of it
    --slurm             submit the cells as a Hydra multirun through hydra-submitit-launcher
                        (--launcher slurm_a100, configs/hydra/launcher/) instead of running them here
    --no-render         do not render the table after running
    --require-complete  exit 2 unless every selected cell is done afterwards (``make demo``, CI)

Anything else of the form key=value is a Hydra override of ``configs/reproduce.yaml`` (results_dir=,
runs_dir=, data_dir=, eval_backend=, train_logger=none, experiment.seeds=[1], commands.train=[...]).
Running trains and evaluates every cell that is not done, one subprocess per step; a failed cell is
recorded (with its stderr tail) and the grid goes on; rerunning after a crash or kill skips finished
cells and steps.  The grids, the runner, the plan and the tables are the package :mod:`recipes.paper`.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys

from hydra.errors import HydraException

from recipes import CONFIG_DIR, REPO
from recipes.paper.grid import build_grid, cells_dir, load_config, with_defaults
from recipes.paper.plan import plan_text
from recipes.paper.pool import parse_devices, run_pool
from recipes.paper.render import render_experiment
from recipes.paper.runner import Interrupted, Runner
from recipes.paper.state import cell_state

CELL_JOB_FLAG = "--cell-job"  # internal: this process is one Hydra (submitit) job running cell=<id>


def _csv(text: str | None) -> list[str] | None:
    return [x.strip() for x in text.split(",") if x.strip()] if text else None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m recipes.reproduce", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=table2 results_dir=...")
    p.add_argument("--plan", action="store_true")
    p.add_argument("--rows")
    p.add_argument("--datasets")
    p.add_argument("--seeds")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--max-cells", type=int)
    p.add_argument("--gpus", help="local GPU ids, one cell at a time on each (default: the config's devices)")
    p.add_argument("--lr-sweep", action="store_true")
    p.add_argument("--slurm", action="store_true")
    p.add_argument("--launcher", default="slurm_a100", help="hydra/launcher for --slurm (default slurm_a100)")
    p.add_argument("--no-render", action="store_true")
    p.add_argument("--require-complete", action="store_true")
    return p


def render(cfg, experiment: str) -> None:
    for path in render_experiment(cfg, experiment):
        print(f"wrote {path}")


def slurm_command(args: argparse.Namespace, overrides: list[str], cell_ids: list[str]) -> list[str]:
    return [sys.executable, "-m", "recipes.reproduce", CELL_JOB_FLAG, "--multirun",
            f"hydra/launcher={args.launcher}", *overrides, f"cell={','.join(cell_ids)}"]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if CELL_JOB_FLAG in argv:
        argv.remove(CELL_JOB_FLAG)
        return _cell_job(argv)
    args = parser().parse_intermixed_args(argv)
    overrides = list(args.overrides)
    if args.lr_sweep:
        overrides.append("lr_sweep=true")
    stray = [o for o in overrides if "=" not in o]
    if stray:
        print(f"error: {stray} are not key=value overrides; --rows, --datasets and --seeds take a comma list "
              "(--seeds 1,2)", file=sys.stderr)
        return 2
    try:  # a bad override, experiment or row ends in one line, before any work
        cfg = load_config(overrides)
        grid = build_grid(cfg, rows=_csv(args.rows), datasets=_csv(args.datasets),
                          seeds=[int(s) for s in _csv(args.seeds) or []] or None)
        args.devices = parse_devices(args.gpus if args.gpus is not None else cfg.get("devices"))
        if args.devices and args.max_cells is not None:
            raise ValueError("--max-cells runs cells one after another: drop it, or drop --gpus")
    except (HydraException, ValueError, OSError) as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        return 2
    name = cfg.experiment.name
    if args.plan:
        print(plan_text(cfg, grid))
        return 0
    if args.slurm:
        todo = [c.id for c in grid.cells if cell_state(cfg, c)[0] in ("to do", "failed")]
        if args.max_cells is not None:
            todo = todo[: args.max_cells]
        if not todo:
            print(f"{name}: nothing to submit (every selected cell is done or running)")
            return 0
        cmd = slurm_command(args, overrides, todo)
        print(f"{name}: submitting {len(todo)} cell(s) as a Hydra multirun ({args.launcher}):")
        print("  " + " ".join(cmd[:6]) + f" ... cell=<{len(todo)} ids>")
        if args.dry_run:
            print(" ".join(cmd))
            return 0
        return subprocess.call(cmd, cwd=REPO)
    print(f"{name}: {len(grid.cells)} cell(s) selected; results in {cells_dir(cfg, name)}")
    try:
        out = run_cells(cfg, grid, args)
    except Interrupted as e:
        print(f"{name}: interrupted ({e}); the cells that were cut are to do again: rerun to continue",
              file=sys.stderr)
        return 128 + signal.SIGTERM
    print(f"{name}: ran {len(out['done']) + len(out['failed'])} cell(s): {len(out['done'])} done, "
          f"{len(out['failed'])} failed, {len(out['skipped'])} already finished, "
          f"{len(out['running'])} running elsewhere")
    for cid in out["failed"]:
        print(f"  FAILED {cid}: see {cells_dir(cfg, name) / (cid + '.json')}")
    if cfg.render and not args.no_render and not args.dry_run:
        render(cfg, name)
    if args.require_complete and not args.dry_run:
        done = sum(cell_state(cfg, c)[0] == "done" for c in grid.cells)
        if done < len(grid.cells):
            print(f"{name}: INCOMPLETE: {done} of {len(grid.cells)} cells done")
            return 2
    return 1 if out["failed"] else 0


def run_cells(cfg, grid, args: argparse.Namespace) -> dict[str, list[str]]:
    """Here, one cell at a time, or with ``--gpus 0,1,...`` (``devices=`` in the config) one cell per GPU at once."""
    if not args.devices or args.dry_run:
        return Runner(cfg, grid).run(max_cells=args.max_cells, dry_run=args.dry_run)
    print(f"{cfg.experiment.name}: one worker per GPU {args.devices} (CUDA_VISIBLE_DEVICES per cell process)")
    return run_pool(cfg, grid, args.devices)


def _job(hcfg) -> str:
    """One Hydra job: run cell ``hcfg.cell`` of the experiment (train + evaluate + record)."""
    cfg = with_defaults(hcfg)
    grid = build_grid(cfg)
    result = Runner(cfg, grid).run_cell(grid.cell(str(cfg.cell)))
    if result == "failed":  # recorded in the cell file; not raised, so the other jobs of the sweep go on
        print(f"cell {cfg.cell} FAILED: see {cells_dir(cfg, cfg.experiment.name) / (cfg.cell + '.json')}")
    return result


def _cell_job(argv: list[str]) -> int:
    """``--multirun ... cell=<id>,<id>,...``: Hydra launches one job per cell (submitit on SLURM)."""
    import hydra

    from recipes import config_store

    config_store.register()
    sys.argv = [sys.argv[0], *argv]
    hydra.main(config_path=CONFIG_DIR, config_name="reproduce", version_base="1.3")(_job)()
    return 0


if __name__ == "__main__":
    sys.exit(main())
