"""`adapterd demo`: what a new user runs first.

Starts `adapterd serve` as a child process (as a user or Kubernetes would), waits until the engine
is warm, shows what the server reports about itself and its metrics, then stops it with SIGTERM
as a rollout would. Later stages (train, evaluate, promote, compare) extend this script.
"""

import contextlib
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from service.client.api import Client
from service.settings import ServerSettings

START_TIMEOUT_SECONDS = 600.0


def _say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def run_demo(settings: ServerSettings, server_flags: list[str], keep_running: bool) -> int:
    """Runs the demo against a server started with `server_flags`; returns the exit code."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    log_path = settings.data_dir / "demo-server.log"
    began = time.monotonic()
    _say(f"starting `adapterd serve {' '.join(server_flags)}` (log: {log_path})")
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", *server_flags],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    target = f"{settings.host}:{settings.port}"
    try:
        with Client(target, timeout=10.0) as client:
            seen = _wait_serving(client, server, log_path)
            if seen is None:
                return 1
            _say(f"health went {' -> '.join(seen)} in {time.monotonic() - began:.1f} s")
            info = client.server_info()
            base = info.base_model
            _say(
                f"adapterd {info.version}: base model {base.name} ({base.architecture}, "
                f"{base.parameters / 1e6:.1f}M parameters) in vLLM, "
                f"max_loras={info.max_loras}, max_lora_rank={info.max_lora_rank}"
            )
            _say(
                f"weights sha256 {base.weights_sha256[:16]}…, "
                f"chat template sha256 {base.chat_template_sha256[:16]}…"
            )
        metrics_url = f"http://{settings.host}:{settings.metrics_port}/metrics"
        with urllib.request.urlopen(metrics_url, timeout=10) as response:
            page = response.read().decode()
        shown = [line for line in page.splitlines() if line.startswith("adapterd_engine")]
        _say(f"{metrics_url}: " + "; ".join(shown))
        if keep_running:
            _say(f"server running: try `adapterctl --target {target} info`; Ctrl-C stops it")
            with contextlib.suppress(KeyboardInterrupt):
                server.wait()
    finally:
        code = _stop(server)
    _say(f"server stopped with exit code {code}; demo took {time.monotonic() - began:.1f} s")
    return 0 if code == 0 else 1


def _wait_serving(client: Client, server: subprocess.Popen[bytes], log: Path) -> list[str] | None:
    try:
        return client.wait_until_serving(
            timeout=START_TIMEOUT_SECONDS, give_up=lambda: server.poll() is not None
        )
    except ConnectionAbortedError:
        tail = log.read_text().strip().splitlines()[-5:]
        _say("the server exited during start-up:\n  " + "\n  ".join(tail))
    except TimeoutError:
        _say(f"the server was not serving after {START_TIMEOUT_SECONDS:.0f} s; see {log}")
    return None


def _stop(server: subprocess.Popen[bytes]) -> int:
    if server.poll() is None:
        began = time.monotonic()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=120)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        _say(f"SIGTERM -> exit in {time.monotonic() - began:.1f} s")
    return server.returncode
