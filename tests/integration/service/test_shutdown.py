"""SIGTERM: health off, calls drained, engine stopped, no child process left behind."""

import threading

import psutil
import pytest

from adapterd.v1 import inference_pb2
from service.client.api import Client
from tests.support import ServerProcess

pytestmark = pytest.mark.engine

STREAM_TOKENS = 120


def test_sigterm_drains_a_running_stream_exits_cleanly_and_leaves_no_child(
    tmp_path, tiny_model_dir
):
    server = ServerProcess(data_dir=tmp_path, base_model=str(tiny_model_dir)).start()
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
    code = server.stop(timeout=60)  # SIGTERM while the stream runs
    consumer.join(10)
    assert code == 0, server.log_path.read_text()[-2000:]
    assert sum(len(d.token_ids) for d in received) == STREAM_TOKENS
    assert received[-1].finish_reason == inference_pb2.FINISH_REASON_LENGTH
    # vLLM's helpers (engine core, resource tracker) notice their parent is gone within moments.
    _, alive = psutil.wait_procs(children, timeout=15)
    assert [(p.pid, p.name()) for p in alive if p.status() != psutil.STATUS_ZOMBIE] == []
    log = server.log_path.read_text()
    assert "shutting down" in log and "stopped" in log
    assert "Traceback" not in log
