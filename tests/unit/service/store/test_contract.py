"""The Store contract, on SQLite and PostgreSQL alike (`store`, `new_store`): idempotent
creation, leased claims in the fair order, fenced writes, cancel requests, the sweep of expired
leases, events, paging, adapters across a reopen, capture policies, captures with their
feedback, filters and retention, and what concurrent callers may not break (one job per request
id, one owner per claim, gapless event numbers, distinct adapter versions, the upload quota, one
capture sweeper)."""

import asyncio
import time
from pathlib import Path

import pytest

from service.capture.model import Capture, CaptureFilter, CapturePolicy, Feedback, FlagFilter
from service.errors import FailedPreconditionError, NotFoundError, ResourceExhaustedError
from service.jobs.model import (
    Job,
    JobKind,
    JobState,
    Lease,
    LeaseLostError,
    Work,
    spec_digest,
)
from service.store.base import AdapterRecord, Store, UploadRecord

EVERYTHING = frozenset(Work)
TRAINING = frozenset({Work.TRAINING})
EVALUATION = frozenset({Work.EVALUATION})


def job(n, tenant="acme", request_id="", kind=JobKind.TRAIN, priority=0):
    spec = {"n": n}
    now = time.time()
    return Job(
        id=f"job-{n}", tenant=tenant, kind=kind, state=JobState.QUEUED, spec=spec,
        spec_digest=spec_digest(spec), request_id=request_id, priority=priority,
        created=now, updated=now,
    )  # fmt: skip


async def test_a_request_id_creates_one_job_per_tenant(store):
    first, created = await store.create_job(job(1, request_id="r1"))
    again, created_again = await store.create_job(job(2, request_id="r1"))
    other, created_other = await store.create_job(job(3, tenant="globex", request_id="r1"))
    assert (created, created_again, created_other) == (True, False, True)
    assert again.id == first.id == "job-1"
    assert again.spec == {"n": 1}
    assert other.id == "job-3"


async def claimed(store: Store, n: int, owner: str = "w1", **kwargs) -> Job:
    """Job `n`, created and claimed by `owner` (the only waiting job)."""
    await store.create_job(job(n, **kwargs))
    taken = await store.claim_job(owner, EVERYTHING, lease_seconds=60)
    assert taken is not None and taken.id == f"job-{n}"
    return taken


async def test_a_claim_takes_the_job_under_a_lease_and_the_next_fence(store):
    before = time.time()
    taken = await claimed(store, 1)
    assert (taken.state, taken.owner, taken.fence, taken.attempts) == (
        JobState.VALIDATING, "w1", 1, 1,
    )  # fmt: skip
    assert before + 60 <= taken.lease_until <= time.time() + 60
    assert taken.started is not None and taken.started >= before
    assert await store.get_job("job-1") == taken
    assert await store.claim_job("w2", EVERYTHING, 60) is None  # nothing else waits
    events = await store.events("job-1", 0)
    assert [e.data for e in events] == [
        {"state": "queued"}, {"state": "validating", "fence": 1, "owner": "w1"},
    ]  # fmt: skip


async def test_transitions_follow_the_table_and_terminal_states_are_final(store):
    taken = await claimed(store, 1)
    with pytest.raises(FailedPreconditionError, match="cannot go from validating to evaluat"):
        await store.update_job(taken.lease, JobState.EVALUATION_PENDING)
    done = await store.update_job(taken.lease, JobState.CANCELLED, attempts=2)
    assert (done.state, done.attempts, done.owner, done.lease_until) == (
        JobState.CANCELLED, 2, "", None,
    )  # fmt: skip
    with pytest.raises(LeaseLostError, match="cancelled"):  # a final job has no owner
        await store.update_job(taken.lease, attempts=3)
    with pytest.raises(NotFoundError, match="job_id: no job 'nope'"):
        await store.update_job(Lease("nope", "w1", 1), JobState.RUNNING)


async def test_a_write_without_the_jobs_current_lease_changes_nothing(store):
    taken = await claimed(store, 1)
    for stale in (Lease("job-1", "w2", 1), Lease("job-1", "w1", 0)):
        with pytest.raises(LeaseLostError, match="not its lease any more"):
            await store.update_job(stale, JobState.RUNNING)
        with pytest.raises(LeaseLostError):
            await store.append_event(stale, "progress", {"step": 1})
        with pytest.raises(LeaseLostError):
            await store.renew_lease(stale, 60)
    assert await store.get_job("job-1") == taken
    assert len(await store.events("job-1", 0)) == 2


