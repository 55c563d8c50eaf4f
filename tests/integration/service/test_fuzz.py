"""A bounded fuzz run against the real server (shared `server`): random uploads, data settings
and validate-only job specs never get INTERNAL, never start training, and leave the server
healthy."""

import contextlib
import hashlib
from collections import Counter
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import json_format
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from adapterd.v1 import adapters_pb2, capture_pb2, inference_pb2, jobs_pb2
from service.client.api import Client
from tests.support import USER_TOKEN

ALLOWED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,  # a user naming a raw server path
}
TRAINING_KEYS = ["learning_rate", "epochs", "max_steps", "batch_size", "scheduler", "seed",
                 "warmup_ratio", "gradient_accumulation", "select", "packing", "eval_interval", "method", "beta"]  # fmt: skip
LORA_KEYS = ["rank", "alpha", "dropout", "target_modules", "use_rslora"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**12), 10**12)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)  # fmt: skip


def fields(keys: list[str]) -> st.SearchStrategy[dict[str, object]]:
    return st.dictionaries(st.sampled_from(keys) | st.text(max_size=12), json_values, max_size=4)


jsonl_rows = st.lists(
    st.dictionaries(st.sampled_from(["prompt", "completion", "messages", "question", "chosen", "rejected"]),
                    json_values, max_size=3),
    max_size=5,
).map(lambda rows: "\n".join(json_format.MessageToJson(_struct(r), indent=None) for r in rows))  # fmt: skip


def _struct(values: dict[str, object]):  # type: ignore[no-untyped-def]
    from google.protobuf.struct_pb2 import Struct

    struct = Struct()
    struct.update(values)
    return struct


@pytest.fixture(scope="module")
def user(server) -> Iterator[Client]:
    with Client(server.target, USER_TOKEN, timeout=60) as client:
        yield client


def call(rpc, function, *args):  # type: ignore[no-untyped-def]
    """The reply, or None for an allowed error status; anything else fails the test."""
    try:
        reply = function(*args)
    except grpc.RpcError as exc:
        assert exc.code() in ALLOWED, (exc.code(), exc.details())
        assert exc.details(), "an error without a message"
        return None
    ANSWERED[rpc] += 1
    return reply


REQUESTS = st.fixed_dictionaries({
    "name": st.sampled_from(["rows.jsonl", "rows.csv", "../up.jsonl", "", "a.exe"])
    | st.text(max_size=12),
    "body": st.binary(max_size=300) | jsonl_rows.map(str.encode),
    "size_delta": st.sampled_from([0, 0, 0, 1, -1]),
    "good_hash": st.booleans(),
    "format": st.sampled_from(["", "auto", "messages", "alpaca", "preference", "nonsense"]),
    "method": st.sampled_from(["", "sft", "dpo", "ppo"]),
    "columns": st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=2),
    "max_length": st.integers(-5, 5000),
    "policy": st.sampled_from(["", "reject", "drop", "maybe"]),
    "training": fields(TRAINING_KEYS),
    "lora": fields(LORA_KEYS),
    "path": st.sampled_from(["", "rows.jsonl", "../../etc/passwd", "/etc/passwd"]),
})  # fmt: skip
ANSWERED: Counter[str] = Counter()
"""Requests the server accepted, by RPC: the fuzz must reach past the first checks."""


VALID = {
    "name": "rows.jsonl", "body": b'{"prompt": "2+2?", "completion": "4"}\n', "size_delta": 0,
    "good_hash": True, "format": "", "method": "", "columns": {}, "max_length": 512, "policy": "",
    "training": {}, "lora": {}, "path": "",
}  # fmt: skip


# Derandomized: the same cases here and in CI. The explicit examples are accepted all the way
# (upload, validation, submission), so the run provably reaches past the first checks.
@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@example(case=VALID)
@example(case={**VALID, "policy": "drop", "training": {"epochs": 2}})
@example(case={**VALID, "format": "prompt_completion", "lora": {"rank": 8}})
@given(case=REQUESTS)
def test_random_requests_get_a_named_error_or_an_answer_never_internal(user, case):
    body = case["body"]
    header = jobs_pb2.DatasetHeader(
        file_name=case["name"],
        size=len(body) + case["size_delta"],
        sha256=hashlib.sha256(body).hexdigest() if case["good_hash"] else "0" * 64,
    )
    dataset_id = call("upload", user.upload, header, [body] if body else [])
    source = (
        jobs_pb2.DatasetRef(dataset_id=dataset_id)
        if dataset_id
        else jobs_pb2.DatasetRef(path=case["path"])
    )
    source.format = case["format"]
    source.columns.update(case["columns"])
    data = jobs_pb2.DataSettings(
        datasets=[source], max_length=case["max_length"], policy=case["policy"]
    )
    call("validate", user.validate_dataset, data, case["method"])
    spec = jobs_pb2.TrainSpec(data=data, validate_only=True)
    spec.training.update(case["training"])
    spec.lora.update(case["lora"])
    job = call("submit", user.submit_job, spec)
    if job is not None:
        assert job.train.validate_only
        call("cancel", user.cancel_job, job.id)  # keeps the tenant's queue quota free


