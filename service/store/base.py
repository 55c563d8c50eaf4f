"""What the server stores, behind one interface: jobs and their events, datasets, adapters,
capture policies and captured traffic with its feedback.

`SqliteStore` is the embedded implementation, `PostgresStore` the shared one; nothing outside
`service/store/` knows which one runs. What both build alike (a job listing's query and page)
is here.
"""

import asyncio
import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from service.capture.model import Capture, CaptureFilter, CapturePolicy, Feedback, FlagFilter
from service.errors import InvalidArgumentError, ResourceExhaustedError, UnavailableError
from service.jobs.model import Job, JobEvent, JobKind, JobState, Lease, Work

logger = logging.getLogger(__name__)


class Change(enum.StrEnum):
    """What a process hears of another's writes through a shared store (`Store.follow`); the
    values are PostgreSQL's notification channels."""

    JOB = "adapterd_job"
    """A job has a new event (payload: its id; "" for any job, after a reconnect)."""
    QUEUE = "adapterd_queue"
    """A job started waiting: created, released, or handed over for an evaluation."""
    CANCEL = "adapterd_cancel"
    """A client asked to cancel an owned job (payload: its id): its owner acts on it."""
    ADAPTERS = "adapterd_adapters"
    """A version was published or removed, pinned or unpinned, or an alias moved."""
    CAPTURE = "adapterd_capture"
    """A capture policy was set or deleted."""


Heard = Callable[[Change, str], None]
"""Called with each change heard and its payload."""


async def keep_in_step(
    changed: asyncio.Event, refresh: Callable[[], Awaitable[None]], seconds: float, what: str
) -> None:
    """Calls `refresh` when `changed` is set (a change heard through `Store.follow`), and every
    `seconds` in case a notification was lost, until cancelled; a database that is away is
    logged as `what`, and the next round retries."""
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), seconds)
        changed.clear()
        try:
            await refresh()
        except UnavailableError as exc:
            logger.warning("%s: %s", what, exc)


@dataclass(frozen=True)
class UploadRecord:
    """An upload: a dataset, an extracted task archive, a prompt set or a JSON Schema."""

    id: str
    tenant: str
    kind: str
    """An `service.uploads.UploadKind` value."""
    name: str
    """The file name the client gave."""
    path: Path
    """The stored file, or the directory an archive was extracted to."""
    sha256: str
    size: int
    """Bytes received."""
    stored: int
    """Bytes on disk (an archive's extracted files), counted against the tenant's quota."""
    files: int
    created: float


def upload_quota_error(tenant: str, held: int, more: int, quota: int) -> ResourceExhaustedError:
    """The refusal of an upload past its tenant's quota, naming the quota."""
    return ResourceExhaustedError(
        f"upload quota: tenant {tenant!r} holds {held} bytes; {more} more exceed its {quota} "
        "(--tenant-upload-quota-mib)"
    )


@dataclass(frozen=True)
class AdapterRecord:
    """A registered adapter version, as it survives a restart."""

    name: str
    version: int
    path: Path
    sha256: str
    rank: int
    base_model: str
    created: float
    pinned: bool


@dataclass(frozen=True)
class JobPage:
    """One page of a job listing."""

    jobs: list[Job]
    next_after: int
    """Cursor of the next page; 0 when this is the last."""


def job_listing_query(
    columns: str,
    mark: str,
    *,
    tenant: str | None,
    states: Iterable[JobState],
    kinds: Iterable[JobKind],
    page_size: int,
    after_seq: int,
) -> tuple[str, tuple[Any, ...]]:
    """The SQL and parameters of one page of a job listing, in the driver's placeholder `mark`:
    `seq` and `columns` of the jobs after `after_seq` in submission order, one row more than
    the page (it only tells that another page follows; see `job_page`). Pure."""
    where, args = [f"seq > {mark}"], [after_seq]
    if tenant is not None:
        where.append(f"tenant = {mark}")
        args.append(tenant)  # type: ignore[arg-type]
    for column, values in (
        ("state", [s.value for s in states]),
        ("kind", [k.value for k in kinds]),
    ):
        if values:
            where.append(f"{column} IN ({', '.join([mark] * len(values))})")
            args += values  # type: ignore[arg-type]
    sql = f"SELECT seq, {columns} FROM jobs WHERE {' AND '.join(where)} ORDER BY seq LIMIT {mark}"
    return sql, (*args, page_size + 1)