async def test_a_job_released_by_its_owner_waits_for_a_new_claim_with_a_new_fence(store):
    taken = await claimed(store, 1)
    released = await store.update_job(taken.lease, JobState.QUEUED, event={"reason": "x"})
    assert (released.owner, released.lease_until) == ("", None)
    with pytest.raises(LeaseLostError):  # the old claim is over
        await store.append_event(taken.lease, "progress", {})
    again = await store.claim_job("w2", EVERYTHING, 60)
    assert (again.id, again.owner, again.fence, again.attempts) == ("job-1", "w2", 2, 2)
    assert again.started == taken.started  # first started, for the fair order


async def test_events_are_numbered_per_job_and_read_from_a_cursor(store):
    taken = await claimed(store, 1)
    await store.update_job(taken.lease, JobState.RUNNING, event={"detail": "training"})
    await store.append_event(taken.lease, "progress", {"step": 1})
    events = await store.events("job-1", after_seq=0)
    assert [(e.seq, e.kind) for e in events] == [
        (1, "state"), (2, "state"), (3, "state"), (4, "progress"),
    ]  # fmt: skip
    assert events[2].data == {"state": "running", "detail": "training"}
    assert [e.seq for e in await store.events("job-1", after_seq=3)] == [4]


async def test_listing_filters_by_tenant_state_and_kind_and_pages(store):
    for n in range(5):
        await store.create_job(job(n, tenant="acme" if n % 2 else "globex"))
    await store.create_job(job(9, kind=JobKind.EVALUATE))
    page = await store.list_jobs(None, [], [], page_size=4, after_seq=0)
    assert [j.id for j in page.jobs] == ["job-0", "job-1", "job-2", "job-3"]
    rest = await store.list_jobs(None, [], [], page_size=4, after_seq=page.next_after)
    assert ([j.id for j in rest.jobs], rest.next_after) == (["job-4", "job-9"], 0)
    acme = await store.list_jobs("acme", [JobState.QUEUED], [JobKind.TRAIN], 10, 0)
    assert [j.id for j in acme.jobs] == ["job-1", "job-3"]


async def test_the_queue_takes_priority_then_age(store):
    await store.create_job(job(1))
    await store.create_job(job(2, priority=5))
    await store.create_job(job(3, priority=5))
    assert (await store.claim_job("w1", EVERYTHING, 60)).id == "job-2"


async def test_the_queue_is_round_robin_over_tenants_then_priority_then_age(store):
    # acme floods the queue first, at a high priority; globex and initech come later.
    for n in range(1, 5):
        await store.create_job(job(n, priority=5))
    await store.create_job(job(5, tenant="globex"))
    await store.create_job(job(6, tenant="globex", priority=1))
    await store.create_job(job(7, tenant="initech", priority=-5))
    order = []
    for claimed_at in range(7):
        head = await store.claim_job("w1", EVERYTHING, 60)
        order.append(head.id)
        await store.update_job(head.lease, started=float(claimed_at))  # a clock without ties
    # Never-served tenants first (by priority, then age), then the one served longest ago.
    assert order == ["job-1", "job-6", "job-7", "job-2", "job-5", "job-3", "job-4"]
    assert await store.count_queued("acme") == 0


async def test_a_claim_takes_only_the_work_its_process_can_do(store):
    await store.create_job(job(1, kind=JobKind.EVALUATE))
    assert await store.claim_job("worker", TRAINING, 60) is None  # an evaluation needs an engine
    await store.create_job(job(2))
    trained = await store.claim_job("worker", TRAINING, 60)
    assert trained.id == "job-2"
    await store.update_job(trained.lease, JobState.RUNNING)
    pending = await store.update_job(trained.lease, JobState.EVALUATION_PENDING)
    assert (pending.owner, pending.lease_until) == ("", None)
    assert await store.claim_job("worker", TRAINING, 60) is None
    first = await store.claim_job("replica", EVALUATION, 60)
    second = await store.claim_job("replica", EVALUATION, 60)
    assert {(first.id, first.state), (second.id, second.state)} == {
        ("job-1", JobState.EVALUATING), ("job-2", JobState.EVALUATING),
    }  # fmt: skip


async def test_concurrent_claims_never_take_one_job_twice(store):
    for n in range(6):
        await store.create_job(job(n, tenant=f"t{n % 3}"))
    claims = await asyncio.gather(*(store.claim_job(f"w{k}", EVERYTHING, 60) for k in range(10)))
    taken = [c for c in claims if c is not None]
    assert sorted(c.id for c in taken) == [f"job-{n}" for n in range(6)]
    for c in taken:
        assert (await store.get_job(c.id)).owner == c.owner


