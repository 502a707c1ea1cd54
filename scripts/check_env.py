"""Compare the installed packages with the locks (``requirements*.lock``: the versions the test suite passed with).

    python -m scripts.check_env            # exit 1 and list every package whose version differs
    python -m scripts.check_env --warn     # list them, exit 0 (``make install LATEST=1``)
    python -m scripts.check_env --lock requirements.lock   # only this lock

The locks are read together: ``requirements.lock`` (every venv) and ``requirements-vllm.lock`` (what the
vLLM profile, ``make install VLLM=1``, adds on top of it); a package pinned by two locks must be pinned alike.
Every pinned package that is installed must be installed at its pinned version (a local build tag such as
``+cpu`` is ignored, as pip's ``==`` ignores it); one pinned but not installed (an extra this venv lacks) is
skipped, so a vLLM installed by hand into the plain venv fails the check, and so does what it moved.
torch only warns: ``make install`` keeps a torch that is already there (a CUDA machine's own build), and
says which version was tested; ``run.json`` records the one that ran.  Imports nothing of the project, so it
runs right after ``pip install``, and fast enough for every ``make test``.
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
# torch may differ (warning only): a CUDA machine keeps its own build
WARN_ONLY = ("torch",)


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def default_locks() -> list[Path]:
    """Every lock of the repository: requirements.lock first, then the profiles' (requirements-*.lock)."""
    return [LOCK, *sorted(ROOT.glob("requirements-*.lock"))]


def read_lock(path: Path = LOCK) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if "==" not in line:
            raise ValueError(f"{path}: {line!r} is not a name==version pin")
        name, version = line.split("==", 1)
        pins[_norm(name)] = version.strip()
    return pins


def read_locks(paths: list[Path]) -> dict[str, str]:
    """The pins of all ``paths`` together; a package two locks pin differently is an error."""
    pins: dict[str, str] = {}
    where: dict[str, Path] = {}
    for path in paths:
        for name, version in read_lock(path).items():
            if name in pins and pins[name] != version:
                raise ValueError(f"{name} is pinned to {pins[name]} in {where[name].name} and to {version} in "
                                 f"{path.name}: pin it in one lock only")
            pins[name], where[name] = version, path
    return pins


def installed() -> dict[str, str]:
    """Name -> version of every installed distribution; where a name is found twice on ``sys.path`` (a copy
    vendored inside setuptools, once ``setuptools/_vendor`` is on it), the first, the one ``import`` takes."""
    have: dict[str, str] = {}
    for d in metadata.distributions():
        if d.metadata["Name"]:
            have.setdefault(_norm(d.metadata["Name"]), d.version)
    return have


def mismatches(pins: dict[str, str], have: dict[str, str]) -> list[str]:
    out = []
    for name, want in sorted(pins.items()):
        got = have.get(name)
        if got is not None and got.split("+", 1)[0] != want.split("+", 1)[0]:
            out.append(f"{name}: installed {got}, locked {want}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--warn", action="store_true", help="report differences without failing")
    p.add_argument("--lock", type=Path, action="append", help="a lock to check against (repeatable; "
                   "default: requirements.lock and every requirements-*.lock)")
    args = p.parse_args(argv)
    locks = args.lock or default_locks()
    try:
        pins = read_locks(locks)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    bad = mismatches(pins, installed())
    names = " + ".join(path.name for path in locks)
    for line in [b for b in bad if b.split(":", 1)[0] in WARN_ONLY]:
        print(f"warning: {line} (kept: the suite was tested with the locked one)")
    bad = [b for b in bad if b.split(":", 1)[0] not in WARN_ONLY]
    if not bad:
        print(f"environment matches {names} ({len(pins)} pinned packages)")
        return 0
    print(f"{len(bad)} package(s) differ from {names} (the versions the test suite passed with):")
    for line in bad:
        print(f"  {line}")
    if args.warn:
        return 0
    print(f"fix: rebuild the venv ({sys.prefix}): rm -rf it, then `make install` (`make install VLLM=1` for "
          "the vLLM profile, .venv-vllm); or `make install LATEST=1` to use newer versions knowingly",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
