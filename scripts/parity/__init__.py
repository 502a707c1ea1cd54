"""Parity evidence: the harness's evaluators against open-instruct's eval scripts as the PRoLoRA authors ran them,
on SmolLM2-135M-Instruct, example by example (``results/parity/``; run with ``python -m scripts.parity``)."""
