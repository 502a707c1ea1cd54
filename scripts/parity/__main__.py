"""python -m scripts.parity {reference,harness,build,check,all}: re-run the parity comparison (results/parity/README.md).

    python -m scripts.parity all --reference-repo DIR --evaluate-repo DIR --python REF_VENV/bin/python \\
        --variants tydiqa_nochat                   # both sides, the JSON, and the check against the recorded file
    python -m scripts.parity reference --reference-repo DIR ...   # one step at a time: reference, harness, build, check

Everything goes under ``--work`` (default ``outputs/parity``); ``build`` writes ``<work>/open_instruct_smollm2.json``
and ``check`` compares it with ``results/parity/open_instruct_smollm2.json`` (exit status 1 when a measured entry
differs).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from scripts.parity import build, harness, layout, reference
from scripts.parity.runs import VARIANTS

REPO = Path(__file__).resolve().parents[2]
RECORDED = REPO / "results" / "parity" / "open_instruct_smollm2.json"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m scripts.parity", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("step", choices=["reference", "harness", "build", "check", "all"])
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    ap.add_argument("--work", type=Path, default=Path("outputs/parity"), help="where every run and the JSON go")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data",
                    help="the shared benchmark files (open-instruct's layout; default ../shared/data)")
    ap.add_argument("--reference-repo", type=Path, help="a checkout of github Forence1999/PRoLoRA at the recorded commit")
    ap.add_argument("--upstream-repo", type=Path, help="a checkout of github allenai/open-instruct (mmlu_chat_upstream)")
    ap.add_argument("--evaluate-repo", type=Path,
                    help="a checkout of github huggingface/evaluate: its metrics/ instead of the hub's (no network)")
    ap.add_argument("--python", default=sys.executable,
                    help="the reference interpreter (a venv with the reference versions, results/parity/README.md)")
    ap.add_argument("--out", type=Path, help="the built JSON (default <work>/open_instruct_smollm2.json)")
    ap.add_argument("--recorded", type=Path, default=RECORDED,
                    help="the recorded JSON: explanations for build, the expected entries for check")
    args = ap.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        ap.error(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")
    args.work = args.work.resolve()
    args.out = args.out or args.work / "open_instruct_smollm2.json"
    return args


def validate(args: argparse.Namespace) -> None:
    """Every input the chosen step needs, before any work: one line naming the first problem."""
    if args.step in ("reference", "all"):
        repos = {"fork": args.reference_repo, "upstream": args.upstream_repo}
        for name in args.variants:
            reference.checkout_of(VARIANTS[name], repos)
        if args.evaluate_repo is not None and not (args.evaluate_repo / "metrics" / "squad").is_dir():
            sys.exit(f"error: --evaluate-repo {args.evaluate_repo}: no metrics/squad (a checkout of huggingface/evaluate)")
        if shutil.which(args.python) is None:
            sys.exit(f"error: --python {args.python}: not an executable")
    if args.step in ("reference", "harness", "all") and layout.missing(args.data):
        sys.exit(f"error: --data {args.data}: missing {layout.missing(args.data)[0]} (the shared benchmark files)")
    if args.step in ("build", "check", "all") and not args.recorded.is_file():
        sys.exit(f"error: --recorded {args.recorded}: no such file")
    if args.step == "check" and not args.out.is_file():
        sys.exit(f"error: {args.out}: no built file (python -m scripts.parity build first)")


def data_dir(args: argparse.Namespace) -> Path:
    root = args.work / "data"
    shutil.rmtree(root, ignore_errors=True)
    return layout.lay_out(args.data, root)


def run_reference(args: argparse.Namespace, data: Path) -> None:
    repos = {"fork": args.reference_repo, "upstream": args.upstream_repo}
    metrics = args.evaluate_repo / "metrics" if args.evaluate_repo else None
    for name in args.variants:
        variant = VARIANTS[name]
        reference.run_variant(name, variant, args.python, reference.checkout_of(variant, repos), args.work, data, metrics)


def run_build(args: argparse.Namespace) -> None:
    recorded = json.loads(args.recorded.read_text(encoding="utf-8"))
    out = build.build(args.work, args.work / "data", recorded)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    for name, v in out["variants"].items():
        print(build.summary_line(name, v))


def run_check(args: argparse.Namespace) -> int:
    built = json.loads(args.out.read_text(encoding="utf-8"))
    problems = build.check(built, json.loads(args.recorded.read_text(encoding="utf-8")))
    for line in problems:
        print(line)
    print(f"{len(built['variants'])} variant(s) checked against {args.recorded.name}: "
          + ("every measured entry reproduced" if not problems else f"{len(problems)} difference(s)"))
    return 1 if problems else 0


def main(argv=None) -> int:
    args = parse_args(argv)
    validate(args)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.step in ("reference", "harness", "all"):
        data = data_dir(args)
        if args.step in ("reference", "all"):
            run_reference(args, data)
        if args.step in ("harness", "all"):
            for name in args.variants:
                harness.run_variant(name, VARIANTS[name], args.work, data)
    if args.step in ("build", "all"):
        run_build(args)
    return run_check(args) if args.step in ("check", "all") else 0


if __name__ == "__main__":
    sys.exit(main())
