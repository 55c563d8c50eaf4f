"""Bad start-up input: one line naming the flag, a non-zero exit, no traceback."""

import socket
import subprocess
import sys

import pytest


def serve(*flags, tmp_path):
    return subprocess.run(
        [sys.executable, "-m", "service", "serve", "--data-dir", str(tmp_path / "data"), *flags],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--max-lora-rank", "12"], "--max-lora-rank (ADAPTERD_MAX_LORA_RANK) = '12'"),
        (["--port", "http"], "--port (ADAPTERD_PORT) = 'http'"),
        (["--base-model", "no-such-model"], "--base-model 'no-such-model'"),
        (["--auth-tokens-file", "/nonexistent/tokens.yaml"], "--auth-tokens-file"),
    ],
)
def test_invalid_settings_fail_in_one_line(flags, expected, tmp_path):
    result = serve(*flags, tmp_path=tmp_path)
    assert result.returncode == 2
    assert expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_unwritable_data_dir_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = subprocess.run(
        [sys.executable, "-m", "service", "serve", "--data-dir", str(blocker / "data")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith(f"adapterd: error: --data-dir {blocker / 'data'}")


def test_port_in_use_is_named(tmp_path, tiny_model_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = serve("--base-model", str(tiny_model_dir), "--port", str(port), tmp_path=tmp_path)
    assert result.returncode == 2
    assert f"--port {port}: cannot listen" in result.stderr
    assert "Traceback" not in result.stderr
