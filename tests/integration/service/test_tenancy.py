"""The tenancy matrix on the real server: every RPC and HTTP route called as the owning user,
another tenant's user, an admin, no token and a wrong token, with the expected code each time.

Objects belong to tenant `acme` (USER_TOKEN); `globex` (OTHER_USER_TOKEN) is the other tenant and
`ops` (ADMIN_TOKEN) the admin. What another tenant names is NOT_FOUND, worded as for a name that
does not exist; what it may see but not change is PERMISSION_DENIED.
"""

import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from adapterd.v1 import capture_pb2, inference_pb2, jobs_pb2
from service.authz import POLICY
from service.client.api import Client
from service.client.cli import adapter_archive
from tests.support import ADMIN_TOKEN, OTHER_USER_TOKEN, USER_TOKEN

CALLERS = {
    "owner": USER_TOKEN,
    "other": OTHER_USER_TOKEN,
    "admin": ADMIN_TOKEN,
    "none": None,
    "wrong": "wrong-token-0123456789abcdef",
}
OK, NF, PD, UA, FP = (
    "OK",
    "NOT_FOUND",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
    "FAILED_PRECONDITION",
)
ROWS = {
    "gsm": "".join(f'{{"prompt": "What is {n}+2?", "completion": "{n + 2}"}}\n' for n in range(4))
}


@pytest.fixture(scope="module")
def world(server, tiny_adapter, tmp_path_factory):
    """acme's adapter (loaded by the admin into acme), alias, dataset, a cancelled job, a
    trained one (one step: one checkpoint) and a capture of its traffic."""
    shutil.copytree(tiny_adapter, server.data_dir / "adapters" / "tenancy")
    rows = tmp_path_factory.mktemp("tenancy") / "rows.jsonl"
    rows.write_text(ROWS["gsm"])
    prompts = rows.with_name("prompts.jsonl")
    prompts.write_text('{"prompt": "Say hi."}\n')
    with Client(server.target, ADMIN_TOKEN, timeout=120) as admin:
        admin.load_adapter("acme/tm-bot", "tenancy")
    with Client(server.target, USER_TOKEN, timeout=120) as owner:
        owner.set_alias("tm-live", "tm-bot@1")
        dataset = owner.upload_dataset(rows)
        job = owner.submit_job(_train(dataset, validate_only=True))
        owner.cancel_job(job.id)
        trained = owner.submit_job(_train(dataset, training={"max_steps": 1, "batch_size": 1}))
        list(owner.watch_job(trained.id))
        done = owner.get_job(trained.id)
        assert done.state == jobs_pb2.JOB_STATE_SUCCEEDED, done.error_message
        owner.set_capture_policy("tm-live", 1.0, 3600)
        capture = owner.generate(_generate("tm-live")).capture_id
        owner.submit_feedback(capture_pb2.SubmitFeedbackRequest(capture_id=capture, score=5))
        owner.delete_capture_policy("tm-live")
        name, archive = adapter_archive(tiny_adapter)
        adapter = owner.upload_bytes(name, archive, jobs_pb2.UPLOAD_KIND_ADAPTER_ARCHIVE)
    return {"dataset": dataset, "job": job.id, "trained": trained.id, "rows": rows,
            "prompts": prompts,
            "capture": capture, "adapter_upload": adapter.upload_id}  # fmt: skip


def _train(dataset: str, **fields: Any) -> jobs_pb2.TrainSpec:
    return json_format.ParseDict(
        {"data": {"datasets": [{"dataset_id": dataset}]}, **fields}, jobs_pb2.TrainSpec()
    )


def _generate(adapter: str) -> inference_pb2.GenerateRequest:
    return inference_pb2.GenerateRequest(
        adapter=adapter, prompt="Hello", sampling=inference_pb2.SamplingParams(max_tokens=2)
    )


def _evaluate(adapter: str, **evaluation: Any) -> jobs_pb2.EvaluateSpec:
    spec = {"adapter": adapter, "evaluation": {"schema_adherence": {"limit": 1}, **evaluation}}
    return json_format.ParseDict(spec, jobs_pb2.EvaluateSpec())