def claim_query(
    columns: str, mark: str, pairs: Sequence[tuple[JobKind, JobState]], *, lock: str = ""
) -> tuple[str, tuple[Any, ...]]:
    """The SQL and parameters that read the waiting job a claim takes next, among the
    (kind, state) `pairs`, in the one fair order of every store: round-robin over tenants (the
    tenant whose last job started longest ago first, one never served before all), then that
    tenant's highest priority, then its oldest job. `lock` ends the statement (PostgreSQL's
    row lock). Pure."""
    match = " OR ".join([f"(kind = {mark} AND state = {mark})"] * len(pairs))
    sql = (
        f"SELECT {columns} FROM jobs LEFT JOIN (SELECT tenant AS served_tenant, MAX(started) "
        "AS last_started FROM jobs WHERE started IS NOT NULL GROUP BY tenant) AS served "
        f"ON served_tenant = tenant WHERE {match} "
        f"ORDER BY last_started IS NOT NULL, last_started, priority DESC, seq LIMIT 1{lock}"
    )
    return sql, tuple(value for kind, state in pairs for value in (kind.value, state.value))


MAX_ID_CHARS = 128


WHOLE_FEED = 1_000_000
"""An `events` limit that reads a job's whole feed (for the service's own reads of it)."""


def could_be_issued(object_id: str) -> bool:
    """Whether `object_id` has the form of an id the server issues (1 to MAX_ID_CHARS
    printable ASCII characters). Any other is unknown without asking the store, which could not
    look it up on every backend (PostgreSQL text holds no NUL). Pure."""
    return 0 < len(object_id) <= MAX_ID_CHARS and object_id.isascii() and object_id.isprintable()


def page_cursor(page_token: str) -> int:
    """The cursor a listing's page token stands for (the `seq` after which the page starts;
    "" is the first page).

    Raises:
        InvalidArgumentError: not a token a listing issued.
    """
    if page_token and not (page_token.isascii() and page_token.isdigit() and len(page_token) <= 18):
        raise InvalidArgumentError(f"page_token: {page_token[:64]!r} is not a token we issued")
    return int(page_token or 0)


def _paged(rows: Sequence[Mapping[str, Any]], page_size: int) -> tuple[Sequence[Any], int]:
    """The rows of a page a listing query read (one row more than the page: it only tells that
    another page follows), and the cursor of the next page (0: this is the last)."""
    more = len(rows) > page_size
    return rows[:page_size], rows[page_size - 1]["seq"] if more else 0


def job_page(
    rows: Sequence[Mapping[str, Any]], page_size: int, job_of: Callable[[Any], Job]
) -> JobPage:
    """The page `job_listing_query`'s rows make: at most `page_size` jobs, and the cursor of
    the next page when the extra row came back."""
    page, next_after = _paged(rows, page_size)
    return JobPage([job_of(row) for row in page], next_after)


CAPTURE_COLUMNS = (
    "id", "tenant", "target", "adapter_version", "request", "answer", "finish_reason",
    "prompt_tokens", "completion_tokens", "latency_seconds", "redacted", "created", "expires",
    "rating", "flagged", "flag_reason", "correction", "rated",
)  # fmt: skip
CAPTURE_JSON = ("request", "redacted")
"""The columns that hold JSON (the stores encode them their own way)."""


def capture_values(capture: Capture, as_json: Callable[[Any], Any]) -> tuple[Any, ...]:
    """`capture` as the values of `CAPTURE_COLUMNS`, its JSON columns encoded by `as_json`
    (the driver's JSON adapter). Pure."""
    feedback = capture.feedback
    return (
        capture.id, capture.tenant, capture.target, capture.adapter_version,
        as_json(capture.request), capture.answer, capture.finish_reason, capture.prompt_tokens,
        capture.completion_tokens, capture.latency_seconds, as_json(capture.redacted),
        capture.created, capture.expires,
        feedback.rating if feedback else None, bool(feedback and feedback.flagged),
        feedback.flag_reason if feedback else "", feedback.correction if feedback else None,
        feedback.time if feedback else None,
    )  # fmt: skip


