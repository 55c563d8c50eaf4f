"""What only the PostgreSQL store does: numbered migrations applied once, by one replica at a
time; two stores (two replicas' pools) on one database; errors that never show the password."""

import asyncio

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from service.errors import ConfigError, UnavailableError
from service.jobs.model import JobState, Work
from service.store.base import Change
from service.store.postgres import PostgresStore, migrations, redacted
from tests.unit.service.store.test_contract import job, released_by_the_first_sweep


def applied(url: str) -> list[tuple[int, str]]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT version, name FROM schema_migrations ORDER BY 1").fetchall()


def test_the_shipped_migrations_are_numbered_from_one():
    numbers = [number for number, _, _ in migrations()]
    assert numbers == list(range(1, len(numbers) + 1)) and numbers


async def test_replicas_starting_together_migrate_once_and_share_the_data(postgres):
    url = postgres.create_database()
    first, second = PostgresStore(url), PostgresStore(url)
    await asyncio.gather(first.open(), second.open())
    assert applied(url) == [(number, name) for number, name, _ in migrations()]
    await first.create_job(job(1))
    taken = await second.claim_job("replica-2", frozenset(Work), 60)
    await second.append_event(taken.lease, "progress", {"step": 1})
    assert [e.seq for e in await first.events("job-1", 0)] == [1, 2, 3]
    await asyncio.gather(first.close(), second.close())
    again = PostgresStore(url)
    await again.open()  # nothing left to apply
    assert len(applied(url)) == len(migrations())
    await again.close()


async def test_replicas_claiming_and_sweeping_at_once_never_share_a_job(postgres):
    url = postgres.create_database()
    replicas = [PostgresStore(url) for _ in range(3)]
    await asyncio.gather(*(r.open() for r in replicas))
    for n in range(12):
        await replicas[0].create_job(job(n, tenant=f"t{n % 4}"))
    claims = await asyncio.gather(
        *(r.claim_job(f"r{k}", frozenset(Work), 60) for k, r in enumerate(replicas * 6))
    )
    taken = [c for c in claims if c is not None]
    assert sorted(c.id for c in taken) == sorted(f"job-{n}" for n in range(12))
    swept = await asyncio.gather(*(r.expire_leases(float("inf"), max_attempts=2) for r in replicas))
    released = [j.id for jobs in swept for j in jobs]  # one sweeper at a time, each job once
    assert sorted(released) == sorted(c.id for c in taken)
    page = await replicas[1].list_jobs(None, [JobState.QUEUED], [], 50, 0)
    assert len(page.jobs) == 12 and all(j.fence == 1 and not j.owner for j in page.jobs)
    await asyncio.gather(*(r.close() for r in replicas))


async def test_a_replica_hears_what_another_writes_as_it_commits(postgres, tmp_path):
    url = postgres.create_database()
    writer, listener = PostgresStore(url), PostgresStore(url)
    await asyncio.gather(writer.open(), listener.open())
    heard: asyncio.Queue = asyncio.Queue()
    following = asyncio.create_task(listener.follow(lambda c, p: heard.put_nowait((c, p))))
    first = [await asyncio.wait_for(heard.get(), 10) for _ in Change]
    assert sorted(first) == sorted((c, "") for c in Change)  # anything may have changed

    async def next_heard() -> tuple[Change, str]:
        return await asyncio.wait_for(heard.get(), 5)

    await writer.create_job(job(1))
    assert {await next_heard(), await next_heard()} == {(Change.JOB, "job-1"), (Change.QUEUE, "")}
    taken = await writer.claim_job("w", frozenset(Work), 60)
    assert await next_heard() == (Change.JOB, "job-1")  # its claim's state event
    await writer.request_cancel("job-1")
    assert await next_heard() == (Change.CANCEL, "job-1")
    await writer.update_job(taken.lease, JobState.CANCELLED)
    assert await next_heard() == (Change.JOB, "job-1")
    await writer.set_alias("acme/prod", ("acme/bot", 1))
    assert await next_heard() == (Change.ADAPTERS, "acme/prod")
    assert heard.empty()
    following.cancel()
    await asyncio.gather(writer.close(), listener.close())


async def test_a_job_running_before_leases_existed_is_released_by_the_first_sweep(postgres):
    url = postgres.create_database()
    (_, _, schema), *_ = migrations()
    with psycopg.connect(url) as conn:  # a database of the release before leases
        conn.execute(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
            "applied DOUBLE PRECISION NOT NULL)"
        )
        conn.execute(schema)
        conn.execute("INSERT INTO schema_migrations VALUES (1, 'schema', 0)")
        conn.execute(
            "INSERT INTO jobs (id, tenant, kind, state, spec, spec_digest, request_id, priority, "
            "created, updated) VALUES ('job-1', 'acme', 'train', 'running', '{}', 'd', '', 0, "
            "1, 1)"
        )
    store = PostgresStore(url)
    await store.open()
    await released_by_the_first_sweep(store)


async def test_a_schema_newer_than_this_adapterd_is_refused(postgres):
    url = postgres.create_database()
    store = PostgresStore(url)
    await store.open()
    await store.close()
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (999, 'future', 0)")
    with pytest.raises(ConfigError, match="schema is at version 999, newer than this adapterd"):
        await PostgresStore(url).open()


async def test_an_unreachable_database_is_a_config_error_without_the_password(tmp_path):
    url = f"postgresql://bob:hunter2@/adapterd?host={tmp_path}&connect_timeout=1"
    store = PostgresStore(url, connect_timeout=1.0)
    with pytest.raises(ConfigError, match=r"--store-url .*cannot connect within 1 s") as caught:
        await store.open()
    assert "hunter2" not in str(caught.value) and "***" in str(caught.value)


def test_redacted_hides_only_the_password():
    assert redacted("postgresql://bob:hunter2@db:5432/adapterd") == (
        "user=bob password=*** dbname=adapterd host=db port=5432"
    )
    assert redacted("host=db password=hunter2") == "password=*** host=db"
    assert redacted("postgresql://bob:hunter2@db/x?sslmode=a=b") == "(an unparsable URL)"


async def test_a_database_that_goes_away_is_unavailable_not_a_bug(postgres):
    url = postgres.create_database()
    store = PostgresStore(url, connect_timeout=1.0)
    await store.open()
    await store.create_job(job(1))
    name = conninfo_to_dict(url)["dbname"]
    with psycopg.connect(postgres.url(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")  # every session of it ends
    for _ in range(2):  # the broken connection, then the pool's failing reconnects
        with pytest.raises(UnavailableError, match=r"the job store .* is unreachable"):
            await store.get_job("job-1")
    await store.close()
