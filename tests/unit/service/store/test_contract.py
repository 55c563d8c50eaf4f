"""The Store contract, on SQLite and PostgreSQL alike (`store`, `new_store`): idempotent
creation, transitions, events, paging, the fair queue, adapters across a reopen, and what
concurrent callers may not break (one job per request id, gapless event numbers, distinct
adapter versions, the upload quota)."""

import asyncio
import time
from pathlib import Path

import pytest

from service.errors import FailedPreconditionError, NotFoundError, ResourceExhaustedError
from service.jobs.model import Job, JobKind, JobState, fair_next, spec_digest
from service.store.base import AdapterRecord, UploadRecord


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


async def test_transitions_follow_the_table_and_terminal_states_are_final(store):
    await store.create_job(job(1))
    with pytest.raises(FailedPreconditionError, match="cannot go from queued to succeeded"):
        await store.update_job("job-1", JobState.SUCCEEDED)
    await store.update_job("job-1", JobState.VALIDATING)
    done = await store.update_job("job-1", JobState.CANCELLED, attempts=2)
    assert (done.state, done.attempts) == (JobState.CANCELLED, 2)
    with pytest.raises(FailedPreconditionError, match="cannot go from cancelled"):
        await store.update_job("job-1", JobState.RUNNING)
    with pytest.raises(FailedPreconditionError, match="final"):
        await store.update_job("job-1", attempts=3)
    with pytest.raises(NotFoundError, match="job_id: no job 'nope'"):
        await store.update_job("nope", JobState.RUNNING)


async def test_events_are_numbered_per_job_and_read_from_a_cursor(store):
    await store.create_job(job(1))
    await store.update_job("job-1", JobState.VALIDATING, event={"detail": "checking data"})
    await store.append_event("job-1", "progress", {"step": 1})
    events = await store.events("job-1", after_seq=0)
    assert [(e.seq, e.kind) for e in events] == [(1, "state"), (2, "state"), (3, "progress")]
    assert events[1].data == {"state": "validating", "detail": "checking data"}
    assert [e.seq for e in await store.events("job-1", after_seq=2)] == [3]


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
    assert (await store.next_queued()).id == "job-2"


async def test_the_queue_is_round_robin_over_tenants_then_priority_then_age(store):
    # acme floods the queue first, at a high priority; globex and initech come later.
    for n in range(1, 5):
        await store.create_job(job(n, priority=5))
    await store.create_job(job(5, tenant="globex"))
    await store.create_job(job(6, tenant="globex", priority=1))
    await store.create_job(job(7, tenant="initech", priority=-5))
    order = []
    for claimed_at in range(7):
        head = await store.next_queued()
        order.append(head.id)
        await store.update_job(head.id, JobState.VALIDATING, started=float(claimed_at))
    # Never-served tenants first (by priority, then age), then the one served longest ago.
    assert order == ["job-1", "job-6", "job-7", "job-2", "job-5", "job-3", "job-4"]
    assert await store.count_queued("acme") == 0


def test_fair_next_is_the_one_definition_of_the_order():
    a1, g1 = job(1, priority=9), job(2, tenant="globex")
    assert fair_next([a1, g1], {}) is a1  # neither served: priority
    assert fair_next([a1, g1], {"acme": 10.0}) is g1  # globex never served
    assert fair_next([a1, g1], {"acme": 10.0, "globex": 20.0}) is a1
    assert fair_next([], {}) is None


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
    await store.create_job(job(1))
    appended = await asyncio.gather(
        *(store.append_event("job-1", "progress", {"step": n}) for n in range(40)),
        store.update_job("job-1", JobState.VALIDATING),
    )
    events = await store.events("job-1", 0)
    assert [e.seq for e in events] == list(range(1, 43))
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
    await store.update_job("job-2", JobState.CANCELLED)
    assert await store.count_jobs() == {
        (JobKind.TRAIN, JobState.QUEUED): 1,
        (JobKind.TRAIN, JobState.CANCELLED): 1,
        (JobKind.EVALUATE, JobState.QUEUED): 1,
    }
    assert await store.get_job("job-2") == (await store.list_jobs(None, [], [], 9, 0)).jobs[1]
    assert await store.get_job("nope") is None
