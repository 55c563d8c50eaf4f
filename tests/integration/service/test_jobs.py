"""Jobs on the real server (tiny model, shared `server`), the real trainer and the server's real
store: PostgreSQL where it is installed (always in CI)."""

import asyncio
import hashlib
import json
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

from adapterd.v1 import inference_pb2, jobs_pb2
from bench.preferences import gsm8k_preferences
from service.client.api import Client
from service.client.cli import main
from service.jobs.model import JobState
from service.store.postgres import PostgresStore
from tests.support import (
    ADMIN_TOKEN,
    OTHER_USER_TOKEN,
    USER_TOKEN,
    assert_promtool_accepts,
)

SLICE = Path(__file__).resolve().parents[3] / "data/gsm8k/train_slice.jsonl"


@pytest.fixture(scope="module")
def user(server):
    with Client(server.target, USER_TOKEN, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def dataset_id(user, tmp_path_factory):
    rows = SLICE.read_text().splitlines()[:24]
    path = tmp_path_factory.mktemp("upload") / "gsm8k.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return user.upload_dataset(path, chunk_bytes=4096)  # several chunks


def spec(dataset_id, **fields):
    training = {"max_steps": 3, "batch_size": 4, "checkpoint_interval": 2}
    training |= fields.pop("training", {})
    return json_format.ParseDict(
        {"data": {"datasets": [{"dataset_id": dataset_id}]}, "training": training, **fields},
        jobs_pb2.TrainSpec(),
    )


def watch_to_end(client, job_id, after_seq=0):
    return list(client.watch_job(job_id, after_seq))


def code_of(call):
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


def test_a_job_trains_registers_its_adapter_and_serves_it_in_another_precision(
    user, server, dataset_id
):
    engine_dtype = user.server_info().machine.engine.dtype
    crossed = "float32" if engine_dtype == "bfloat16" else "bfloat16"
    job = user.submit_job(spec(dataset_id, adapter_name="job-bot", training={"precision": crossed}))
    assert job.state == jobs_pb2.JOB_STATE_QUEUED
    events = watch_to_end(user, job.id)
    states = [e.data["state"] for e in events if e.kind == "state"]
    assert states == ["queued", "validating", "running", "succeeded"], events[-3:]
    kinds = [e.kind for e in events]
    assert {"data", "started", "progress", "checkpoint", "done"} <= set(kinds)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    steps = [e.data["step"] for e in events if e.kind == "progress"]
    assert steps == [1, 2, 3]
    started = next(e.data for e in events if e.kind == "started")
    assert started["precision"]["dtype"] == crossed
    assert started["precision"]["reason"] == "requested explicitly"
    done = user.get_job(job.id)
    assert done.state == jobs_pb2.JOB_STATE_SUCCEEDED
    result = json_format.MessageToDict(done.result)
    assert result["adapter_version"] == "acme/job-bot@1", result
    assert done.attempts == 1
    with Client(server.target, ADMIN_TOKEN, timeout=120) as admin:
        reply = admin.generate(
            inference_pb2.GenerateRequest(
                adapter="acme/job-bot", prompt="2 + 2 =",
                sampling=inference_pb2.SamplingParams(max_tokens=4),
            )
        )  # fmt: skip
    assert reply.adapter_version == "acme/job-bot@1"
    assert reply.usage.completion_tokens >= 1  # trained in one dtype, served in the other


def test_a_job_on_two_devices_runs_two_ranks_and_registers_one_adapter(user, dataset_id):
    # The runner starts the trainer as for one device; the trainer launches the ranks itself.
    training = {"devices": 2, "gradient_accumulation": 2, "batch_size": 2}
    job = user.submit_job(spec(dataset_id, adapter_name="two-ranks", training=training))
    events = watch_to_end(user, job.id)
    assert [e.data["state"] for e in events if e.kind == "state"][-1] == "succeeded", events[-3:]
    assert next(e.data for e in events if e.kind == "started")["devices"] == 2
    assert [e.data["step"] for e in events if e.kind == "progress"] == [1, 2, 3]  # once each
    assert [e.kind for e in events].count("done") == 1
    result = json_format.MessageToDict(user.get_job(job.id).result)
    assert result["adapter_version"] == "acme/two-ranks@1"


def test_a_reconnecting_watch_gets_exactly_what_it_missed(user, dataset_id):
    job = user.submit_job(spec(dataset_id, validate_only=True))
    everything = watch_to_end(user, job.id)
    assert everything[-1].data["state"] == "succeeded"
    for cursor in (1, 3, len(everything)):
        missed = watch_to_end(user, job.id, after_seq=cursor)
        assert [e.seq for e in missed] == [e.seq for e in everything[cursor:]]


def test_the_server_keeps_jobs_and_events_in_postgresql(server, user, dataset_id):
    import psycopg

    if "--store-url" not in server.extra_flags:
        pytest.skip("PostgreSQL not installed: the session server runs on SQLite")
    url = server.extra_flags[server.extra_flags.index("--store-url") + 1]
    job = user.submit_job(spec(dataset_id, validate_only=True))
    watched = watch_to_end(user, job.id)
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT tenant, state FROM jobs WHERE id = %s", (job.id,)).fetchone()
        stored = conn.execute(
            "SELECT seq, kind FROM job_events WHERE job_id = %s ORDER BY seq", (job.id,)
        ).fetchall()
    assert row == ("acme", "succeeded")
    assert stored == [(e.seq, e.kind) for e in watched]


def test_fifty_concurrent_submits_with_one_request_id_make_one_job(user, dataset_id):
    request = spec(dataset_id, validate_only=True)
    with ThreadPoolExecutor(50) as pool:
        jobs = list(pool.map(lambda _: user.submit_job(request, "same-request"), range(50)))
    assert len({j.id for j in jobs}) == 1
    other = spec(dataset_id, validate_only=True, training={"seed": 7})
    code, details = code_of(lambda: user.submit_job(other, "same-request"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "request_id: 'same-request' was used for job" in details
    watch_to_end(user, jobs[0].id)


def test_cancel_stops_a_running_trainer_and_a_final_job_cannot_be_cancelled(user, dataset_id):
    job = user.submit_job(spec(dataset_id, training={"max_steps": 100_000, "batch_size": 1}))
    running = threading.Event()

    def follow():
        for event in user.watch_job(job.id):
            if event.kind == "progress":
                running.set()

    follower = threading.Thread(target=follow)
    follower.start()
    assert running.wait(120)
    cancelled = user.cancel_job(job.id)
    follower.join(60)
    assert cancelled.state == jobs_pb2.JOB_STATE_CANCELLED
    assert cancelled.error_reason == "cancelled"
    code, _ = code_of(lambda: user.cancel_job(job.id))
    assert code == grpc.StatusCode.FAILED_PRECONDITION


def test_a_job_cancelled_while_its_trainer_starts_is_cancelled(user, dataset_id, server):
    job = user.submit_job(spec(dataset_id, training={"max_steps": 100_000, "batch_size": 1}))
    for event in user.watch_job(job.id):
        if event.kind == "state" and event.data["state"] == "validating":
            break  # claimed: the trainer is starting or about to
    cancelled = user.cancel_job(job.id)
    assert cancelled.state == jobs_pb2.JOB_STATE_CANCELLED
    trainers = [p for p in server.children() if "trainer" in " ".join(p.cmdline())]
    assert not [p for p in trainers if job.id in " ".join(p.cmdline())]


def test_a_job_with_an_evaluation_trains_evaluates_and_promotes(user, dataset_id):
    evaluation = {
        "schema_adherence": {"limit": 2, "max_tokens": 8},
        "gates": [{"metric": "GATE_METRIC_TRAIN_LOSS", "comparator": "COMPARATOR_LT",
                   "threshold": 100.0},
                  {"metric": "GATE_METRIC_OVERLAP_RATE", "comparator": "COMPARATOR_LE",
                   "threshold": 0.0},
                  {"metric": "GATE_METRIC_LATENCY_P95_SECONDS", "comparator": "COMPARATOR_LE",
                   "factor": 1000.0,
                   "compare_to": {"metric": "GATE_METRIC_LATENCY_P50_SECONDS"}}],
        "promote_alias": "job-eval-prod",
    }  # fmt: skip
    job = user.submit_job(spec(dataset_id, adapter_name="job-eval", evaluation=evaluation))
    assert job.train.evaluation.promote_alias == "acme/job-eval-prod"  # stored qualified
    events = watch_to_end(user, job.id)
    states = [e.data["state"] for e in events if e.kind == "state"]
    assert states == ["queued", "validating", "running", "evaluating", "succeeded"]
    result = json_format.MessageToDict(user.get_job(job.id).result)
    summary = result["evaluation"]
    assert summary["passed"] and summary["promoted"]
    assert summary["scores"]["train_loss"] == pytest.approx(result["metrics"]["train_loss"])
    report = json_format.MessageToDict(user.evaluation_report(job.id).report)
    two_metrics = report["gates"][2]  # bound by another metric of the same candidate
    assert two_metrics["compare_to"] == "latency_p50_seconds" and two_metrics["passed"]
    assert two_metrics["bound"] == pytest.approx(1000 * summary["scores"]["latency_p50_seconds"])
    assert [step for step, _ in report["loss_curve"]] == [1, 2, 3]
    assert report["details"]["candidate"]["overlap"]["schema_adherence"]["items"] == 2
    assert report["candidate"] == "acme/job-eval@1"


def test_other_tenants_cannot_see_a_job_but_admins_can(server, user, dataset_id):
    job = user.submit_job(spec(dataset_id, validate_only=True))
    with Client(server.target, OTHER_USER_TOKEN) as other:
        assert code_of(lambda: other.get_job(job.id))[0] == grpc.StatusCode.NOT_FOUND
        assert code_of(lambda: other.cancel_job(job.id))[0] == grpc.StatusCode.NOT_FOUND
        listed = other.list_jobs(jobs_pb2.ListJobsRequest())
        assert job.id not in [j.id for j in listed.jobs]
        spec_of_other = spec(dataset_id, validate_only=True)
        code, details = code_of(lambda: other.submit_job(spec_of_other))
        assert (code, "no dataset" in details) == (grpc.StatusCode.NOT_FOUND, True)
    with Client(server.target, ADMIN_TOKEN) as admin:
        assert admin.get_job(job.id).tenant == "acme"
    watch_to_end(user, job.id)


@pytest.mark.parametrize(
    ("fields", "code", "message"),
    [
        ({"training": {"learning_rate": -1}}, "INVALID_ARGUMENT", "training.learning_rate"),
        ({"training": {"bogus": 1}}, "INVALID_ARGUMENT", "training.bogus: unknown field"),
        ({"lora": {"rank": 64}}, "INVALID_ARGUMENT", "above the server's max_lora_rank"),
        (
            {"data": {"datasets": [{"path": "../../etc/passwd"}]}},
            "PERMISSION_DENIED",
            "data.datasets[0].path: raw server paths are for admins",
        ),
        ({"data": {"datasets": [{"path": "/etc/passwd"}]}}, "PERMISSION_DENIED", "raw server"),
        ({"data": {"datasets": [{"dataset_id": "ds-nope"}]}}, "NOT_FOUND", "no dataset"),
        ({"data": {"datasets": []}}, "INVALID_ARGUMENT", "data.datasets"),
        (
            {
                "adapter_name": "b" * 60,
                "evaluation": {
                    "schema_adherence": {},
                    "checkpoints": {"select_by": {"metric": "GATE_METRIC_SCHEMA_VALID_RATE"}},
                },
            },
            "INVALID_ARGUMENT",
            "train.adapter_name: '" + "b" * 60 + "-ckpt' is not a valid name",
        ),
    ],
)
def test_malformed_submissions_get_the_right_status_naming_the_field(
    user, dataset_id, fields, code, message
):
    base = {"data": {"datasets": [{"dataset_id": dataset_id}]}}
    request = json_format.ParseDict({**base, **fields}, jobs_pb2.TrainSpec())
    got, details = code_of(lambda: user.submit_job(request))
    assert (got.name, message in details) == (code, True), details


def test_uploads_with_a_bad_checksum_or_name_are_refused(user, tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    bad = jobs_pb2.UploadDatasetRequest(
        header=jobs_pb2.DatasetHeader(
            file_name="rows.jsonl", size=path.stat().st_size, sha256="0" * 64
        )
    )
    chunk = jobs_pb2.UploadDatasetRequest(chunk=path.read_bytes())
    code, details = code_of(lambda: user.call(user.jobs.UploadDataset, iter([bad, chunk]), object))
    assert (code, "header.sha256" in details) == (grpc.StatusCode.INVALID_ARGUMENT, True)
    bad.header.file_name = "../x.jsonl"
    code, details = code_of(lambda: user.call(user.jobs.UploadDataset, iter([bad, chunk]), object))
    assert (code, "header.file_name" in details) == (grpc.StatusCode.INVALID_ARGUMENT, True)


def test_validate_dataset_reports_problems_with_line_numbers(user, tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n{not json\n{"prompt": "c"}\n')
    dataset = user.upload_dataset(path)
    data = jobs_pb2.DataSettings(datasets=[jobs_pb2.DatasetRef(dataset_id=dataset)])
    response = user.validate_dataset(data)
    assert not response.valid
    problems = json_format.MessageToDict(response.report)["problems"]
    assert {(p["row"], p["code"]) for p in problems} >= {(2, "invalid_json")}
    assert any(p["row"] == 3 for p in problems)


def test_a_curriculums_stages_are_read_from_the_callers_uploads_and_reported(
    user, dataset_id, server, tmp_path
):
    path = tmp_path / "format.jsonl"
    path.write_text("\n".join(SLICE.read_text().splitlines()[30:36]) + "\n")
    stages = [
        jobs_pb2.Stage(name="general", datasets=[jobs_pb2.DatasetRef(dataset_id=dataset_id)]),
        jobs_pb2.Stage(
            name="format", epochs=2,
            datasets=[jobs_pb2.DatasetRef(dataset_id=user.upload_dataset(path))],
        ),
    ]  # fmt: skip
    response = user.validate_dataset(jobs_pb2.DataSettings(stages=stages))
    report = json_format.MessageToDict(response.report)
    assert response.valid and report["stage_rows"] == {"general": 24, "format": 6}
    assert [s["stage"] for s in report["sources"]] == ["general", "format"]
    with Client(server.target, OTHER_USER_TOKEN) as other:  # another tenant's upload
        code, message = code_of(
            lambda: other.validate_dataset(jobs_pb2.DataSettings(stages=stages))
        )
    assert code == grpc.StatusCode.NOT_FOUND
    assert message.startswith("data.stages[0].datasets[0].dataset_id")


def test_adapterctl_validates_a_dataset_with_its_personal_data_redacted(server, tmp_path, capsys):
    path = tmp_path / "contacts.jsonl"
    rows = [
        {"prompt": "Who answers billing questions?", "completion": "Mail billing@example.com."},
        {"prompt": "And on the phone?", "completion": "Call +44 20 7946 0958 on weekdays."},
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    base = ["--target", server.target, "--token", USER_TOKEN]
    assert main([*base, "upload", str(path)]) == 0
    dataset = capsys.readouterr().out.strip()
    assert main([*base, "--output", "json", "validate-data", "--dataset", dataset,
                 "--pii", "redact"]) == 0  # fmt: skip
    reply = json.loads(capsys.readouterr().out)
    assert reply["valid"] and reply["report"]["pii_redacted"] == {"email": 1.0, "phone": 1.0}
    assert "[EMAIL]" in reply["report"]["sample"] or "[PHONE]" in reply["report"]["sample"]
    assert main([*base, "validate-data", "--dataset", dataset, "--pii", "reject"]) == 1
    assert "personal data (1 email); data.pii is reject" in capsys.readouterr().out


def test_adapterctl_uploads_submits_and_follows_a_job(server, tmp_path, capsys):
    def ctl(*args):
        code = main(["--target", server.target, "--token", USER_TOKEN, *args])
        return code, capsys.readouterr()

    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(SLICE.read_text().splitlines()[:8]) + "\n")
    code, out = ctl("upload", str(data))
    dataset = out.out.strip()
    assert (code, dataset.startswith("ds-")) == (0, True)
    job_file = tmp_path / "job.yaml"
    job_file.write_text(
        f"data: {{datasets: [{{dataset_id: {dataset}}}]}}\n"
        "training: {max_steps: 2, batch_size: 4}\n"
    )
    code, out = ctl("submit", str(job_file), "--watch")
    assert code == 0, out.err
    summary = next(line for line in out.out.splitlines() if line.startswith("job-"))
    job_id, state = summary.split(": ")
    assert state == "succeeded"
    assert "[1] queued" in out.out
    assert "2/2" in out.err  # the progress bar reached the last step
    code, out = ctl("list", "--state", "succeeded")
    assert job_id in out.out
    code, out = ctl("validate-data", "--dataset", "ds-nope")
    assert (code, "NOT_FOUND" in out.err) == (1, True)


def test_job_metrics_are_on_the_page_and_pass_promtool(server, user, dataset_id):
    watch_to_end(user, user.submit_job(spec(dataset_id, validate_only=True)).id)
    page = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    succeeded = [
        line for line in page.splitlines()
        if line.startswith('adapterd_jobs{kind="train",state="succeeded"}')
    ]  # fmt: skip
    assert succeeded and float(succeeded[0].split()[-1]) >= 1
    assert 'adapterd_jobs{kind="train",state="queued"}' in page  # the queue depth
    assert "adapterd_job_duration_seconds_bucket" in page
    assert_promtool_accepts(page)


def test_a_job_whose_lease_was_swept_elsewhere_stops_writing_and_its_next_claim_resumes_it(
    server, user, dataset_id
):
    if "--store-url" not in server.extra_flags:
        pytest.skip("PostgreSQL not installed: the session server runs on SQLite")
    url = server.extra_flags[server.extra_flags.index("--store-url") + 1]
    job = user.submit_job(spec(dataset_id, training={"max_steps": 100_000, "batch_size": 1}))
    feed = user.watch_job(job.id)
    next(e for e in feed if e.kind == "progress")

    async def sweep_as_another_replica() -> list:  # whose clock says every lease ran out
        store = PostgresStore(url)
        await store.open()
        try:
            return await store.expire_leases(float("inf"), max_attempts=2)
        finally:
            await store.close()

    [swept] = asyncio.run(sweep_as_another_replica())
    assert (swept.id, swept.state, swept.fence) == (job.id, JobState.QUEUED, 1)
    # The server's next write of the job is refused: it stops its trainer (which checkpoints),
    # claims the job again under fence 2, and the new trainer resumes from that checkpoint.
    resumed = next(e for e in feed if e.kind == "resumed")
    for _ in range(3):
        next(e for e in feed if e.kind == "progress")
    cancelled = user.cancel_job(job.id)
    assert cancelled.state == jobs_pb2.JOB_STATE_CANCELLED and cancelled.attempts == 2
    feed = [(e.kind, json_format.MessageToDict(e.data)) for e in watch_to_end(user, job.id)]
    states = [(data["state"], data.get("reason")) for kind, data in feed if kind == "state"]
    assert states[:5] == [
        ("queued", None), ("validating", None), ("running", None),
        ("queued", "lease_expired"), ("validating", None),
    ]  # fmt: skip
    claims = [data["fence"] for _, data in feed if data.get("state") == "validating"]
    assert claims == [1, 2]
    progress = [int(data["step"]) for kind, data in feed if kind == "progress"]
    assert progress == list(range(1, len(progress) + 1))  # every step once, none lost
    assert int(resumed.data["step"]) in progress


def first_loss(feed):
    return next(json_format.MessageToDict(e.data)["loss"] for e in feed if e.kind == "progress")


def test_a_job_warm_started_from_a_version_goes_on_from_its_weights(user, dataset_id, server):
    fast = {"max_steps": 8, "batch_size": 4, "learning_rate": 5e-3}
    parent = user.submit_job(spec(dataset_id, adapter_name="warm-a", lora={"rank": 8},
                                  training=fast))  # fmt: skip
    parent_feed = watch_to_end(user, parent.id)
    assert user.get_job(parent.id).state == jobs_pb2.JOB_STATE_SUCCEEDED
    losses = [json_format.MessageToDict(e.data)["loss"] for e in parent_feed
              if e.kind == "progress" and "loss" in e.data]  # fmt: skip
    child = user.submit_job(
        spec(dataset_id, adapter_name="warm-b", from_adapter="warm-a",
             lora={"dropout": 0.1}, training={**fast, "max_steps": 2})
    )  # fmt: skip
    assert child.train.from_adapter == "acme/warm-a@1"  # resolved at submission
    child_feed = watch_to_end(user, child.id)
    done = user.get_job(child.id)
    assert done.state == jobs_pb2.JOB_STATE_SUCCEEDED, done.error_message
    # Its first step sees its parent's first batch (same seed and data): a fresh adapter (B = 0,
    # the base's output) would score exactly the parent's first loss; the parent's weights score
    # about what the parent reached.
    assert first_loss(child_feed) < losses[0] - 0.1, (first_loss(child_feed), losses)
    assert first_loss(child_feed) < min(losses[:4]), (first_loss(child_feed), losses)
    manifest = json.loads((server.data_dir / "jobs" / child.id / "manifest.json").read_text())
    assert manifest["parent"]["ref"] == "acme/warm-a@1" and len(manifest["parent"]["sha256"]) == 64
    assert (manifest["config"]["lora"]["rank"], manifest["config"]["lora"]["dropout"]) == (8, 0.1)
    reshaped = spec(dataset_id, adapter_name="warm-c", from_adapter="warm-a@1", lora={"rank": 4})
    code, message = code_of(lambda: user.submit_job(reshaped))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "lora.rank = 4: acme/warm-a@1 was trained with 8" in message
    with Client(server.target, OTHER_USER_TOKEN, timeout=60) as other:
        foreign = spec(other.upload_dataset(SLICE), from_adapter="acme/warm-a")
        code, message = code_of(lambda: other.submit_job(foreign))
    assert code == grpc.StatusCode.NOT_FOUND and "train.from_adapter" in message


def test_validate_dataset_reads_preference_rows_for_dpo_and_names_a_bad_method(user, tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in gsm8k_preferences(0, 3)))
    dataset = user.upload_dataset(path)
    data = jobs_pb2.DataSettings(datasets=[jobs_pb2.DatasetRef(dataset_id=dataset)])
    for_dpo = user.validate_dataset(data, method="dpo")
    report = json_format.MessageToDict(for_dpo.report)
    assert (for_dpo.valid, report["train_rows"], report["sources"][0]["formats"]) == (
        True, 3, {"preference": 3},
    )  # fmt: skip
    for_sft = user.validate_dataset(data)
    problems = json_format.MessageToDict(for_sft.report)["problems"]
    assert not for_sft.valid
    assert {(p["row"], p["code"]) for p in problems} == {(n, "preference_row") for n in (1, 2, 3)}
    code, details = code_of(lambda: user.validate_dataset(data, method="ppo"))
    assert (code, details) == (
        grpc.StatusCode.INVALID_ARGUMENT, "method: 'ppo' is not one of sft, dpo",
    )  # fmt: skip


def test_a_jobs_kept_checkpoints_are_scored_the_best_promoted_and_any_registers_and_serves(
    user, dataset_id, server, capsys
):
    retention = {"max_steps": 4, "batch_size": 2, "checkpoint_interval": 1, "eval_interval": 1,
                 "keep_checkpoints": 2, "keep_best_checkpoints": 1, "learning_rate": 5e-3}  # fmt: skip
    # Ranked the wrong way round (the highest eval loss) on purpose: on the tiny model the eval
    # loss mostly falls at every step, and the test wants a checkpoint, not the job's own
    # adapter, to be the one promoted.
    evaluation = {
        "schema_adherence": {"limit": 1, "max_tokens": 4},
        "checkpoints": {"select_by": {"metric": "GATE_METRIC_EVAL_LOSS"},
                        "goal": "SELECTION_GOAL_MAXIMIZE"},
        "gates": [{"metric": "GATE_METRIC_EVAL_LOSS", "comparator": "COMPARATOR_LT",
                   "threshold": 100.0}],
        "promote_alias": "ckpt-best",
    }  # fmt: skip
    job = user.submit_job(
        spec(dataset_id, adapter_name="ckpt-bot", training=retention, evaluation=evaluation,
             data={"datasets": [{"dataset_id": dataset_id}], "eval_fraction": 0.25})
    )  # fmt: skip
    feed = watch_to_end(user, job.id)
    assert user.get_job(job.id).state == jobs_pb2.JOB_STATE_SUCCEEDED
    evals = {int(e.data["step"]): e.data["eval_loss"] for e in feed if e.kind == "eval"}
    losses = {int(e.data["step"]): e.data["loss"] for e in feed if e.kind == "progress"}
    best = min(evals, key=lambda step: (evals[step], step))
    kept = user.list_checkpoints(job.id)
    # The two newest and the lowest eval loss; every other one was pruned.
    assert [c.step for c in kept] == sorted({3, 4, best})
    for c in kept:
        assert c.eval_loss == pytest.approx(evals[c.step], abs=1e-5)
        assert c.train_loss == pytest.approx(losses[c.step], abs=1e-5)
    code = main(["--target", server.target, "--token", USER_TOKEN, "checkpoints", "list", job.id])
    assert code == 0 and f"{evals[best]:.4f}" in capsys.readouterr().out

    # Every kept checkpoint but the last (the adapter's own weights) was registered as a
    # version of ckpt-bot-ckpt, measured on the engine, and the highest eval loss promoted.
    report = json_format.MessageToDict(user.evaluation_report(job.id).report)
    candidates = {int(c["step"]): c for c in report["checkpoints"]}
    assert sorted(candidates) == sorted({3, 4, best})
    assert candidates[4]["adapter_version"] == "acme/ckpt-bot@1"
    others = sorted(s for s in candidates if s != 4)
    assert [candidates[s]["adapter_version"] for s in others] == [
        f"acme/ckpt-bot-ckpt@{n}" for n in range(1, len(others) + 1)
    ]
    for step, candidate in candidates.items():
        assert candidate["scores"]["eval_loss"] == pytest.approx(evals[step], abs=1e-5)
        assert "schema_valid_rate" in candidate["scores"]  # served and measured
    chosen = max(candidates, key=lambda step: (evals[step], step))
    assert [s for s, c in candidates.items() if c["selected"]] == [chosen]
    summary = json_format.MessageToDict(user.get_job(job.id).result)["evaluation"]
    assert summary["selected"] == candidates[chosen]["adapter_version"] == report["candidate"]
    assert (
        summary["promoted"]
        and summary["scores"]["eval_loss"] == candidates[chosen]["scores"]["eval_loss"]
    )
    served = user.generate(
        inference_pb2.GenerateRequest(
            adapter="ckpt-best", prompt="2 + 2 =",
            sampling=inference_pb2.SamplingParams(max_tokens=4),
        )
    )  # fmt: skip
    assert served.adapter_version == summary["selected"]

    registered = user.register_checkpoint(job.id, 3)  # <adapter_name>-ckpt by default
    assert registered.ref == candidates[3]["adapter_version"]  # the evaluation's, not a new one
    step_dir = f"step-{3:07d}"
    (checkpoint,) = (server.data_dir / "jobs" / job.id).glob(f"attempts/*/checkpoints/{step_dir}")
    weights = (checkpoint / "adapter" / "adapter_model.safetensors").read_bytes()
    assert registered.sha256 == hashlib.sha256(weights).hexdigest()
    installed = server.data_dir / "adapters" / registered.path / "manifest.json"
    summary = json.loads(installed.read_text())["checkpoint"]
    assert (summary["job_id"], summary["step"]) == (job.id, 3)
    again = user.register_checkpoint(job.id, 4, "ckpt-other")
    assert again.ref == "acme/ckpt-other@1"
    reply = user.generate(
        inference_pb2.GenerateRequest(
            adapter="ckpt-other@1", prompt="2 + 2 =",
            sampling=inference_pb2.SamplingParams(max_tokens=4),
        )
    )  # fmt: skip
    assert reply.adapter_version == "acme/ckpt-other@1" and reply.usage.completion_tokens >= 1
    pruned = next(step for step in range(1, 5) if step not in {3, 4, best})
    code, message = code_of(lambda: user.register_checkpoint(job.id, pruned, "ckpt-other"))
    assert code == grpc.StatusCode.NOT_FOUND
    assert (
        f"no checkpoint at step {pruned}; it keeps steps "
        f"{', '.join(map(str, sorted({3, 4, best})))}" in message
    )
    code, message = code_of(lambda: user.register_checkpoint(job.id, 0, "ckpt-other"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message.startswith("step: 0")
    code, message = code_of(lambda: user.register_checkpoint(job.id, 4, "globex/ckpt"))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "name: 'globex/ckpt'" in message