def _loaded(client: Client, name: str) -> None:
    """An adapter of acme's to unload (loaded by an admin first)."""
    with Client(client.target, ADMIN_TOKEN, timeout=120) as admin:
        admin.load_adapter(f"acme/{name}", "tenancy")


def _cancelled(job: jobs_pb2.Job, client: Client) -> str:
    with Client(client.target, ADMIN_TOKEN, timeout=120) as admin:
        admin.cancel_job(job.id)
    return "submitted"


# (route, what the call does, expected code for owner, other, admin); no token and a wrong token
# are UNAUTHENTICATED everywhere but the public routes.
def _cases(world: dict[str, Any]) -> list[tuple[str, Callable[[Client], Any], tuple[str, ...]]]:
    dataset, job, capture = world["dataset"], world["job"], world["capture"]
    data = jobs_pb2.DataSettings(datasets=[jobs_pb2.DatasetRef(dataset_id=dataset)])
    acme_traffic = capture_pb2.CaptureFilter(target="acme/tm-live")
    return [
        ("/adapterd.v1.Server/GetServerInfo", lambda c: c.server_info(), (OK, OK, OK)),
        ("/adapterd.v1.Inference/Generate", lambda c: c.generate(_generate("acme/tm-bot")),
         (OK, NF, OK)),
        ("/adapterd.v1.Inference/GenerateStream",
         lambda c: list(c.generate_stream(_generate("acme/tm-live"))), (OK, NF, OK)),
        ("/adapterd.v1.Adapters/LoadAdapter", lambda c: c.load_adapter("acme/tm-new", "tenancy"),
         (PD, PD, OK)),
        # Unqualified, the name is each caller's own: another tenant's upload is NOT_FOUND.
        ("/adapterd.v1.Adapters/ImportAdapter",
         lambda c: c.import_adapter("tm-imported", world["adapter_upload"]), (OK, NF, OK)),
        ("/adapterd.v1.Adapters/UnloadAdapter",
         lambda c: (_loaded(c, "tm-gone"), c.unload_adapter("acme/tm-gone")), (OK, NF, OK)),
        ("/adapterd.v1.Adapters/ListAdapters", lambda c: c.list_adapters(), (OK, OK, OK)),
        ("/adapterd.v1.Adapters/PinAdapter", lambda c: c.pin_adapter("acme/tm-bot@1"),
         (PD, PD, OK)),
        ("/adapterd.v1.Adapters/SetAlias", lambda c: c.set_alias("acme/tm-alias", "acme/tm-bot@1"),
         (OK, PD, OK)),
        ("/adapterd.v1.Jobs/UploadDataset", lambda c: c.upload_dataset(world["rows"]),
         (OK, OK, OK)),
        ("/adapterd.v1.Jobs/Upload",
         lambda c: c.upload_file(world["prompts"], jobs_pb2.UPLOAD_KIND_PROMPT_SET),
         (OK, OK, OK)),
        ("/adapterd.v1.Jobs/ValidateDataset", lambda c: c.validate_dataset(data), (OK, NF, OK)),
        ("/adapterd.v1.Jobs/SubmitJob",
         lambda c: _cancelled(c.submit_job(_train(dataset, validate_only=True)), c),
         (OK, NF, OK)),
        ("/adapterd.v1.Jobs/GetJob", lambda c: c.get_job(job), (OK, NF, OK)),
        ("/adapterd.v1.Jobs/ListJobs", lambda c: c.list_jobs(jobs_pb2.ListJobsRequest()),
         (OK, OK, OK)),
        ("/adapterd.v1.Jobs/CancelJob", lambda c: c.cancel_job(job), (FP, NF, FP)),
        ("/adapterd.v1.Jobs/WatchJob", lambda c: list(c.watch_job(job)), (OK, NF, OK)),
        ("/adapterd.v1.Jobs/Evaluate",
         lambda c: _cancelled(c.evaluate(_evaluate("acme/tm-bot")), c), (OK, NF, OK)),
        ("/adapterd.v1.Jobs/GetEvaluationReport", lambda c: c.evaluation_report(job),
         (FP, NF, FP)),
        # The job has no sheet: the owner and the admin learn so before the upload is read.
        ("/adapterd.v1.Jobs/GetHumanEvalSheet", lambda c: c.human_sheet(job), (FP, NF, FP)),
        ("/adapterd.v1.Jobs/ImportHumanRatings",
         lambda c: c.import_ratings(job, "ratings-0123456789abcdef"), (FP, NF, FP)),
        ("/adapterd.v1.Jobs/ListCheckpoints", lambda c: c.list_checkpoints(world["trained"]),
         (OK, NF, OK)),
        # A bare name is in the job's tenant, for the admin too.
        ("/adapterd.v1.Jobs/RegisterCheckpoint",
         lambda c: c.register_checkpoint(world["trained"], 1, "tm-step"), (OK, NF, OK)),
        # A policy is its setter's tenant's, on a target it may read: the admin's covers only
        # the admin's own requests.
        ("/adapterd.v1.Capture/SetCapturePolicy",
         lambda c: c.set_capture_policy("acme/tm-bot", 0.5, 3600), (OK, NF, OK)),
        ("/adapterd.v1.Capture/ListCapturePolicies", lambda c: c.capture_policies(),
         (OK, OK, OK)),
        ("/adapterd.v1.Capture/DeleteCapturePolicy",
         lambda c: (c.set_capture_policy("acme/tm-bot", 0.5, 3600),
                    c.delete_capture_policy("acme/tm-bot")), (OK, NF, OK)),
        ("/adapterd.v1.Capture/GetCapture", lambda c: c.get_capture(capture), (OK, NF, OK)),
        ("/adapterd.v1.Capture/ListCaptures",
         lambda c: c.list_captures(capture_pb2.ListCapturesRequest()), (OK, OK, OK)),
        ("/adapterd.v1.Capture/SubmitFeedback",
         lambda c: c.submit_feedback(capture_pb2.SubmitFeedbackRequest(capture_id=capture,
                                                                       score=5)),
         (OK, NF, PD)),
        ("/adapterd.v1.Capture/ExportCaptures",
         lambda c: c.export_captures(capture_pb2.ExportCapturesRequest(filter=acme_traffic,
                                                                       min_rating=4)),
         (OK, NF, OK)),
    ]  # fmt: skip


