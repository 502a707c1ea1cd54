"""The hf backend: left padding, BOS, stop sequences, batch invariance; vLLM stays a lazy import."""

import subprocess
import sys

import pytest

from eval.backends import get_backend_class, truncate_at_stop
from eval.backends.hf import HFBackend
from tests.conftest import REPO

PROMPTS = ["<|user|>\nWhat is 13 + 15?\n<|assistant|>\n", "Hi", "A much longer prompt that needs a lot of left padding "
           "when it is batched with the short ones, " * 3, "<s>Already has a BOS", "Reverse: bird salt cloud\n"]


@pytest.fixture(scope="module")
def backend():
    from prolora.models import TINY_DIR, build_tiny_llama, load_tokenizer

    return HFBackend(build_tiny_llama(seed=0), load_tokenizer(TINY_DIR), batch_size=8)


def test_truncate_at_stop():
    assert truncate_at_stop("a\nb\n\nc", ["\n\n"]) == "a\nb"
    assert truncate_at_stop("x = 1\ndef g():\n#", ["\n#", "\ndef"]) == "x = 1"
    assert truncate_at_stop("abc", []) == "abc"


def test_bos_added_once(backend):
    tok = backend.tokenizer
    assert backend.encode("Hi")[0] == tok.bos_token_id
    ids = backend.encode("<s>Already has a BOS")
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id
    assert backend.encode("<s>Already has a BOS") == backend.encode("Already has a BOS")


def test_greedy_batch_size_1_equals_8(backend):
    backend.batch_size = 8
    batched = backend.generate(PROMPTS, max_new_tokens=8)
    backend.batch_size = 1
    single = backend.generate(PROMPTS, max_new_tokens=8)
    backend.batch_size = 8
    assert batched == single
    assert all(len(o) == 1 for o in batched)
    assert any(o[0] for o in batched)


def test_logprobs_batch_invariant(backend):
    cands = [35, 36, 37, 38]
    backend.batch_size = 8
    batched = backend.next_token_logprobs(PROMPTS, cands)
    backend.batch_size = 1
    single = backend.next_token_logprobs(PROMPTS, cands)
    backend.batch_size = 8
    for a, b in zip(batched, single):
        assert a == pytest.approx(b, abs=1e-4)
        assert all(x < 0 for x in a)


def test_stop_sequences_cut_output(backend):
    free = backend.generate(PROMPTS[:2], max_new_tokens=12)
    for (text,), prompt in zip(free, PROMPTS[:2]):
        if len(text) > 2:
            stop = text[1:3]
            (cut,) = backend.generate([prompt], max_new_tokens=12, stop=[stop])[0:1]
            assert cut == [text[: text.find(stop)]]


def test_sampling_is_seeded(backend):
    a = backend.generate(PROMPTS[:2], max_new_tokens=6, temperature=1.0, top_p=0.95, n=3, seed=7)
    b = backend.generate(PROMPTS[:2], max_new_tokens=6, temperature=1.0, top_p=0.95, n=3, seed=7)
    assert a == b and all(len(x) == 3 for x in a)


def test_vllm_is_lazy():
    code = ("import sys; import eval.backends, eval.backends.vllm, eval.driver, recipes.evaluate; "
            "assert 'vllm' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    cls = get_backend_class("vllm")
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="backend=hf"):
            cls("tiny")


def test_vllm_rank_choice(tmp_path):
    from eval.backends.vllm import lora_rank, max_lora_rank_for

    assert [max_lora_rank_for(r) for r in (1, 2, 8, 9, 256, 280)] == [1, 8, 8, 16, 256, 320]
    (tmp_path / "adapter_config.json").write_text('{"r": 8, "lora_alpha": 16}')
    assert lora_rank(tmp_path) == 8


def test_checkpoint_sampling_defaults_are_ignored(backend):
    """LLaMA-2 ships do_sample/temperature/top_p in generation_config.json; greedy must stay greedy."""
    from prolora.models import TINY_DIR, build_tiny_llama, load_tokenizer

    model = build_tiny_llama(seed=0)
    model.generation_config.do_sample = True
    model.generation_config.temperature = 5.0
    model.generation_config.top_p = 0.5
    noisy = HFBackend(model, load_tokenizer(TINY_DIR))
    a = noisy.generate(PROMPTS, max_new_tokens=6, seed=1)
    b = noisy.generate(PROMPTS, max_new_tokens=6, seed=2)
    assert a == b == backend.generate(PROMPTS, max_new_tokens=6)


