"""Jobs as data: kinds, states, the transition table per kind, leases, events. Pure, no I/O.

A `train` job goes queued -> validating -> running [-> evaluating] -> succeeded; an `evaluate`
job goes queued -> evaluating -> succeeded. A train job whose trainer ran where there is no
engine to evaluate its adapter waits in evaluation_pending for a process that has one (a train
job stopped while evaluating its registered adapter waits there too). Any live state may end in
failed or cancelled, and a started job may return to queued (its owner stopped: it resumes from
its checkpoint later). Terminal states are final.

Waiting jobs (queued, evaluation_pending) have no owner. A process claims one (`claim`): it
becomes the job's owner under a lease with a fencing number, and every later write of the job
carries that `Lease`; a write whose lease is no longer the job's (it expired and was swept, or
the job was released) is refused with `LeaseLostError`, so a process that lost its job can never
overwrite what the next owner writes. A client's cancel of an owned job is a request the owner
acts on (`request_cancel`); the owner is the one writer of its job's state.
"""

import enum
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Self

from pydantic import BaseModel, ConfigDict

from service.errors import FailedPreconditionError


class JobKind(enum.Enum):
    """What a job does; mirrors adapterd.v1.JobKind."""

    TRAIN = "train"
    EVALUATE = "evaluate"


class JobState(enum.Enum):
    """Where a job is; mirrors adapterd.v1.JobState."""

    QUEUED = "queued"
    VALIDATING = "validating"
    RUNNING = "running"
    EVALUATION_PENDING = "evaluation_pending"
    """Trained and registered; waits for a process with an engine to evaluate it."""
    EVALUATING = "evaluating"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """Final: no transition leaves it."""
        return self in TERMINAL

    @property
    def owned(self) -> bool:
        """A process holds the job under a lease (validating, running, evaluating)."""
        return self in OWNED


class FeedKind(enum.StrEnum):
    """The kinds of job feed events the service writes itself; every other kind is a trainer
    line's `event` (`trainer.contract.TrainerEvent`), stored as the trainer wrote it."""

    STATE = "state"
    """A transition: the new state, with a reason when there is one."""
    EVALUATION = "evaluation"
    """An evaluation's progress and scores: phase, target, done/total or scores."""
    LOG = "log"
    """A trainer line without an `event`."""


SERVICE_FEED_KINDS = frozenset({FeedKind.STATE, FeedKind.EVALUATION})
"""What the service adds to a feed; the rest came from the trainer's events file."""


TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
OWNED = frozenset({JobState.VALIDATING, JobState.RUNNING, JobState.EVALUATING})
_ENDINGS = {JobState.FAILED, JobState.CANCELLED}

TRANSITIONS: dict[JobKind, dict[JobState, frozenset[JobState]]] = {
    JobKind.TRAIN: {
        JobState.QUEUED: frozenset({JobState.VALIDATING, *_ENDINGS}),
        JobState.VALIDATING: frozenset(
            {JobState.RUNNING, JobState.SUCCEEDED, JobState.QUEUED, *_ENDINGS}
        ),
        JobState.RUNNING: frozenset(
            {
                JobState.EVALUATING,
                JobState.EVALUATION_PENDING,
                JobState.SUCCEEDED,
                JobState.QUEUED,
                *_ENDINGS,
            }
        ),
        JobState.EVALUATION_PENDING: frozenset({JobState.EVALUATING, *_ENDINGS}),
        JobState.EVALUATING: frozenset(
            {JobState.SUCCEEDED, JobState.EVALUATION_PENDING, *_ENDINGS}
        ),
    },
    JobKind.EVALUATE: {
        JobState.QUEUED: frozenset({JobState.EVALUATING, *_ENDINGS}),
        JobState.EVALUATING: frozenset({JobState.SUCCEEDED, JobState.QUEUED, *_ENDINGS}),
    },
}
"""Allowed next states per kind and state; terminal states have no entry. A train job with
validate_only goes validating -> succeeded."""