async def test_a_renewal_extends_the_lease_and_carries_a_cancel_request(store):
    taken = await claimed(store, 1)
    renewed = await store.renew_lease(taken.lease, 600)
    assert renewed.lease_until > taken.lease_until + 500
    assert not renewed.cancel_requested
    asked = await store.request_cancel("job-1")
    assert (asked.state, asked.cancel_requested, asked.owner) == (JobState.VALIDATING, True, "w1")
    assert (await store.renew_lease(taken.lease, 600)).cancel_requested
    ended = await store.update_job(taken.lease, JobState.CANCELLED)  # the owner ends it
    assert (ended.cancel_requested, ended.owner) == (False, "")


async def test_a_cancel_ends_a_waiting_job_at_once_and_refuses_a_final_one(store):
    await store.create_job(job(1))
    cancelled = await store.request_cancel("job-1")
    assert (cancelled.state, cancelled.error_reason, cancelled.error_message) == (
        JobState.CANCELLED, "cancelled", "cancelled by a client",
    )  # fmt: skip
    assert cancelled.finished is not None
    assert (await store.events("job-1", 0))[-1].data == {
        "state": "cancelled",
        "reason": "cancelled",
    }
    with pytest.raises(FailedPreconditionError, match="job job-1 is cancelled; nothing to cancel"):
        await store.request_cancel("job-1")
    with pytest.raises(NotFoundError, match="'nope'"):
        await store.request_cancel("nope")


async def test_the_sweep_releases_expired_leases_only(store):
    # job-1 was training, job-2 evaluating its adapter, job-3 asked to cancel, job-4 is fresh.
    one = await claimed(store, 1, owner="dead")
    two = await claimed(store, 2, owner="dead")
    await store.update_job(two.lease, JobState.RUNNING)
    await store.update_job(two.lease, JobState.EVALUATING)
    three = await claimed(store, 3, owner="dead")
    await store.request_cancel("job-3")
    await store.create_job(job(4))
    await store.claim_job("alive", EVERYTHING, lease_seconds=3600)
    swept = await store.expire_leases(time.time() + 120, max_attempts=2)
    assert {j.id: j.state for j in swept} == {
        "job-1": JobState.QUEUED, "job-2": JobState.EVALUATION_PENDING, "job-3": JobState.CANCELLED,
    }  # fmt: skip
    assert all(j.owner == "" for j in swept)
    assert (await store.events("job-1", 0))[-1].data["reason"] == "lease_expired"
    assert (
        await store.expire_leases(time.time() + 120, max_attempts=2) == []
    )  # each release happens once
    for stale in (one.lease, two.lease, three.lease):  # the dead owner can write nothing
        with pytest.raises(LeaseLostError):
            await store.append_event(stale, "progress", {})
    assert (await store.get_job("job-4")).owner == "alive"
    again = await store.claim_job("alive", TRAINING, 60)
    assert (again.id, again.fence) == ("job-1", 2)


async def test_a_job_whose_owners_keep_dying_fails_after_the_crashed_runs_allowed(store):
    # Each claim's owner dies (say, the job's memory kills it): the sweep hands the job on
    # until its crashed runs reach the cap, then ends it instead of requeueing it forever.
    await store.create_job(job(1))
    for run in (1, 2):
        taken = await store.claim_job(f"worker-{run}", TRAINING, lease_seconds=60)
        assert taken is not None and taken.fence == run
        [swept] = await store.expire_leases(time.time() + 120, max_attempts=3)
        assert (swept.state, swept.error_reason) == (JobState.QUEUED, "")
    await store.claim_job("worker-3", TRAINING, lease_seconds=60)
    [failed] = await store.expire_leases(time.time() + 120, max_attempts=3)
    assert (failed.state, failed.error_reason, failed.owner) == (JobState.FAILED, "worker_lost", "")
    assert failed.finished is not None
    assert failed.error_message.startswith("run 3 of 3 crashed: worker-3 stopped renewing")
    reasons = [e.data.get("reason") for e in await store.events("job-1", 0) if e.kind == "state"]
    assert reasons.count("lease_expired") == 2 and reasons[-1] == "worker_lost"
    assert await store.claim_job("worker-4", TRAINING, lease_seconds=60) is None


