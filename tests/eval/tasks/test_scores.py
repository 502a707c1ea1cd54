"""The task-level averages of the authors' protocol: BBH's score is the macro average over its tasks, TyDi QA's
the macro average over its languages (open-instruct's eval scripts), not an average over examples."""

from __future__ import annotations

import pytest

from eval.tasks import get_task


def test_bbh_averages_its_tasks_not_its_examples():
    task = get_task("bbh", chat=False)
    examples = [{"task": "a", "target": "Yes"}, {"task": "a", "target": "No"}, {"task": "a", "target": "Yes"},
                {"task": "b", "target": "(A)"}]
    predictions = [["Yes"], ["No"], ["Yes"], ["(B)"]]  # task a: 3/3, task b: 0/1
    scores = task.score(examples, predictions)
    assert scores["tasks"] == {"a": 100.0, "b": 0.0}
    assert scores["score"] == pytest.approx(50.0)  # over examples it would be 75


def test_tydiqa_averages_its_languages_not_its_questions():
    task = get_task("tydiqa", chat=False)
    examples = [{"lang": "english", "answers": [{"text": "Oslo"}]}, {"lang": "english", "answers": [{"text": "Bergen"}]},
                {"lang": "english", "answers": [{"text": "Paris"}]}, {"lang": "finnish", "answers": [{"text": "Turku"}]}]
    predictions = [["Oslo"], ["Bergen"], ["Paris"], ["Helsinki"]]  # english: F1 100 on 3, finnish: 0 on 1
    scores = task.score(examples, predictions)
    assert scores["f1"] == pytest.approx(50.0) and scores["exact_match"] == pytest.approx(50.0)
