"""The mutation pass: apply each mutation of ``tests/quality/mutations.toml`` alone to a copy of the checkout, run the
tests named beside it, and record whether they caught it.

    python -m scripts.mutation_pass                      # every mutation (about 20 minutes on 2 cores)
    python -m scripts.mutation_pass --only mmlu-argmin   # some
    python -m scripts.mutation_pass --list               # the catalogue

Writes ``results/quality/mutation_pass.json`` (per mutation: caught or survived, the tests' exit code and time, the
commit) and prints a table; exit status 1 when a mutation survived or does not apply.  The checkout itself is never
modified: the copy holds the tracked files (as committed or edited, untracked files aside).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

from recipes import git_commit

REPO = Path(__file__).resolve().parents[1]
CATALOGUE = REPO / "tests" / "quality" / "mutations.toml"
OUT = REPO / "results" / "quality" / "mutation_pass.json"


def load_catalogue(path: Path = CATALOGUE) -> list[dict]:
    mutations = tomllib.loads(path.read_text())["mutation"]
    ids = [m["id"] for m in mutations]
    if len(set(ids)) != len(ids):
        raise SystemExit(f"{path}: duplicate mutation ids")
    return mutations


def copy_checkout(dst: Path) -> None:
    """The tracked files of the checkout (their current content) under ``dst``."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        src = REPO / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


def run_tests(copy: Path, tests: list[str], timeout: int) -> tuple[int, float, str]:
    """(pytest's exit code, -1 on timeout; seconds; the tail of its output)."""
    env = {**os.environ, "PYTHONPATH": str(copy), "PROLORA_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    start = time.time()
    try:
        out = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                             cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
        rc, tail = out.returncode, (out.stdout + out.stderr)[-3000:]
    except subprocess.TimeoutExpired:
        rc, tail = -1, ""
    return rc, time.time() - start, tail


def try_mutation(copy: Path, mutation: dict, timeout: int) -> dict:
    """Apply, test, restore; ``caught`` when the tests fail (exit 1), ``not applied`` when the text is not there
    exactly once, ``error`` when pytest could not run them (exit 2-5: collection errors, no tests)."""
    path = copy / mutation["file"]
    original = path.read_text()
    found = original.count(mutation["old"])
    result = {k: mutation[k] for k in ("id", "area", "file", "what")}
    if found != 1:
        return {**result, "outcome": "not applied", "detail": f"the text occurs {found} times"}
    path.write_text(original.replace(mutation["old"], mutation["new"]))
    try:
        rc, secs, _ = run_tests(copy, mutation["tests"], timeout)
    finally:
        path.write_text(original)
    outcome = {0: "survived", 1: "caught", -1: "timeout"}.get(rc, "error")
    return {**result, "outcome": outcome, "returncode": rc, "seconds": round(secs, 1), "tests": mutation["tests"],
            **({"why_left": mutation["why_left"]} if "why_left" in mutation else {})}


def baseline_passes(copy: Path, mutations: list[dict], timeout: int) -> None:
    """The named tests must pass unmutated, or a failure would be counted as a catch."""
    tests = sorted({t for m in mutations for t in m["tests"]})
    rc, secs, tail = run_tests(copy, tests, timeout * 4)
    if rc != 0:
        raise SystemExit(f"{tail}\nthe tests fail without any mutation (exit {rc}): fix them first ({' '.join(tests)})")
    print(f"baseline: the named tests pass unmutated ({secs:.0f} s)")


def write_report(results: list[dict], commit: str | None, out: Path = OUT) -> dict:
    """``commit``: the checkout's commit when the copy was taken (``-dirty``: the copy held uncommitted edits)."""
    counts = {o: sum(r["outcome"] == o for r in results) for o in ("caught", "survived", "not applied", "error",
                                                                  "timeout")}
    report = {"commit": commit, "date": time.strftime("%Y-%m-%d"), "catalogue": str(CATALOGUE.relative_to(REPO)),
              "counts": counts, "mutations": results}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="ID", help="run these mutations only")
    parser.add_argument("--list", action="store_true", help="print the catalogue and exit")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per mutation's tests")
    parser.add_argument("--out", type=Path, default=OUT, help=f"the report (default {OUT.relative_to(REPO)})")
    args = parser.parse_args(argv)
    mutations = load_catalogue()
    if args.list:
        for m in mutations:
            print(f"{m['id']:<40} {m['area']:<13} {m['what']}")
        return 0
    if args.only:
        unknown = sorted(set(args.only) - {m["id"] for m in mutations})
        if unknown:
            parser.error(f"unknown mutation id(s) {unknown}; --list shows them")
        mutations = [m for m in mutations if m["id"] in args.only]
    commit = git_commit()  # the copy below takes the tracked files as they are now
    with tempfile.TemporaryDirectory(prefix="mutation-pass-") as tmp:
        copy = Path(tmp)
        copy_checkout(copy)
        baseline_passes(copy, mutations, args.timeout)
        results = []
        for i, m in enumerate(mutations, 1):
            results.append(try_mutation(copy, m, args.timeout))
            r = results[-1]
            print(f"[{i}/{len(mutations)}] {r['outcome']:<11} {r['id']:<40} {r.get('seconds', '')}", flush=True)
    report = write_report(results, commit, args.out)
    print(f"{report['counts']}; written to {args.out}")
    return 0 if report["counts"]["caught"] == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