def _code(call: Callable[[], Any]) -> str:
    try:
        call()
    except grpc.RpcError as exc:
        return str(exc.code().name)
    return OK


def test_every_rpc_answers_each_caller_as_the_rights_table_says(server, world):
    cases = _cases(world)
    covered = {route for route, _, _ in cases}
    assert covered == {r for r in POLICY if r.startswith("/adapterd.")}, "an RPC without a case"
    got, expected = {}, {}
    for route, call, codes in cases:
        for (who, token), want in zip(CALLERS.items(), (*codes, UA, UA), strict=True):
            with Client(server.target, token, timeout=120) as client:
                got[route, who] = _code(lambda c=client, f=call: f(c))
            expected[route, who] = want
    assert {k: v for k, v in got.items() if v != expected[k]} == {}


def test_health_and_reflection_answer_without_credentials(server):
    channel = grpc.insecure_channel(server.target)
    with Client(server.target, None) as anonymous:
        assert anonymous.health() == "SERVING"
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name for s in next(replies).list_services_response.service}
    assert health_pb2.DESCRIPTOR.services_by_name["Health"].full_name in names
    channel.close()


def test_listings_show_each_tenant_only_its_own_and_shared(server, world):
    with (
        Client(server.target, USER_TOKEN) as owner,
        Client(server.target, OTHER_USER_TOKEN) as other,
    ):
        mine = {a.ref for a in owner.list_adapters().adapters}
        theirs = {a.ref for a in other.list_adapters().adapters}
        assert "acme/tm-bot@1" in mine and "acme/tm-bot@1" not in theirs
        assert all(r.startswith(("acme/", "shared/")) for r in mine)
        assert all(r.startswith(("globex/", "shared/")) for r in theirs)
        assert all(not a.path.startswith("/") for a in owner.list_adapters().adapters)
        assert world["job"] in {j.id for j in owner.list_jobs(jobs_pb2.ListJobsRequest()).jobs}
        assert world["job"] not in {j.id for j in other.list_jobs(jobs_pb2.ListJobsRequest()).jobs}
        everything = capture_pb2.ListCapturesRequest(page_size=1000)
        assert world["capture"] in {c.id for c in owner.list_captures(everything).captures}
        assert all(c.tenant == "globex" for c in other.list_captures(everything).captures)
        assert all(p.tenant == "globex" for p in other.capture_policies())


