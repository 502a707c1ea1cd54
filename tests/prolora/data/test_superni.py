"""The SuperNI reformatter on the real published task files in <repo>/../shared/data (skips without them)."""

import json
from collections import Counter

from prolora.data import TokenizedDataset
from prolora.data.formats import convert_superni
from prolora.data.superni import read_task_list
from prolora.models import TINY_DIR, load_tokenizer

PRESENT = {"task062_bigbench_repeat_copy_logic": 29, "task1149_item_check_edible": 119,
           "task1319_country_by_barcode_prefix": 101}


def test_real_superni_tasks_tk_instruct(shared_data):
    raw = shared_data / "superni"
    names = read_task_list(raw / "splits" / "default" / "train_tasks.txt")
    assert len(names) == 756
    mmmlu = [t for t in names if "_mmmlu_" in t]
    assert len(mmmlu) == 57  # MMLU questions inside the default train split: dropped (MMLU test leakage)

    records, report = convert_superni(raw, template="tk_instruct", split="default", max_per_task=100)
    per_task = Counter(r["id"].removeprefix("superni_").split("-")[0] for r in records)  # ids superni_task062-...
    assert per_task == {t.split("_")[0]: min(n, 100) for t, n in PRESENT.items()}
    assert report.kept == len(records) == 29 + 100 + 100
    # every other non-MMMLU task of the split is absent here: reported, not fatal
    assert report.n_skipped == 756 - 57 - 3
    assert all(s.reason == "task file missing" and "_mmmlu_" not in s.path for s in report.skipped)
    assert len({r["id"] for r in records}) == len(records)

    task = json.loads((raw / "tasks" / "task1319_country_by_barcode_prefix.json").read_text())
    by_id = {r["id"]: r for r in records}
    inst = next(i for i in task["Instances"] if f"superni_{i['id']}" in by_id)
    user, assistant = (m["content"] for m in by_id[f"superni_{inst['id']}"]["messages"])
    pos = task["Positive Examples"]
    assert user.startswith("Definition: " + task["Definition"][0].strip())
    assert f"\n\n Positive Example 1 -\nInput: {pos[0]['input'].strip()}" in user
    assert f"\n\n Positive Example 2 -\nInput: {pos[1]['input'].strip()}" in user
    assert " Positive Example 3 -" not in user
    assert user.endswith(f"Now complete the following example -\nInput: {inst['input'].strip()}.\nOutput: ")
    assert assistant == inst["output"][0].strip()

    # sampling is seeded: same records again, others with another seed
    assert convert_superni(raw, template="tk_instruct", split="default", max_per_task=100)[0] == records
    assert convert_superni(raw, template="tk_instruct", split="default", max_per_task=100, seed=7)[0] != records

    ds = TokenizedDataset(records, load_tokenizer(TINY_DIR), max_len=512)
    assert len(ds) + ds.n_dropped == len(records) and len(ds) > 0 and max(ds.lengths) <= 512


def test_real_superni_open_instruct(shared_data):
    """open-instruct's conversion (the default) on the three real tasks, split default (no xlingual here).
    Expected values for seed 42 checked against open-instruct's reformat_datasets.py on the same files."""
    raw = shared_data / "superni"
    records, report = convert_superni(raw, split="default")
    per_task = Counter(r["id"].removeprefix("super_ni_").split("-")[0] for r in records)
    # 60 zero-shot + 20 few-shot sampled where a task has more than 80 instances, else all of them
    assert per_task == {"task062": 29, "task1149": 80, "task1319": 80}
    assert report.n_skipped == 756 - 57 - 3 and len({r["id"] for r in records}) == len(records)
    assert all(r["dataset"] == "super_ni" for r in records)

    # splits/default lists task1319 first: its first sampled instance, zero-shot, W_INPUT[9]
    task = json.loads((raw / "tasks" / "task1319_country_by_barcode_prefix.json").read_text())
    assert records[0]["id"] == "super_ni_task1319-5687693fc69b403bac494218899e3b4a"
    assert records[0]["messages"] == [
        {"role": "user", "content": "Task: " + task["Definition"][0].strip() + "\n\nCuba\n\nAnswer:"},
        {"role": "assistant", "content": "850"}]
    # task1149 (after task1319's 80): its 61st record is the first few-shot one, 2 sampled positive examples
    assert records[80]["id"] == "super_ni_task1149-0eee1b0b423e47a79aa1e3bad9307e3c"
    assert records[80 + 60] == {"dataset": "super_ni", "id": "super_ni_task1149-dfb9fa47ee1d4a7583ab54c6caf82119",
                                "messages": [
        {"role": "user", "content": "In this task, you are given an item and you need to check whether it is edible "
                                    "or not, return 1 if it is edible, else return 2.\n\nInput:\nGlass\nOutput:\n2"
                                    "\n\nInput:\nIce Cream\nOutput:\n1\n\nInput:\nbed\nOutput:\n"},
        {"role": "assistant", "content": "2"}]}
    few = [r["messages"][0]["content"] for r in records[80 + 60:80 + 80]]
    assert all(u.count("\nOutput:\n") == 3 for u in few)

    ds = TokenizedDataset(records, load_tokenizer(TINY_DIR), max_len=512)
    assert len(ds) + ds.n_dropped == len(records) and len(ds) > 0
