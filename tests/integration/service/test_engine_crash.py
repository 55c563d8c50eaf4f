"""The engine core dies under a real server (tiny model, its own server: the test kills its
engine): in-flight and new inference calls are UNAVAILABLE, readiness goes NOT_SERVING while
liveness stays SERVING, the engine restarts, and an adapter that was loaded serves again (it
reloads on its next request)."""

import shutil
import time

import grpc
import pytest

from adapterd.v1 import inference_pb2
from service.client.api import Client
from tests.support import ServerProcess

pytestmark = pytest.mark.engine


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


def test_a_killed_engine_core_is_restarted_and_serves_again(tmp_path, tiny_model_dir, tiny_adapter):
    shutil.copytree(tiny_adapter, tmp_path / "adapters" / "crash-bot")
    server = ServerProcess(data_dir=tmp_path, base_model=str(tiny_model_dir)).start()
    try:
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
            assert _wait(lambda: client.health() == "SERVING", 180), server.log_path.read_text()[
                -3000:
            ]
            assert _ask(client, "crash-bot").text == before  # reloaded into the new engine
            page = _metrics(server)
            assert "adapterd_engine_restarts_total 1.0" in page
    finally:
        assert server.stop(timeout=60) == 0


def _metrics(server):
    import urllib.request

    return urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
