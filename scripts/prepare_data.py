#!/usr/bin/env python
"""Turn a raw published training set into the chat-record jsonl the trainer reads.

    python scripts/prepare_data.py superni --raw /path/to/natural-instructions --out data/superni.jsonl [--max-per-task 100]
    python scripts/prepare_data.py flan_v2 --raw flan_v2_resampled_50k.jsonl --out data/flan_v2.jsonl
    python scripts/prepare_data.py cot --raw cot_zsopt.jsonl --raw cot_fsopt.jsonl --out data/cot.jsonl
    python scripts/prepare_data.py code_alpaca --raw code_alpaca_20k.json --out data/code_alpaca.jsonl
    python scripts/prepare_data.py messages --raw chats.jsonl --out data/chats.jsonl

Prints the counts and the skip report (which rows were dropped, where, why). Exit status 1 when the source is
missing or yields no usable row.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prolora.data.formats import DOWNLOADS, HUB_SOURCES, SUPERNI_TEMPLATES, get_converter  # noqa: E402
from prolora.data.records import write_records  # noqa: E402

SOURCES_HELP = "\n".join(
    [f"  {name:<12} {DOWNLOADS[name]}" for name in DOWNLOADS]
    + ["", "hub references (need a network; read with datasets.load_dataset):"]
    + [f"  {name:<12} " + " ".join(refs) for name, refs in HUB_SOURCES.items()]
    + ["", "open-instruct's download script: scripts/data/sft_v1_v2/prepare_tulu_v1_v2.sh (allenai/open-instruct)."])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="raw sources:\n" + SOURCES_HELP)
    p.add_argument("dataset", help="superni, flan_v2, cot, code_alpaca or messages")
    p.add_argument("--raw", action="append", default=None, metavar="SOURCE",
                   help="raw source: a natural-instructions clone (superni), a .jsonl/.json file, "
                        "or hf://datasets/<owner>/<repo>/<file> / hub:<name>[@split]; repeatable (cot: both "
                        "cot_zsopt.jsonl and cot_fsopt.jsonl). Default for flan_v2/cot/code_alpaca: the hub copy")
    p.add_argument("--out", required=True, help="output .jsonl (records {dataset, id, messages})")
    p.add_argument("--seed", type=int, default=42, help="seed of every subsampling (default 42)")
    g = p.add_argument_group("superni")
    g.add_argument("--max-per-task", type=int, default=100,
                   help="instances kept per task, a seeded sample (0 = all; default 100)")
    g.add_argument("--split", default="default", help="splits/<split>/train_tasks.txt (default: default)")
    g.add_argument("--template", default="tk_instruct", choices=SUPERNI_TEMPLATES,
                   help="prompt template (default tk_instruct: Definition + 2 positive examples)")
    g.add_argument("--keep-mmmlu", action="store_true",
                   help="keep the 57 *_mmmlu_* tasks (MMLU questions; open-instruct drops them: test leakage)")
    g.add_argument("--num-pos-examples", type=int, default=2, help="positive examples in the prompt (default 2)")
    g = p.add_argument_group("flan_v2 / cot / code_alpaca")
    g.add_argument("--max-examples", type=int, default=None,
                   help="keep a seeded sample of this many rows (flan_v2/cot: per source file)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        convert = get_converter(args.dataset)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    progress = not args.no_progress and not os.environ.get("PROLORA_NO_PROGRESS")
    raw = args.raw
    opts: dict = {}
    if args.dataset == "superni":
        if not raw or len(raw) != 1:
            print("error: superni needs exactly one --raw <natural-instructions dir>", file=sys.stderr)
            return 2
        raw = raw[0]
        opts = dict(split=args.split, max_per_task=args.max_per_task or None, template=args.template,
                    num_pos_examples=args.num_pos_examples, seed=args.seed, drop_mmmlu=not args.keep_mmmlu)
        if progress:
            from tqdm.auto import tqdm

            opts["progress"] = lambda names: tqdm(names, desc="superni tasks", unit="task", dynamic_ncols=True)
    elif args.dataset in ("flan_v2", "cot"):
        opts = dict(max_per_source=args.max_examples, seed=args.seed)
    elif args.dataset == "code_alpaca":
        opts = dict(max_examples=args.max_examples, seed=args.seed)
    elif not raw:
        print(f"error: {args.dataset} needs --raw", file=sys.stderr)
        return 2
    try:
        records, report = convert(raw, **opts)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    n = write_records(records, args.out)
    print(f"{args.dataset}: wrote {n} records to {args.out}")
    print(report.summary(max_lines=20))
    return 0


if __name__ == "__main__":
    sys.exit(main())