def test_static_kv_cache_gives_the_dynamic_caches_greedy_outputs():
    """The preallocated KV cache changes speed only: the same text for every prompt, padded or not, with and
    without stop sequences, and a nonsense setting is refused by name."""
    from prolora.models import TINY_DIR, build_tiny_llama, load_tokenizer

    model, tok = build_tiny_llama(seed=0), load_tokenizer(TINY_DIR)
    static = HFBackend(model, tok, batch_size=8, kv_cache="static")
    dynamic = HFBackend(model, tok, batch_size=8)
    assert dynamic.kv_cache == "dynamic"
    for stop in (None, ["\n"]):
        a = static.generate(PROMPTS, max_new_tokens=24, stop=stop)
        b = dynamic.generate(PROMPTS, max_new_tokens=24, stop=stop)
        assert a == b
    assert any(len(t[0]) > 5 for t in a)  # something was generated
    with pytest.raises(ValueError, match="kv_cache='paged'"):
        HFBackend(model, tok, kv_cache="paged")


def test_prefix_groups_share_only_long_prefixes():
    from eval.backends.hf import prefix_groups

    shot = list(range(100, 180))  # an 80-token shared "few-shot" prefix
    rows = [shot + [1, 2], [5, 6, 7], shot + [3], shot[:40] + [9], shot + [1, 2, 4], shot]
    groups = prefix_groups(rows, min_prefix=64)
    by_rows = {tuple(sorted(m)): n for n, m in groups}
    # rows 0, 2, 4, 5 share 80 tokens; row 5 IS the prefix, so the group keeps 79 (each row keeps a token)
    assert by_rows[(0, 2, 4, 5)] == 79
    assert sorted(i for _, m in groups for i in m) == list(range(len(rows)))  # every row once
    assert all(n == 0 for m, n in by_rows.items() if 1 in m or 3 in m)
    assert prefix_groups([[1, 2, 3]] * 3, min_prefix=64) == [(0, [0, 1, 2])]


def test_prefix_reuse_gives_the_same_greedy_outputs():
    """Prompts sharing a few-shot prefix: the prefix's keys/values computed once and reused give the same text as
    the plain path (same prompts, batch 1 and batch 8 with pads between prefix and suffix, with a stop), and
    prompts without a shared prefix in the same call still work; a static cache is refused with it."""
    from prolora.models import TINY_DIR, build_tiny_llama, load_tokenizer

    model, tok = build_tiny_llama(seed=0), load_tokenizer(TINY_DIR)
    shots = "".join(f"Question: what is {a} plus {b}?\nAnswer: {a + b}\n\n" for a, b in ((3, 4), (10, 5), (7, 7)))
    prompts = [shots + f"Question: {q}\nAnswer:" for q in ("what is 2 plus 2?", "Reverse: bird salt",
                                                         "a much longer question that pads the others " * 3, "hi")]
    prompts += PROMPTS
    plain = HFBackend(model, tok, batch_size=8)
    assert len(plain.encode(shots)) > 64
    for batch_size in (1, 8):
        reuse = HFBackend(model, tok, batch_size=batch_size, prefix_cache=True)
        plan = reuse._plan([reuse.encode(p) for p in prompts])
        assert any(n > 64 for n, _ in plan) and any(n == 0 for n, _ in plan)
        for stop in (None, ["\n"]):
            assert reuse.generate(prompts, max_new_tokens=16, stop=stop) == plain.generate(
                prompts, max_new_tokens=16, stop=stop)
    with pytest.raises(ValueError, match="prefix_cache=true needs kv_cache=dynamic"):
        HFBackend(model, tok, kv_cache="static", prefix_cache=True)


def test_greedy_loop_that_drops_finished_rows_equals_generate():
    """The backend's own greedy loop (finished rows leave the batch) gives ``model.generate``'s text for every
    prompt: batch 1 and 8, with stop sequences that end rows at different steps, with EOS, and with prefix reuse."""
    from prolora.models import TINY_DIR, build_tiny_llama, load_tokenizer

    model, tok = build_tiny_llama(seed=0), load_tokenizer(TINY_DIR)
    prompts = PROMPTS + [f"Reverse: {w}\n" for w in ("a b c", "salt bird", "cloud")] + ["x " * 40]
    for batch_size in (1, 8):
        own = HFBackend(model, tok, batch_size=batch_size)
        ref = HFBackend(model, tok, batch_size=batch_size, evict_finished=False)
        assert own.evict_finished and not ref.evict_finished
        for stop in (None, ["\n"], [" ", "\n\n"]):
            a = own.generate(prompts, max_new_tokens=20, stop=stop)
            assert a == ref.generate(prompts, max_new_tokens=20, stop=stop), (batch_size, stop)
        if stop:
            assert len({len(t[0]) for t in a}) > 1  # rows did stop at different steps
    # rows that end at EOS: make EOS the likeliest token after a few steps by taking it as the pad/eos
    own, ref = HFBackend(model, tok, batch_size=8), HFBackend(model, tok, batch_size=8, evict_finished=False)
    common = ref.generate(prompts, max_new_tokens=6)
    token = tok(common[0][0][:3], add_special_tokens=False)["input_ids"][:1]
    if token:
        own.eos_ids = ref.eos_ids = sorted(set(own.eos_ids) | set(token))
        assert own.generate(prompts, max_new_tokens=12) == ref.generate(prompts, max_new_tokens=12)
