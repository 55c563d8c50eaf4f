"""Inputs that once answered INTERNAL, now INVALID_ARGUMENT naming the field, and a ReDoS
pattern scored while the server keeps answering (shared `server`, tiny model)."""

import json
import threading
import time

import grpc
import pytest
from google.protobuf import json_format

from adapterd.v1 import evaluation_pb2, inference_pb2, jobs_pb2
from service.client.api import Client
from tests.support import ADMIN_TOKEN, USER_TOKEN

REDOS = "^(?:(x+x+)+y|x+)$"


def code_of(call):
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


@pytest.fixture(scope="module")
def admin(server):
    with Client(server.target, ADMIN_TOKEN, timeout=120) as client:
        yield client


@pytest.mark.parametrize("token", ["\u00b2", "9" * 20, "-3"])
def test_page_tokens_we_never_issued_are_invalid_arguments(admin, token):
    code, details = code_of(lambda: admin.list_jobs(jobs_pb2.ListJobsRequest(page_token=token)))
    assert (code, "page_token" in details) == (grpc.StatusCode.INVALID_ARGUMENT, True)


def test_json_nested_100000_deep_is_an_invalid_argument(admin):
    request = inference_pb2.GenerateRequest(
        prompt="x", json_schema="[" * 100_000, sampling=inference_pb2.SamplingParams(max_tokens=1)
    )
    code, details = code_of(lambda: admin.generate(request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "json_schema" in details


@pytest.mark.parametrize(
    ("path", "words"),
    [("rows\x00.jsonl", "NUL byte"), ("x" * 300 + "/rows.jsonl", "longer than 255 bytes")],
)
def test_paths_with_a_nul_byte_or_an_overlong_component_are_invalid_arguments(admin, path, words):
    data = jobs_pb2.DataSettings(datasets=[jobs_pb2.DatasetRef(path=path)])
    code, details = code_of(lambda: admin.validate_dataset(data))
    assert (code, words in details) == (grpc.StatusCode.INVALID_ARGUMENT, True), details
    header = jobs_pb2.DatasetHeader(file_name=path.replace("/", ""), size=1, sha256="0" * 64)
    code, details = code_of(lambda: admin.upload(header, [b"x"]))
    assert (code, "header.file_name" in details) == (grpc.StatusCode.INVALID_ARGUMENT, True)


def test_a_redos_schema_is_scored_while_health_answers_within_a_second(server, tmp_path):
    schema = {"type": "object", "required": ["tag"],
              "properties": {"tag": {"type": "string", "pattern": REDOS}}}  # fmt: skip
    # Answers to score: strings of x, where Python's re takes 3.5 s at 26 characters, doubling.
    (tmp_path / "s.json").write_text(json.dumps(schema))
    rows = [{"prompt": f'Reply with the JSON object {{"tag": "{"x" * 40}"}}'}] * 4
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    latencies: list[float] = []
    stop = threading.Event()

    def probe():
        with Client(server.target, timeout=30) as anonymous:
            while not stop.is_set():
                began = time.monotonic()
                assert anonymous.health() == "SERVING"
                latencies.append(time.monotonic() - began)
                time.sleep(0.1)

    with Client(server.target, USER_TOKEN, timeout=120) as user:
        uploads = [
            user.upload_file(tmp_path / "s.json", jobs_pb2.UPLOAD_KIND_JSON_SCHEMA).upload_id,
            user.upload_file(tmp_path / "p.jsonl", jobs_pb2.UPLOAD_KIND_PROMPT_SET).upload_id,
        ]
        section = {"schema_upload": uploads[0], "prompts_upload": uploads[1], "max_tokens": 48}
        evaluation = {"schema_adherence": section}
        spec = jobs_pb2.EvaluateSpec(
            evaluation=json_format.ParseDict(evaluation, evaluation_pb2.EvaluationSpec())
        )
        prober = threading.Thread(target=probe)
        prober.start()
        try:
            job = user.evaluate(spec)
            list(user.watch_job(job.id))
            done = user.get_job(job.id)
        finally:
            stop.set()
            prober.join()
    assert done.state == jobs_pb2.JOB_STATE_SUCCEEDED, done.error_message
    assert "schema_valid_rate" in json_format.MessageToDict(done.result)["evaluation"]["scores"]
    assert len(latencies) >= 3 and max(latencies) < 1.0, latencies