class Work(enum.Enum):
    """What a process can do with a claimed job."""

    TRAINING = "training"
    """Run the trainer: a serving replica's embedded worker, or `adapterd worker`."""
    EVALUATION = "evaluation"
    """Evaluate on a warm engine: serving replicas only."""


CLAIMS: dict[tuple[JobKind, JobState], tuple[Work, JobState]] = {
    (JobKind.TRAIN, JobState.QUEUED): (Work.TRAINING, JobState.VALIDATING),
    (JobKind.EVALUATE, JobState.QUEUED): (Work.EVALUATION, JobState.EVALUATING),
    (JobKind.TRAIN, JobState.EVALUATION_PENDING): (Work.EVALUATION, JobState.EVALUATING),
}
"""The waiting jobs a claim may take, by (kind, state): the work it needs and the state the
claim moves it to."""


def claimable(work: frozenset[Work]) -> list[tuple[JobKind, JobState]]:
    """The (kind, state) pairs a process that does `work` claims from. Pure."""
    return [pair for pair, (needs, _) in CLAIMS.items() if needs in work]


def check_transition(kind: JobKind, current: JobState, target: JobState) -> None:
    """Raises FailedPreconditionError unless `current -> target` is allowed for `kind`."""
    if target not in TRANSITIONS[kind].get(current, frozenset()):
        raise FailedPreconditionError(
            f"a {kind.value} job cannot go from {current.value} to {target.value}"
        )


def spec_digest(spec: dict[str, Any]) -> str:
    """A stable hash of a job spec: what makes two submissions "the same request"."""
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


CANCELLED_REASON = "cancelled"
CANCELLED_MESSAGE = "cancelled by a client"
RETRYING = "retrying"
"""The reason of the `state` event that requeues a job after a retryable failure."""
LEASE_EXPIRED = "lease_expired"
"""The reason of the `state` event that releases a job whose owner stopped renewing its lease
(it died, or lost the store): that run crashed."""
WORKER_LOST = "worker_lost"
"""The failure of a job whose runs kept crashing until the last was its owner's death."""


class LeaseLostError(Exception):
    """A write of a job by a process that no longer owns it: its lease expired and was swept
    (another process may run the job now), or it released the job. Never a client's error."""


@dataclass(frozen=True)
class Lease:
    """What a job's owner carries on every write: the job, who claimed it, and the claim's
    fencing number (it grows with every claim, so an earlier owner's writes never match)."""

    job_id: str
    owner: str
    fence: int


class JobFailedError(Exception):
    """A job step failed for a reason its owner can act on (not a bug of the server)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        """Machine-readable, as Job.error_reason."""
        self.message = message


class JobSpec(BaseModel):
    """What the service itself reads of a job's stored spec; the trainer's sections (data,
    lora, quantization, training) and the evaluation's are validated at submission by their own
    models (`trainer.config`, `service.evaluation`) and kept as submitted."""

    model_config = ConfigDict(extra="allow", frozen=True)

    adapter_name: str = ""
    """A train job's: the qualified name its adapter is registered under ("" registers none)."""
    validate_only: bool = False
    """A train job's: check the data, train nothing."""
    adapter: str = ""
    """An evaluate job's: the version it evaluates ("" is the base model)."""
    evaluation: dict[str, Any] | None = None
    """The evaluation section (a train job's is run on its adapter after training)."""

    @classmethod
    def of(cls, job: "Job") -> Self:
        return cls.model_validate(job.spec)

    @property
    def registers(self) -> bool:
        """Whether the job ends with an adapter to register."""
        return bool(self.adapter_name) and not self.validate_only


