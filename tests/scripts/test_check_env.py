"""The environment `make install` built is the locked one (requirements.lock, + requirements-vllm.lock for the
vLLM profile), so a new release of a dependency cannot change what the suite runs against; `make test` checks
it every time, and a differing version fails the check."""

import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from scripts import check_env

REPO = Path(__file__).resolve().parents[2]


def run_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scripts.check_env", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_lock_parses_and_pins_the_core_packages():
    pins = check_env.read_lock()
    for name in ("torch", "transformers", "peft", "bitsandbytes", "hydra-core", "wandb", "accelerate", "numpy"):
        assert name in pins, name
    assert all("+" not in v for v in pins.values())  # no local build tags: the same lock for CPU and CUDA


def test_the_vllm_profile_lock_adds_to_the_main_lock_without_repinning_it():
    locks = check_env.default_locks()
    assert [p.name for p in locks] == ["requirements.lock", "requirements-vllm.lock"]
    main, vllm = (check_env.read_lock(p) for p in locks)
    assert vllm["vllm"] == "0.30.0" and not set(main) & set(vllm)
    assert check_env.read_locks(locks) == {**main, **vllm}
    assert "+" not in "".join(vllm.values())


def test_a_package_two_locks_pin_differently_is_an_error(tmp_path):
    (tmp_path / "a.lock").write_text("numpy==2.3.5\n")
    (tmp_path / "b.lock").write_text("numpy==2.4.6\nvllm==0.30.0\n")
    with pytest.raises(ValueError, match="numpy is pinned to 2.3.5 in a.lock and to 2.4.6 in b.lock"):
        check_env.read_locks([tmp_path / "a.lock", tmp_path / "b.lock"])
    assert run_check("--lock", str(tmp_path / "a.lock"), "--lock", str(tmp_path / "b.lock")).returncode == 2


def test_mismatch_detection():
    assert check_env.mismatches({"peft": "0.21.2"}, {"peft": "0.22.0"}) == ["peft: installed 0.22.0, locked 0.21.2"]
    assert check_env.mismatches({"torch": "2.13.0"}, {"torch": "2.13.0+cpu"}) == []
    assert check_env.mismatches({"vllm": "0.6.0"}, {}) == []  # an extra that is not installed


def test_a_second_copy_later_on_sys_path_is_not_what_is_installed(tmp_path, monkeypatch):
    """``import setuptools`` (torch and vLLM import it) appends ``setuptools/_vendor`` to sys.path, whose
    packaging and platformdirs have their own dist-info: the version import takes is the first one."""
    vendored = tmp_path / "packaging-0.0.1.dist-info"
    vendored.mkdir()
    (vendored / "METADATA").write_text("Metadata-Version: 2.1\nName: packaging\nVersion: 0.0.1\n")
    monkeypatch.setattr(sys, "path", [*sys.path, str(tmp_path)])
    assert any(d.version == "0.0.1" for d in metadata.distributions(name="packaging"))
    assert check_env.installed()["packaging"] == metadata.version("packaging") != "0.0.1"


def test_check_env_exits_nonzero_on_a_differing_version(tmp_path):
    lock = tmp_path / "requirements.lock"
    # a pinned package that is not installed (an extra this venv lacks) is skipped
    lock.write_text(f"pytest=={metadata.version('pytest')}\nno-such-extra-package==0.0.1\n")
    assert run_check("--lock", str(lock)).returncode == 0
    lock.write_text("pytest==0.0.1\n")
    out = run_check("--lock", str(lock))
    assert out.returncode == 1
    assert f"pytest: installed {metadata.version('pytest')}, locked 0.0.1" in out.stdout
    assert "fix: rebuild the venv" in out.stderr
    assert run_check("--lock", str(lock), "--warn").returncode == 0  # LATEST=1: reported, not failed


def test_a_differing_torch_only_warns(tmp_path):
    """make install keeps a torch the machine brought (a CUDA build); run.json records which one ran."""
    lock = tmp_path / "requirements.lock"
    lock.write_text("torch==0.0.1\n")
    out = run_check("--lock", str(lock))
    assert out.returncode == 0 and "warning: torch: installed" in out.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("vllm", ["", "1"], ids=["venv", "venv_vllm"])
def test_make_test_checks_the_environment_before_every_run(vllm):
    """`make test` re-checks the venv each time (a package installed after `make install` fails it), not only
    when the install stamp is rebuilt."""
    out = subprocess.run(["make", "-n", "test", f"VLLM={vllm}"], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    venv = ".venv-vllm" if vllm else ".venv"
    pytest_line = next(i for i, line in enumerate(lines) if "-m pytest" in line)
    assert lines[pytest_line - 1].strip() == f"{venv}/bin/python -m scripts.check_env"


def test_installed_versions_match_the_lock():
    if not (Path(sys.prefix) / ".installed-locked").exists():
        pytest.skip("not a `make install` environment with the locked versions (LATEST=1, or another venv)")
    pins = check_env.read_locks(check_env.default_locks())
    bad = [b for b in check_env.mismatches(pins, check_env.installed()) if not b.startswith("torch:")]
    assert not bad, bad
