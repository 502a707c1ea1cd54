"""tests/wandb_offline.py against real offline runs written by the installed wandb (no mocks, no network)."""

import shutil
import struct
import time
import zlib

import pytest

from tests.wandb_offline import (
    BLOCK_LEN,
    FIRST,
    LAST,
    MIDDLE,
    CorruptRunFile,
    find_runs,
    iter_record_bytes,
    read_run,
)

BIG = "x" * 70_000  # one history row over two 32 KiB blocks: FIRST / MIDDLE / LAST fragments


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two offline runs in one dir: a train run, then a resume of it (same id) with a block-spanning row."""
    wandb = pytest.importorskip("wandb")
    root = tmp_path_factory.mktemp("wandb_runs")
    home = tmp_path_factory.mktemp("wandb_home")
    settings = dict(console="off", x_disable_stats=True, disable_git=True, save_code=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
            mp.setenv(var, str(home / var.lower()))
        mp.delenv("WANDB_BASE_URL", raising=False)
        first = wandb.init(mode="offline", dir=root, project="p", group="g", name="n", job_type="train",
                           tags=["lora", "r8"], config={"method": "prolora", "r": 8, "lr": 2e-4},
                           settings=wandb.Settings(**settings))
        for step, loss in [(0, 2.5), (5, 1.75), (10, 1.25)]:
            first.log({"train/loss": loss, "train/lr": 2e-4 * (1 - step / 20)}, step=step)
        first.summary.update({"mmlu": 41.2})
        first.config.update({"dataset": {"name": "demo", "n": 3}})
        run_id = first.id
        first.finish()
        # an offline run's directory is named offline-run-<second>-<id>: a resume within the same second writes
        # into the first run's directory (one reason recipes/tracking.py never resumes offline runs)
        started = int(time.time())
        while int(time.time()) == started:
            time.sleep(0.05)
        second = wandb.init(mode="offline", dir=root, project="p", id=run_id, resume="allow",
                            job_type="eval", config={"stage": "resumed"}, settings=wandb.Settings(**settings))
        second.log({"eval/acc": 0.5}, step=20)
        second.log({"sample": BIG}, step=21)
        second.finish()
    return root, run_id


def test_first_run_reads_back_config_history_summary_and_run_fields(runs):
    root, run_id = runs
    dirs = find_runs(root)
    run = read_run(dirs[0])
    assert run.path.name == f"run-{run_id}.wandb" and run.path.parent == dirs[0]
    assert {k: v for k, v in run.config.items() if not k.startswith("_")} == {
        "method": "prolora", "r": 8, "lr": 2e-4, "dataset": {"name": "demo", "n": 3}}
    assert [row["_step"] for row in run.history] == [0, 5, 10]
    assert [row["train/loss"] for row in run.history] == [2.5, 1.75, 1.25]
    assert run.history[1]["train/lr"] == pytest.approx(2e-4 * 0.75)
    assert run.summary["mmlu"] == 41.2
    assert run.summary["train/loss"] == 1.25 and run.summary["_step"] == 10  # final summary = last row + updates
    assert {k: run.run[k] for k in ("id", "project", "group", "name", "job_type", "tags")} == {
        "id": run_id, "project": "p", "group": "g", "name": "n", "job_type": "train", "tags": ["lora", "r8"]}
    assert run.exit_code == 0
    kinds = [r.WhichOneof("record_type") for r in run.records]
    assert kinds[:2] == ["header", "run"] and kinds.count("history") == 3 and "exit" in kinds


def test_resumed_run_is_a_second_dir_with_its_own_records(runs):
    root, run_id = runs
    dirs = find_runs(root)
    assert len(dirs) == 2 and all(d.name.startswith("offline-run-") and d.name.find(run_id) > 0 for d in dirs)
    assert "latest-run" not in [d.name for d in dirs]
    second = read_run(dirs[1])
    assert second.run["id"] == run_id and second.run["job_type"] == "eval"
    assert second.config.get("stage") == "resumed" and "method" not in second.config
    assert [row["_step"] for row in second.history] == [20, 21]
    assert second.history[0]["eval/acc"] == 0.5 and second.history[1]["sample"] == BIG
    assert "mmlu" not in second.summary
    # The same run through its file, its dir's parent of parents, and refusal when the choice is ambiguous.
    assert read_run(second.path).history == second.history
    with pytest.raises(ValueError, match="holds 2 offline runs"):
        read_run(root)
    with pytest.raises(FileNotFoundError, match="no W&B offline run"):
        read_run(root / "wandb" / dirs[0].name / "files")


def test_long_record_is_fragmented_across_blocks_and_checksums_verify(runs):
    root, _ = runs
    path = read_run(find_runs(root)[1]).path
    data = path.read_bytes()
    assert len(data) > 2 * BLOCK_LEN
    types, pos = [], 7
    while pos < len(data):
        if BLOCK_LEN - pos % BLOCK_LEN < 7:
            pos += BLOCK_LEN - pos % BLOCK_LEN
            continue
        crc, length, rtype = struct.unpack("<IHB", data[pos:pos + 7])
        assert crc == zlib.crc32(bytes([rtype]) + data[pos + 7:pos + 7 + length])
        types.append(rtype)
        pos += 7 + length
    assert FIRST in types and MIDDLE in types and LAST in types
    assert sum(len(r) for r in iter_record_bytes(data)) > len(BIG)


def test_single_run_dir_resolves_through_wandb_subdir(runs, tmp_path):
    root, run_id = runs
    only = tmp_path / "one"
    shutil.copytree(find_runs(root)[0], only / "wandb" / find_runs(root)[0].name)
    assert read_run(only).run["id"] == run_id
    assert read_run(only / "wandb").history == read_run(find_runs(root)[0]).history


@pytest.mark.parametrize("damage, match", [
    (lambda d: d[:-10], "truncated"),
    (lambda d: d[:BLOCK_LEN + 100], "truncated"),  # cut inside the MIDDLE fragment of the 70 KB row
    (lambda d: d[:2 * BLOCK_LEN], "has no LAST"),  # cut after FIRST + a block-filling MIDDLE
    (lambda d: d[:200] + bytes([d[200] ^ 0xFF]) + d[201:], "checksum mismatch"),
    (lambda d: b"XXXX" + d[4:], "not a W&B run file"),
    (lambda d: d[:3], "too short"),
    (lambda d: d[:7] + d[7:11] + b"\xff\xff" + d[13:], "more than the"),  # length beyond the block
    (lambda d: d[:13] + b"\x09" + d[14:], "unknown record type 9"),
])
def test_corrupt_files_raise_clear_errors(runs, tmp_path, damage, match):
    root, _ = runs
    good = read_run(find_runs(root)[1]).path.read_bytes()
    bad = tmp_path / "run-bad.wandb"
    bad.write_bytes(damage(good))
    with pytest.raises(CorruptRunFile, match=match):
        read_run(bad)
