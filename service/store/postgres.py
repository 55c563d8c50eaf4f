"""The shared store: PostgreSQL through psycopg 3's async pool, for replicas on one database.

Every method is one transaction on a pooled connection (committed when it returns, rolled back
on error); the event loop never blocks, and nothing here serializes replicas beyond what a
statement locks. What two writers could race on is decided by the database:
  - a job's next event number comes from its own row (`last_event + 1 ... RETURNING`), so
    appends to one job queue behind its row lock and never collide;
  - job order is an identity column; the idempotent create is `ON CONFLICT DO NOTHING` on the
    (tenant, request id) index; adapter versions are an upsert `RETURNING` the number;
  - an upload's quota check holds a transaction-scoped advisory lock on its tenant.
The schema is numbered SQL files (`migrations/NNNN_*.sql`) applied at open, in order, under an
advisory lock, each recorded in `schema_migrations`.

Job claims are leased: a claim locks the fairest waiting row with `FOR UPDATE SKIP LOCKED`
(concurrent claimers take the next one instead of waiting) and sets its owner, lease and next
fencing number in the same transaction; every later write of the job locks its row and checks
the lease first. Expired leases are swept by one process at a time (a transaction-scoped
advisory lock; the others skip their sweep).

Every write others may wait for sends a notification in its transaction (delivered at commit):
a job's new event, a job starting to wait, an adapter change (`Change`); `follow` listens on
one connection of its own, so a WatchJob, an idle runner and the adapter registry of every
process hear of it at once, with polling behind it where a notification is lost.
"""

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from service.capture.model import (
    Capture,
    CaptureFilter,
    CapturePolicy,
    Feedback,
)
from service.errors import ConfigError, NotFoundError, UnavailableError
from service.jobs.model import (
    OWNED,
    FeedKind,
    Job,
    JobEvent,
    JobKind,
    JobState,
    Lease,
    Work,
    apply_update,
    check_lease,
    claim,
    claimable,
    crashed_runs,
    expire,
    request_cancel,
)
from service.store.base import (
    CAPTURE_COLUMNS,
    WHOLE_FEED,
    AdapterRecord,
    CapturePage,
    Change,
    Heard,
    JobPage,
    UploadRecord,
    capture_of,
    capture_page,
    capture_query,
    capture_values,
    claim_query,
    job_listing_query,
    job_page,
    upload_quota_error,
)

MIGRATION_LOCK = 0x61647464  # "adtd": one replica migrates at a time
SWEEP_LOCK = MIGRATION_LOCK + 1
"""Held by the one process sweeping expired leases (others skip their sweep meanwhile)."""
CAPTURE_SWEEP_LOCK = MIGRATION_LOCK + 2
"""Held by the one process deleting expired captures."""
UPLOAD_QUOTA_LOCKS = 1
"""The advisory-lock class of per-tenant quota checks (the tenant's hash is the second key)."""
POOL_SIZE = 8
CONNECT_TIMEOUT_SECONDS = 10.0
RECONNECT_SECONDS = 1.0
"""How soon `follow` connects again after its connection was lost."""
WAITING = frozenset({JobState.QUEUED.value, JobState.EVALUATION_PENDING.value})

logger = logging.getLogger(__name__)

_JOB_COLUMNS = (
    "id", "tenant", "kind", "state", "spec", "spec_digest", "request_id", "priority", "created",
    "updated", "started", "finished", "attempts", "result", "error_reason", "error_message",
    "worker_pid", "worker_started", "owner", "fence", "lease_until", "cancel_requested",
)  # fmt: skip
_JOBS = ", ".join(_JOB_COLUMNS)
_JOB_MARKS = ", ".join(["%s"] * len(_JOB_COLUMNS))
_UPLOAD_COLUMNS = "id, tenant, kind, name, path, sha256, size, stored, files, created"
_ADAPTER_COLUMNS = "name, version, path, sha256, rank, base_model, created, pinned"
_CAPTURES = ", ".join(CAPTURE_COLUMNS)
_POLICY_COLUMNS = "tenant, target, rate, retention_seconds, created, schema"


