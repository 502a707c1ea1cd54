"""N cells on N local GPUs: one worker per device, each running the grid's cells one at a time with its own
``CUDA_VISIBLE_DEVICES``, taking the next cell nobody holds.

The runner's guarantees hold unchanged: a cell's ``flock`` decides who runs it (so a second pool or runner on the
same results directory shares the work instead of repeating it), each step runs in its own process group, and a
cell is recorded only when its files agree.  SIGTERM/SIGINT of the pool stops every worker's step, records nothing
for the cells that were cut, and releases their locks; a rerun continues where it stopped.
"""

from __future__ import annotations

import queue
import signal
import threading
from collections.abc import Callable, Sequence

from omegaconf import DictConfig

from recipes.paper.grid import Cell, Grid
from recipes.paper.runner import Interrupted, Runner
from recipes.paper.state import cell_state


def parse_devices(text: str | Sequence | None) -> list[str]:
    """``"0,1,3"`` / ``[0, 1, 3]`` → ``["0", "1", "3"]``; one line naming the problem otherwise."""
    if text is None or text == "":
        return []
    items = [str(x).strip() for x in (text.split(",") if isinstance(text, str) else text)]
    if any(not x.isdigit() for x in items) or len(set(items)) != len(items):
        raise ValueError(f"devices={text!r}: give distinct GPU indices, e.g. --gpus 0,1,2,3")
    return items


def run_pool(cfg: DictConfig, grid: Grid, devices: list[str], cells: Sequence[Cell] | None = None,
             log: Callable[[str], None] = print) -> dict[str, list[str]]:
    """Run the cells that are not done on ``devices`` at once; returns ``{"done", "failed", "skipped",
    "running", "interrupted"}`` cell ids, as :meth:`Runner.run` does."""
    todo: queue.Queue[Cell] = queue.Queue()
    outcome: dict[str, list[str]] = {"done": [], "failed": [], "skipped": [], "running": [], "interrupted": []}
    for cell in grid.cells if cells is None else cells:
        state, _ = cell_state(cfg, cell)
        if state == "done" or (state == "failed" and not cfg.retry_failed):
            outcome["skipped"].append(cell.id)
        else:
            todo.put(cell)
    stop = threading.Event()
    runners = {d: Runner(cfg, grid, log=lambda m, d=d: log(f"[gpu {d}] {m}"), env={"CUDA_VISIBLE_DEVICES": d},
                         interrupted=stop) for d in devices}
    lock = threading.Lock()

    def work(device: str) -> None:
        runner = runners[device]
        while not stop.is_set():
            try:
                cell = todo.get_nowait()
            except queue.Empty:
                return
            runner.log(f"{cell.id}")
            try:
                status = runner.run_cell(cell)
            except Interrupted:
                status = "interrupted"
            except Exception as e:  # noqa: BLE001  (a bug must not end a worker silently: say it, go on)
                runner.log(f"    ERROR {type(e).__name__}: {e}")
                status = "failed"
            with lock:
                outcome.setdefault(status, []).append(cell.id)
            runner.log(f"    -> {status}")

    threads = [threading.Thread(target=work, args=(d,), name=f"gpu-{d}") for d in devices]
    with _stopping_on_signals(stop, runners.values()):
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(0.5)  # short joins: the main thread must stay free to take the signal
    if stop.is_set():
        raise Interrupted("stopped by a signal: the cells that were cut are to do again; rerun to continue")
    return outcome


class _stopping_on_signals:
    """While active, SIGTERM/SIGINT set ``stop`` and stop every runner's running step (its process group)."""

    def __init__(self, stop: threading.Event, runners):
        self.stop, self.runners, self.old = stop, list(runners), {}

    def _handle(self, signum, frame):  # noqa: ARG002
        self.stop.set()
        for runner in self.runners:
            threading.Thread(target=runner.stop_step, daemon=True).start()

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc):
        for s, handler in self.old.items():
            signal.signal(s, handler)
