"""Scale-out on real processes: a serving replica without its embedded worker
(`--train-workers 0`) and two `adapterd worker` processes, on one PostgreSQL database of the
session's server and one shared root, on the tiny model. Leases are short here (6 s, the grace
3 s) so that a dead worker's job is taken over within seconds."""

import os
import signal
from pathlib import Path

import psutil
import pytest
from google.protobuf import json_format

from adapterd.v1 import inference_pb2, jobs_pb2
from service.client.api import Client
from tests.support import TOKENS, USER_TOKEN, ServerProcess, WorkerProcess, find_postgres_bin

pytestmark = pytest.mark.engine

SLICE = Path(__file__).resolve().parents[3] / "data/gsm8k/train_slice.jsonl"
LEASE = ["--job-lease-seconds", "6", "--cancel-grace-seconds", "3"]


@pytest.fixture(scope="module")
def cluster(request, tmp_path_factory, tiny_model_dir):
    if find_postgres_bin() is None and not os.environ.get("CI"):
        pytest.skip("PostgreSQL is not installed here (CI installs it)")
    url = request.getfixturevalue("postgres").create_database()
    root = tmp_path_factory.mktemp("shared-root")
    shared = ["--store-url", url, *LEASE]
    replica = ServerProcess(
        data_dir=root, base_model=str(tiny_model_dir), tokens=TOKENS,
        extra_flags=[*shared, "--train-workers", "0"],
    )  # fmt: skip
    workers = [
        WorkerProcess(root, str(tiny_model_dir), f"worker-{n}", [*shared, "--trainer-threads", "1"])
        for n in range(2)
    ]
    replica.start()
    try:
        for worker in workers:
            worker.start()
        yield replica, workers
    finally:
        for worker in workers:
            worker.stop()
        replica.stop()


@pytest.fixture(scope="module")
def user(cluster, tmp_path_factory):
    replica, _ = cluster
    with Client(replica.target, USER_TOKEN, timeout=120) as client:
        path = tmp_path_factory.mktemp("rows") / "rows.jsonl"
        path.write_text("\n".join(SLICE.read_text().splitlines()[:24]) + "\n")
        client.dataset_id = client.upload_dataset(path)
        yield client


def spec(client, max_steps, **fields):
    return json_format.ParseDict(
        {
            "data": {"datasets": [{"dataset_id": client.dataset_id}]},
            "training": {"max_steps": max_steps, "batch_size": 1, "checkpoint_interval": 3},
            **fields,
        },
        jobs_pb2.TrainSpec(),
    )


def feed_of(client, job_id):
    return [(e.kind, json_format.MessageToDict(e.data)) for e in client.watch_job(job_id)]


def owner_pid(owner: str) -> int:
    return int(owner.split("/")[1])


def test_eight_jobs_are_trained_by_the_workers_each_exactly_once(cluster, user):
    _, workers = cluster
    jobs = [user.submit_job(spec(user, 2)) for _ in range(8)]
    feeds = {job.id: feed_of(user, job.id) for job in jobs}
    ended = [user.get_job(job.id) for job in jobs]
    assert {(j.state, j.attempts) for j in ended} == {(jobs_pb2.JOB_STATE_SUCCEEDED, 1)}
    claims = [data for feed in feeds.values() for kind, data in feed if "fence" in data]
    assert len(claims) == 8 and {c["fence"] for c in claims} == {1}  # one claim per job
    trained_by = {owner_pid(c["owner"]) for c in claims}
    assert trained_by == {w.process.pid for w in workers}  # both workers, never the replica
    for feed in feeds.values():
        assert [int(d["step"]) for kind, d in feed if kind == "progress"] == [1, 2]


def test_a_workers_adapter_is_evaluated_by_the_replica_and_answers_there(cluster, user):
    evaluation = {
        "schema_adherence": {"limit": 2, "max_tokens": 8},
        "gates": [{"metric": "GATE_METRIC_TRAIN_LOSS", "comparator": "COMPARATOR_LT",
                   "threshold": 100.0}],
        "promote_alias": "scaled-prod",
    }  # fmt: skip
    job = user.submit_job(spec(user, 2, adapter_name="scaled", evaluation=evaluation))
    feed = feed_of(user, job.id)
    states = [d["state"] for kind, d in feed if kind == "state"]
    assert states == [
        "queued", "validating", "running", "evaluation_pending", "evaluating", "succeeded",
    ]  # fmt: skip
    replica, workers = cluster
    trainer, evaluator = (d["owner"] for _, d in feed if "owner" in d)
    assert owner_pid(trainer) in {w.process.pid for w in workers}
    assert owner_pid(evaluator) == replica.process.pid
    result = json_format.MessageToDict(user.get_job(job.id).result)
    assert result["adapter_version"] == "acme/scaled@1" and result["evaluation"]["promoted"]
    reply = user.generate(
        inference_pb2.GenerateRequest(
            adapter="scaled-prod",
            prompt="2+2=",
            sampling=inference_pb2.SamplingParams(max_tokens=4),
        )
    )
    assert reply.adapter_version == "acme/scaled@1"


def test_a_worker_killed_mid_job_is_replaced_by_the_other_after_its_lease(cluster, user):
    _, workers = cluster
    job = user.submit_job(spec(user, 40))
    stream = user.watch_job(job.id)
    claim = next(json_format.MessageToDict(e.data) for e in stream if "fence" in e.data)
    next(e for e in stream if e.kind == "checkpoint")
    [victim] = [w for w in workers if w.process.pid == owner_pid(claim["owner"])]
    trainer = next(c for c in psutil.Process(victim.process.pid).children() if "trainer" in
                   " ".join(c.cmdline()))  # fmt: skip
    os.kill(victim.process.pid, signal.SIGKILL)
    victim.process.wait()
    trainer.wait(30)  # it heard its parent die, checkpointed and stopped by itself
    feed = feed_of(user, job.id)
    final = user.get_job(job.id)
    assert (final.state, final.attempts) == (jobs_pb2.JOB_STATE_SUCCEEDED, 2), final.error_message
    states = [(d["state"], d.get("reason")) for kind, d in feed if kind == "state"]
    assert ("queued", "lease_expired") in states
    owners = [d["owner"] for _, d in feed if "owner" in d]
    assert len(owners) == 2 and owners[0] != owners[1]
    progress = [int(d["step"]) for kind, d in feed if kind == "progress"]
    assert progress == list(range(1, 41))  # every step ran once, none lost