NAMES = (
    st.sampled_from(["", "bot", "acme/bot", "globex/bot", "shared/x", "bot@1", "a/b/c", "@",
                     "x" * 300, "a\x00b", "Bot", "base", "bot@99999999999999999999"])
    | st.text(max_size=20)
)  # fmt: skip
WIRE = st.fixed_dictionaries({
    "adapter": NAMES,
    "alias": NAMES,
    "schema": st.sampled_from(["", "{", '{"type": "nonsense"}', '{"pattern": "(a)\\1"}',
                               "[" * 5000, '{"type": "object"}'])
    | st.text(max_size=30),
    "max_tokens": st.integers(-2, 8),
    "step": st.integers(-(2**31), 2**31 - 1),
    "prompt": st.text(max_size=40),
    "job_id": st.text(max_size=40),
    "page_token": st.sampled_from(["", "9" * 20, "\u00b2", "-1", "12"]) | st.text(max_size=8),
    "evaluation": st.dictionaries(
        st.sampled_from(["benchmarks", "schema_adherence", "win_rate", "safety", "rubric", "human",
                         "gates", "baseline", "promote_alias", "checkpoints"]), json_values,
        max_size=3),
    "kind": st.integers(0, 8),
    "upload": st.binary(max_size=200),
    "file_name": st.sampled_from(["t.tgz", "p.jsonl", "s.json", "r.jsonl", "../x.json", ""])
    | st.text(max_size=12),
    "http_body": json_values,
    "source": st.sampled_from(["files", "moved", "", "nowhere"]),
    "download_path": st.sampled_from(["a.tar.gz", "away/x.zip", "../a.tgz", "a?b.tar", "/x.tar",
                                      "x%2e.tar", "a//b.tar", ""]) | st.text(max_size=16),
    "rate": st.floats(),
    "seconds": st.floats(),
})  # fmt: skip


def _http(server, path, body):
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"{server.http_url}{path}", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {USER_TOKEN}"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(case=WIRE)
def test_every_other_rpc_and_route_refuses_random_input_by_name_never_internal(user, server, case):
    sampling = inference_pb2.SamplingParams(max_tokens=max(case["max_tokens"], 0))
    generate = inference_pb2.GenerateRequest(
        adapter=case["adapter"], prompt=case["prompt"] or "x", json_schema=case["schema"],
        sampling=sampling,
    )  # fmt: skip
    call("generate", user.generate, generate)
    call("unload", user.unload_adapter, case["adapter"])
    call("alias", user.set_alias, case["alias"], case["adapter"])
    call("get", user.get_job, case["job_id"])
    call("sheet", user.human_sheet, case["job_id"])
    call("ratings", user.import_ratings, case["job_id"], case["alias"])
    call("import", user.import_adapter, case["alias"], case["job_id"])
    call("checkpoints", user.list_checkpoints, case["job_id"])
    call("register", user.register_checkpoint, case["job_id"], case["step"], case["alias"])
    download = adapters_pb2.AdapterDownload(source=case["source"], path=case["download_path"])
    call("download", lambda: user.import_adapter(case["alias"], download=download))
    call("list", user.list_jobs, jobs_pb2.ListJobsRequest(page_token=case["page_token"]))
    spec = jobs_pb2.EvaluateSpec(adapter=case["adapter"])
    # Where the client's own encoder refuses a value, what it parsed so far is sent.
    with contextlib.suppress(json_format.ParseError, TypeError, ValueError, AttributeError):
        json_format.ParseDict(case["evaluation"], spec.evaluation, ignore_unknown_fields=True)
    job = call("evaluate", user.evaluate, spec)
    if job is not None:
        call("cancel", user.cancel_job, job.id)
    body = case["upload"]
    header = jobs_pb2.UploadHeader(
        kind=case["kind"], file_name=case["file_name"], size=len(body),
        sha256=hashlib.sha256(body).hexdigest(),
    )  # fmt: skip

    def upload():
        parts = [jobs_pb2.UploadRequest(header=header), jobs_pb2.UploadRequest(chunk=body)]
        return user.call(user.jobs.Upload, iter(parts), jobs_pb2.UploadResponse)

    call("upload_kind", upload)
    if (
        call("policy", user.set_capture_policy, case["adapter"], case["rate"], case["seconds"])
        is not None
    ):
        call("unpolicy", user.delete_capture_policy, case["adapter"])
    wanted = capture_pb2.CaptureFilter(target=case["alias"], min_rating=case["max_tokens"])
    call("capture", user.get_capture, case["job_id"])
    call(
        "captures",
        user.list_captures,
        capture_pb2.ListCapturesRequest(filter=wanted, page_token=case["page_token"]),
    )
    call(
        "feedback",
        user.submit_feedback,
        capture_pb2.SubmitFeedbackRequest(
            capture_id=case["job_id"], score=case["max_tokens"], flag_reason=case["prompt"]
        ),
    )
    call("export", user.export_captures,
         capture_pb2.ExportCapturesRequest(filter=wanted, format=case["kind"],
                                           min_rating=case["max_tokens"]))  # fmt: skip
    for path in ("/chat/completions", "/completions", "/feedback"):
        status = _http(server, path, case["http_body"])
        assert status in (400, 404, 409, 413, 422, 429), (path, status, case["http_body"])


def test_after_the_fuzz_no_job_trained_and_the_server_serves(user, server):
    assert min(ANSWERED[rpc] for rpc in ("upload", "validate", "submit")) >= 3, ANSWERED
    jobs = user.list_jobs(jobs_pb2.ListJobsRequest(page_size=500)).jobs
    fuzzed = [j for j in jobs if j.train.validate_only]
    for job in fuzzed:
        feed = list(user.watch_job(job.id))
        states = [e.data["state"] for e in feed if e.kind == "state"]
        assert "running" not in states  # validated at most: nothing trained
    reply = user.generate(
        inference_pb2.GenerateRequest(
            prompt="1, 2, 3,", sampling=inference_pb2.SamplingParams(max_tokens=4)
        )
    )
    assert reply.finish_reason
    assert user.health() == "SERVING"
