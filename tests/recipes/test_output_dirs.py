"""Where a run writes, as a hostile user would set it up: a read-only disk, a full one, a symlink, and a training
file changed between a run and its resume.  Each ends in one line and loses no finished work."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

FAST = ["model=tiny", "dataset=demo", "logger=none", "trainer.max_steps=4", "trainer.batch_size=8",
        "trainer.micro_batch_size=8", "trainer.save_every=2", "trainer.gradient_checkpointing=false",
        "method=lora", "rank=2"]


def _train(*args):
    return subprocess.run([sys.executable, "train.py", *FAST, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PROLORA_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"})


@pytest.fixture
def tmpfs(tmp_path):
    """``mount(options)``: a small tmpfs under tmp_path (root only; unmounted afterwards)."""
    mounted = []

    def mount(options: str) -> Path:
        point = tmp_path / f"fs{len(mounted)}"
        point.mkdir()
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True)
        if out.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({out.stderr.decode().strip()[:80]})")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def test_a_read_only_disk_is_named_before_any_work(tmpfs):
    run_dir = tmpfs("ro,size=1m") / "run"
    out = _train(f"output_dir={run_dir}")
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        f"error: the run directory {run_dir} cannot be written (Read-only file system): point output_dir= at a "
        "writable directory"]


def test_a_disk_that_fills_up_stops_in_one_line_and_keeps_what_was_complete(tmpfs):
    point = tmpfs("size=128k")
    out = _train(f"output_dir={point / 'run'}")
    lines = [line for line in out.stderr.strip().splitlines() if line.startswith("error:")]
    assert out.returncode == 2 and len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert lines[0].startswith(f"error: no space left on the device of {point / 'run'}") and \
        "nothing was replaced: free some space or write elsewhere" in lines[0]
    leftovers = [p.name for p in (point / "run").rglob(".tmp-*")]
    assert leftovers == []  # the half-written checkpoint is gone; a resume finds only complete ones


def test_a_symlinked_output_dir_is_one_run(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    first = _train(f"output_dir={link}")
    assert first.returncode == 0, first.stderr[-2000:]
    assert (real / "final" / "run.json").is_file() and link.is_symlink()
    again = _train(f"output_dir={real}")  # the same run through its real path: finished, nothing retrained
    assert again.returncode == 0 and "already finished" in again.stdout


def test_a_training_file_changed_before_the_resume_is_refused(tmp_path):
    data = tmp_path / "train.jsonl"
    demo = (REPO / "prolora" / "assets" / "demo" / "train.jsonl").read_text().splitlines()
    data.write_text("\n".join(demo[:200]) + "\n")
    run_dir = tmp_path / "run"
    first = _train(f"output_dir={run_dir}", f"dataset.train_file={data}", "trainer.max_steps=6")
    assert first.returncode == 0, first.stderr[-2000:]
    import shutil

    shutil.rmtree(run_dir / "final")  # as if killed after its checkpoints
    data.write_text("\n".join(demo[:199]) + "\n")  # one row fewer, same path
    resumed = _train(f"output_dir={run_dir}", f"dataset.train_file={data}", "trainer.max_steps=6",
                     "trainer.resume=true")
    assert resumed.returncode == 2, resumed.stderr[-2000:]
    (line,) = [x for x in resumed.stderr.strip().splitlines() if x.startswith("error:")]
    assert "belongs to another run (data_sha256:" in line
    assert json.loads(json.dumps(sorted(p.name for p in (run_dir / "checkpoints").iterdir()))) == [
        "step_0000002", "step_0000004"]  # nothing of the earlier run was touched
