"""scripts/prepare_data.py: the command line over prolora.data's converters, on the project's fixtures."""

import json

import pytest

from prolora.data import load_records
from prolora.data.formats import convert_code_alpaca, convert_superni
from scripts import prepare_data
from tests.prolora.data.helpers import FIXTURES


def test_prepare_data_cli(tmp_path, capsys):
    main = prepare_data.main
    out = tmp_path / "superni.jsonl"
    assert main(["superni", "--raw", str(FIXTURES / "superni"), "--split", "default", "--out", str(out),
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "wrote 4 records" in text and "task file missing" in text and "empty target" in text
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == convert_superni(FIXTURES / "superni", split="default")[0]
    assert rows[0]["dataset"] == "super_ni" and load_records(out) == rows

    # the shared-copy case: no xlingual split -> default, with a warning
    with pytest.warns(UserWarning, match="xlingual"):
        assert main(["superni", "--raw", str(FIXTURES / "superni"), "--out", str(out), "--no-progress",
                     "--template", "tk_instruct", "--seed", "3"]) == 0
    assert [json.loads(line) for line in out.read_text().splitlines()] == convert_superni(
        FIXTURES / "superni", template="tk_instruct", split="default", seed=3)[0]
    capsys.readouterr()

    for args, expected in ((["--seed", "7"], convert_code_alpaca(FIXTURES / "code_alpaca.json", seed=7)[0]),
                           (["--template", "fixed"],
                            convert_code_alpaca(FIXTURES / "code_alpaca.json", template="fixed")[0]),
                           ([], convert_code_alpaca(FIXTURES / "code_alpaca.json")[0])):
        assert main(["code_alpaca", "--raw", str(FIXTURES / "code_alpaca.json"), "--out", str(out)] + args) == 0
        assert [json.loads(line) for line in out.read_text().splitlines()] == expected
    assert main(["code_alpaca", "--raw", str(FIXTURES / "code_alpaca.json"), "--out", str(out),
                 "--template", "tk_instruct"]) == 2
    assert "code_alpaca --template must be one of open_instruct, fixed" in capsys.readouterr().err
    assert "reproduce open-instruct's processed files" in " ".join(prepare_data.build_parser().format_help().split())

    assert main(["flan_v2", "--raw", str(FIXTURES / "missing.jsonl"), "--out", str(tmp_path / "f.jsonl")]) == 1
    assert "not found" in capsys.readouterr().err
    assert main(["nope", "--raw", "x", "--out", str(tmp_path / "n.jsonl")]) == 2
    assert "known: code_alpaca" in capsys.readouterr().err
