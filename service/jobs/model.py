"""Jobs as data: kinds, states, the transition table per kind, events. Pure, no I/O.

A `train` job goes queued -> validating -> running [-> evaluating] -> succeeded; an `evaluate`
job goes queued -> evaluating -> succeeded. Any live state may end in failed or cancelled, and a
started job may return to queued (server shutdown: it resumes from its checkpoint later; a train
job stopped while evaluating its registered adapter goes from queued straight back to
evaluating). Terminal states are final.
"""

import enum
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

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
    EVALUATING = "evaluating"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """Final: no transition leaves it."""
        return self in TERMINAL


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
_ENDINGS = {JobState.FAILED, JobState.CANCELLED}

TRANSITIONS: dict[JobKind, dict[JobState, frozenset[JobState]]] = {
    JobKind.TRAIN: {
        JobState.QUEUED: frozenset({JobState.VALIDATING, JobState.EVALUATING, *_ENDINGS}),
        JobState.VALIDATING: frozenset(
            {JobState.RUNNING, JobState.SUCCEEDED, JobState.QUEUED, *_ENDINGS}
        ),
        JobState.RUNNING: frozenset(
            {JobState.EVALUATING, JobState.SUCCEEDED, JobState.QUEUED, *_ENDINGS}
        ),
        JobState.EVALUATING: frozenset({JobState.SUCCEEDED, JobState.QUEUED, *_ENDINGS}),
    },
    JobKind.EVALUATE: {
        JobState.QUEUED: frozenset({JobState.EVALUATING, *_ENDINGS}),
        JobState.EVALUATING: frozenset({JobState.SUCCEEDED, JobState.QUEUED, *_ENDINGS}),
    },
}
"""Allowed next states per kind and state; terminal states have no entry. A train job with
validate_only goes validating -> succeeded."""


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


class JobFailedError(Exception):
    """A job step failed for a reason its owner can act on (not a bug of the server)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        """Machine-readable, as Job.error_reason."""
        self.message = message


@dataclass
class Job:
    """One job row."""

    id: str
    tenant: str
    kind: JobKind
    state: JobState
    spec: dict[str, Any]
    """The validated spec, as JSON."""
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
    """Metrics, adapter path and version, evaluation results."""
    error_reason: str = ""
    """Machine-readable failure kind: data_rejected, out_of_memory, trainer_crashed, ..."""
    error_message: str = ""
    """What the user can act on."""
    worker_pid: int | None = None
    """The trainer process while one runs."""
    worker_started: float | None = None
    """Its start time (as the OS reports it), to tell it from a later process with its pid."""


@dataclass(frozen=True)
class JobEvent:
    """One entry of a job's event feed; `seq` counts from 1 per job."""

    job_id: str
    seq: int
    time: float
    kind: str
    """state, progress, eval, checkpoint, log, error, ..."""
    data: dict[str, Any]


def apply_update(
    job: Job,
    state: JobState | None,
    event: dict[str, Any] | None,
    fields: dict[str, Any],
    now: float,
) -> dict[str, Any] | None:
    """Applies one `Store.update_job` to `job` in place, as every store does: the transition
    (checked against the table) or, out of a terminal state, nothing at all; then the fields
    and `updated`. Returns the data of the `state` event the transition adds, or None. Pure.

    Raises:
        FailedPreconditionError: a transition the table forbids, or fields of a final job.
    """
    added = None
    if state is not None and state is not job.state:
        check_transition(job.kind, job.state, state)
        job.state = state
        added = {"state": state.value, **(event or {})}
    elif job.state.terminal and fields:
        raise FailedPreconditionError(f"job {job.id} is {job.state.value}: it is final")
    for name, value in fields.items():
        setattr(job, name, value)
    job.updated = now
    return added


def fair_next(heads: list[Job], last_served: dict[str, float]) -> Job | None:
    """The queued job to run next, defined once for every store: round-robin over tenants
    (the tenant whose last job started longest ago goes first, a tenant never served before
    all), then that tenant's highest priority, then its oldest job. Pure.

    Args:
        heads: each tenant's first queued job by priority, then age.
        last_served: when each tenant's most recently started job started.
    """
    return min(
        heads,
        key=lambda j: (last_served.get(j.tenant, float("-inf")), -j.priority, j.created),
        default=None,
    )
