"""What the parity comparison runs: the checkouts, the reference commands, the harness overrides, the variants.

Placeholders in the reference arguments: ``{data}`` (the laid-out benchmark directory, :mod:`.layout`),
``{model}`` (the reference model directory) and ``{save}`` (the run's output directory).
"""

from __future__ import annotations

from dataclasses import dataclass

FORK = {"repo": "Forence1999/PRoLoRA", "commit": "2e2b1eedd75f248c7df5f94bd3228a906bc880f1"}
UPSTREAM = {"repo": "allenai/open-instruct", "commit": "d61037f5f1259ed04766f9f5b33300d45fbed86f"}

SUBJECTS = ["abstract_algebra", "anatomy", "astronomy", "business_ethics"]
BBH_TASKS = ["boolean_expressions", "date_understanding", "sports_understanding"]

# the recipe's overrides for every variant (checkpoint=, data_dir= and output_dir= are added per run)
HARNESS_COMMON = ["backend=hf", "precision=full", "dtype=float32", "batch_size=1", "seed=42", "mmlu.precision=null",
                  "gsm.precision=null", "mmlu.subjects=[" + ",".join(SUBJECTS) + "]", "bbh.max_per_task=10",
                  "gsm.max_examples=20", "humaneval.max_examples=10", "humaneval.n_samples=2"]

_MODEL = ["--model_name_or_path", "{model}", "--tokenizer_name_or_path", "{model}", "--use_slow_tokenizer",
          "--eval_batch_size", "1", "--save_dir", "{save}"]
_CHAT = ["--use_chat_format", "--chat_formatting_function", "eval.templates.create_prompt_with_tulu_chat_format"]
_TASK_ARGS = {
    "mmlu": ("eval.mmlu.run_eval", ["--ntrain", "0", "--data_dir", "{data}/mmlu", "--subjects", *SUBJECTS]),
    "bbh": ("eval.bbh.run_eval", ["--data_dir", "{data}/bbh", "--no_cot", "--max_num_examples_per_task", "10"]),
    "gsm": ("eval.gsm.run_eval", ["--data_dir", "{data}/gsm", "--n_shot", "8", "--max_num_examples", "20"]),
    "tydiqa": ("eval.tydiqa.run_eval", ["--data_dir", "{data}/tydiqa", "--n_shot", "1", "--max_context_length", "512"]),
    "humaneval": ("eval.codex_humaneval.run_eval",
                  ["--data_file", "{data}/codex_humaneval/HumanEval.jsonl.gz", "--max_num_examples", "10",
                   "--eval_pass_at_ks", "1", "--unbiased_sampling_size_n", "2", "--temperature", "0.1"]),
}


@dataclass(frozen=True)
class Variant:
    """One comparison: a task, the harness's overrides beyond ``HARNESS_COMMON``, and the reference run."""

    task: str
    chat: bool
    harness: tuple[str, ...] = ()
    checkout: str = "fork"  # fork | upstream
    prompts_only: bool = False  # the reference run logs prompts and ids, generates nothing
    seed: int | None = None  # torch.manual_seed before the reference script (sampled tasks)

    @property
    def overrides(self) -> list[str]:
        return [*HARNESS_COMMON, f"chat={str(self.chat).lower()}", *self.harness, f"tasks=[{self.task}]"]

    @property
    def module(self) -> str:
        return _TASK_ARGS[self.task][0]

    def reference_args(self, data: str, model: str, save: str) -> list[str]:
        args = [*_TASK_ARGS[self.task][1], *_MODEL, *(_CHAT if self.chat else [])]
        return [a.format(data=data, model=model, save=save) for a in args]


VARIANTS = {
    "mmlu_chat": Variant("mmlu", True),
    "mmlu_nochat": Variant("mmlu", False),
    "mmlu_chat_upstream": Variant("mmlu", True, ("protocol=upstream",), checkout="upstream"),
    "bbh_chat": Variant("bbh", True),
    # the HF path of bbh/run_eval.py never stops (results/parity/README.md): prompts and token ids only
    "bbh_nochat": Variant("bbh", False, prompts_only=True),
    "gsm_chat": Variant("gsm", True),
    "gsm_nochat": Variant("gsm", False),
    "tydiqa_chat": Variant("tydiqa", True),
    "tydiqa_nochat": Variant("tydiqa", False),
    "humaneval_chat": Variant("humaneval", True, seed=42),
}
