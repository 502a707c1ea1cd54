"""Turn a raw published training set into the chat-record jsonl the trainer reads.

    python -m scripts.prepare_data superni --raw /path/to/natural-instructions --out data/superni.jsonl
    python -m scripts.prepare_data flan_v2 --raw tulu_v1_resampled_flan_100k.jsonl --out data/flan_v2.jsonl
    python -m scripts.prepare_data cot --raw cot_zsopt.jsonl --raw cot_fsopt.jsonl --out data/cot.jsonl
    python -m scripts.prepare_data code_alpaca --raw code_alpaca_20k.json --out data/code_alpaca.jsonl
    python -m scripts.prepare_data messages --raw chats.jsonl --out data/chats.jsonl

The defaults (``--template open_instruct``, ``--seed 42``, superni ``--split xlingual``) reproduce
open-instruct's processed files (``open_instruct/reformat_datasets.py`` at commit 5cf790a52), which the
PRoLoRA paper trained on: same records, ids, random template choices and samples. The random draws equal
open-instruct's when that dataset is the first (or only) one its script converts after ``random.seed(seed)``
(``reformat_datasets.py --dataset <name>``; in its default all-datasets run that holds for super_ni only).

Prints the counts and the skip report (which rows were dropped, where, why). Exit status 1 when the source is
missing or yields no usable row.
"""

from __future__ import annotations

import argparse
import os
import sys

from prolora.data.formats import CODE_ALPACA_TEMPLATES, COT_ROWS_PER_SOURCE, get_converter
from prolora.data.records import write_records
from prolora.data.sources import DOWNLOADS, HUB_SOURCES, OPEN_INSTRUCT_SEED
from prolora.data.superni import SUPERNI_FALLBACK_SPLIT, SUPERNI_SPLIT, SUPERNI_TEMPLATES

SOURCES_HELP = "\n".join(
    [f"  {name:<12} {DOWNLOADS[name]}" for name in DOWNLOADS]
    + ["", "hub references (need a network; read with datasets.load_dataset):"]
    + [f"  {name:<12} " + " ".join(refs) for name, refs in HUB_SOURCES.items()]
    + ["", "open-instruct's download script: scripts/data/sft_v1_v2/prepare_tulu_v1_v2.sh (allenai/open-instruct)."])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m scripts.prepare_data", description="\n\n".join(__doc__.split("\n\n")[0:3:2]).replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="raw sources:\n" + SOURCES_HELP)
    p.add_argument("dataset", help="superni, flan_v2, cot, code_alpaca or messages")
    p.add_argument("--raw", action="append", default=None, metavar="SOURCE",
                   help="raw source: a natural-instructions clone (superni), a .jsonl/.json file, "
                        "or hf://datasets/<owner>/<repo>/<file> / hub:<name>[@split]; repeatable (cot: both "
                        "cot_zsopt.jsonl and cot_fsopt.jsonl). Default for flan_v2/cot/code_alpaca: the hub copy")
    p.add_argument("--out", required=True, help="output .jsonl (records {dataset, id, messages})")
    p.add_argument("--seed", type=int, default=OPEN_INSTRUCT_SEED,
                   help="seed of the random.Random behind every template choice and sample (default "
                        f"{OPEN_INSTRUCT_SEED}, open-instruct's reformat_datasets.py default)")
    p.add_argument("--template", default="open_instruct",
                   choices=sorted(set(SUPERNI_TEMPLATES) | set(CODE_ALPACA_TEMPLATES)),
                   help="superni / code_alpaca prompt encoding. Default open_instruct: open-instruct's "
                        "reformat_datasets.py exactly (random weighted templates; superni 60 zero-shot + 20 "
                        "few-shot instances per task), i.e. the processed files the paper used. superni: "
                        "tk_instruct = Tk-Instruct's Definition + 2 positive examples; code_alpaca: fixed = "
                        "instruction\\n\\ninput, no random template")
    g = p.add_argument_group("superni")
    g.add_argument("--split", default=None,
                   help=f"splits/<split>/train_tasks.txt (default: {SUPERNI_SPLIT} as open-instruct; if the copy "
                        f"lacks it, {SUPERNI_FALLBACK_SPLIT} with a warning)")
    g.add_argument("--zero-shot-per-task", type=int, default=60,
                   help="open_instruct: zero-shot instances sampled per task (default 60)")
    g.add_argument("--few-shot-per-task", type=int, default=20,
                   help="open_instruct: few-shot instances sampled per task (default 20)")
    g.add_argument("--n-few-shot", type=int, default=2,
                   help="open_instruct: positive examples sampled into each few-shot prompt (default 2)")
    g.add_argument("--max-per-task", type=int, default=100,
                   help="tk_instruct: instances kept per task, a seeded sample (0 = all; default 100)")
    g.add_argument("--num-pos-examples", type=int, default=2,
                   help="tk_instruct: positive examples in the prompt (default 2)")
    g.add_argument("--keep-mmmlu", action="store_true",
                   help="keep the 57 *_mmmlu_* tasks (MMLU questions; open-instruct drops them: test leakage)")
    g = p.add_argument_group("flan_v2 / cot / code_alpaca")
    g.add_argument("--max-examples", type=int, default=None,
                   help="random sample of this many rows (flan_v2/cot: per source file; default: flan_v2 and "
                        f"code_alpaca all rows, cot {COT_ROWS_PER_SOURCE} per file, as open-instruct)")
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
        if args.template not in SUPERNI_TEMPLATES:
            print(f"error: superni --template must be one of {', '.join(SUPERNI_TEMPLATES)}", file=sys.stderr)
            return 2
        opts = dict(template=args.template, split=args.split, seed=args.seed,
                    zero_shot_per_task=args.zero_shot_per_task, few_shot_per_task=args.few_shot_per_task,
                    n_few_shot=args.n_few_shot, max_per_task=args.max_per_task or None,
                    num_pos_examples=args.num_pos_examples, drop_mmmlu=not args.keep_mmmlu)
        if progress:
            from tqdm.auto import tqdm

            opts["progress"] = lambda names: tqdm(names, desc="superni tasks", unit="task", dynamic_ncols=True)
    elif args.dataset in ("flan_v2", "cot"):
        opts = dict(seed=args.seed)
        if args.max_examples is not None:
            opts["max_per_source"] = args.max_examples or None
    elif args.dataset == "code_alpaca":
        if args.template not in CODE_ALPACA_TEMPLATES:
            print(f"error: code_alpaca --template must be one of {', '.join(CODE_ALPACA_TEMPLATES)}",
                  file=sys.stderr)
            return 2
        opts = dict(template=args.template, max_examples=args.max_examples, seed=args.seed)
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
