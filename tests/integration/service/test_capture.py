"""Capture on the real server (tiny model, shared `server` on PostgreSQL): a tenant's policy
captures its own requests through gRPC and HTTP with the id the reply carries, redacted before
they are stored, at the policy's rate; only the owner rates a capture; an export of rated traffic
trains a job."""

import json
import shutil
import time
import urllib.error
import urllib.request
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from prometheus_client.parser import text_string_to_metric_families

from adapterd.v1 import capture_pb2, inference_pb2, jobs_pb2
from eval.prompts import bundled_prompts, read_prompts
from service.client.api import Client
from service.client.cli import main
from tests.support import ADMIN_TOKEN, OTHER_USER_TOKEN, USER_TOKEN

EMAIL_PROMPT = "My address is ann.lee@example.com; what is 2 + 2?"


@pytest.fixture(scope="module")
def owner(server, tiny_adapter):
    shutil.copytree(tiny_adapter, server.data_dir / "adapters" / "capture-bot")
    with Client(server.target, ADMIN_TOKEN, timeout=120) as admin:
        admin.load_adapter("acme/cap-bot", "capture-bot")
        admin.load_adapter("acme/cap-quiet", "capture-bot")
    with Client(server.target, USER_TOKEN, timeout=120) as client:
        client.set_alias("cap-live", "cap-bot@1")
        yield client


def chat(adapter: str, content: str = EMAIL_PROMPT, max_tokens: int = 4):
    request = inference_pb2.GenerateRequest(
        adapter=adapter, sampling=inference_pb2.SamplingParams(max_tokens=max_tokens)
    )
    request.chat.messages.add(role="user", content=content)
    return request