class JobResult(BaseModel):
    """What the service reads of a job's result; the rest (the trainer's `done` event, the
    evaluation's summary) is kept as written."""

    model_config = ConfigDict(extra="allow", frozen=True)

    adapter_version: str = ""
    """The version ("tenant/name@N") the trained adapter was registered as."""
    registration_error: str = ""
    """Why registering it was refused."""
    metrics: dict[str, Any] = {}
    """The trainer's final metrics (steps, losses, the adapter it kept, tokens)."""

    @classmethod
    def of(cls, job: "Job") -> Self:
        return cls.model_validate(job.result)

    @property
    def adapter_step(self) -> int | None:
        """The optimizer steps of the weights the job's adapter holds: the best eval loss's
        step where the trainer kept that one, else its last; None before it finished."""
        step = self.metrics.get("best_step" if self.metrics.get("selected") == "best" else "steps")
        return step if isinstance(step, int) else None

    def additions(self) -> dict[str, Any]:
        """The fields set here, to merge into a stored result."""
        return self.model_dump(exclude_defaults=True)


@dataclass
class Job:
    """One job row."""

    id: str
    tenant: str
    kind: JobKind
    state: JobState
    spec: dict[str, Any]
    """The validated spec, as JSON; `JobSpec.of(job)` reads it."""
    spec_digest: str
    request_id: str
    """The client's idempotency key ("" if none)."""
    priority: int
    created: float
    updated: float
    started: float | None = None
    finished: float | None = None
    attempts: int = 0
    """Trainer runs started (a resumed run counts again)."""
    result: dict[str, Any] = field(default_factory=dict)
    """Metrics, adapter path and version, evaluation results; `JobResult.of(job)` reads it."""
    error_reason: str = ""
    """Machine-readable failure kind: data_rejected, out_of_memory, trainer_crashed,
    worker_lost, ..."""
    error_message: str = ""
    """What the user can act on."""
    worker_pid: int | None = None
    """The trainer process while one runs."""
    worker_started: float | None = None
    """Its start time (as the OS reports it), to tell it from a later process with its pid."""
    owner: str = ""
    """The process that claimed the job ("" while it waits or after it ended)."""
    fence: int = 0
    """Claims so far: the fencing number of the current (or last) claim."""
    lease_until: float | None = None
    """When the owner's lease runs out unless renewed."""
    cancel_requested: bool = False
    """A client asked to cancel the owned job; its owner acts on it."""

    @property
    def lease(self) -> Lease:
        """The lease of the job's current claim."""
        return Lease(self.id, self.owner, self.fence)


@dataclass(frozen=True)
class JobEvent:
    """One entry of a job's event feed; `seq` counts from 1 per job."""

    job_id: str
    seq: int
    time: float
    kind: str
    """state, progress, eval, checkpoint, log, error, ..."""
    data: dict[str, Any]


def released_state(job: Job) -> JobState:
    """Where an owned job waits when its owner lets go without ending it (shutdown, a lost
    lease): a train job that was evaluating its registered adapter waits for an engine again,
    every other job for the queue (it resumes from its last checkpoint). Pure."""
    if job.kind is JobKind.TRAIN and job.state is JobState.EVALUATING:
        return JobState.EVALUATION_PENDING
    return JobState.QUEUED


def check_lease(job: Job, lease: Lease) -> None:
    """Raises LeaseLostError unless `lease` is `job`'s current claim. Pure."""
    if not job.state.owned or (job.owner, job.fence) != (lease.owner, lease.fence):
        raise LeaseLostError(
            f"job {job.id}: the claim {lease.fence} of {lease.owner} is not its lease any more "
            f"(it is {job.state.value}, claim {job.fence} of {job.owner or 'nobody'})"
        )


def _transition(job: Job, state: JobState, event: dict[str, Any] | None) -> dict[str, Any]:
    """Moves `job` to `state` (checked against the table); a state without an owner drops the
    lease. Returns the data of the `state` event. Pure."""
    check_transition(job.kind, job.state, state)
    job.state = state
    if not state.owned:
        job.owner, job.lease_until, job.cancel_requested = "", None, False
    return {"state": state.value, **(event or {})}