def test_another_tenants_names_are_refused_at_submission_not_at_the_end(server, world):
    with Client(server.target, OTHER_USER_TOKEN) as other:
        rows = other.upload_dataset(world["rows"])
        for spec, code in (
            (_train(rows, adapter_name="acme/victim"), grpc.StatusCode.PERMISSION_DENIED),
            (_train(rows, adapter_name="shared/victim"), grpc.StatusCode.PERMISSION_DENIED),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                other.submit_job(spec)
            assert caught.value.code() == code, caught.value.details()
        raw = jobs_pb2.TrainSpec(
            data=jobs_pb2.DataSettings(datasets=[jobs_pb2.DatasetRef(path="x")])
        )
        with pytest.raises(grpc.RpcError) as caught:
            other.submit_job(raw)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "raw server paths are for admins" in caught.value.details()
    with Client(server.target, USER_TOKEN) as owner:
        gate = {"metric": "GATE_METRIC_SCHEMA_VALID_RATE", "comparator": "COMPARATOR_GE",
                "threshold": 0.0}  # fmt: skip
        for evaluation, code, words in (
            ({"promote_alias": "prod"}, grpc.StatusCode.INVALID_ARGUMENT, "must be earned"),
            ({"promote_alias": "globex/prod", "gates": [gate]}, grpc.StatusCode.PERMISSION_DENIED,
             "own tenant"),
            ({"baseline": "globex/anything"}, grpc.StatusCode.NOT_FOUND, "globex/anything"),
        ):  # fmt: skip
            with pytest.raises(grpc.RpcError) as caught:
                owner.evaluate(_evaluate("tm-bot", **evaluation))
            assert (caught.value.code(), words in caught.value.details()) == (code, True)


def _http(server, route: str, token: str | None, body: dict[str, Any] | None) -> tuple[int, Any]:
    method, path = route.split(" ", 1)
    request = urllib.request.Request(
        server.http_url.removesuffix("/v1") + path, method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"}
        | ({"Authorization": f"Bearer {token}"} if token else {}),
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def test_every_http_route_answers_each_caller_as_the_rights_table_says(server, world):
    chat = {"model": "acme/tm-bot", "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 2}  # fmt: skip
    cases = {
        "GET /v1/models": (None, (200, 200, 200)),
        "POST /v1/chat/completions": (chat, (200, 404, 200)),
        "POST /v1/completions": ({"model": "acme/tm-live", "prompt": "Hi", "max_tokens": 2},
                                 (200, 404, 200)),
        "POST /v1/feedback": ({"id": world["capture"], "thumbs": "up"}, (200, 404, 403)),
    }  # fmt: skip
    assert set(cases) == {r for r in POLICY if not r.startswith("/")}, "a route without a case"
    got, expected = {}, {}
    for route, (body, codes) in cases.items():
        for (who, token), want in zip(CALLERS.items(), (*codes, 401, 401), strict=True):
            got[route, who], _ = _http(server, route, token, body)
            expected[route, who] = want
    assert {k: v for k, v in got.items() if v != expected[k]} == {}
    _, models = _http(server, "GET /v1/models", OTHER_USER_TOKEN, None)
    assert "acme/tm-bot" not in {m["id"] for m in models["data"]}
    _, models = _http(server, "GET /v1/models", USER_TOKEN, None)
    assert {"acme/tm-bot", "acme/tm-live"} <= {m["id"] for m in models["data"]}
