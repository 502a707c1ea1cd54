"""Compare the installed packages with ``requirements.lock`` (what the test suite passed with).

    python scripts/check_env.py            # exit 1 and list every package whose version differs
    python scripts/check_env.py --warn     # list them, exit 0 (``make install LATEST=1``)

Every ``name==version`` line of the lock must be installed at that version (a local build tag such as
``+cpu`` is ignored, as pip's ``==`` ignores it).  Packages the lock pins but nothing installed (an optional
extra) are skipped.  torch only warns: ``make install`` keeps a torch that is already there (a CUDA machine's
own build), and says which version was tested.  Imports nothing of the project, so it runs right after ``pip install``.
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from pathlib import Path

LOCK = Path(__file__).resolve().parents[1] / "requirements.lock"


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


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


def installed() -> dict[str, str]:
    return {_norm(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}


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
    p.add_argument("--lock", type=Path, default=LOCK)
    args = p.parse_args(argv)
    pins = read_lock(args.lock)
    bad = mismatches(pins, installed())
    for line in [b for b in bad if b.startswith("torch:")]:
        print(f"warning: {line} (kept: the suite was tested with the locked one)")
    bad = [b for b in bad if not b.startswith("torch:")]
    if not bad:
        print(f"environment matches {args.lock.name} ({len(pins)} pinned packages)")
        return 0
    print(f"{len(bad)} package(s) differ from {args.lock.name} (the versions the test suite passed with):")
    for line in bad:
        print(f"  {line}")
    if args.warn:
        return 0
    print("fix: `make install` in a fresh .venv (rm -rf .venv), or `make install LATEST=1` to use newer versions "
          "knowingly", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
