"""Every task format on the real SmolLM2-135M-Instruct (fp32; skipped without ``make real-model``).

Per task and format, the first prompt of the project's own fixtures goes through the hf backend and, beside it,
through a plain transformers call on the same token ids: the greedy text (16 new tokens, cut at the task's stop
sequences) and MMLU's candidate log-probabilities must be the plain call's.  Two prompts of different lengths in
one batch (left padding with SmolLM2's pad = ``<|im_end|>``) must give what each gives alone.  The prompt ids are
the tokenizer's own (SmolLM2 adds no BOS), and no special token leaks into an output.
"""

from __future__ import annotations

import pytest
import torch

from eval.backends.base import truncate_at_stop
from eval.tasks import TASKS
from tests.conftest import REPO

FIXTURES = REPO / "tests" / "fixtures" / "eval"
NEW_TOKENS = 16
OPTIONS = {"bbh": {"max_per_task": 1}, "gsm": {"max_examples": 2},
           "tydiqa": {"max_per_lang": 1, "dev_file": "tydiqa-goldp-v1.1-dev-fixture.json",
                      "train_file": "tydiqa-goldp-v1.1-train-fixture.json"},
           "humaneval": {"max_examples": 2, "n_samples": 1, "temperature": 0.0}, "mmlu": {}}


@pytest.fixture(scope="module")
def real():
    try:
        import gguf  # noqa: F401

        from prolora import gguf as pgguf

        path = pgguf.smollm2_dir()
    except (ImportError, FileNotFoundError) as e:
        pytest.skip(f"the real-model extra is not installed ({e}): make real-model")
    from transformers import AutoModelForCausalLM

    from eval.backends.hf import HFBackend
    from prolora.models import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    return HFBackend(model, load_tokenizer(str(path)), batch_size=2)


def task_and_examples(name: str, chat: bool):
    fields = TASKS[name].__dataclass_fields__
    options = {k: v for k, v in OPTIONS[name].items() if k in fields}
    task = TASKS[name](chat=chat, **options)
    examples = task.load(FIXTURES)
    assert examples, name
    return task, examples


def plain_greedy(backend, ids: list[int], stop) -> str:
    from transformers import GenerationConfig

    model, tok = backend.model, backend.tokenizer
    x = torch.tensor([ids])
    config = GenerationConfig(max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=backend.eos_ids,
                              pad_token_id=backend.pad_id)
    with torch.no_grad():
        new = model.generate(input_ids=x, attention_mask=torch.ones_like(x), generation_config=config)[0, len(ids):]
    new = new.tolist()
    n = next((j for j, t in enumerate(new) if t in backend.eos_ids), len(new))
    return truncate_at_stop(tok.decode(new[:n], skip_special_tokens=True), stop)


@pytest.mark.parametrize("chat", [True, False], ids=["chat", "nochat"])
@pytest.mark.parametrize("name", ["bbh", "gsm", "tydiqa", "humaneval"])
def test_greedy_generation_per_task_format(real, name, chat):
    task, examples = task_and_examples(name, chat)
    spec = task.generation()
    prompts = [task.prompt(ex, real.tokenizer) for ex in examples[:2]]
    ids = real.encode(prompts[0])
    assert ids == real.tokenizer(prompts[0])["input_ids"]  # SmolLM2: no BOS added, none doubled
    alone = [real.generate([p], max_new_tokens=NEW_TOKENS, stop=spec.stop)[0][0] for p in prompts]
    assert alone[0] == plain_greedy(real, ids, spec.stop)
    if (name, chat) != ("humaneval", True):  # there SmolLM2 ends at once (EOS, or "\n# Test ...": a stop)
        assert any(text.strip() for text in alone), f"{name}: nothing generated"
    for text, ex in zip(alone, examples):
        assert "<|im_end|>" not in text and "<|endoftext|>" not in text
        assert not any(s in text for s in spec.stop if s)
        task.parse(text, ex)  # the task's parser takes the raw text
    if len(prompts) == 2 and len(real.encode(prompts[1])) != len(ids):
        together = [o[0] for o in real.generate(prompts, max_new_tokens=NEW_TOKENS, stop=spec.stop)]
        assert together == alone  # left padding (pad = <|im_end|>) changes nothing


@pytest.mark.parametrize("chat", [True, False], ids=["chat", "nochat"])
def test_mmlu_candidate_logprobs_per_format(real, chat):
    task, examples = task_and_examples("mmlu", chat)
    prompts = [task.prompt(ex, real.tokenizer) for ex in examples[:3]]
    cands = task.candidates(real.tokenizer)
    assert len(set(cands)) == 4  # " A".." D" (or "A".."D") are single, distinct tokens
    got = real.next_token_logprobs(prompts, cands)
    for p, lp in zip(prompts, got):
        x = torch.tensor([real.encode(p)])
        with torch.no_grad():
            ref = torch.log_softmax(real.model(input_ids=x).logits[0, -1].float(), -1)[cands]
        assert lp == pytest.approx(ref.tolist(), abs=1e-4)
