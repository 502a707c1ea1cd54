"""Running a grid: one subprocess per step (train, then evaluate), a lock per cell, a record per cell.

A cell runs unless its state (:mod:`recipes.paper.state`) is done, running (another process holds its lock, so
two runners never run one cell) or failed without ``retry_failed``.  Each step runs in its own subprocess (its
own process group), so a crash or OOM of one cell only marks that cell failed (stage, return code, stderr
tail); SIGTERM/SIGINT of the runner stop the step's whole process group and wait for it before the lock goes;
a killed grid resumes where it stopped (finished steps are never rerun: ``final/run.json`` marks a finished
training, an ``eval.json`` whose ``status`` is ``complete`` a finished evaluation).  A cell is recorded done
only when its files agree (the evaluation scored this cell's checkpoint, the training ran its steps).  The record
carries the metrics, the loss curve and the training's measured ``cost`` (median step time, the first step's peak
memory and the adapter's own bytes, read off the trainer's ``metrics.jsonl``).

Cells evaluated unmerged on the hf backend (``eval_together`` > 1) are trained one by one and then evaluated in
groups of up to ``eval_together`` cells of one base model and one evaluation setting (the same evaluation
directory name), in one ``recipes.evaluate checkpoints=[...]`` pass holding every cell's lock: one base load,
rows of all checkpoints batched together, each cell's eval.json the one it gets alone.  The authors' protocol
(merged models) evaluates cell by cell as before.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from prolora import integrity
from prolora.io import FileLock, read_json_object, read_tail, write_json_atomic
from recipes import REPO, git_commit
from recipes.paper.facts import COLUMNS, eval_to_columns, subset_columns
from recipes.paper.grid import Cell, Grid, cells_dir, compose, eval_command, train_args, train_command
from recipes.paper.plan import count_params
from recipes.paper.state import cell_state, eval_complete

CELL_SCHEMA = 1
_RECORD_LOCK = threading.Lock()


def _loss_curve(metrics: Path) -> list[list[float]]:
    curve = []
    try:
        for line in metrics.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and rec.get("loss") is not None and rec.get("step") is not None:
                curve.append([rec["step"], rec["loss"]])
    except OSError:
        pass
    return curve


def _train_cost(metrics: Path) -> dict[str, Any] | None:
    """What the training cost, from the trainer's ``metrics.jsonl``: the median time of the logged steps (the
    profiled first step left out), and the first step's measured peak memory and the adapter's own bytes."""
    rows = []
    try:
        for line in metrics.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and rec.get("step") is not None:
                rows.append(rec)
    except OSError:
        return None
    times = sorted(float(r["step_s"]) for r in rows if r.get("step_s") is not None and not r.get("profiled"))
    first = next((r for r in rows if r.get("profiled")), {})
    if not times and not first:
        return None
    return {"step_s_median": statistics.median(times) if times else None, "steps_timed": len(times),
            "step_peak_bytes": first.get("step_peak_bytes"), "adapter_bytes": first.get("adapter_bytes"),
            "memory_method": first.get("memory_method", "cpu profiler allocation peak" if first else None)}


class Interrupted(Exception):
    pass


class Runner:
    """Runs the cells of a grid that are not done, one subprocess per step, recording each cell."""

    def __init__(self, cfg: DictConfig, grid: Grid, log: Callable[[str], None] = print,
                 env: dict[str, str] | None = None, interrupted: threading.Event | None = None):
        self.cfg = cfg
        self.grid = grid
        self.log = log
        self.dir = cells_dir(cfg, grid.experiment)
        self.env = env  # extra environment of the steps (a device pool's CUDA_VISIBLE_DEVICES)
        self.interrupted = interrupted  # set by a device pool on SIGTERM: a step that ends then is not recorded
        self._child: subprocess.Popen | None = None
        self._lock: FileLock | None = None
        self._group_locks: list[FileLock] = []  # the cells of an evaluation together
        self._info: dict[str, Any] = {}
        self._stop = threading.Event()

    # -- locks
    def _write_lock(self) -> None:
        self._info["heartbeat"] = time.time()
        for lock in ([self._lock] if self._lock is not None else []) + self._group_locks:
            lock.write(self._info)

    def _acquire(self, cell: Cell) -> bool:
        lock = FileLock(self.dir / f"{cell.id}.lock")
        self._info = {"host": socket.gethostname(), "child_pid": None, "started": time.time(),
                      "heartbeat": time.time(), "stage": "starting"}
        if not lock.acquire(self._info):
            return False
        self._lock = lock
        return True

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _heartbeat(self) -> None:
        while not self._stop.wait(30):
            try:
                self._write_lock()
            except OSError:
                pass

    # -- steps
    def _step(self, stage: str, cmd: list[str], log_dir: Path) -> tuple[int, float, Path]:
        log_dir.mkdir(parents=True, exist_ok=True)
        out, err = log_dir / f"{stage}.stdout.log", log_dir / f"{stage}.stderr.log"
        self._info["stage"] = stage
        self.log(f"    {stage}: {' '.join(cmd)}")
        t0 = time.time()
        with open(out, "ab") as fo, open(err, "ab") as fe:
            fe.write(f"\n==== {datetime.now(UTC).isoformat()} {' '.join(cmd)}\n".encode())
            fe.flush()
            # its own process group: stopping the step stops what it started too (W&B's service, ...)
            env = {**os.environ, **self.env} if self.env else None
            self._child = subprocess.Popen(cmd, cwd=REPO, stdout=fo, stderr=fe, start_new_session=True, env=env)
            self._info["child_pid"] = self._child.pid
            self._write_lock()
            try:
                rc = self._child.wait()
            except BaseException:  # SIGTERM (Interrupted) or SIGINT: the child goes first, then the lock
                self._terminate_child()
                raise
            finally:
                self._child = None
                self._info["child_pid"] = None
        if self.interrupted is not None and self.interrupted.is_set():  # stopped by the pool: record nothing
            raise Interrupted("the device pool was stopped")
        return rc, time.time() - t0, err

    def stop_step(self) -> None:
        """Stop the running step's process group (a device pool's signal handler calls this per worker)."""
        self._terminate_child()

    def _terminate_child(self, grace_s: float = 30) -> None:
        """SIGTERM the step's process group, wait up to ``grace_s``, then SIGKILL it and reap the child."""
        child = self._child
        if child is None:
            return
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10)):
            try:
                os.killpg(child.pid, sig)
            except ProcessLookupError:
                break
            try:
                child.wait(wait)
                if sig == signal.SIGTERM:
                    os.killpg(child.pid, signal.SIGKILL)  # what the child started and left behind
                break
            except subprocess.TimeoutExpired:
                continue
            except ProcessLookupError:
                break
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            pass

    @staticmethod
    def inconsistency(cell: Cell, run_json: dict | None, ev: dict | None) -> str | None:
        """Why the cell's files do not belong together (None when they do)."""
        if not ev or ev.get("status") != "complete":
            return "eval.json is missing or incomplete"
        model = ev.get("model") or {}
        if cell.eval_only:
            return None if model.get("kind") == "base" else f"eval.json scored a {model.get('kind')} model, not the base"
        if not run_json:
            return "final/run.json is missing"
        config = run_json.get("config") or {}
        expected = {"steps": cell.max_steps, "seed": cell.seed, "lr": cell.lr}
        found = {"steps": run_json.get("steps"), "seed": config.get("seed"), "lr": (config.get("optim") or {}).get("lr")}
        if found != expected:
            return f"the training in {cell.run_dir} is not this cell's ({found} != {expected})"
        scored = model.get("adapter_dir")
        if scored is None or Path(scored).resolve() != (cell.run_dir / "final").resolve():
            return f"eval.json scored {scored}, not this cell's checkpoint {cell.run_dir / 'final'}"
        allowed = bool((ev.get("checkpoint_integrity") or {}).get("allow_modified"))
        try:  # the checkpoint is still what training wrote (or the evaluation was told to accept it)
            integrity.verify(cell.run_dir / "final", allow_modified=allowed, expected=run_json.get("checkpoint_sha256"))
        except integrity.ModifiedCheckpoint as e:
            return str(e)
        return None

    def _record(self, cell: Cell, status: str, timings: dict[str, float], failure: dict[str, Any] | None,
                commands: dict[str, list[str]]) -> dict[str, Any]:
        with _RECORD_LOCK:  # in-process work with lazy imports (transformers'): one worker of a pool at a time
            return self._write_record(cell, status, timings, failure, commands)

    def _write_record(self, cell: Cell, status: str, timings: dict[str, float], failure: dict[str, Any] | None,
                      commands: dict[str, list[str]]) -> dict[str, Any]:
        run_json = read_json_object(cell.run_dir / "final" / "run.json") if cell.run_dir else None
        ev = read_json_object(cell.eval_dir / "eval.json")
        problem = self.inconsistency(cell, run_json, ev) if status == "done" else None
        if problem:
            self.log(f"    NOT recorded as done: {problem}")
            status, failure = "failed", {"stage": "record", "returncode": None, "reason": problem}
        metrics_path = cell.run_dir / "metrics.jsonl" if cell.run_dir else None
        resolved = None
        if cell.variant:
            try:
                resolved = OmegaConf.to_container(compose("config", train_args(self.cfg, cell)), resolve=True)
            except Exception as e:  # the recipe's config may reject the overrides: keep the record anyway
                resolved = {"error": f"{type(e).__name__}: {e}"}
        sha = git_commit()
        rec: dict[str, Any] = {
            "schema": CELL_SCHEMA, "status": status, **cell.as_dict(),
            "metrics": eval_to_columns(ev, COLUMNS) if ev else {},
            "subsets": {c: v for c, v in subset_columns(ev).items() if c in self.cfg.experiment.columns},
            "protocol": (ev or {}).get("protocol"),
            "checkpoint_integrity": (ev or {}).get("checkpoint_integrity"),
            "trainable_params": count_params(cell.model, cell.variant.method) if cell.variant else None,
            "trainable_params_run": (run_json or {}).get("trainable_params"),
            "train": {k: (run_json or {}).get(k) for k in
                      ("wall_time_s", "tokens_per_s", "initial_loss", "final_loss", "steps")} if run_json else None,
            "loss_curve": _loss_curve(metrics_path) if metrics_path else [],
            "cost": _train_cost(metrics_path) if metrics_path else None,
            "eval": ev,
            "timings": {**timings, "recorded_at": datetime.now(UTC).isoformat()},
            "git": {"commit": sha.removesuffix("-dirty") if sha else None, "dirty": bool(sha and sha.endswith("-dirty"))},
            "run_git_commit": (run_json or {}).get("git_commit"),
            "paths": {
                "run_dir": str(cell.run_dir) if cell.run_dir else None,
                "checkpoint": str(cell.run_dir / "final") if cell.run_dir else None,
                "metrics_jsonl": str(metrics_path) if metrics_path else None,
                "eval_dir": str(cell.eval_dir), "eval_json": str(cell.eval_dir / "eval.json")},
            "commands": commands,
            "config": {"train": resolved, "run": (run_json or {}).get("config"),
                       "experiment": OmegaConf.to_container(self.cfg.experiment, resolve=True)},
        }
        if failure:
            rec["failure"] = failure
        write_json_atomic(self.dir / f"{cell.id}.json", rec, sort_keys=False)
        return rec

    def _stage(self, stage: str, cmd: list[str], cwd: Path, marker: Path, timings: dict[str, float],
               tail: int, done: Callable[[], bool] | None = None) -> dict | None:
        """Run one step of a cell unless ``done()`` (default: its ``marker`` file exists) shows it finished;
        the failure record or None."""
        done = done or marker.exists
        if done():
            self.log(f"    {stage}: already done ({marker.parent.name}/{marker.name}), reusing")
            return None
        rc, secs, err = self._step(stage, cmd, cwd)
        timings[f"{stage}_s"] = round(secs, 3)
        if rc == 0 and done():
            return None
        why = f"exit code {rc}" if rc != 0 else f"exit code 0 but no finished {marker.name}"
        self.log(f"    {stage} FAILED ({why})")
        return {"stage": stage, "returncode": rc, "reason": why, "stderr_tail": read_tail(err, tail),
                "stderr_log": str(err)}

    def _start_heartbeat(self) -> None:
        """Keep the held locks' heartbeats fresh until ``self._stop`` is set (by the step's ``finally``)."""
        self._stop.clear()
        threading.Thread(target=self._heartbeat, daemon=True).start()

    def run_cell(self, cell: Cell) -> str:
        """Run what is missing of one cell; returns done | failed | running (someone else has it)."""
        if not self._acquire(cell):
            return "running"
        self._start_heartbeat()
        timings: dict[str, float] = {}
        commands: dict[str, list[str]] = {}
        tail = int(self.cfg.stderr_tail_chars)
        try:
            if not cell.eval_only:
                assert cell.run_dir is not None
                commands["train"] = train_command(self.cfg, cell)
                failure = self._stage("train", commands["train"], cell.run_dir,
                                      cell.run_dir / "final" / "run.json", timings, tail)
                if failure:
                    return self._record(cell, "failed", timings, failure, commands)["status"]
            commands["evaluate"] = eval_command(self.cfg, cell)
            failure = self._stage("eval", commands["evaluate"], cell.eval_dir, cell.eval_dir / "eval.json",
                                  timings, tail, done=lambda: eval_complete(cell.eval_dir))
            if failure:
                return self._record(cell, "failed", timings, failure, commands)["status"]
            return self._record(cell, "done", timings, None, commands)["status"]
        except (KeyboardInterrupt, Interrupted):
            self._terminate_child()
            raise
        finally:
            self._stop.set()
            self._release()

    # -- evaluating trained cells together
    def together_key(self, cell: Cell) -> tuple[str, str] | None:
        """The group a cell is evaluated with (its base model, its evaluation directory's name: tasks, chat,
        overrides), or None when it is evaluated alone (eval-only, merged, vLLM, ``eval_together`` <= 1)."""
        merged = any(o.replace(" ", "").lower() == "merge=true" for o in cell.eval_overrides)
        if cell.eval_only or merged or str(self.cfg.eval_backend) != "hf" or self.together_size() <= 1:
            return None
        return cell.model, cell.eval_dir.name

    def together_size(self) -> int:
        return int(self.cfg.get("eval_together", 1) or 1)

    def train_cell(self, cell: Cell) -> str:
        """Train one cell under its lock (evaluation deferred to :meth:`evaluate_cells`): trained | failed |
        running (someone else has it)."""
        if not self._acquire(cell):
            return "running"
        self._start_heartbeat()
        timings: dict[str, float] = {}
        commands = {"train": train_command(self.cfg, cell)}
        try:
            failure = self._stage("train", commands["train"], cell.run_dir, cell.run_dir / "final" / "run.json",
                                  timings, int(self.cfg.stderr_tail_chars))
            return self._record(cell, "failed", timings, failure, commands)["status"] if failure else "trained"
        except (KeyboardInterrupt, Interrupted):
            self._terminate_child()
            raise
        finally:
            self._stop.set()
            self._release()

    def evaluate_cells(self, cells: Sequence[Cell]) -> dict[str, str]:
        """Evaluate trained cells of one group in one pass (one cell: its own command) holding all their
        locks, then record each; ``{cell id: done | failed | running}``."""
        held: list[Cell] = []
        status: dict[str, str] = {}
        for cell in cells:
            lock = FileLock(self.dir / f"{cell.id}.lock")
            if lock.acquire({"host": socket.gethostname(), "stage": "eval_together", "started": time.time()}):
                self._group_locks.append(lock)
                held.append(cell)
            else:
                status[cell.id] = "running"
        self._start_heartbeat()
        try:
            todo = [c for c in held if not eval_complete(c.eval_dir)]
            timings: dict[str, float] = {}
            cmd = eval_command(self.cfg, (todo or held)[0]) if len(todo) <= 1 and held else \
                together_command(self.cfg, todo)
            failure = None
            if todo:
                rc, secs, err = self._step("eval", cmd, todo[0].eval_dir)  # the pass's logs: beside the first's
                timings = {"eval_s": round(secs, 3), "eval_together": len(todo)}
                failure = {"stage": "eval", "returncode": rc, "stderr_tail": read_tail(err, int(self.cfg.stderr_tail_chars)),
                           "stderr_log": str(err)}
            for cell in held:
                ok = eval_complete(cell.eval_dir)
                fail = None if ok else {**(failure or {}), "reason": f"exit code {failure and failure['returncode']} "
                                        "but no finished eval.json for this cell"}
                commands = {"train": train_command(self.cfg, cell), "evaluate": cmd}
                status[cell.id] = self._record(cell, "done" if ok else "failed", timings, fail, commands)["status"]
            return status
        except (KeyboardInterrupt, Interrupted):
            self._terminate_child()
            raise
        finally:
            self._stop.set()
            for lock in self._group_locks:
                lock.release()
            self._group_locks = []

    def run(self, cells: Sequence[Cell] | None = None, max_cells: int | None = None,
            dry_run: bool = False) -> dict[str, list[str]]:
        cells = list(self.grid.cells if cells is None else cells)
        outcome: dict[str, list[str]] = {"done": [], "failed": [], "skipped": [], "running": []}
        pending: dict[tuple[str, str], list[Cell]] = {}  # trained cells waiting for their group's evaluation
        ran = 0

        def on_term(signum, frame):  # noqa: ARG001
            raise Interrupted(f"signal {signum}")

        old = signal.signal(signal.SIGTERM, on_term) if threading.current_thread() is threading.main_thread() \
            else None
        try:
            for i, cell in enumerate(cells, 1):
                state, detail = cell_state(self.cfg, cell)
                if state == "done" or (state == "failed" and not self.cfg.retry_failed):
                    outcome["skipped"].append(cell.id)
                    continue
                if state == "running":
                    self.log(f"[{i}/{len(cells)}] {cell.id}: running elsewhere, skipped")
                    outcome["running"].append(cell.id)
                    continue
                if max_cells is not None and ran >= max_cells:
                    break
                ran += 1
                self.log(f"[{i}/{len(cells)}] {cell.id} ({state}{', retry' if state == 'failed' else ''}"
                         f"{': ' + detail if detail else ''})")
                if dry_run:
                    if not cell.eval_only:
                        self.log("    train: " + " ".join(train_command(self.cfg, cell)))
                    self.log("    eval:  " + " ".join(eval_command(self.cfg, cell))
                             + (" (with its group, in one pass)" if self.together_key(cell) else ""))
                    continue
                key = self.together_key(cell)
                status = self.train_cell(cell) if key else self.run_cell(cell)
                if status == "trained":
                    pending.setdefault(key, []).append(cell)
                    self.log(f"    -> trained, evaluated with its group ({len(pending[key])} so far)")
                    if len(pending[key]) >= self.together_size():
                        self._flush(pending.pop(key), outcome)
                    continue
                outcome.setdefault(status, []).append(cell.id)
                self.log(f"    -> {status}")
            for group in list(pending.values()):
                self._flush(group, outcome)
        finally:
            if old is not None:
                signal.signal(signal.SIGTERM, old)
        return outcome

    def _flush(self, cells: list[Cell], outcome: dict[str, list[str]]) -> None:
        self.log(f"evaluating {len(cells)} trained cell(s) together: {', '.join(c.id for c in cells)}")
        for cid, status in self.evaluate_cells(cells).items():
            outcome.setdefault(status, []).append(cid)
            self.log(f"    {cid} -> {status}")


def together_command(cfg: DictConfig, cells: Sequence[Cell]) -> list[str]:
    """``recipes.evaluate`` over several trained cells of one group: their checkpoints and evaluation
    directories as lists, everything else as each cell's own command has it."""
    def quoted(path: Path) -> str:
        return "'" + str(path).replace("\\", "\\\\").replace("'", "\\'") + "'"

    own = [a for a in eval_command(cfg, cells[0]) if not a.startswith(("checkpoint=", "output_dir="))]
    return own + [f"checkpoints=[{','.join(quoted(c.run_dir / 'final') for c in cells)}]",
                  f"output_dirs=[{','.join(quoted(c.eval_dir) for c in cells)}]"]
