"""python -m scripts.parity: bad input ends in one line naming it, before any work; check finds what differs."""

import copy
import json
import subprocess
import sys

import pytest

from scripts.parity import build
from tests.conftest import REPO

RECORDED = json.loads((REPO / "results" / "parity" / "open_instruct_smollm2.json").read_text(encoding="utf-8"))


def parity(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "scripts.parity", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def git_repo(path):
    path.mkdir()
    for cmd in (["init", "-q"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty",
                                  "-m", "x"]):
        subprocess.run(["git", "-C", str(path), *cmd], check=True)
    return path


@pytest.mark.parametrize("args, message", [
    (["all", "--variants", "nope"], "--variants: unknown ['nope']"),
    (["check", "--work", "{tmp}"], "no built file (python -m scripts.parity build first)"),
])
def test_bad_arguments_give_one_line(tmp_path, args, message):
    proc = parity(*[a.format(tmp=tmp_path) for a in args])
    assert proc.returncode != 0
    assert message in proc.stderr.strip().splitlines()[-1]  # the last line names it (argparse: after the usage)


def test_reference_needs_the_recorded_commit(tmp_path):
    repo = git_repo(tmp_path / "fork")
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    proc = parity("reference", "--variants", "tydiqa_nochat", "--reference-repo", str(repo),
                  "--work", str(tmp_path / "work"))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: --reference-repo {repo}: HEAD is {head[:12]}, the parity record is of 2e2b1eedd75f "
        f"(git -C {repo} checkout 2e2b1eedd75f)"]
    assert not (tmp_path / "work").exists()  # refused before any work


def test_reference_refuses_a_directory_that_is_not_a_checkout(tmp_path):
    proc = parity("reference", "--variants", "tydiqa_nochat", "--reference-repo", str(tmp_path / "none"))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: --reference-repo {tmp_path / 'none'}: not a git checkout (git clone "
        "https://github.com/Forence1999/PRoLoRA DIR && git -C DIR checkout 2e2b1eedd75f)"]


def test_the_upstream_variant_needs_its_own_checkout():
    proc = parity("reference", "--variants", "mmlu_chat_upstream")
    assert proc.stderr.strip().splitlines() == [
        "error: --upstream-repo is needed for this variant: a checkout of allenai/open-instruct (git clone "
        "https://github.com/allenai/open-instruct DIR && git -C DIR checkout d61037f5f125)"]


def test_check_reports_every_measured_difference():
    assert build.check(RECORDED, RECORDED) == []
    changed = copy.deepcopy(RECORDED)
    v = changed["variants"]["tydiqa_nochat"]
    v["n_prompts_byte_identical"] -= 1
    v["examples"][0]["prediction"] = "something else"
    v["scores_percent"]["reference"]["languages"]["english"]["f1"] += 1e-3
    problems = build.check(changed, RECORDED)
    assert [p.split(" differs")[0] for p in problems] == [
        "tydiqa_nochat: n_prompts_byte_identical", "tydiqa_nochat: examples", "tydiqa_nochat: scores_percent.reference"]