def http(server, path: str, token: str, body: dict[str, Any]) -> tuple[int, Any]:
    request = urllib.request.Request(
        server.http_url + path, method="POST", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()


def test_a_policy_captures_its_targets_requests_redacted_with_the_replys_id(server, owner):
    assert owner.generate(chat("cap-bot")).capture_id == ""  # opt-in: nothing without a policy
    policy = owner.set_capture_policy("cap-live", rate=1.0, retention_seconds=3600)
    assert (policy.tenant, policy.target) == ("acme", "acme/cap-live")
    reply = owner.generate(chat("cap-live"))
    assert reply.capture_id.startswith("gen-")
    captured = owner.get_capture(reply.capture_id)
    request = json_format.MessageToDict(captured.request)
    assert request["messages"][0]["content"] == "My address is [EMAIL]; what is 2 + 2?"
    assert "example.com" not in str(captured)
    assert dict(captured.redacted) == {"email": 1}
    assert (captured.tenant, captured.target, captured.adapter_version) == (
        "acme", "acme/cap-live", "acme/cap-bot@1",
    )  # fmt: skip
    assert (captured.prompt_tokens, captured.completion_tokens) == (
        reply.usage.prompt_tokens, reply.usage.completion_tokens,
    )  # fmt: skip
    assert captured.answer == reply.text.replace("ann.lee@example.com", "[EMAIL]")
    assert captured.latency_seconds > 0 and not captured.HasField("feedback")
    assert request["sampling"]["max_tokens"] == 4
    # The policy names the alias: the adapter's own name is another target, not captured.
    assert owner.generate(chat("cap-bot")).capture_id == ""
    assert owner.generate(chat("cap-quiet")).capture_id == ""
    streamed = list(owner.generate_stream(chat("cap-live")))
    assert [bool(m.capture_id) for m in streamed] == [False] * (len(streamed) - 1) + [True]
    assert owner.get_capture(streamed[-1].capture_id).answer == "".join(
        m.text for m in streamed
    ).replace("ann.lee@example.com", "[EMAIL]")
    _, body = http(server, "/chat/completions", USER_TOKEN, {
        "model": "cap-live", "max_tokens": 3,
        "messages": [{"role": "user", "content": "Call me on +44 20 7946 0958"}],
    })  # fmt: skip
    over_http = owner.get_capture(body["id"])  # the completion id is the capture id
    assert over_http.id.startswith("chatcmpl-")
    assert dict(over_http.redacted) == {"phone": 1}
    with Client(server.target, OTHER_USER_TOKEN) as other:
        # Another tenant can neither capture acme's adapter nor read what acme captured.
        assert (
            code_of(lambda: other.set_capture_policy("acme/cap-live", 1.0, 3600))
            == grpc.StatusCode.NOT_FOUND
        )
        assert code_of(lambda: other.get_capture(reply.capture_id)) == grpc.StatusCode.NOT_FOUND
    owner.delete_capture_policy("cap-live")
    assert owner.generate(chat("cap-live")).capture_id == ""


def gauges(server, name: str, adapter: str) -> dict[str, float]:
    """The gauge `name` of `adapter` by its metric label, from the server's metrics page."""
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        page = response.read().decode()
    return {
        sample.labels["metric"]: sample.value
        for family in text_string_to_metric_families(page)
        if family.name == name
        for sample in family.samples
        if sample.labels["adapter"] == adapter
    }


def online_quality(server, adapter: str) -> dict[str, float]:
    """adapterd_online_quality of `adapter`."""
    return gauges(server, "adapterd_online_quality", adapter)


def wait_for_drift(server, adapter: str, prompts: int, timeout: float = 60.0) -> dict[str, float]:
    """adapterd_drift of `adapter` once the background monitor (every 2 s here) measured it over
    `prompts` captured prompts (a pass while the requests were still arriving saw fewer)."""
    deadline = time.monotonic() + timeout
    found: dict[str, float] = {}
    while time.monotonic() < deadline:
        found = gauges(server, "adapterd_drift", adapter)
        if found.get("prompts", 0) >= prompts:
            return found
        time.sleep(0.5)
    raise AssertionError(
        f"no drift of {adapter} over {prompts} prompts after {timeout:.0f} s: {found}"
    )


def test_captured_answers_are_checked_against_the_policys_schema(server, owner, tmp_path):
    schema = {"type": "object", "required": ["answer"], "additionalProperties": False,
              "properties": {"answer": {"enum": ["yes", "no"]}}}  # fmt: skip
    path = tmp_path / "contract.json"
    path.write_text(json.dumps(schema))
    upload = owner.upload_file(path, jobs_pb2.UPLOAD_KIND_JSON_SCHEMA).upload_id
    policy = owner.set_capture_policy("cap-live", 1.0, 3600, schema_upload=upload)
    assert json.loads(policy.json_schema) == schema
    constrained = chat("cap-live", "Is 2 + 2 = 4? Answer as JSON.", max_tokens=24)
    constrained.json_schema = json.dumps(schema)
    for request in (constrained, constrained, chat("cap-live"), chat("cap-live")):
        owner.get_capture(owner.generate(request).capture_id)  # waits until it is stored
    owner.delete_capture_policy("cap-live")
    # The two constrained answers satisfy it; the tiny model's free text is no JSON.
    assert online_quality(server, "acme/cap-live") == {
        "schema_valid_rate": 0.5, "schema_parse_rate": 0.5,
    }  # fmt: skip
    with Client(server.target, OTHER_USER_TOKEN) as other:  # another tenant's schema upload
        assert (
            code_of(lambda: other.set_capture_policy("nothing", 1.0, 3600, schema_upload=upload))
            == grpc.StatusCode.NOT_FOUND
        )


def test_the_policy_rate_samples_requests(owner):
    owner.set_capture_policy("cap-quiet", rate=0.5, retention_seconds=3600)
    ids = [owner.generate(chat("cap-quiet", "Hi", max_tokens=1)).capture_id for _ in range(40)]
    owner.delete_capture_policy("cap-quiet")
    captured = [i for i in ids if i]
    assert 8 <= len(captured) <= 32, len(captured)  # binomial(40, 0.5): outside in ~2e-5 runs
    listed = owner.list_captures(
        capture_pb2.ListCapturesRequest(
            filter=capture_pb2.CaptureFilter(target="cap-quiet"), page_size=1000
        )
    )
    assert {c.id for c in listed.captures} == set(captured)


def test_only_the_owner_rates_a_capture_and_feedback_is_redacted(server, owner):
    owner.set_capture_policy("cap-bot", rate=1.0, retention_seconds=3600)
    first = owner.generate(chat("cap-bot", "What is 3 + 4?")).capture_id
    rated = owner.submit_feedback(capture_pb2.SubmitFeedbackRequest(capture_id=first, score=5))
    assert (rated.feedback.rating, rated.feedback.flagged) == (5, False)
    thumbs = capture_pb2.SubmitFeedbackRequest(capture_id=first, thumbs_up=True)
    with Client(server.target, OTHER_USER_TOKEN) as other:
        assert code_of(lambda: other.submit_feedback(thumbs)) == grpc.StatusCode.NOT_FOUND
    with Client(server.target, ADMIN_TOKEN) as admin:
        assert admin.get_capture(first).tenant == "acme"  # an admin reads it, never rates it
        assert code_of(lambda: admin.submit_feedback(thumbs)) == grpc.StatusCode.PERMISSION_DENIED
    bad = capture_pb2.SubmitFeedbackRequest(capture_id=first, score=9)
    assert code_of(lambda: owner.submit_feedback(bad)) == grpc.StatusCode.INVALID_ARGUMENT
    second = owner.generate(chat("cap-bot", "What is 5 + 5?")).capture_id
    feedback = {"id": second, "thumbs": "down", "flagged": True, "flag_reason": "wrong sum",
                "correction": "5 + 5 = 10. Mail ann@example.com for more."}  # fmt: skip
    assert http(server, "/feedback", OTHER_USER_TOKEN, feedback)[0] == 404
    status, body = http(server, "/feedback", USER_TOKEN, feedback)
    assert status == 200, body
    assert (body["rating"], body["flagged"]) == (1, True)
    assert body["correction"] == "5 + 5 = 10. Mail [EMAIL] for more."
    assert http(server, "/feedback", USER_TOKEN, {"id": second, "rating": 7})[0] == 400
    assert http(server, "/feedback", USER_TOKEN, {"id": "chatcmpl-nope", "rating": 2})[0] == 404


def test_an_export_of_rated_traffic_trains_an_adapter_whose_drift_is_measured(server, owner):
    exported = owner.export_captures(
        capture_pb2.ExportCapturesRequest(
            filter=capture_pb2.CaptureFilter(target="cap-bot"), min_rating=4, corrections=True
        )
    )
    assert (exported.rows, exported.skipped) == (2, 0)  # the 5-rated answer, the correction
    pairs = owner.export_captures(
        capture_pb2.ExportCapturesRequest(
            filter=capture_pb2.CaptureFilter(target="cap-bot"),
            format=capture_pb2.EXPORT_FORMAT_PREFERENCE,
        )
    )
    assert (pairs.rows, pairs.skipped) == (1, 1)
    nothing = capture_pb2.ExportCapturesRequest(
        filter=capture_pb2.CaptureFilter(target="cap-bot", min_rating=5, with_correction=True),
        format=capture_pb2.EXPORT_FORMAT_PREFERENCE,
    )
    assert code_of(lambda: owner.export_captures(nothing)) == grpc.StatusCode.FAILED_PRECONDITION
    spec = json_format.ParseDict(
        {"data": {"datasets": [{"dataset_id": exported.upload_id}]}, "adapter_name": "from-traffic",
         "training": {"max_steps": 2, "batch_size": 2}},
        jobs_pb2.TrainSpec(),
    )  # fmt: skip
    job = owner.submit_job(spec)
    events = list(owner.watch_job(job.id))
    assert [e.data["state"] for e in events if e.kind == "state"][-1] == "succeeded", events[-3:]
    data = next(e.data for e in events if e.kind == "data")
    assert data["train_rows"] + data["eval_rows"] == 2, data
    # Its training prompts were arithmetic questions; contact-card extraction is another task.
    owner.set_capture_policy("from-traffic", 1.0, 3600)
    for row in read_prompts(bundled_prompts("contact_card"), ("prompt",), 12):
        owner.generate(chat("from-traffic", row["prompt"], max_tokens=1))
    drifted = wait_for_drift(server, "acme/from-traffic", prompts=12)
    owner.delete_capture_policy("from-traffic")
    assert drifted["prompts"] == 12
    assert drifted["centroid_distance"] > 0.3, drifted
    assert drifted["length_ks"] > 0.5, drifted  # pasted contact texts are longer than sums


def test_adapterctl_sets_a_policy_rates_and_exports(server, owner, capsys):
    def run(*args: str) -> tuple[int, str]:
        code = main(["--target", server.target, "--token", USER_TOKEN, *args])
        return code, capsys.readouterr().out

    assert run("capture", "set", "cap-quiet", "--rate", "1", "--retention-days", "1")[0] == 0
    captured = owner.generate(chat("cap-quiet", "Name a colour.")).capture_id
    code, out = run("--output", "json", "capture", "list")
    assert code == 0 and '"target": "acme/cap-quiet"' in out
    code, out = run("feedback", captured, "--down", "--flag", "off topic", "--correction", "Blue.")
    assert code == 0 and json.loads(out)["feedback"]["rating"] == 1
    code, out = run("capture", "traffic", "--adapter", "cap-quiet", "--flagged")
    assert code == 0 and [json.loads(line)["id"] for line in out.splitlines()] == [captured]
    code, out = run(
        "capture", "export", "--adapter", "cap-quiet", "--with-correction", "--corrections"
    )
    assert code == 0 and out.splitlines()[1] == "1 rows, 0 captures skipped"
    assert out.startswith("ds-")
    assert run("capture", "unset", "cap-quiet")[0] == 0
    assert run("capture", "unset", "cap-quiet")[0] == 1  # NOT_FOUND, named on stderr
