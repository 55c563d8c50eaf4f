"""`adapterd demo --quick --keep-running` on the tiny model: the demo's whole flow, then the
server it leaves up answers adapterctl, then Ctrl-C stops both cleanly."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import free_port

pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parents[3]


def wait_for(log: Path, marker: str, process: subprocess.Popen[bytes], timeout: float) -> str:
    """The demo's output once `marker` is in it (fails if the demo exits or time runs out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text()
        if marker in text:
            return text
        assert process.poll() is None, f"the demo exited ({process.returncode}):\n{text[-3000:]}"
        time.sleep(1)
    raise AssertionError(f"no {marker!r} after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.mark.timeout(900)
def test_the_quick_demo_runs_the_whole_loop_and_keeps_serving(tmp_path, tiny_model_dir):
    port, log = free_port(), tmp_path / "demo.out"
    flags = [
        "--quick", "--keep-running", "--base-model", str(tiny_model_dir),
        "--data-dir", str(tmp_path / "data"), "--port", str(port),
        "--http-port", str(free_port()), "--metrics-port", str(free_port()),
        "--max-model-len", "1024",
    ]  # fmt: skip
    with log.open("w") as out:
        demo = subprocess.Popen(
            # As a shell starts a background job: with SIGINT ignored (no KeyboardInterrupt).
            ["sh", "-c", 'trap "" INT; exec "$0" "$@"', sys.executable, "-m", "service", "demo",
             *flags],
            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
            env={**os.environ, "TQDM_DISABLE": "1"},
        )  # fmt: skip
    try:
        text = wait_for(log, "server running", demo, timeout=780)
        listed = subprocess.run(
            [str(Path(sys.executable).parent / "adapterctl"), "--target", f"127.0.0.1:{port}",
             "adapters", "list"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        demo.send_signal(signal.SIGINT)  # Ctrl-C
        code = demo.wait(timeout=120)
    finally:
        if demo.poll() is None:
            demo.kill()
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert "uploaded 16 GSM8K rows" in text
    # The first evaluation measured both models; a random 2-layer model passes no honest gate,
    # so the demo says so and the version itself answers beside the base.
    assert re.search(r"exact_match,strict-match\S*\s+\d\.\d{3}\s+\d\.\d{3}", text), text
    # No tokens file: every name is in the tenant "default".
    assert "the gates blocked the promotion to gsm8k-prod; default/gsm8k@1 answers below" in text
    report = Path(re.search(r"\[demo\] report: (\S+)", text).group(1))
    assert report.is_file() and report.stat().st_size > 0
    assert Path(re.search(r"\[demo\] loss plot: (\S+)", text).group(1)).is_file()
    assert text.count("evaluation: blocked") == 2  # the honest gates here, then the strict one
    assert re.search(r"default/gsm8k@1 \(default/gsm8k@1\): \.\.\. ", text)
    # One round of the production loop: captured, redacted, rated, exported, trained on.
    assert "production loop: capturing every request to gsm8k" in text
    assert re.search(r"10 answers captured and rated \(\d+ right, \d+ corrected\); stored as: "
                     r"'\(reply to \[EMAIL\]\) ", text), text  # fmt: skip
    assert "(redacted: {'email': 1})" in text
    assert re.search(r"exported 10 rows as ds-\w+; training gsm8k-loop on it", text)
    assert re.search(r"from the training prompts: centroid_distance 0\.\d+, length_ks", text), text
    assert "adapter_version: default/gsm8k-loop@1" in text
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"^default/gsm8k@1\s+ready", listed.stdout, re.M), listed.stdout
    assert "server stopped with exit code 0" in text
