"""One server (tiny model, on a PostgreSQL server of its own) through the faults a deployment
meets, in this order: its database goes away and comes back, its engine core is killed, and
finally SIGTERM while a stream runs. The tests share the server because each engine start costs
about 30 s; each leaves it serving for the next, and the last one stops it.

- Database outage: calls that need the store are UNAVAILABLE (retryable, not INTERNAL), the
  rest keep serving, and jobs run again once the database is back.
- Engine crash: in-flight and new inference calls are UNAVAILABLE, readiness goes NOT_SERVING
  while liveness stays SERVING, the engine restarts, and an adapter that was loaded serves
  again (it reloads on its next request).
- SIGTERM: health off, calls drained, engine stopped, no child process left behind."""

import os
import shutil
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import psutil
import pytest
from google.protobuf import json_format

from adapterd.v1 import inference_pb2, jobs_pb2
from service.client.api import Client
from tests.support import PostgresServer, ServerProcess, find_postgres_bin, postgres_bin

pytestmark = pytest.mark.engine

SLICE = Path(__file__).resolve().parents[3] / "data/gsm8k/train_slice.jsonl"
STREAM_TOKENS = 120


@pytest.fixture(scope="module")
def database():
    cluster = PostgresServer(Path(tempfile.mkdtemp(prefix="adapterd-pg-")), postgres_bin())
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def server(request, tmp_path_factory, tiny_model_dir, tiny_adapter):
    """On PostgreSQL where it is installed (always in CI); on SQLite otherwise, where only the
    outage test is skipped."""
    flags = []
    if find_postgres_bin() is not None or os.environ.get("CI"):
        flags = ["--store-url", request.getfixturevalue("database").create_database()]
    data_dir = tmp_path_factory.mktemp("faults")
    shutil.copytree(tiny_adapter, data_dir / "adapters" / "crash-bot")
    server = ServerProcess(data_dir, str(tiny_model_dir), extra_flags=flags).start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.stop()


def _ask(client, adapter=""):
    return client.generate(
        inference_pb2.GenerateRequest(
            adapter=adapter, prompt="1, 2, 3,", sampling=inference_pb2.SamplingParams(max_tokens=4)
        )
    )


def _wait(condition, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return False


def test_the_server_rides_out_a_database_outage(server, database, tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(SLICE.read_text().splitlines()[:16]) + "\n")
    spec = json_format.ParseDict(
        {"data": {"datasets": [{"dataset_id": ""}]}, "validate_only": True}, jobs_pb2.TrainSpec()
    )
    with Client(server.target, timeout=60) as client:
        spec.data.datasets[0].dataset_id = client.upload_dataset(data)
        database.stop()
        try:
            with pytest.raises(grpc.RpcError) as caught:
                client.list_jobs(jobs_pb2.ListJobsRequest())
            assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
            assert "the job store" in caught.value.details()
            assert _ask(client).text is not None  # serving needs no store
        finally:
            database.start()
        job = client.submit_job(spec)
        events = list(client.watch_job(job.id, 0))
        assert events[-1].data["state"] == "succeeded"


def test_a_killed_engine_core_is_restarted_and_serves_again(server):
    with Client(server.target, timeout=60) as client:
        client.load_adapter("crash-bot", "crash-bot")
        before = _ask(client, "crash-bot").text
        core = next(p for p in server.children() if "EngineCore" in p.name())
        core.kill()
        # Until the health check notices (10 s) calls fail; from then readiness is off.
        assert _wait(lambda: client.health() == "NOT_SERVING", 30)
        assert client.health("adapterd.v1.Server") == "SERVING"  # liveness: a restart is due
        with pytest.raises(grpc.RpcError) as caught:
            _ask(client)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert _wait(lambda: client.health() == "SERVING", 180), server.log_path.read_text()[-3000:]
        assert _ask(client, "crash-bot").text == before  # reloaded into the new engine
        page = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
        assert "adapterd_engine_restarts_total 1.0" in page


def test_sigterm_drains_a_running_stream_exits_cleanly_and_leaves_no_child(server):
    children = server.children()
    assert children, "vLLM starts its engine core in a child process"
    request = inference_pb2.GenerateRequest(
        prompt="Count:",
        sampling=inference_pb2.SamplingParams(max_tokens=STREAM_TOKENS, ignore_eos=True),
    )
    first_delta, received = threading.Event(), []

    def consume():
        with Client(server.target, timeout=60) as client:
            for delta in client.generate_stream(request):
                received.append(delta)
                first_delta.set()

    consumer = threading.Thread(target=consume)
    consumer.start()
    assert first_delta.wait(60)
    logged_before = len(server.log_path.read_text())
    code = server.stop(timeout=60)  # SIGTERM while the stream runs
    consumer.join(10)
    assert code == 0, server.log_path.read_text()[-2000:]
    assert sum(len(d.token_ids) for d in received) == STREAM_TOKENS
    assert received[-1].finish_reason == inference_pb2.FINISH_REASON_LENGTH
    # vLLM's helpers (engine core, resource tracker) notice their parent is gone within moments.
    _, alive = psutil.wait_procs(children, timeout=15)
    assert [(p.pid, p.name()) for p in alive if p.status() != psutil.STATUS_ZOMBIE] == []
    log = server.log_path.read_text()[logged_before:]  # what the shutdown logged
    assert "shutting down" in log and "stopped" in log
    assert "Traceback" not in log