async def test_adapter_versions_and_aliases_survive_a_reopen(new_store, tmp_path):
    store = new_store()
    await store.open()
    assert [await store.next_adapter_version("acme/bot") for _ in range(2)] == [1, 2]
    record = AdapterRecord("acme/bot", 2, tmp_path / "a", "s" * 64, 8, "tiny", 1.0, pinned=True)
    await store.save_adapter(record)
    await store.save_adapter(record)  # saving again replaces
    await store.set_alias("acme/prod", ("acme/bot", 2))
    await store.set_alias("acme/old", ("acme/bot", 2))
    await store.set_alias("acme/old", None)
    await store.close()
    reopened = new_store()
    await reopened.open()
    assert await reopened.adapters() == ([record], {"acme/prod": ("acme/bot", 2)})
    await reopened.delete_adapter("acme/bot", 2)
    assert await reopened.next_adapter_version("acme/bot") == 3  # numbers are never reused
    assert await reopened.adapters() == ([], {"acme/prod": ("acme/bot", 2)})
    await reopened.close()


async def test_concurrent_submits_with_one_request_id_make_one_job(store):
    results = await asyncio.gather(*(store.create_job(job(n, request_id="r")) for n in range(50)))
    assert sum(created for _, created in results) == 1
    assert len({j.id for j, _ in results}) == 1
    assert [e.seq for e in await store.events(results[0][0].id, 0)] == [1]  # one first event


async def test_concurrent_events_of_one_job_are_numbered_without_gaps(store):
    taken = await claimed(store, 1)
    appended = await asyncio.gather(
        *(store.append_event(taken.lease, "progress", {"step": n}) for n in range(40)),
        store.update_job(taken.lease, JobState.RUNNING),
    )
    events = await store.events("job-1", 0)
    assert [e.seq for e in events] == list(range(1, 44))
    assert sorted(e.seq for e in appended[:-1]) == [e.seq for e in events if e.kind == "progress"]


async def test_concurrent_version_reservations_are_distinct(store):
    versions = await asyncio.gather(*(store.next_adapter_version("acme/bot") for _ in range(20)))
    assert sorted(versions) == list(range(1, 21))


def upload(n: int, tenant: str = "acme", stored: int = 100) -> UploadRecord:
    return UploadRecord(
        id=f"up-{tenant}-{n}", tenant=tenant, kind="dataset", name=f"{n}.jsonl",
        path=Path(f"/data/{n}"), sha256="0" * 64, size=stored, stored=stored, files=1,
        created=float(n),
    )  # fmt: skip


async def test_the_upload_quota_holds_under_concurrent_uploads(store):
    async def add(record: UploadRecord) -> bool:
        try:
            await store.add_upload(record, quota_bytes=550)
        except ResourceExhaustedError as exc:
            assert "tenant 'acme'" in str(exc) and "550" in str(exc)
            return False
        return True

    accepted = await asyncio.gather(*(add(upload(n)) for n in range(10)))
    assert sum(accepted) == 5
    assert await store.tenant_upload_bytes("acme") == 500
    assert await store.add_upload(upload(0, tenant="globex"), quota_bytes=550) == 100
    assert await store.get_upload("up-globex-0") == upload(0, tenant="globex")
    assert await store.get_upload("nope") is None


async def test_counts_by_kind_and_state(store):
    await store.create_job(job(1))
    await store.create_job(job(2))
    await store.create_job(job(3, kind=JobKind.EVALUATE))
    await store.request_cancel("job-2")
    assert await store.count_jobs() == {
        (JobKind.TRAIN, JobState.QUEUED): 1,
        (JobKind.TRAIN, JobState.CANCELLED): 1,
        (JobKind.EVALUATE, JobState.QUEUED): 1,
    }
    assert await store.get_job("job-2") == (await store.list_jobs(None, [], [], 9, 0)).jobs[1]
    assert await store.get_job("nope") is None


async def test_only_a_store_no_other_process_writes_is_exclusive(store):
    assert store.exclusive is (type(store).__name__ == "SqliteStore")


async def released_by_the_first_sweep(store: Store) -> None:
    """Checks that job-1, running before leases existed, has an expired lease that the first
    sweep releases; closes `store`."""
    before = await store.get_job("job-1")
    assert (before.owner, before.lease_until) == ("a server before leases", 0)
    [released] = await store.expire_leases(time.time(), max_attempts=2)
    assert (released.state, released.owner) == (JobState.QUEUED, "")
    await store.close()