def apply_update(
    job: Job,
    lease: Lease,
    *,
    state: JobState | None,
    event: dict[str, Any] | None,
    fields: dict[str, Any],
    now: float,
) -> dict[str, Any] | None:
    """Applies one `Store.update_job` by the owner of `lease` to `job` in place, as every
    store does: the lease checked, then the transition (checked against the table; one out of
    the owned states ends the lease), then the fields and `updated`. Returns the data of the
    `state` event the transition adds, or None. Pure.

    Raises:
        LeaseLostError: `lease` is not the job's any more.
        FailedPreconditionError: a transition the table forbids.
    """
    check_lease(job, lease)
    added = None
    if state is not None and state is not job.state:
        added = _transition(job, state, event)
    for name, value in fields.items():
        setattr(job, name, value)
    job.updated = now
    return added


def claim(job: Job, owner: str, lease_seconds: float, now: float) -> dict[str, Any]:
    """Makes `owner` the owner of the waiting `job` under a new lease and fencing number, in
    place: the claimed state of `CLAIMS`, one more attempt. Returns the `state` event's data
    (with the fence and the owner: the feed tells which process ran each attempt). Pure."""
    _, target = CLAIMS[job.kind, job.state]
    added = _transition(job, target, None)
    job.owner, job.fence, job.lease_until = owner, job.fence + 1, now + lease_seconds
    job.attempts += 1
    job.started = job.started or now
    job.updated = now
    return added | {"fence": job.fence, "owner": owner}


def request_cancel(job: Job, now: float) -> dict[str, Any] | None:
    """A client's cancel of `job`, in place: a waiting job has no owner and ends now (returns
    its `cancelled` event's data); an owned one is marked for its owner to stop (None). Pure.

    Raises:
        FailedPreconditionError: the job has ended already.
    """
    if job.state.terminal:
        raise FailedPreconditionError(f"job {job.id} is {job.state.value}; nothing to cancel")
    job.updated = now
    if job.state.owned:
        job.cancel_requested = True
        return None
    return _end_cancelled(job, now)


def _end_cancelled(job: Job, now: float) -> dict[str, Any]:
    added = _transition(job, JobState.CANCELLED, {"reason": CANCELLED_REASON})
    job.finished, job.error_reason, job.error_message = now, CANCELLED_REASON, CANCELLED_MESSAGE
    job.worker_pid = job.worker_started = None
    return added


def crashed_runs(events: Sequence[JobEvent]) -> int:
    """The runs of a job that crashed, from its feed: a retryable failure requeued it, or its
    owner died and the sweep released it. Runs the server stopped (a drain, a cancel) are not
    among them. Pure."""
    return sum(
        e.kind == FeedKind.STATE and e.data.get("reason") in (RETRYING, LEASE_EXPIRED)
        for e in events
    )


def expire(job: Job, now: float, crashed_before: int, max_attempts: int) -> dict[str, Any]:
    """The sweep of an owned `job` whose lease ran out, in place: cancelled if a client asked
    for it; failed if this lost run makes `max_attempts` crashed runs (`crashed_before` counts
    the earlier ones, `crashed_runs`), so a job that kills every worker that takes it (say, out
    of memory) stops being handed on; otherwise released to wait again (`released_state`).
    Returns the `state` event's data. Pure."""
    job.updated = now
    if job.cancel_requested:
        return _end_cancelled(job, now)
    owner, runs = job.owner, crashed_before + 1
    job.worker_pid = job.worker_started = None
    if runs >= max_attempts:
        message = (
            f"run {runs} of {max_attempts} crashed: {owner} stopped renewing its lease "
            "(it died or lost the store)"
        )
        added = _transition(job, JobState.FAILED, {"reason": WORKER_LOST, "message": message})
        job.finished, job.error_reason, job.error_message = now, WORKER_LOST, message
        return added
    released = released_state(job)
    then = (
        "resumes from its last checkpoint"
        if job.kind is JobKind.TRAIN and released is JobState.QUEUED
        else "waits for an engine to evaluate it again"
    )
    return _transition(
        job,
        released,
        {"reason": LEASE_EXPIRED, "message": f"run {runs} of {max_attempts} crashed: {owner} "
         f"stopped renewing its lease; {then}"},
    )  # fmt: skip
