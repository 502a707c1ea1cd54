"""scripts/parity/oi_logger.py: an open-instruct-shaped script runs unmodified under the logger, in its own
interpreter with the checkout first on the path, and every prompt, its ids and its outputs are logged; glob
lists sorted."""

import json
import subprocess
import sys
import textwrap

from scripts.parity.reference import LOGGER

UTILS = '''
def generate_completions(model, tokenizer, prompts, batch_size=1, stop_id_sequences=None, add_special_tokens=True,
                         **kwargs):
    return [p[::-1] for p in prompts]


def get_next_word_predictions(model, tokenizer, prompts, candidate_token_ids=None, batch_size=1,
                              add_special_tokens=True, **kwargs):
    return [len(p) % 4 for p in prompts], [[0.1, 0.2, 0.3, 0.4] for _ in prompts]
'''
SCRIPT = '''
import glob
import os
import sys
import vllm  # the scripts import it at the top; the logger stubs it where it is not installed
from eval.utils import generate_completions, get_next_word_predictions


class Tok:
    def __call__(self, text, add_special_tokens=True):
        return type("Enc", (), {"input_ids": [ord(c) for c in text]})()


if __name__ == "__main__":
    prompts = sys.argv[2:]
    print("GLOB", [os.path.basename(f) for f in glob.glob(os.path.join(sys.argv[1], "*.json"))])
    print("OUT", generate_completions(None, Tok(), prompts), get_next_word_predictions(None, Tok(), prompts)[0])
'''


def fake_checkout(tmp_path):
    (tmp_path / "eval" / "fake").mkdir(parents=True)
    (tmp_path / "eval" / "__init__.py").write_text("")
    (tmp_path / "eval" / "fake" / "__init__.py").write_text("")
    (tmp_path / "eval" / "utils.py").write_text(textwrap.dedent(UTILS))
    (tmp_path / "eval" / "fake" / "run_eval.py").write_text(textwrap.dedent(SCRIPT))
    return tmp_path


def run_logger(checkout, log, *options):
    tasks = checkout / "tasks"  # listed in hash order here, not sorted, by ext4 and overlayfs
    tasks.mkdir()
    for name in ("date_understanding", "boolean_expressions", "sports_understanding"):
        (tasks / f"{name}.json").write_text("{}")
    return subprocess.run([sys.executable, str(LOGGER), "run", f"--log={log}", *options, "eval.fake.run_eval",
                           str(tasks), "ab", "xyz"], cwd=checkout, env={"PYTHONPATH": str(checkout), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60)


def test_every_prompt_its_ids_and_outputs_are_logged(tmp_path):
    checkout = fake_checkout(tmp_path / "oi")
    log = tmp_path / "log.jsonl"
    proc = run_logger(checkout, log)
    assert proc.returncode == 0, proc.stderr
    assert "OUT ['ba', 'zyx'] [2, 3]" in proc.stdout  # the script's own results are unchanged
    # glob's order is the file system's; BBH's script draws task after task in it: sorted under the logger
    assert "GLOB ['boolean_expressions.json', 'date_understanding.json', 'sports_understanding.json']" in proc.stdout
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert rows[:2] == [
        {"call": 0, "fn": "generate_completions", "prompt": "ab", "input_ids": [97, 98], "outputs": ["ba"]},
        {"call": 0, "fn": "generate_completions", "prompt": "xyz", "input_ids": [120, 121, 122], "outputs": ["zyx"]}]
    assert rows[2] == {"call": 1, "fn": "get_next_word_predictions", "prompt": "ab", "input_ids": [97, 98],
                       "prediction": 2, "probs": [0.1, 0.2, 0.3, 0.4]}
    assert len(rows) == 4


def test_prompts_only_generates_nothing(tmp_path):
    checkout = fake_checkout(tmp_path / "oi")
    log = tmp_path / "log.jsonl"
    proc = run_logger(checkout, log, "--prompts-only")
    assert proc.returncode == 0, proc.stderr
    assert "OUT ['', '']" in proc.stdout
    assert [json.loads(line)["outputs"] for line in log.read_text().splitlines()[:2]] == [[""], [""]]