def migrations() -> list[tuple[int, str, str]]:
    """(number, name, SQL) of every migration shipped, in order.

    Raises:
        RuntimeError: two files with one number, or a gap: a packaging bug.
    """
    found = []
    for entry in resources.files("service.store").joinpath("migrations").iterdir():
        match = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if match:
            found.append((int(match[1]), match[2], entry.read_text()))
    found.sort()
    numbers = [number for number, _, _ in found]
    if numbers != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations must be numbered 1..n without gaps, found {numbers}")
    return found


def redacted(url: str) -> str:
    """`url` without its password, to name it in errors and logs."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "(an unparsable URL)"
    if "password" in params:
        params["password"] = "***"
    return make_conninfo("", **params)


Connection = AsyncConnection[DictRow]


async def _rows(conn: Connection, query: str, params: tuple[Any, ...] = ()) -> list[DictRow]:
    return await (await conn.execute(query, params)).fetchall()


async def _row(conn: Connection, query: str, params: tuple[Any, ...] = ()) -> DictRow:
    """The first row of a query that always returns one (RETURNING, an aggregate)."""
    row = await (await conn.execute(query, params)).fetchone()
    if row is None:
        raise RuntimeError(f"no row from {query!r}")
    return row


async def _maybe_row(conn: Connection, query: str, params: tuple[Any, ...]) -> DictRow | None:
    return await (await conn.execute(query, params)).fetchone()


async def _sweeping(conn: Connection, lock: int) -> bool:
    """Takes the transaction-scoped advisory `lock` if no other process holds it."""
    row = await _row(conn, "SELECT pg_try_advisory_xact_lock(%s) AS held", (lock,))
    return bool(row["held"])


async def _events(
    conn: Connection, job_id: str, after_seq: int, limit: int, kind: str = ""
) -> list[JobEvent]:
    """The job's events after `after_seq`, of `kind` only if one is given."""
    rows = await _rows(
        conn,
        "SELECT job_id, seq, time, kind, data FROM job_events "
        "WHERE job_id = %s AND seq > %s AND (%s = '' OR kind = %s) ORDER BY seq LIMIT %s",
        (job_id, after_seq, kind, kind, limit),
    )
    return [JobEvent(**r) for r in rows]


def _job(row: DictRow) -> Job:
    values = {name: row[name] for name in _JOB_COLUMNS}
    values["kind"] = JobKind(values["kind"])
    values["state"] = JobState(values["state"])
    return Job(**values)


def _job_values(job: Job) -> tuple[Any, ...]:
    return (
        job.id, job.tenant, job.kind.value, job.state.value, Jsonb(job.spec), job.spec_digest,
        job.request_id, job.priority, job.created, job.updated, job.started, job.finished,
        job.attempts, Jsonb(job.result), job.error_reason, job.error_message, job.worker_pid,
        job.worker_started, job.owner, job.fence, job.lease_until, job.cancel_requested,
    )  # fmt: skip


def _adapter(row: DictRow) -> AdapterRecord:
    return AdapterRecord(**{**row, "path": Path(row["path"])})


