"""The driver runs every task (+ demo) on the tiny model with the hf backend and writes eval.json."""

import json

import pytest

from eval.backends.hf import HFBackend
from eval.driver import evaluate, write_results
from eval.tasks import TASKS, get_task
from prolora.models import TINY_DIR
from tests.conftest import REPO

FIX = REPO / "tests" / "fixtures" / "eval"
OPTIONS = {"mmlu": {}, "bbh": {"max_per_task": 2}, "gsm": {"max_examples": 3},
           "tydiqa": {"dev_file": "tydiqa-goldp-v1.1-dev-fixture.json", "max_per_lang": 2},
           "humaneval": {"max_examples": 2, "n_samples": 3, "ks": [1, 2], "workers": 2},
           "humaneval_p10": {"max_examples": 1, "n_samples": 2, "ks": [2], "workers": 2},
           "demo": {"max_examples": 4}}


ORDER = ["mmlu", "bbh", "gsm", "tydiqa", "humaneval", "humaneval_p10", "demo"]


def make_tasks(chat):
    assert set(TASKS) == set(ORDER)  # every registered task is exercised
    return [get_task(name, chat=chat, **OPTIONS[name]) for name in ORDER]


@pytest.fixture(scope="module")
def backend():
    return HFBackend.load(str(TINY_DIR), precision="full", device="cpu", batch_size=8)


def test_driver_all_tasks_and_eval_json(backend, tmp_path):
    results = evaluate(make_tasks(chat=True), backend, data_dir=FIX, max_new_tokens=8, log=None)
    assert list(results) == ORDER
    counts = {name: (r.n_examples, r.n_generations) for name, r in results.items()}
    assert counts == {"mmlu": (5, 5), "bbh": (4, 4), "gsm": (3, 3), "tydiqa": (4, 4), "humaneval": (2, 6),
                      "humaneval_p10": (1, 2), "demo": (4, 4)}
    # sample sizes: n of what the files hold, and whether the files hold the published set
    assert (results["gsm"].n_available, results["gsm"].full_size, results["gsm"].subset) == (4, 1319, True)
    assert results["gsm"].complete is False  # a 4-question fixture is not the 1,319 of GSM8K
    assert (results["demo"].n_examples, results["demo"].n_available, results["demo"].subset) == (4, 118, True)
    assert results["demo"].complete is None  # no published size to hold it against
    assert results["humaneval"].n_available == 164 and results["humaneval"].complete is True
    assert results["humaneval_p10"].settings["temperature"] == 0.8 and "pass@2" in results["humaneval_p10"].metrics
    for r in results.values():
        assert 0.0 <= r.metrics["score"] <= 100.0
        assert set(r.timings) == {"load", "prompts", "inference", "score", "total"}
    assert set(results["humaneval"].metrics) >= {"pass@1", "pass@2", "executions", "sandbox"}
    assert results["humaneval"].metrics["sandbox"]["verdict_channel"] is True  # recorded with the scores
    assert set(results["tydiqa"].metrics) >= {"f1", "exact_match", "languages"}
    assert results["bbh"].settings["max_new_tokens"] == 8 and results["bbh"].settings["stop"] == []

    path = write_results(results, tmp_path, extra={"backend": "hf"})
    data = json.loads(path.read_text())
    assert set(data["scores"]) == set(TASKS) and data["backend"] == "hf"
    assert data["tasks"]["gsm"]["n_examples"] == 3
    assert (data["tasks"]["gsm"]["subset"], data["tasks"]["gsm"]["complete"]) == (True, False)
    assert data["status"] == "complete" and data["tasks_failed"] == {}
    lines = (tmp_path / "predictions" / "humaneval.jsonl").read_text().splitlines()
    rec = json.loads(lines[0])
    assert len(rec["outputs"]) == 3 and len(rec["passed"]) == 3 and rec["prompt"].startswith("<|user|>\n")
    mmlu = json.loads((tmp_path / "predictions" / "mmlu.jsonl").read_text().splitlines()[0])
    assert len(mmlu["logprobs"]) == 4 and mmlu["prediction"] in "ABCD" and "correct" in mmlu


def test_whole_set_is_not_a_subset_and_a_failing_task_loses_no_finished_one(backend, tmp_path):
    from eval.driver import ResultWriter

    demo = get_task("demo", chat=True)
    gsm = get_task("gsm", chat=True, max_examples=2)
    broken = get_task("tydiqa", dev_file="no-such-file.json")
    writer = ResultWriter(tmp_path, ["demo", "tydiqa", "gsm"], {"protocol": "authors"})
    results = evaluate([demo, broken, gsm], backend, data_dir=FIX, max_new_tokens=4, log=None, writer=writer)
    assert list(results) == ["demo", "gsm"] and results["demo"].subset is False  # all 118 of the demo file
    data = json.loads((tmp_path / "eval.json").read_text())
    assert data["status"] == "incomplete" and set(data["scores"]) == {"demo", "gsm"}
    assert "no-such-file.json" in data["tasks_failed"]["tydiqa"] and data["tasks_pending"] == []
    assert (tmp_path / "predictions" / "demo.jsonl").is_file() and (tmp_path / "predictions" / "gsm.jsonl").is_file()