def capture_of(row: Mapping[str, Any]) -> Capture:
    """The capture of a row of `CAPTURE_COLUMNS` (JSON columns decoded). Pure."""
    feedback = None
    if row["rated"] is not None:
        feedback = Feedback(
            rating=row["rating"], flagged=bool(row["flagged"]), flag_reason=row["flag_reason"],
            correction=row["correction"], time=row["rated"],
        )  # fmt: skip
    fields = {name: row[name] for name in CAPTURE_COLUMNS[: CAPTURE_COLUMNS.index("rating")]}
    return Capture(**fields, feedback=feedback)


@dataclass(frozen=True)
class CapturePage:
    """One page of captures, oldest first."""

    captures: list[Capture]
    next_after: int
    """Cursor of the next page; 0 when this is the last."""


def capture_query(
    columns: str, mark: str, selected: CaptureFilter, page_size: int, after_seq: int
) -> tuple[str, tuple[Any, ...]]:
    """The SQL and parameters of one page of captures (one row more than the page: it tells
    that another follows), in the driver's placeholder `mark`. Pure."""
    where, args = [f"seq > {mark}"], [after_seq]
    conditions: list[tuple[str, Any]] = [
        ("tenant = {}", selected.tenant),
        ("target = {}", selected.target or None),
        ("created >= {}", selected.since or None),
        ("created < {}", selected.until or None),
        ("rating >= {}", selected.min_rating or None),
    ]
    for condition, value in conditions:
        if value is not None:
            where.append(condition.format(mark))
            args.append(value)
    if selected.flag is not FlagFilter.ANY:
        where.append(f"flagged = {mark}")
        args.append(selected.flag is FlagFilter.FLAGGED)
    if selected.with_correction:
        where.append("correction IS NOT NULL")
    sql = (
        f"SELECT seq, {columns} FROM captures WHERE {' AND '.join(where)} ORDER BY seq LIMIT {mark}"
    )
    return sql, (*args, page_size + 1)


def capture_page(rows: Sequence[Mapping[str, Any]], page_size: int) -> CapturePage:
    """The page `capture_query`'s rows make (JSON columns decoded)."""
    page, next_after = _paged(rows, page_size)
    return CapturePage([capture_of(row) for row in page], next_after)