class PostgresStore:
    """The Store on a PostgreSQL database that several adapterd processes may share."""

    exclusive = False

    def __init__(
        self, url: str, pool_size: int = POOL_SIZE, connect_timeout: float = CONNECT_TIMEOUT_SECONDS
    ) -> None:
        self.url = url
        self._connect_timeout = connect_timeout
        self._pool = AsyncConnectionPool[Connection](
            url,
            connection_class=Connection,
            min_size=1,
            max_size=pool_size,
            open=False,
            kwargs={"row_factory": dict_row},
            # A connection the database dropped (a restart) is replaced before it is handed out.
            check=AsyncConnectionPool.check_connection,
            name="adapterd-store",
        )

    async def open(self) -> None:
        """Connects and applies the migrations this database lacks.

        Raises:
            ConfigError: the database cannot be reached, or its schema is newer than this
                adapterd's.
        """
        try:
            await self._pool.open(wait=True, timeout=self._connect_timeout)
        except PoolTimeout as exc:
            await self._pool.close()
            raise ConfigError(
                f"--store-url {redacted(self.url)}: cannot connect within "
                f"{self._connect_timeout:g} s ({exc})"
            ) from None
        try:
            async with self._connection() as conn:
                await self._migrate(conn)
        except BaseException:
            await self.close()
            raise

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        """A pooled connection in a transaction (committed on success); a database that
        cannot be reached, or went away mid-call, is UNAVAILABLE (retrying may work), not a
        bug. Errors of the SQL itself propagate as they are."""
        try:
            async with self._pool.connection(timeout=self._connect_timeout) as conn:
                yield conn
        except (PoolTimeout, psycopg.OperationalError) as exc:
            raise UnavailableError(
                f"the job store ({redacted(self.url)}) is unreachable: {exc}; retry shortly"
            ) from exc

    @staticmethod
    async def _migrate(conn: Connection) -> None:
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied DOUBLE PRECISION NOT NULL)"
        )
        row = await _row(conn, "SELECT COALESCE(MAX(version), 0) AS v FROM schema_migrations")
        current, known = int(row["v"]), migrations()
        if current > len(known):
            raise ConfigError(
                f"--store-url: the database's schema is at version {current}, newer than this "
                f"adapterd's {len(known)}: upgrade adapterd"
            )
        for number, name, script in known[current:]:
            await conn.execute(script)  # several statements: allowed without parameters
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, applied) VALUES (%s, %s, %s)",
                (number, name, time.time()),
            )

    async def close(self) -> None:
        """Closes the pool."""
        await self._pool.close()

    async def follow(self, heard: Heard) -> None:
        while True:
            try:
                async with await AsyncConnection.connect(self.url, autocommit=True) as conn:
                    for channel in Change:
                        await conn.execute(f"LISTEN {channel.value}")
                    for channel in Change:  # what happened while nobody listened
                        heard(channel, "")
                    async for note in conn.notifies():
                        heard(Change(note.channel), note.payload)
            except psycopg.OperationalError as exc:
                logger.warning("store notifications: %s; listening again shortly", exc)
            await asyncio.sleep(RECONNECT_SECONDS)

    @staticmethod
    async def _notify(conn: Connection, change: Change, payload: str = "") -> None:
        """Notifies every listener of `change` when the transaction commits."""
        await conn.execute("SELECT pg_notify(%s, %s)", (change.value, payload))

    # ---- jobs
    async def create_job(self, job: Job) -> tuple[Job, bool]:
        async with self._connection() as conn:
            inserted = await _maybe_row(
                conn,
                f"INSERT INTO jobs ({_JOBS}) VALUES ({_JOB_MARKS}) "
                "ON CONFLICT (tenant, request_id) WHERE request_id <> '' DO NOTHING RETURNING id",
                _job_values(job),
            )
            if inserted is None:  # the tenant's job with this request id, committed first
                existing = await _row(
                    conn,
                    f"SELECT {_JOBS} FROM jobs WHERE tenant = %s AND request_id = %s",
                    (job.tenant, job.request_id),
                )
                return _job(existing), False
            await self._append(
                conn, job.id, FeedKind.STATE, {"state": job.state.value}, job.created
            )
            return job, True

    async def get_job(self, job_id: str) -> Job | None:
        async with self._connection() as conn:
            row = await _maybe_row(conn, f"SELECT {_JOBS} FROM jobs WHERE id = %s", (job_id,))
        return None if row is None else _job(row)

    async def list_jobs(
        self,
        tenant: str | None,
        states: Iterable[JobState],
        kinds: Iterable[JobKind],
        page_size: int,
        after_seq: int,
    ) -> JobPage:
        query = job_listing_query(
            _JOBS, "%s", tenant=tenant, states=states, kinds=kinds, page_size=page_size,
            after_seq=after_seq,
        )  # fmt: skip
        async with self._connection() as conn:
            rows = await _rows(conn, *query)
        return job_page(rows, page_size, _job)

    @staticmethod
    async def _locked(conn: Connection, job_id: str) -> Job:
        """The job's row, locked until the transaction ends."""
        row = await _maybe_row(
            conn, f"SELECT {_JOBS} FROM jobs WHERE id = %s FOR UPDATE", (job_id,)
        )
        if row is None:
            raise NotFoundError(f"job_id: no job {job_id!r}")
        return _job(row)

    async def _write(self, conn: Connection, job: Job, added: dict[str, Any] | None) -> Job:
        """Stores `job`'s (locked) row and, if there is one, its transition's `state` event."""
        if added is not None:
            await self._append(conn, job.id, FeedKind.STATE, added, job.updated)
        await conn.execute(
            f"UPDATE jobs SET ({_JOBS}) = ({_JOB_MARKS}) WHERE id = %s",
            (*_job_values(job), job.id),
        )
        return job

    async def claim_job(
        self, owner: str, work: frozenset[Work], lease_seconds: float
    ) -> Job | None:
        # The row lock makes the read and the write one claim; SKIP LOCKED lets a concurrent
        # claimer take the next job instead of waiting for this one.
        query = claim_query(_JOBS, "%s", claimable(work), lock=" FOR UPDATE OF jobs SKIP LOCKED")
        async with self._connection() as conn:
            row = await _maybe_row(conn, *query)
            if row is None:
                return None
            job = _job(row)
            return await self._write(conn, job, claim(job, owner, lease_seconds, time.time()))

    async def renew_lease(self, lease: Lease, lease_seconds: float) -> Job:
        async with self._connection() as conn:
            job = await self._locked(conn, lease.job_id)
            check_lease(job, lease)
            job.lease_until = time.time() + lease_seconds
            await conn.execute(
                "UPDATE jobs SET lease_until = %s WHERE id = %s", (job.lease_until, job.id)
            )
            return job

    async def update_job(
        self,
        lease: Lease,
        state: JobState | None = None,
        event: dict[str, Any] | None = None,
        **fields: Any,
    ) -> Job:
        async with self._connection() as conn:
            job = await self._locked(conn, lease.job_id)
            added = apply_update(
                job, lease, state=state, event=event, fields=fields, now=time.time()
            )
            return await self._write(conn, job, added)

    async def request_cancel(self, job_id: str) -> Job:
        async with self._connection() as conn:
            job = await self._locked(conn, job_id)
            added = request_cancel(job, time.time())
            if job.state.owned:
                await self._notify(conn, Change.CANCEL, job_id)
            return await self._write(conn, job, added)

    async def expire_leases(self, now: float, max_attempts: int) -> list[Job]:
        owned = [state.value for state in OWNED]
        async with self._connection() as conn:
            if not await _sweeping(conn, SWEEP_LOCK):  # another process sweeps right now
                return []
            rows = await _rows(
                conn,
                f"SELECT {_JOBS} FROM jobs WHERE state = ANY(%s) AND lease_until < %s "
                "FOR UPDATE SKIP LOCKED",
                (owned, now),
            )
            swept = []
            for job in map(_job, rows):
                states = await _events(conn, job.id, 0, WHOLE_FEED, FeedKind.STATE)
                crashed = crashed_runs(states)
                added = expire(job, time.time(), crashed, max_attempts)
                swept.append(await self._write(conn, job, added))
            return swept

    async def count_queued(self, tenant: str) -> int:
        async with self._connection() as conn:
            row = await _row(
                conn,
                "SELECT COUNT(*) AS n FROM jobs WHERE tenant = %s AND state = %s",
                (tenant, JobState.QUEUED.value),
            )
        return int(row["n"])

    async def count_jobs(self) -> dict[tuple[JobKind, JobState], int]:
        async with self._connection() as conn:
            rows = await _rows(conn, "SELECT kind, state, COUNT(*) AS n FROM jobs GROUP BY 1, 2")
        return {(JobKind(r["kind"]), JobState(r["state"])): int(r["n"]) for r in rows}

    # ---- events
    @staticmethod
    async def _append(
        conn: Connection, job_id: str, kind: str, data: dict[str, Any], now: float
    ) -> JobEvent:
        numbered = await _maybe_row(
            conn,
            "UPDATE jobs SET last_event = last_event + 1 WHERE id = %s RETURNING last_event",
            (job_id,),
        )
        if numbered is None:
            raise NotFoundError(f"job_id: no job {job_id!r}")
        seq = int(numbered["last_event"])
        await conn.execute(
            "INSERT INTO job_events (job_id, seq, time, kind, data) VALUES (%s, %s, %s, %s, %s)",
            (job_id, seq, now, str(kind), Jsonb(data)),
        )
        await PostgresStore._notify(conn, Change.JOB, job_id)
        if kind == FeedKind.STATE and data.get("state") in WAITING:
            await PostgresStore._notify(conn, Change.QUEUE)
        return JobEvent(job_id, seq, now, str(kind), data)

    async def append_event(self, lease: Lease, kind: str, data: dict[str, Any]) -> JobEvent:
        async with self._connection() as conn:
            check_lease(await self._locked(conn, lease.job_id), lease)
            return await self._append(conn, lease.job_id, kind, data, time.time())

    async def events(self, job_id: str, after_seq: int, limit: int = 1000) -> list[JobEvent]:
        async with self._connection() as conn:
            return await _events(conn, job_id, after_seq, limit)

    # ---- uploads
    async def add_upload(self, record: UploadRecord, quota_bytes: int) -> int:
        async with self._connection() as conn:
            await conn.execute(
                "SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                (UPLOAD_QUOTA_LOCKS, record.tenant),
            )
            held = await self._tenant_bytes(conn, record.tenant)
            if held + record.stored > quota_bytes:
                raise upload_quota_error(record.tenant, held, record.stored, quota_bytes)
            await conn.execute(
                f"INSERT INTO uploads ({_UPLOAD_COLUMNS}) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (record.id, record.tenant, record.kind, record.name, str(record.path),
                 record.sha256, record.size, record.stored, record.files, record.created),
            )  # fmt: skip
            return held + record.stored

    async def get_upload(self, upload_id: str) -> UploadRecord | None:
        async with self._connection() as conn:
            row = await _maybe_row(
                conn, f"SELECT {_UPLOAD_COLUMNS} FROM uploads WHERE id = %s", (upload_id,)
            )
        if row is None:
            return None
        return UploadRecord(**{**row, "path": Path(row["path"])})

    async def tenant_upload_bytes(self, tenant: str) -> int:
        async with self._connection() as conn:
            return await self._tenant_bytes(conn, tenant)

    @staticmethod
    async def _tenant_bytes(conn: Connection, tenant: str) -> int:
        row = await _row(
            conn, "SELECT COALESCE(SUM(stored), 0) AS n FROM uploads WHERE tenant = %s", (tenant,)
        )
        return int(row["n"])

    # ---- adapters
    async def next_adapter_version(self, name: str) -> int:
        async with self._connection() as conn:
            row = await _row(
                conn,
                "INSERT INTO adapter_names (name, last_version) VALUES (%s, 1) "
                "ON CONFLICT (name) DO UPDATE SET last_version = adapter_names.last_version + 1 "
                "RETURNING last_version",
                (name,),
            )
        return int(row["last_version"])

    async def save_adapter(self, record: AdapterRecord) -> None:
        async with self._connection() as conn:
            await conn.execute(
                f"INSERT INTO adapters ({_ADAPTER_COLUMNS}) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (name, version) DO UPDATE "
                "SET (path, sha256, rank, base_model, created, pinned) = (EXCLUDED.path, "
                "EXCLUDED.sha256, EXCLUDED.rank, EXCLUDED.base_model, EXCLUDED.created, "
                "EXCLUDED.pinned)",
                (record.name, record.version, str(record.path), record.sha256, record.rank,
                 record.base_model, record.created, record.pinned),
            )  # fmt: skip
            await self._notify(conn, Change.ADAPTERS, record.name)

    async def delete_adapter(self, name: str, version: int) -> None:
        async with self._connection() as conn:
            await conn.execute(
                "DELETE FROM adapters WHERE name = %s AND version = %s", (name, version)
            )
            await self._notify(conn, Change.ADAPTERS, name)

    async def adapters(self) -> tuple[list[AdapterRecord], dict[str, tuple[str, int]]]:
        async with self._connection() as conn:
            records = await _rows(
                conn, f"SELECT {_ADAPTER_COLUMNS} FROM adapters ORDER BY name, version"
            )
            aliases = await _rows(conn, "SELECT alias, name, version FROM aliases")
        return [_adapter(r) for r in records], {
            r["alias"]: (r["name"], r["version"]) for r in aliases
        }

    async def set_alias(self, alias: str, target: tuple[str, int] | None) -> None:
        async with self._connection() as conn:
            await self._notify(conn, Change.ADAPTERS, alias)
            if target is None:
                await conn.execute("DELETE FROM aliases WHERE alias = %s", (alias,))
                return
            await conn.execute(
                "INSERT INTO aliases (alias, name, version) VALUES (%s, %s, %s) "
                "ON CONFLICT (alias) DO UPDATE "
                "SET (name, version) = (EXCLUDED.name, EXCLUDED.version)",
                (alias, *target),
            )

    # ---- captures
    async def set_capture_policy(self, policy: CapturePolicy) -> None:
        async with self._connection() as conn:
            await conn.execute(
                f"INSERT INTO capture_policies ({_POLICY_COLUMNS}) "
                "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (tenant, target) DO UPDATE "
                "SET (rate, retention_seconds, created, schema) = (EXCLUDED.rate, "
                "EXCLUDED.retention_seconds, EXCLUDED.created, EXCLUDED.schema)",
                (policy.tenant, policy.target, policy.rate, policy.retention_seconds,
                 policy.created, None if policy.schema is None else Jsonb(policy.schema)),
            )  # fmt: skip
            await self._notify(conn, Change.CAPTURE, policy.tenant)

    async def capture_policies(self) -> list[CapturePolicy]:
        async with self._connection() as conn:
            rows = await _rows(
                conn, f"SELECT {_POLICY_COLUMNS} FROM capture_policies ORDER BY tenant, target"
            )
        return [CapturePolicy(**row) for row in rows]

    async def delete_capture_policy(self, tenant: str, target: str) -> bool:
        async with self._connection() as conn:
            deleted = await conn.execute(
                "DELETE FROM capture_policies WHERE tenant = %s AND target = %s", (tenant, target)
            )
            await self._notify(conn, Change.CAPTURE, tenant)
            return deleted.rowcount > 0

    async def add_captures(self, captures: Sequence[Capture]) -> None:
        rows = [capture_values(capture, Jsonb) for capture in captures]
        marks = ", ".join(["%s"] * len(CAPTURE_COLUMNS))
        async with self._connection() as conn, conn.cursor() as cursor:
            await cursor.executemany(f"INSERT INTO captures ({_CAPTURES}) VALUES ({marks})", rows)

    async def get_capture(self, capture_id: str) -> Capture | None:
        async with self._connection() as conn:
            row = await _maybe_row(
                conn, f"SELECT {_CAPTURES} FROM captures WHERE id = %s", (capture_id,)
            )
        return None if row is None else capture_of(row)

    async def set_feedback(
        self, capture_id: str, feedback: Feedback, redacted: dict[str, int]
    ) -> Capture:
        async with self._connection() as conn:
            row = await _maybe_row(
                conn,
                "UPDATE captures SET (rating, flagged, flag_reason, correction, rated, redacted) "
                f"= (%s, %s, %s, %s, %s, %s) WHERE id = %s RETURNING {_CAPTURES}",
                (feedback.rating, feedback.flagged, feedback.flag_reason, feedback.correction,
                 feedback.time, Jsonb(redacted), capture_id),
            )  # fmt: skip
        if row is None:
            raise NotFoundError(f"capture_id: no capture {capture_id[:64]!r}")
        return capture_of(row)

    async def list_captures(
        self, selected: CaptureFilter, page_size: int, after_seq: int
    ) -> CapturePage:
        query = capture_query(_CAPTURES, "%s", selected, page_size, after_seq)
        async with self._connection() as conn:
            rows = await _rows(conn, *query)
        return capture_page(rows, page_size)

    async def delete_expired_captures(self, now: float) -> int:
        async with self._connection() as conn:
            if not await _sweeping(conn, CAPTURE_SWEEP_LOCK):  # another process sweeps now
                return 0
            deleted = await conn.execute("DELETE FROM captures WHERE expires < %s", (now,))
            return deleted.rowcount
