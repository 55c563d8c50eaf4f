"""`python -m trainer validate` as the service will run it."""

import json
import subprocess
import sys

from tests.unit.trainer.test_data import qa, write_jsonl


def test_validate_command_prints_the_report_and_sets_the_exit_code(tmp_path, default_model):
    good = write_jsonl(tmp_path / "good.jsonl", [qa(1), qa(2)])
    bad = write_jsonl(tmp_path / "bad.jsonl", [qa(1), "{"])
    base = [sys.executable, "-m", "trainer", "validate", "--tokenizer", str(default_model.path)]
    ok = subprocess.run([*base, str(good), "--output", "json"], capture_output=True, text=True,
                        check=False)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["train_rows"] == 2
    rejected = subprocess.run([*base, str(bad)], capture_output=True, text=True, check=False)
    assert rejected.returncode == 1
    assert "bad.jsonl:2: invalid JSON" in rejected.stdout
    usage = subprocess.run([*base, str(good), "--max-length", "5"], capture_output=True,
                           text=True, check=False)  # fmt: skip
    assert usage.returncode == 2
    assert "max_length = 5" in usage.stderr