class Store(Protocol):
    """Durable state. Every write is committed before the call returns.

    A job is written by its creator (`create_job`), then only by the owner of its current
    lease (`claim_job`, then `update_job`, `append_event`, `renew_lease` with the `Lease`), or
    by the store's own statements for what has no owner (`request_cancel` of a waiting job,
    `expire_leases`).
    """

    exclusive: bool
    """No other process can write the store while this one has it open (SQLite's file lock):
    every lease found at open belongs to a dead process, and there is nothing to `follow`."""

    async def follow(self, heard: Heard) -> None:
        """Calls `heard` with every change written to the store (by any process, this one
        too) until cancelled, reconnecting after a lost connection; after each (re)connect it
        calls `heard` with every `Change` and "" (anything may have changed unheard). Returns
        at once on an `exclusive` store: this process made every change itself."""

    async def open(self) -> None:
        """Creates or upgrades the schema."""

    async def close(self) -> None:
        """Releases the connection."""

    async def create_job(self, job: Job) -> tuple[Job, bool]:
        """Inserts `job` with its first `state` event, unless the tenant already has a job with
        its request id: then returns that one. The bool says whether `job` was created."""

    async def get_job(self, job_id: str) -> Job | None:
        """The job, or None."""

    async def list_jobs(
        self,
        tenant: str | None,
        states: Iterable[JobState],
        kinds: Iterable[JobKind],
        page_size: int,
        after_seq: int,
    ) -> JobPage:
        """Jobs in submission order; `tenant` None means all tenants; empty filters match all."""

    async def claim_job(
        self, owner: str, work: frozenset[Work], lease_seconds: float
    ) -> Job | None:
        """Atomically takes the next waiting job that `work` can do (in `claim_query`'s fair
        order; concurrent claims never take one job twice) for `owner`, under a lease of
        `lease_seconds` with the next fencing number, with its `state` event. None: none
        waits."""

    async def renew_lease(self, lease: Lease, lease_seconds: float) -> Job:
        """Extends the lease to `lease_seconds` from now; the job tells whether a client asked
        to cancel it.

        Raises:
            LeaseLostError: the lease is not the job's any more.
        """

    async def update_job(
        self,
        lease: Lease,
        state: JobState | None = None,
        event: dict[str, Any] | None = None,
        **fields: Any,
    ) -> Job:
        """Atomically, by the lease's owner: an optional transition (checked, with its
        `state` event carrying `event`; a waiting or final state ends the lease), and field
        updates.

        Raises:
            LeaseLostError: the lease is not the job's any more; nothing was written.
            FailedPreconditionError: a transition the table forbids.
        """

    async def request_cancel(self, job_id: str) -> Job:
        """A client's cancel: a waiting job is cancelled at once, an owned one marked for its
        owner to stop (`Job.cancel_requested`).

        Raises:
            NotFoundError: no such job.
            FailedPreconditionError: it has ended already.
        """

    async def expire_leases(self, now: float, max_attempts: int) -> list[Job]:
        """Releases every owned job whose lease ran out before `now`, one sweeper at a time:
        cancelled if a client asked, failed if that makes `max_attempts` crashed runs
        (`service.jobs.model.expire`), otherwise waiting again. Returns them."""

    async def count_queued(self, tenant: str) -> int:
        """The tenant's queued jobs."""

    async def count_jobs(self) -> dict[tuple[JobKind, JobState], int]:
        """Jobs per (kind, state) present."""

    async def append_event(self, lease: Lease, kind: str, data: dict[str, Any]) -> JobEvent:
        """Stores the job's next event, by the lease's owner.

        Raises:
            LeaseLostError: the lease is not the job's any more; nothing was written.
        """

    async def events(self, job_id: str, after_seq: int, limit: int = 1000) -> list[JobEvent]:
        """Events after `after_seq`, in order."""

    async def add_upload(self, record: UploadRecord, quota_bytes: int) -> int:
        """Records an upload if its tenant's uploads stay within `quota_bytes` (checked in the
        same transaction, so the quota holds across replicas on one database); returns the
        tenant's bytes with it.

        Raises:
            ResourceExhaustedError: naming the quota, when it would be exceeded.
        """

    async def get_upload(self, upload_id: str) -> UploadRecord | None:
        """The upload, or None."""

    async def tenant_upload_bytes(self, tenant: str) -> int:
        """Bytes the tenant's uploads hold."""

    async def next_adapter_version(self, name: str) -> int:
        """Reserves the next version number of `name` (never reused)."""

    async def save_adapter(self, record: AdapterRecord) -> None:
        """Stores or replaces a registered version."""

    async def delete_adapter(self, name: str, version: int) -> None:
        """Forgets a version (its number stays reserved)."""

    async def adapters(self) -> tuple[list[AdapterRecord], dict[str, tuple[str, int]]]:
        """Every registered version, and the aliases (alias -> (name, version))."""

    async def set_alias(self, alias: str, target: tuple[str, int] | None) -> None:
        """Points `alias` at (name, version), or removes it (None)."""

    async def set_capture_policy(self, policy: CapturePolicy) -> None:
        """Stores or replaces the tenant's policy for its target."""

    async def capture_policies(self) -> list[CapturePolicy]:
        """Every tenant's policies."""

    async def delete_capture_policy(self, tenant: str, target: str) -> bool:
        """Removes the tenant's policy for `target`; whether there was one."""

    async def add_captures(self, captures: Sequence[Capture]) -> None:
        """Stores (redacted) captures, in order, in one transaction."""

    async def get_capture(self, capture_id: str) -> Capture | None:
        """The capture, or None."""

    async def set_feedback(
        self, capture_id: str, feedback: Feedback, redacted: dict[str, int]
    ) -> Capture:
        """Replaces the capture's feedback and its redaction counts.

        Raises:
            NotFoundError: no such capture (or it expired meanwhile).
        """

    async def list_captures(
        self, selected: CaptureFilter, page_size: int, after_seq: int
    ) -> CapturePage:
        """Captures in the order they were stored."""

    async def delete_expired_captures(self, now: float) -> int:
        """Deletes the captures whose retention ran out before `now`, one sweeper at a time
        (a process that finds another sweeping deletes nothing); returns how many."""
