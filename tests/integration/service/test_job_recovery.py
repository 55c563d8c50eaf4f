"""A server killed with SIGKILL mid-training: its trainer checkpoints and stops on its own,
and the restarted server resumes the job from that checkpoint to success."""

import json
import os
import signal
from pathlib import Path

import psutil
import pytest
from google.protobuf import json_format

from adapterd.v1 import jobs_pb2
from service.client.api import Client
from service.jobs.runner import events_file
from tests.support import ServerProcess

pytestmark = pytest.mark.engine

SLICE = Path(__file__).resolve().parents[3] / "data/gsm8k/train_slice.jsonl"


def test_kill_9_mid_training_then_restart_resumes_from_the_checkpoint(tmp_path, tiny_model_dir):
    data_dir = tmp_path / "data"
    rows = data_dir / "datasets" / "rows.jsonl"
    rows.parent.mkdir(parents=True)
    rows.write_text("\n".join(SLICE.read_text().splitlines()[:32]) + "\n")
    server = ServerProcess(data_dir=data_dir, base_model=str(tiny_model_dir)).start()
    spec = json_format.ParseDict(
        {
            "data": {"datasets": [{"path": "rows.jsonl"}]},
            "training": {"max_steps": 40, "batch_size": 1, "checkpoint_interval": 3},
        },
        jobs_pb2.TrainSpec(),
    )
    check = json_format.ParseDict(
        {"data": {"datasets": [{"path": "rows.jsonl"}]}, "validate_only": True},
        jobs_pb2.TrainSpec(),
    )
    with Client(server.target, timeout=60) as client:
        job = client.submit_job(spec)
        # Six jobs wait behind it, two in each of three priorities.
        waiting = [client.submit_job(check, priority=(i % 3 - 1) * 5) for i in range(6)]
        for event in client.watch_job(job.id):
            if event.kind == "checkpoint":
                break
    trainer = next(
        p for p in psutil.process_iter(["cmdline"]) if "trainer" in (p.info["cmdline"] or [])
        and job.id in " ".join(p.info["cmdline"] or [])
    )  # fmt: skip
    engine_children = [c for c in server.children() if c.pid != trainer.pid]
    os.kill(server.process.pid, signal.SIGKILL)  # the server dies without any cleanup
    server.process.wait()
    for child in engine_children:  # as in a crashed container: the engine goes with it
        child.kill()
    # The trainer hears of its parent's death, writes a checkpoint and exits by itself.
    trainer.wait(60)
    first_attempt = events_file(data_dir / "jobs" / job.id, fence=1)
    assert json.loads(first_attempt.read_text().splitlines()[-1])["event"] == "interrupted"

    restarted = ServerProcess(data_dir=data_dir, base_model=str(tiny_model_dir)).start()
    try:
        with Client(restarted.target, timeout=60) as client:
            events = list(client.watch_job(job.id))
            final = client.get_job(job.id)
            for queued in waiting:
                list(client.watch_job(queued.id))
            ended = [client.get_job(queued.id) for queued in waiting]
    finally:
        restarted.stop()
    # The six survived the kill in order: by priority, then submission; each ran once.
    assert {(j.state, j.attempts) for j in ended} == {(jobs_pb2.JOB_STATE_SUCCEEDED, 1)}
    by_end = [j.id for j in sorted(ended, key=lambda j: j.finished.ToNanoseconds())]
    expected = sorted(waiting, key=lambda j: -j.priority)  # stable: submission order kept
    assert by_end == [j.id for j in expected]
    assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED, final.error_message
    assert final.attempts == 2
    feed = [(e.kind, json_format.MessageToDict(e.data)) for e in events]
    resumed = next(data for kind, data in feed if kind == "resumed")
    progress = [int(data["step"]) for kind, data in feed if kind == "progress"]
    # Every step ran exactly once, and the feed has them all: the trainer checkpointed the
    # step it was on when its server died, and the second run started right after it.
    assert progress == list(range(1, 41))
    assert 3 <= int(resumed["step"]) < 40
    states = [data["state"] for kind, data in feed if kind == "state"]
    assert states[-3:] == ["validating", "running", "succeeded"]
    assert "queued" in states[states.index("running") :]  # requeued after the restart
    second_attempt = events_file(data_dir / "jobs" / job.id, fence=2)
    assert json.loads(second_attempt.read_text().splitlines()[-1])["event"] == "done"
    assert resumed["checkpoint"].startswith("attempts/0000002/checkpoints/")  # a copy of #1's


def test_sigterm_mid_training_requeues_the_job_and_the_queue_keeps_its_order(
    tmp_path, tiny_model_dir
):
    data_dir = tmp_path / "data"
    rows = data_dir / "datasets" / "rows.jsonl"
    rows.parent.mkdir(parents=True)
    rows.write_text("\n".join(SLICE.read_text().splitlines()[:16]) + "\n")

    def train(max_steps, validate_only=False):
        return json_format.ParseDict(
            {
                "data": {"datasets": [{"path": "rows.jsonl"}]},
                "training": {"max_steps": max_steps, "batch_size": 1, "checkpoint_interval": 50},
                "validate_only": validate_only,
            },
            jobs_pb2.TrainSpec(),
        )

    server = ServerProcess(data_dir=data_dir, base_model=str(tiny_model_dir)).start()
    with Client(server.target, timeout=60) as client:
        running = client.submit_job(train(30))
        queued = [client.submit_job(train(1, validate_only=True)) for _ in range(2)]
        urgent = client.submit_job(train(1, validate_only=True), priority=10)
        for event in client.watch_job(running.id):
            if event.kind == "progress":
                break
    assert server.stop(timeout=60) == 0  # SIGTERM: drain, checkpoint, requeue

    restarted = ServerProcess(data_dir=data_dir, base_model=str(tiny_model_dir)).start()
    try:
        with Client(restarted.target, timeout=60) as client:
            for job in [running, urgent, *queued]:
                list(client.watch_job(job.id))
            final = {j.id: client.get_job(j.id) for j in [running, urgent, *queued]}
            feed = list(client.watch_job(running.id))
    finally:
        restarted.stop()
    assert {j.state for j in final.values()} == {jobs_pb2.JOB_STATE_SUCCEEDED}
    assert final[running.id].attempts == 2
    states = [e.data["state"] for e in feed if e.kind == "state"]
    assert states[:4] == ["queued", "validating", "running", "queued"]
    progress = [int(e.data["step"]) for e in feed if e.kind == "progress"]
    assert progress == list(range(1, 31))  # resumed from the SIGTERM checkpoint
    # After the restart the queue runs by priority, then submission order (the requeued job
    # keeps its place as the oldest).
    by_end = sorted(final.values(), key=lambda j: j.finished.ToNanoseconds())
    assert [j.id for j in by_end] == [urgent.id, running.id, *[j.id for j in queued]]
