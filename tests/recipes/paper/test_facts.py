"""The leaf facts of the tables: eval.json -> table columns, and what a column is."""

from recipes.paper.facts import COLUMNS, eval_to_columns, subset_columns


def test_eval_json_to_paper_columns():
    """eval.json as eval/driver.py's write_results lays it out (percent) -> the paper's six columns."""
    ev = {"scores": {"mmlu": 41.18, "tydiqa": 17.4, "bbh": 33.43, "gsm": 3.03, "humaneval": 0.64},
          "tasks": {"mmlu": {"score": 41.18, "accuracy": 41.18, "n_examples": 14042},
                    "tydiqa": {"score": 17.4, "f1": 17.4, "exact_match": 0.1, "languages": {}},
                    "bbh": {"score": 33.43, "exact_match": 33.43}, "gsm": {"score": 3.03, "exact_match": 3.03},
                    "humaneval": {"score": 0.64, "pass@1": 0.64, "pass@10": 2.0}}}
    got = eval_to_columns(ev, ["mmlu_em", "bbh_em", "gsm_em", "tydiqa_f1", "tydiqa_em", "humaneval_p1"])
    assert got == {"mmlu_em": 41.18, "bbh_em": 33.43, "gsm_em": 3.03, "tydiqa_f1": 17.4, "tydiqa_em": 0.1,
                   "humaneval_p1": 0.64}
    assert eval_to_columns({"tasks": {"bbh": {"exact_match": 50.0}}}, ["mmlu_em", "bbh_em"]) == {"bbh_em": 50.0}
    assert eval_to_columns(None, ["mmlu_em"]) == {}


def test_columns_are_the_task_classes_own():
    """Each task's declared column, with the task it comes from; a header names it in the tables."""
    assert COLUMNS["tydiqa_em"] == ("tydiqa", "TyDiQA EM", "exact_match", "tydiqa_em")
    assert COLUMNS["humaneval_p1"].metric == "pass@1" and COLUMNS["humaneval_p1"].key == "humaneval_pass@1"
    assert {"mmlu_em", "bbh_em", "gsm_em", "tydiqa_f1", "tydiqa_em", "humaneval_p1", "demo_em"} <= set(COLUMNS)


def test_subset_columns_name_each_column_scored_on_part_of_its_set():
    ev = {"tasks": {"bbh": {"exact_match": 30.0, "subset": True, "n_examples": 105, "n_available": 6511},
                    "mmlu": {"accuracy": 27.0, "subset": True, "n_examples": 100, "n_available": 400,
                             "full_size": 14042},
                    "gsm": {"exact_match": 3.0, "subset": False, "n_examples": 1319}}}
    assert subset_columns(ev) == {"bbh_em": {"n": 105, "of": 6511}, "mmlu_em": {"n": 100, "of": 14042}}
    assert subset_columns(None) == {}
