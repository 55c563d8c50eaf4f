"""A server on PostgreSQL while its database goes away and comes back: calls that need the
store are UNAVAILABLE (retryable, not INTERNAL), the rest keep serving, and jobs run again
once the database is back."""

import tempfile
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

from adapterd.v1 import inference_pb2, jobs_pb2
from service.client.api import Client
from tests.support import PostgresServer, ServerProcess, postgres_bin

SLICE = Path(__file__).resolve().parents[3] / "data/gsm8k/train_slice.jsonl"


@pytest.fixture
def database():
    cluster = PostgresServer(Path(tempfile.mkdtemp(prefix="adapterd-pg-")), postgres_bin())
    cluster.start()
    yield cluster
    cluster.stop()


def test_the_server_rides_out_a_database_outage(database, tmp_path, tiny_model_dir):
    server = ServerProcess(
        tmp_path / "server", str(tiny_model_dir),
        extra_flags=["--store-url", database.create_database()],
    ).start()  # fmt: skip
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(SLICE.read_text().splitlines()[:16]) + "\n")
    spec = json_format.ParseDict(
        {"data": {"datasets": [{"dataset_id": ""}]}, "validate_only": True}, jobs_pb2.TrainSpec()
    )
    try:
        with Client(server.target, timeout=60) as client:
            spec.data.datasets[0].dataset_id = client.upload_dataset(data)
            database.stop()
            with pytest.raises(grpc.RpcError) as caught:
                client.list_jobs(jobs_pb2.ListJobsRequest())
            assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
            assert "the job store" in caught.value.details()
            answer = client.generate(
                inference_pb2.GenerateRequest(
                    prompt="Hi", sampling=inference_pb2.SamplingParams(max_tokens=2)
                )
            )
            assert answer.text is not None  # serving needs no store
            database.start()
            job = client.submit_job(spec)
            events = list(client.watch_job(job.id, 0))
            assert events[-1].data["state"] == "succeeded"
    finally:
        server.stop()
