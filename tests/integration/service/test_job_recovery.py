"""A job that outlives two deaths of its server: SIGKILL mid-training (its trainer checkpoints
and stops on its own), then SIGTERM (drain, checkpoint, requeue). Each restarted server resumes
it from the checkpoint, and the jobs queued behind it keep their order throughout. One test,
three server starts: each start costs an engine's."""

import json
from pathlib import Path

import psutil
import pytest
from google.protobuf import json_format

from adapterd.v1 import jobs_pb2
from service.client.api import Client
from service.grpc.server import JOBS_SERVICE
from service.jobs.runner import events_file
from tests.support import ServerProcess

pytestmark = pytest.mark.engine

SLICE = Path(__file__).resolve().parents[3] / "data/gsm8k/train_slice.jsonl"
STEPS = 100


def spec(validate_only: bool = False) -> jobs_pb2.TrainSpec:
    return json_format.ParseDict(
        {
            "data": {"datasets": [{"path": "rows.jsonl"}]},
            "training": {"max_steps": STEPS, "batch_size": 1, "checkpoint_interval": 3},
            "validate_only": validate_only,
        },
        jobs_pb2.TrainSpec(),
    )


def kill_9(server: ServerProcess, job_id: str) -> psutil.Process:
    """SIGKILL to the server, and its engine with it (as in a crashed container); returns the
    job's trainer, which is left running."""
    trainer = next(
        p for p in psutil.process_iter(["cmdline"]) if "trainer" in (p.info["cmdline"] or [])
        and job_id in " ".join(p.info["cmdline"] or [])
    )  # fmt: skip
    server.kill_9(spare={trainer.pid})
    return trainer


@pytest.fixture
def data_dir(tmp_path):
    """A server's data directory, with a dataset of 32 rows."""
    rows = tmp_path / "data" / "datasets" / "rows.jsonl"
    rows.parent.mkdir(parents=True)
    rows.write_text("\n".join(SLICE.read_text().splitlines()[:32]) + "\n")
    return tmp_path / "data"


def test_a_job_resumes_after_kill_9_and_after_sigterm_and_the_queue_keeps_its_order(
    data_dir, tiny_model_dir
):
    starts = iter(range(1, 4))

    def start() -> ServerProcess:
        """A server on `data_dir`, as soon as it serves jobs (its engine starts meanwhile)."""
        log_name = f"server-{next(starts)}.log"
        server = ServerProcess(data_dir, str(tiny_model_dir), log_name=log_name)
        return server.start(service=JOBS_SERVICE)

    server = start()
    with Client(server.target, timeout=60) as client:
        job = client.submit_job(spec())
        # Four wait behind it: one above its priority, two at it, one below.
        urgent = client.submit_job(spec(validate_only=True), priority=10)
        same = [client.submit_job(spec(validate_only=True)) for _ in range(2)]
        low = client.submit_job(spec(validate_only=True), priority=-5)
        for event in client.watch_job(job.id):
            if event.kind == "checkpoint":
                break
    # The trainer hears of its parent's death, writes a checkpoint and exits by itself.
    kill_9(server, job.id).wait(60)
    first_attempt = events_file(data_dir / "jobs" / job.id, fence=1)
    assert json.loads(first_attempt.read_text().splitlines()[-1])["event"] == "interrupted"

    server = start()  # the urgent job runs first, then the first one resumes
    with Client(server.target, timeout=60) as client:
        resumed = False
        for event in client.watch_job(job.id):
            resumed = resumed or event.kind == "resumed"
            if resumed and event.kind == "progress":
                break
    assert server.stop(timeout=60) == 0  # SIGTERM: drain, checkpoint, requeue

    server = start()
    waiting = [urgent, *same, low]
    try:
        with Client(server.target, timeout=60) as client:
            feed = [(e.kind, json_format.MessageToDict(e.data)) for e in client.watch_job(job.id)]
            final = client.get_job(job.id)
            for queued in waiting:
                list(client.watch_job(queued.id))
            ended = [client.get_job(queued.id) for queued in waiting]
    finally:
        server.stop()
    assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED, final.error_message
    assert final.attempts == 3
    assert {(j.state, j.attempts) for j in ended} == {(jobs_pb2.JOB_STATE_SUCCEEDED, 1)}
    # By priority, then submission: the twice-requeued job keeps its place as the oldest.
    by_end = sorted([final, *ended], key=lambda j: j.finished.ToNanoseconds())
    assert [j.id for j in by_end] == [urgent.id, job.id, *[j.id for j in same], low.id]
    # Every step ran exactly once, and the feed has them all: each attempt checkpointed the
    # step it was on when its server went, and the next started right after it.
    assert [int(data["step"]) for kind, data in feed if kind == "progress"] == list(
        range(1, STEPS + 1)
    )
    resumes = [data for kind, data in feed if kind == "resumed"]
    assert [r["checkpoint"].split("/")[1] for r in resumes] == ["0000002", "0000003"]
    assert 3 <= int(resumes[0]["step"]) < int(resumes[1]["step"]) < STEPS
    states = [data["state"] for kind, data in feed if kind == "state"]
    assert states.count("queued") == 3  # submitted, requeued after the kill, after the SIGTERM
    assert states[-3:] == ["validating", "running", "succeeded"]
    last_attempt = events_file(data_dir / "jobs" / job.id, fence=3)
    assert json.loads(last_attempt.read_text().splitlines()[-1])["event"] == "done"
