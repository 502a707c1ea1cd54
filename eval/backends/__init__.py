"""Generation backends behind one interface (:class:`eval.backends.base.Backend`): ``hf`` (transformers,
any machine) and ``vllm`` (CUDA; imported lazily)."""

from __future__ import annotations

from eval.backends.base import Backend, truncate_at_stop

BACKENDS = ("hf", "vllm")


def get_backend_class(name: str) -> type[Backend]:
    if name == "hf":
        from eval.backends.hf import HFBackend

        return HFBackend
    if name == "vllm":
        from eval.backends.vllm import VLLMBackend

        return VLLMBackend
    raise ValueError(f"unknown backend {name!r}; known: {BACKENDS}")


__all__ = ["Backend", "BACKENDS", "get_backend_class", "truncate_at_stop"]