def test_driver_batch_size_does_not_change_greedy_outputs(backend):
    tasks = [get_task(n, chat=False, **OPTIONS[n]) for n in ("bbh", "gsm", "tydiqa", "demo")]
    backend.batch_size = 8
    batched = evaluate(tasks, backend, data_dir=FIX, max_new_tokens=8, log=None)
    backend.batch_size = 1
    single = evaluate(tasks, backend, data_dir=FIX, max_new_tokens=8, log=None)
    backend.batch_size = 8
    for name in batched:
        assert [r["outputs"] for r in batched[name].records] == [r["outputs"] for r in single[name].records]
        assert batched[name].metrics == single[name].metrics


class _ScriptedLogprobs:
    """A backend whose next-token log-probs over the candidates are given per prompt (MMLU's A/B/C/D)."""

    tokenizer = None

    def __init__(self, table):
        self.table = table

    def next_token_logprobs(self, prompts, candidates, desc=None):
        return [self.table[i % len(self.table)] for i in range(len(prompts))]


def test_mmlu_predicts_the_most_likely_letter_and_scores_it(monkeypatch):
    task = get_task("mmlu", chat=False)
    examples = [{"id": f"s/{i}", "subject": "s", "question": "q", "choices": ["1", "2", "3", "4"], "answer": a}
                for i, a in enumerate("BDAC")]
    monkeypatch.setattr(task, "load", lambda data_dir=None: examples)
    monkeypatch.setattr(task, "prompt", lambda ex, tokenizer=None: ex["id"])
    monkeypatch.setattr(task, "candidates", lambda tokenizer: [10, 11, 12, 13])
    # the log-probs' maxima are B, D, A, B: three right (the fourth answer is C), one wrong
    table = [[-3.0, -0.5, -2.0, -4.0], [-9.0, -8.0, -7.0, -0.1], [-0.2, -5.0, -6.0, -7.0], [-2.0, -1.0, -1.5, -3.0]]
    result = evaluate([task], _ScriptedLogprobs(table), data_dir=None, log=None)["mmlu"]
    assert [r["prediction"] for r in result.records] == ["B", "D", "A", "B"]
    assert result.metrics["accuracy"] == 75.0 and [r["correct"] for r in result.records] == [True, True, True, False]


@pytest.fixture(scope="module")
def adapter_dirs(tmp_path_factory):
    """Three adapters of three methods on the tiny model, random weights large enough to change the outputs."""
    import torch

    import prolora
    from prolora.models import load_base_model

    dirs = {}
    for i, cfg in enumerate([prolora.PRoLoRAConfig(r=4, u=1, m=2), prolora.LoRAConfig(r=4), prolora.VeRAConfig(r=8)]):
        model = prolora.attach(load_base_model(str(TINY_DIR), quantize=False, device="cpu"), cfg)
        gen = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for _, p in model.named_parameters():
                if p.requires_grad:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        dirs[cfg.method] = str(prolora.save_adapter(model, tmp_path_factory.mktemp(cfg.method) / "final"))
    return dirs


def _same_records(together, alone):
    """The same outputs and predictions; log-probabilities equal to float rounding (another batch)."""
    assert len(together.records) == len(alone.records)
    for a, b in zip(together.records, alone.records):
        if "logprobs" in a:
            assert a["prediction"] == b["prediction"]
            assert max(abs(x - y) for x, y in zip(a["logprobs"], b["logprobs"])) < 1e-4
        else:
            assert (a["outputs"], a["predictions"]) == (b["outputs"], b["predictions"])
    assert together.metrics == alone.metrics


def test_adapters_scored_together_get_what_each_gets_alone(adapter_dirs):
    """One pass over three adapters (greedy generation, log-probabilities, and HumanEval's samples, which run
    one adapter at a time) gives each adapter the records it gets from a backend serving it alone."""
    from eval.driver import evaluate_task_together

    tasks = [get_task(n, chat=True, **OPTIONS[n]) for n in ("mmlu", "gsm", "demo", "humaneval")]
    names = list(adapter_dirs.values())
    together = HFBackend.load(str(TINY_DIR), precision="full", device="cpu", batch_size=4,
                              adapter_dirs={d: d for d in names})
    scored = {t.name: evaluate_task_together(t, together, names, FIX, max_new_tokens=8) for t in tasks}
    outputs = set()
    for name in names:
        alone = HFBackend.load(str(TINY_DIR), adapter_dir=name, precision="full", device="cpu", batch_size=4)
        for task in tasks:
            _same_records(scored[task.name][name], evaluate(
                [task], alone, data_dir=FIX, max_new_tokens=8, log=None)[task.name])
        outputs.add(tuple(r["outputs"][0] for r in scored["gsm"][name].records))
    assert len(outputs) == 3  # the adapters answer differently: a row scored with another's adapter would show
