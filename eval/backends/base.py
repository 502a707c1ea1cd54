"""The backend interface: text generation and next-token log-probabilities over prompts.

Both backends tokenize prompts the same way (:meth:`Backend.encode`): the tokenizer's special tokens
(LLaMA: BOS) are added unless the prompt text already starts with the BOS string, so no prompt ever
gets a second BOS; the vLLM backend passes these very token ids to the engine. Outputs are the text
the model added after the prompt, decoded in the context of the prompt (so a leading space of the
first new token is kept), cut before the earliest stop sequence (the stop text itself is not
included, as vLLM does), with special tokens skipped.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence


def truncate_at_stop(text: str, stop: Sequence[str] | None) -> str:
    """``text`` up to (not including) the earliest occurrence of any stop sequence."""
    if not stop:
        return text
    cut = len(text)
    for s in stop:
        if s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut]


class Backend(ABC):
    """``generate`` and ``next_token_logprobs``; ``tokenizer`` is a Hugging Face tokenizer."""

    name = "backend"
    tokenizer = None

    def encode(self, prompt: str) -> list[int]:
        tok = self.tokenizer
        bos = getattr(tok, "bos_token", None)
        add_special = not (bos and prompt.startswith(bos))
        return tok(prompt, add_special_tokens=add_special).input_ids

    @abstractmethod
    def generate(self, prompts: Sequence[str], max_new_tokens: int = 512, temperature: float = 0.0,
                 top_p: float = 1.0, n: int = 1, stop: Sequence[str] | None = None, seed: int = 42,
                 desc: str = "generate") -> list[list[str]]:
        """``n`` completions per prompt (greedy when ``temperature == 0``)."""

    @abstractmethod
    def next_token_logprobs(self, prompts: Sequence[str], candidate_token_ids: Sequence[int],
                            desc: str = "score") -> list[list[float]]:
        """Log-probability (over the whole vocabulary) of each candidate as the token after each prompt."""

    def close(self) -> None:  # noqa: B027 (optional hook, not abstract)
        """Free the model (GPU memory) where that matters."""
