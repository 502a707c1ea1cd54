# PRoLoRA reproduction harness. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: help install test lint demo reproduce-table2 reproduce-table3 reproduce-table4 reproduce-figure2 count-params bench bench-train bench-eval clean

help:  ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-20s\033[0m %s\n", $$1, $$2}'

install: $(STAMP)  ## create .venv (CPU torch 2.13.0 unless a torch or a CUDA GPU is already there) and install the project with its dev extra

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if $(PY) -c "import torch" 2>/dev/null; then \
		echo "keeping the installed torch $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "CUDA GPU found: installing the default (CUDA) torch build"; $(PIP) install -q torch; \
	else \
		echo "no GPU: installing the CPU build torch==2.13.0"; $(PIP) install -q torch==2.13.0; \
	fi
	$(PIP) install -q -e '.[dev]'
	@touch $(STAMP)

test: install  ## run the test suite (CPU, a few minutes)
	$(PY) -m pytest -q -p no:cacheprovider

lint: install  ## ruff
	$(VENV)/bin/ruff check .

demo: install  ## the embedded end-to-end run: tiny 4-bit Llama, mini grid, evaluation, table + loss curves in results/demo/
	$(PY) recipes/reproduce.py experiment=demo

reproduce-table2: install  ## LLaMA2-7B Table 2 grid (GPU + weights); ARGS="--plan" lists the cells
	$(PY) recipes/reproduce.py experiment=table2 $(ARGS)

reproduce-table3: install  ## LLaMA2-13B Table 3 grid
	$(PY) recipes/reproduce.py experiment=table3 $(ARGS)

reproduce-table4: install  ## Table 4 share/rotate variants on BBH
	$(PY) recipes/reproduce.py experiment=table4 $(ARGS)

reproduce-figure2: install  ## Figure 2: rank 32, u = 0..8 at the LoRA-r8 budget x learning rates
	$(PY) recipes/reproduce.py experiment=figure2 $(ARGS)

count-params: install  ## trainable-parameter count on the meta device, e.g. ARGS="model=llama2_7b method=prolora rank=8 unshared=1 sharing=7"
	$(PY) scripts/count_params.py $(ARGS)

bench: install  ## adapter forward+backward speed and memory vs PEFT LoRA (ratios)
	$(PY) scripts/bench_adapters.py $(ARGS)

bench-train: install  ## QLoRA train step of each method and of HF Trainer + PEFT, same batches (7B on a GPU, ~106M profile on a CPU)
	$(PY) scripts/bench_train.py $(ARGS)

bench-eval: install  ## generation throughput of the eval backends on GSM/BBH prompt shapes
	$(PY) scripts/bench_eval.py $(ARGS)

clean:  ## remove outputs of local runs (keeps .venv and results/)
	rm -rf outputs multirun .pytest_cache
