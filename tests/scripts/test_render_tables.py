"""python -m scripts.render_tables, the thin command line over recipes.paper.render, as a user runs it."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_cli_renders_table2_from_result_files(tmp_path):
    out = subprocess.run([sys.executable, "-m", "scripts.render_tables", "--experiment", "table2", "--results-dir",
                          str(ROOT / "tests" / "fixtures" / "results"), "--out-dir", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Built from 35 finished cell file(s)." in out.stdout
    assert (tmp_path / "table.md").read_text().startswith("# Table 2: LLaMA2-7B")
    assert f"wrote {tmp_path / 'table.csv'}" in out.stdout
