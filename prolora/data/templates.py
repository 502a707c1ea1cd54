"""open-instruct's instruction-encoding templates and encoders, with an explicit ``random.Random``.

The template strings and weights below are protocol data, reproduced character for character (the typo
``"Plase"`` included) from open-instruct ``open_instruct/instruction_encode_templates.py`` at commit
5cf790a52 (2024-01-09; https://github.com/allenai/open-instruct), the version whose
``reformat_datasets.py`` produced the processed SuperNI / CodeAlpaca files the PRoLoRA paper trained on.

Random draws are the same as open-instruct's (which uses the global ``random`` module) when the
``random.Random`` passed in is in the same state as its global generator: a template is picked by exactly one
``rng.choices(table, weights=[w for _, _, w in table])`` call, which consumes one ``rng.random()``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

# (prompt template, completion template, weight); source: open-instruct
# open_instruct/instruction_encode_templates.py @ 5cf790a52, ``encoding_templates_w_input``.
ENCODING_TEMPLATES_W_INPUT: tuple[tuple[str, str, float], ...] = (
    ("{instruction}\n\n{input}\n\n", "{output}", 0.2),
    ("{instruction}\n{input}\n\n", "{output}", 0.1),
    ("{instruction}\n{input}\n", "{output}", 0.1),
    ("{instruction}\n\nInput: {input}\n\nOutput:", "{output}", 0.05),
    ("{instruction}\nInput: {input}\nOutput:", "{output}", 0.05),
    ("{instruction}\n{input}\n\nResponse:", "{output}", 0.05),
    ("{instruction}\n\nAdditional Context:\n{input}\n\nAnswer:", "{output}", 0.05),
    ("Task: {instruction}\nInput: {input}\nOutput:", "{output}", 0.05),
    ("Task: {instruction}\n\n{input}\n\n", "{output}", 0.05),
    ("Task: {instruction}\n\n{input}\n\nAnswer:", "{output}", 0.05),
    ("You need to complete the following task:\n\n{instruction}\n\n{input}\n\nAnswer:", "{output}", 0.05),
    ("{instruction}\n\nNow complete the following instance -\nInput: {input}\nOutput:", "{output}", 0.05),
    ("Instruction:{instruction}\n\nInput: {input}\n\n", "{output}", 0.05),
    ("Below is an instruction that describes a task, paired with an input that provides further context. "
     "Write a response that appropriately completes the request.\n\n"
     "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:", "{output}", 0.1),  # alpaca
)

# source: open-instruct open_instruct/instruction_encode_templates.py @ 5cf790a52, ``encoding_templates_wo_input``.
ENCODING_TEMPLATES_WO_INPUT: tuple[tuple[str, str, float], ...] = (
    ("{instruction}\n\n", "{output}", 0.2),
    ("{instruction}\n", "{output}", 0.1),
    ("{instruction}", "\n{output}", 0.1),
    ("{instruction} Output:", "{output}", 0.05),
    ("{instruction}\nResponse:", "{output}", 0.05),
    ("{instruction}\n\nAnswer:", "{output}", 0.05),
    ("Task: {instruction}\n\n", "{output}", 0.05),
    ("Instruction: {instruction}\n", "{output}", 0.05),
    ("Instruction: {instruction}\nOutput:", "{output}", 0.05),
    ("You need to complete the following task:\n\n{instruction}\n\n", "{output}", 0.05),
    ("Can you help with this?\n\n{instruction}\n", "{output}", 0.05),
    ("Plase answer the following request: {instruction}\nAnswer:", "{output}", 0.05),
    ("Tell me how would you respond to the following request.\n{instruction}\n", "{output}", 0.05),
    ("Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n"
     "### Response:", "{output}", 0.1),  # alpaca
)


def has_input(input: str | None) -> bool:
    """open-instruct's test for using the with-input table: ``input is not None and input.strip() != ""``."""
    return input is not None and input.strip() != ""


def choose_template(rng: random.Random, with_input: bool) -> int:
    """Index of the template open-instruct's ``random.choices(table, weights=...)[0]`` picks (one
    ``rng.random()`` consumed), in :data:`ENCODING_TEMPLATES_W_INPUT` or :data:`ENCODING_TEMPLATES_WO_INPUT`."""
    table = ENCODING_TEMPLATES_W_INPUT if with_input else ENCODING_TEMPLATES_WO_INPUT
    # choices over the indices with the very same weights list draws exactly as choices over the tuples
    return rng.choices(range(len(table)), weights=[w for _, _, w in table])[0]


def encode_instruction_example(instruction: str, input: str | None, output: str, rng: random.Random | None,
                               random_template: bool = True) -> dict:
    """open-instruct ``encode_instruction_example`` (``eos_token=None``): ``{"prompt", "completion",
    "template"}``, ``template`` the index of the chosen template (``None`` when ``random_template`` is false,
    which uses ``instruction\\n\\n[input\\n\\n]`` and consumes no randomness)."""
    if random_template:
        if rng is None:
            raise ValueError("random_template=True needs a random.Random")
        with_input = has_input(input)
        idx = choose_template(rng, with_input)
        table = ENCODING_TEMPLATES_W_INPUT if with_input else ENCODING_TEMPLATES_WO_INPUT
        prompt_t, completion_t, _ = table[idx]
        fields = {"instruction": instruction.strip()}
        if with_input:
            fields["input"] = input.strip()
        return {"prompt": prompt_t.format(**fields), "completion": completion_t.format(output=output.strip()),
                "template": idx}
    prompt = instruction.strip() + "\n\n"
    if has_input(input):
        prompt += input.strip() + "\n\n"
    return {"prompt": prompt, "completion": output.strip(), "template": None}


def encode_few_shot_example(instruction: str, examplars: Sequence[dict], input: str, output: str) -> dict:
    """open-instruct ``encode_few_shot_example`` (``eos_token=None``): ``{"prompt", "completion"}`` with
    ``prompt = instruction\\n\\n (Input:\\n<x>\\nOutput:\\n<y>\\n\\n)* Input:\\n<input>\\nOutput:\\n``
    (every piece stripped). Consumes no randomness (the exemplars are sampled by the caller)."""
    prompt = instruction.strip() + "\n\n"
    for ex in examplars:
        prompt += "Input:\n" + ex["input"].strip() + "\n" + "Output:\n" + ex["output"].strip() + "\n\n"
    prompt += "Input:\n" + input.strip() + "\n" + "Output:\n"
    return {"prompt": prompt, "completion": output.strip()}


__all__ = ["ENCODING_TEMPLATES_WO_INPUT", "ENCODING_TEMPLATES_W_INPUT", "choose_template",
           "encode_few_shot_example", "encode_instruction_example", "has_input"]
