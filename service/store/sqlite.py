"""The embedded store: SQLite under the data directory (WAL; every write committed with
synchronous=FULL before it returns, so an event is on disk before any client hears of it).

All access goes through one worker thread that owns the connection: the event loop never
blocks on disk, and writes are serialized without SQLite's busy retries. The schema carries a
version (PRAGMA user_version) and upgrades in order.
"""

import asyncio
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from service.capture.model import (
    Capture,
    CaptureFilter,
    CapturePolicy,
    Feedback,
)
from service.errors import ConfigError, NotFoundError
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
    CAPTURE_JSON,
    WHOLE_FEED,
    AdapterRecord,
    CapturePage,
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

T = TypeVar("T")

MIGRATIONS = [
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        seq INTEGER NOT NULL UNIQUE,
        tenant TEXT NOT NULL,
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        spec TEXT NOT NULL,
        spec_digest TEXT NOT NULL,
        request_id TEXT NOT NULL,
        priority INTEGER NOT NULL,
        created REAL NOT NULL,
        updated REAL NOT NULL,
        started REAL,
        finished REAL,
        attempts INTEGER NOT NULL DEFAULT 0,
        result TEXT NOT NULL DEFAULT '{}',
        error_reason TEXT NOT NULL DEFAULT '',
        error_message TEXT NOT NULL DEFAULT '',
        worker_pid INTEGER,
        worker_started REAL
    );
    CREATE UNIQUE INDEX jobs_request ON jobs (tenant, request_id) WHERE request_id != '';
    CREATE INDEX jobs_queue ON jobs (state, priority, seq);
    CREATE TABLE job_events (
        job_id TEXT NOT NULL REFERENCES jobs (id),
        seq INTEGER NOT NULL,
        time REAL NOT NULL,
        kind TEXT NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (job_id, seq)
    );
    CREATE TABLE datasets (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        name TEXT NOT NULL,
        path TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size INTEGER NOT NULL,
        created REAL NOT NULL
    );
    CREATE TABLE adapter_names (name TEXT PRIMARY KEY, last_version INTEGER NOT NULL);
    CREATE TABLE adapters (
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        path TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        rank INTEGER NOT NULL,
        base_model TEXT NOT NULL,
        created REAL NOT NULL,
        pinned INTEGER NOT NULL,
        PRIMARY KEY (name, version)
    );
    CREATE TABLE aliases (alias TEXT PRIMARY KEY, name TEXT NOT NULL, version INTEGER NOT NULL);
    """,
    # Names and aliases belong to tenants ("tenant/name"); what was stored before had none and
    # goes to the tenant of a server without authentication, as do its jobs.
    """
    UPDATE adapter_names SET name = 'default/' || name WHERE instr(name, '/') = 0;
    UPDATE adapters SET name = 'default/' || name WHERE instr(name, '/') = 0;
    UPDATE aliases SET name = 'default/' || name WHERE instr(name, '/') = 0;
    UPDATE aliases SET alias = 'default/' || alias WHERE instr(alias, '/') = 0;
    UPDATE jobs SET tenant = 'default' WHERE tenant = '';
    UPDATE datasets SET tenant = 'default' WHERE tenant = '';
    """,
    # The datasets table holds every kind of upload; the quota counts bytes on disk.
    """
    ALTER TABLE datasets ADD COLUMN kind TEXT NOT NULL DEFAULT 'dataset';
    ALTER TABLE datasets ADD COLUMN files INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE datasets ADD COLUMN stored INTEGER NOT NULL DEFAULT 0;
    UPDATE datasets SET stored = size;
    CREATE INDEX datasets_tenant ON datasets (tenant);
    CREATE INDEX jobs_tenant_queue ON jobs (tenant, state, priority, seq);
    """,
    # Claims are leased and fenced. A job a server was running when it stopped is requeued
    # at the next open (`expire_leases`): it gets a lease that has run out.
    """
    ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL DEFAULT '';
    ALTER TABLE jobs ADD COLUMN fence INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN lease_until REAL;
    ALTER TABLE jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
    UPDATE jobs SET owner = 'a server before leases', lease_until = 0
        WHERE state IN ('validating', 'running', 'evaluating');
    """,
    # Captured traffic (as in migrations/0003_captures.sql).
    """
    CREATE TABLE capture_policies (
        tenant TEXT NOT NULL,
        target TEXT NOT NULL,
        rate REAL NOT NULL,
        retention_seconds REAL NOT NULL,
        created REAL NOT NULL,
        schema TEXT,
        PRIMARY KEY (tenant, target)
    );
    CREATE TABLE captures (
        id TEXT PRIMARY KEY,
        seq INTEGER NOT NULL UNIQUE,
        tenant TEXT NOT NULL,
        target TEXT NOT NULL,
        adapter_version TEXT NOT NULL,
        request TEXT NOT NULL,
        answer TEXT NOT NULL,
        finish_reason TEXT NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        latency_seconds REAL NOT NULL,
        redacted TEXT NOT NULL,
        created REAL NOT NULL,
        expires REAL NOT NULL,
        rating INTEGER,
        flagged INTEGER NOT NULL DEFAULT 0,
        flag_reason TEXT NOT NULL DEFAULT '',
        correction TEXT,
        rated REAL
    );
    CREATE INDEX captures_tenant ON captures (tenant, target, seq);
    CREATE INDEX captures_expires ON captures (expires);
    """,
]

_JOB_COLUMNS = (
    "id, tenant, kind, state, spec, spec_digest, request_id, priority, created, updated, "
    "started, finished, attempts, result, error_reason, error_message, worker_pid, "
    "worker_started, owner, fence, lease_until, cancel_requested"
)
_JOB_MARKS = ", ".join("?" * len(_JOB_COLUMNS.split(",")))
_JSON_FIELDS = ("spec", "result")
_UPLOAD_COLUMNS = "id, tenant, kind, name, path, sha256, size, stored, files, created"
_UPLOAD_MARKS = ", ".join("?" * len(_UPLOAD_COLUMNS.split(",")))
_CAPTURES = ", ".join(CAPTURE_COLUMNS)
_POLICY_COLUMNS = "tenant, target, rate, retention_seconds, created, schema"


def _job(row: sqlite3.Row) -> Job:
    values = dict(row)
    for name in _JSON_FIELDS:
        values[name] = json.loads(values[name])
    values["kind"] = JobKind(values["kind"])
    values["state"] = JobState(values["state"])
    values["cancel_requested"] = bool(values["cancel_requested"])
    return Job(**values)


def _events(
    db: sqlite3.Connection, job_id: str, after_seq: int, limit: int, kind: str = ""
) -> list[JobEvent]:
    """The job's events after `after_seq`, of `kind` only if one is given."""
    rows = db.execute(
        "SELECT job_id, seq, time, kind, data FROM job_events "
        "WHERE job_id = ? AND seq > ? AND (? = '' OR kind = ?) ORDER BY seq LIMIT ?",
        (job_id, after_seq, kind, kind, limit),
    ).fetchall()
    return [JobEvent(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows]


class SqliteStore:
    """The Store over one SQLite file, for one server process: an exclusive lock on
    `<file>.lock` (released by the kernel when the process dies, even by SIGKILL) refuses a
    second server on the same file. Several replicas need a shared database instead."""

    exclusive = True

    async def follow(self, heard: Heard) -> None:
        return

    def __init__(self, path: Path) -> None:
        self.path = path
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._db: sqlite3.Connection | None = None
        self._lock: int | None = None

    # ---- plumbing
    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, self._in_thread, work)

    def _in_thread(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._db is None:
            raise RuntimeError("store not open")
        with self._db:  # one transaction: committed on success, rolled back on error
            return work(self._db)

    async def open(self) -> None:
        """Opens (creating or upgrading) the database."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._worker, self._open)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock)
            raise ConfigError(
                f"{self.path}: another adapterd server uses this SQLite store; one SQLite store "
                "serves one server (replicas share a --store-url postgresql://...)"
            ) from None
        self._lock = lock
        db = sqlite3.connect(self.path, isolation_level="DEFERRED")
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            db.executescript(f"BEGIN; {script}; PRAGMA user_version={number}; COMMIT;")
        self._db = db

    async def close(self) -> None:
        """Closes the database and its thread."""
        loop = asyncio.get_running_loop()

        def close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None
            if self._lock is not None:
                os.close(self._lock)  # releases the lock
                self._lock = None

        await loop.run_in_executor(self._worker, close)
        self._worker.shutdown()

    # ---- jobs
    async def create_job(self, job: Job) -> tuple[Job, bool]:
        def work(db: sqlite3.Connection) -> tuple[Job, bool]:
            if job.request_id:
                row = db.execute(
                    f"SELECT {_JOB_COLUMNS} FROM jobs WHERE tenant = ? AND request_id = ?",
                    (job.tenant, job.request_id),
                ).fetchone()
                if row is not None:
                    return _job(row), False
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
            db.execute(
                f"INSERT INTO jobs (seq, {_JOB_COLUMNS}) VALUES (?, {_JOB_MARKS})",
                (seq, *self._values(job)),
            )
            self._append(db, job.id, FeedKind.STATE, {"state": job.state.value}, job.created)
            return job, True

        return await self._run(work)

    @staticmethod
    def _values(job: Job) -> tuple[Any, ...]:
        return (
            job.id, job.tenant, job.kind.value, job.state.value, json.dumps(job.spec),
            job.spec_digest, job.request_id, job.priority, job.created, job.updated,
            job.started, job.finished, job.attempts, json.dumps(job.result), job.error_reason,
            job.error_message, job.worker_pid, job.worker_started, job.owner, job.fence,
            job.lease_until, int(job.cancel_requested),
        )  # fmt: skip

    async def get_job(self, job_id: str) -> Job | None:
        def work(db: sqlite3.Connection) -> Job | None:
            row = db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return None if row is None else _job(row)

        return await self._run(work)

    async def list_jobs(
        self,
        tenant: str | None,
        states: Iterable[JobState],
        kinds: Iterable[JobKind],
        page_size: int,
        after_seq: int,
    ) -> JobPage:
        query = job_listing_query(
            _JOB_COLUMNS, "?", tenant=tenant, states=states, kinds=kinds, page_size=page_size,
            after_seq=after_seq,
        )  # fmt: skip

        def work(db: sqlite3.Connection) -> JobPage:
            rows = db.execute(*query).fetchall()
            return job_page(rows, page_size, lambda row: _job(_without_seq(row)))

        return await self._run(work)

    @staticmethod
    def _read(db: sqlite3.Connection, job_id: str) -> Job:
        row = db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"job_id: no job {job_id!r}")
        return _job(row)

    def _write(self, db: sqlite3.Connection, job: Job, added: dict[str, Any] | None) -> Job:
        """Stores `job`'s row and, if there is one, the `state` event of its transition."""
        if added is not None:
            self._append(db, job.id, FeedKind.STATE, added, job.updated)
        db.execute(
            f"UPDATE jobs SET ({_JOB_COLUMNS}) = ({_JOB_MARKS}) WHERE id = ?",
            (*self._values(job), job.id),
        )
        return job

    async def claim_job(
        self, owner: str, work: frozenset[Work], lease_seconds: float
    ) -> Job | None:
        query = claim_query(_JOB_COLUMNS, "?", claimable(work))

        def take(db: sqlite3.Connection) -> Job | None:
            # One connection on one thread: nothing else runs between the read and the write.
            row = db.execute(*query).fetchone()
            if row is None:
                return None
            job = _job(row)
            return self._write(db, job, claim(job, owner, lease_seconds, time.time()))

        return await self._run(take)

    async def renew_lease(self, lease: Lease, lease_seconds: float) -> Job:
        def work(db: sqlite3.Connection) -> Job:
            job = self._read(db, lease.job_id)
            check_lease(job, lease)
            job.lease_until = time.time() + lease_seconds
            db.execute("UPDATE jobs SET lease_until = ? WHERE id = ?", (job.lease_until, job.id))
            return job

        return await self._run(work)

    async def update_job(
        self,
        lease: Lease,
        state: JobState | None = None,
        event: dict[str, Any] | None = None,
        **fields: Any,
    ) -> Job:
        def work(db: sqlite3.Connection) -> Job:
            job = self._read(db, lease.job_id)
            return self._write(
                db,
                job,
                apply_update(job, lease, state=state, event=event, fields=fields, now=time.time()),
            )

        return await self._run(work)

    async def request_cancel(self, job_id: str) -> Job:
        def work(db: sqlite3.Connection) -> Job:
            job = self._read(db, job_id)
            return self._write(db, job, request_cancel(job, time.time()))

        return await self._run(work)

    async def expire_leases(self, now: float, max_attempts: int) -> list[Job]:
        owned = [state.value for state in OWNED]
        marks = ", ".join("?" * len(owned))

        def work(db: sqlite3.Connection) -> list[Job]:
            rows = db.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state IN ({marks}) AND lease_until < ?",
                (*owned, now),
            ).fetchall()
            swept = []
            for job in map(_job, rows):
                states = _events(db, job.id, 0, WHOLE_FEED, FeedKind.STATE)
                crashed = crashed_runs(states)
                swept.append(self._write(db, job, expire(job, time.time(), crashed, max_attempts)))
            return swept

        return await self._run(work)

    async def count_queued(self, tenant: str) -> int:
        return await self._run(
            lambda db: db.execute(
                "SELECT COUNT(*) FROM jobs WHERE tenant = ? AND state = ?",
                (tenant, JobState.QUEUED.value),
            ).fetchone()[0]
        )

    async def count_jobs(self) -> dict[tuple[JobKind, JobState], int]:
        def work(db: sqlite3.Connection) -> dict[tuple[JobKind, JobState], int]:
            rows = db.execute("SELECT kind, state, COUNT(*) FROM jobs GROUP BY kind, state")
            return {(JobKind(k), JobState(s)): n for k, s, n in rows}

        return await self._run(work)

    # ---- events
    @staticmethod
    def _append(
        db: sqlite3.Connection, job_id: str, kind: str, data: dict[str, Any], now: float
    ) -> JobEvent:
        seq = db.execute(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM job_events WHERE job_id = ?", (job_id,)
        ).fetchone()[0]
        db.execute(
            "INSERT INTO job_events (job_id, seq, time, kind, data) VALUES (?, ?, ?, ?, ?)",
            (job_id, seq, now, str(kind), json.dumps(data)),
        )
        return JobEvent(job_id, seq, now, str(kind), data)

    async def append_event(self, lease: Lease, kind: str, data: dict[str, Any]) -> JobEvent:
        def work(db: sqlite3.Connection) -> JobEvent:
            check_lease(self._read(db, lease.job_id), lease)
            return self._append(db, lease.job_id, kind, data, time.time())

        return await self._run(work)

    async def events(self, job_id: str, after_seq: int, limit: int = 1000) -> list[JobEvent]:
        return await self._run(lambda db: _events(db, job_id, after_seq, limit))

    # ---- uploads
    async def add_upload(self, record: UploadRecord, quota_bytes: int) -> int:
        def work(db: sqlite3.Connection) -> int:
            held = _tenant_bytes(db, record.tenant)
            if held + record.stored > quota_bytes:
                raise upload_quota_error(record.tenant, held, record.stored, quota_bytes)
            db.execute(
                f"INSERT INTO datasets ({_UPLOAD_COLUMNS}) VALUES ({_UPLOAD_MARKS})",
                (record.id, record.tenant, record.kind, record.name, str(record.path),
                 record.sha256, record.size, record.stored, record.files, record.created),
            )  # fmt: skip
            return held + record.stored

        return await self._run(work)

    async def get_upload(self, upload_id: str) -> UploadRecord | None:
        def work(db: sqlite3.Connection) -> UploadRecord | None:
            row = db.execute(
                f"SELECT {_UPLOAD_COLUMNS} FROM datasets WHERE id = ?", (upload_id,)
            ).fetchone()
            if row is None:
                return None
            return UploadRecord(**{**dict(row), "path": Path(row["path"])})

        return await self._run(work)

    async def tenant_upload_bytes(self, tenant: str) -> int:
        return await self._run(lambda db: _tenant_bytes(db, tenant))

    # ---- adapters
    async def next_adapter_version(self, name: str) -> int:
        def work(db: sqlite3.Connection) -> int:
            db.execute(
                "INSERT INTO adapter_names (name, last_version) VALUES (?, 1) "
                "ON CONFLICT (name) DO UPDATE SET last_version = last_version + 1",
                (name,),
            )
            row = db.execute("SELECT last_version FROM adapter_names WHERE name = ?", (name,))
            return int(row.fetchone()[0])

        return await self._run(work)

    async def save_adapter(self, record: AdapterRecord) -> None:
        await self._run(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO adapters "
                "(name, version, path, sha256, rank, base_model, created, pinned) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (record.name, record.version, str(record.path), record.sha256, record.rank,
                 record.base_model, record.created, int(record.pinned)),
            )
        )  # fmt: skip

    async def delete_adapter(self, name: str, version: int) -> None:
        await self._run(
            lambda db: db.execute(
                "DELETE FROM adapters WHERE name = ? AND version = ?", (name, version)
            )
        )

    async def adapters(self) -> tuple[list[AdapterRecord], dict[str, tuple[str, int]]]:
        def work(db: sqlite3.Connection) -> tuple[list[AdapterRecord], dict[str, tuple[str, int]]]:
            records = [
                AdapterRecord(**{**dict(r), "path": Path(r["path"]), "pinned": bool(r["pinned"])})
                for r in db.execute(
                    "SELECT name, version, path, sha256, rank, base_model, created, pinned "
                    "FROM adapters ORDER BY name, version"
                )
            ]
            aliases = {
                r["alias"]: (r["name"], r["version"])
                for r in db.execute("SELECT alias, name, version FROM aliases")
            }
            return records, aliases

        return await self._run(work)

    async def set_alias(self, alias: str, target: tuple[str, int] | None) -> None:
        def work(db: sqlite3.Connection) -> None:
            if target is None:
                db.execute("DELETE FROM aliases WHERE alias = ?", (alias,))
            else:
                db.execute(
                    "INSERT OR REPLACE INTO aliases (alias, name, version) VALUES (?, ?, ?)",
                    (alias, *target),
                )

        await self._run(work)

    # ---- captures
    async def set_capture_policy(self, policy: CapturePolicy) -> None:
        await self._run(
            lambda db: db.execute(
                f"INSERT OR REPLACE INTO capture_policies ({_POLICY_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (policy.tenant, policy.target, policy.rate, policy.retention_seconds,
                 policy.created, None if policy.schema is None else json.dumps(policy.schema)),
            )
        )  # fmt: skip

    async def capture_policies(self) -> list[CapturePolicy]:
        def work(db: sqlite3.Connection) -> list[CapturePolicy]:
            rows = db.execute(
                f"SELECT {_POLICY_COLUMNS} FROM capture_policies ORDER BY tenant, target"
            )
            return [
                CapturePolicy(**{**row, "schema": row["schema"] and json.loads(row["schema"])})
                for row in map(dict, rows)
            ]

        return await self._run(work)

    async def delete_capture_policy(self, tenant: str, target: str) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            deleted = db.execute(
                "DELETE FROM capture_policies WHERE tenant = ? AND target = ?", (tenant, target)
            )
            return deleted.rowcount > 0

        return await self._run(work)

    async def add_captures(self, captures: Sequence[Capture]) -> None:
        rows = [capture_values(capture, json.dumps) for capture in captures]

        def work(db: sqlite3.Connection) -> None:
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) FROM captures").fetchone()[0]
            marks = ", ".join("?" * len(CAPTURE_COLUMNS))
            db.executemany(
                f"INSERT INTO captures (seq, {_CAPTURES}) VALUES (?, {marks})",
                [(seq + n, *row) for n, row in enumerate(rows, start=1)],
            )

        await self._run(work)

    async def get_capture(self, capture_id: str) -> Capture | None:
        def work(db: sqlite3.Connection) -> Capture | None:
            row = db.execute(
                f"SELECT {_CAPTURES} FROM captures WHERE id = ?", (capture_id,)
            ).fetchone()
            return None if row is None else _capture(row)

        return await self._run(work)

    async def set_feedback(
        self, capture_id: str, feedback: Feedback, redacted: dict[str, int]
    ) -> Capture:
        def work(db: sqlite3.Connection) -> Capture:
            db.execute(
                "UPDATE captures SET rating = ?, flagged = ?, flag_reason = ?, correction = ?, "
                "rated = ?, redacted = ? WHERE id = ?",
                (feedback.rating, int(feedback.flagged), feedback.flag_reason,
                 feedback.correction, feedback.time, json.dumps(redacted), capture_id),
            )  # fmt: skip
            row = db.execute(
                f"SELECT {_CAPTURES} FROM captures WHERE id = ?", (capture_id,)
            ).fetchone()
            if row is None:
                raise NotFoundError(f"capture_id: no capture {capture_id[:64]!r}")
            return _capture(row)

        return await self._run(work)

    async def list_captures(
        self, selected: CaptureFilter, page_size: int, after_seq: int
    ) -> CapturePage:
        query = capture_query(_CAPTURES, "?", selected, page_size, after_seq)

        def work(db: sqlite3.Connection) -> CapturePage:
            rows = [_decoded(row) for row in db.execute(*query).fetchall()]
            return capture_page(rows, page_size)

        return await self._run(work)

    async def delete_expired_captures(self, now: float) -> int:
        return await self._run(
            lambda db: db.execute("DELETE FROM captures WHERE expires < ?", (now,)).rowcount
        )


def _decoded(row: sqlite3.Row) -> dict[str, Any]:
    values = dict(row)
    for name in CAPTURE_JSON:
        values[name] = json.loads(values[name])
    return values


def _capture(row: sqlite3.Row) -> Capture:
    return capture_of(_decoded(row))


def _tenant_bytes(db: sqlite3.Connection, tenant: str) -> int:
    row = db.execute("SELECT COALESCE(SUM(stored), 0) FROM datasets WHERE tenant = ?", (tenant,))
    return int(row.fetchone()[0])


def _without_seq(row: sqlite3.Row) -> Any:
    values = dict(row)
    values.pop("seq")
    return values