async def test_capture_policies_are_per_tenant_and_target_and_replaced_in_place(store):
    first = CapturePolicy("acme", "acme/bot", 0.5, 3600.0, 1.0)
    await store.set_capture_policy(first)
    await store.set_capture_policy(CapturePolicy("globex", "acme/bot", 1.0, 60.0, 2.0))
    replaced = CapturePolicy("acme", "acme/bot", 0.25, 7200.0, 3.0, {"type": "object"})
    await store.set_capture_policy(replaced)
    assert await store.capture_policies() == [
        replaced, CapturePolicy("globex", "acme/bot", 1.0, 60.0, 2.0),
    ]  # fmt: skip
    assert await store.delete_capture_policy("acme", "acme/bot") is True
    assert await store.delete_capture_policy("acme", "acme/bot") is False
    assert [p.tenant for p in await store.capture_policies()] == ["globex"]


def capture(n: int, tenant: str = "acme", target: str = "acme/bot", **fields) -> Capture:
    values = {
        "id": f"cap-{tenant}-{n}", "tenant": tenant, "target": target,
        "adapter_version": f"{target}@1",
        "request": {"messages": [{"role": "user", "content": f"q{n} é"}],
                    "sampling": {"max_tokens": 8, "stop": ["\n"]}, "json_schema": None},
        "answer": f"a{n}", "finish_reason": "stop", "prompt_tokens": 5, "completion_tokens": 2,
        "latency_seconds": 0.25, "redacted": {"email": 1}, "created": float(n),
        "expires": float(n) + 100,
    }  # fmt: skip
    return Capture(**(values | fields))


async def test_a_capture_and_its_feedback_read_back_as_written(store):
    await store.add_captures([capture(1)])
    assert await store.get_capture("cap-acme-1") == capture(1)
    assert await store.get_capture("nope") is None
    rated = Feedback(rating=2, flagged=True, flag_reason="wrong", correction="b1", time=9.0)
    stored = await store.set_feedback("cap-acme-1", rated, {"email": 1, "phone": 2})
    assert stored == capture(1, feedback=rated, redacted={"email": 1, "phone": 2})
    assert await store.get_capture("cap-acme-1") == stored
    again = Feedback(rating=None, flagged=False, flag_reason="", correction=None, time=10.0)
    assert (await store.set_feedback("cap-acme-1", again, {})).feedback == again
    with pytest.raises(NotFoundError, match="capture_id"):
        await store.set_feedback("nope", again, {})


async def test_captures_are_listed_by_tenant_target_time_rating_and_flag_in_pages(store):
    good = Feedback(5, False, "", None, 1.0)
    flagged = Feedback(1, True, "rude", "better", 1.0)
    await store.add_captures([capture(1, feedback=good), capture(2, feedback=flagged)])
    await store.add_captures([capture(3)])
    await store.add_captures([capture(4, target="acme/other", feedback=good)])
    await store.add_captures([capture(5, tenant="globex", target="globex/bot", feedback=good)])

    async def ids(**fields) -> list[str]:
        page = await store.list_captures(CaptureFilter(**({"tenant": "acme"} | fields)), 100, 0)
        return [c.id.removeprefix("cap-acme-") for c in page.captures]

    assert await ids() == ["1", "2", "3", "4"]
    assert await ids(target="acme/bot") == ["1", "2", "3"]
    assert await ids(since=2.0, until=4.0) == ["2", "3"]
    assert await ids(min_rating=4) == ["1", "4"]
    assert await ids(flag=FlagFilter.FLAGGED) == ["2"]
    assert await ids(flag=FlagFilter.UNFLAGGED) == ["1", "3", "4"]
    assert await ids(with_correction=True) == ["2"]
    everyone = await store.list_captures(CaptureFilter(tenant=None), 3, 0)
    assert len(everyone.captures) == 3 and everyone.next_after
    rest = await store.list_captures(CaptureFilter(tenant=None), 3, everyone.next_after)
    assert [c.id for c in rest.captures] == ["cap-acme-4", "cap-globex-5"]
    assert rest.next_after == 0


async def test_the_retention_sweep_deletes_only_expired_captures(store):
    await store.add_captures([capture(1, expires=50.0)])
    await store.add_captures([capture(2, expires=150.0)])
    assert await store.delete_expired_captures(100.0) == 1
    assert await store.get_capture("cap-acme-1") is None
    assert await store.get_capture("cap-acme-2") is not None
    assert await store.delete_expired_captures(100.0) == 0


async def test_concurrent_sweeps_delete_each_capture_once(store):
    await store.add_captures([capture(n, expires=1.0) for n in range(20)])
    deleted = await asyncio.gather(*(store.delete_expired_captures(2.0) for _ in range(5)))
    assert sum(deleted) == 20
    assert (await store.list_captures(CaptureFilter(tenant=None), 100, 0)).captures == []
