"""scripts/parity/reference.py: the reference script's scores, also where MMLU's script stops after its files."""

import pytest

from scripts.parity.reference import script_metrics
from scripts.parity.runs import SUBJECTS, VARIANTS


def test_mmlu_on_a_subject_subset_is_scored_from_the_files_the_script_wrote(tmp_path):
    for i, subject in enumerate(SUBJECTS):  # 1 of 2 correct in the first subject, 2 of 2 in the others
        rows = ["0,1,2,3,4,5,correct,choiceA_probs", f"q,a,b,c,d,A,{i > 0},0.1", "q,a,b,c,d,B,True,0.2"]
        (tmp_path / f"{subject}.csv").write_text("\n".join(rows) + "\n")
    metrics, note = script_metrics(VARIANTS["mmlu_nochat"], 1, tmp_path)
    assert metrics == {"average_acc": 7 / 8} and "weighted_acc" in note


def test_any_other_failure_stops_with_one_line(tmp_path):
    with pytest.raises(SystemExit, match=r"^error: the reference script eval.tydiqa.run_eval failed \(exit status 1"):
        script_metrics(VARIANTS["tydiqa_nochat"], 1, tmp_path)
    (tmp_path / "metrics.json").write_text('{"average": {"f1": 1.0}}')
    assert script_metrics(VARIANTS["tydiqa_nochat"], 0, tmp_path) == ({"average": {"f1": 1.0}}, None)
