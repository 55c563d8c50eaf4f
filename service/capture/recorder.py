"""The one writer of captured traffic in a process.

`decide` runs per request, on the event loop, from memory: the policy that covers the request
(kept in step with the store: reread after this process changes a policy, when another
process's change is heard, and every CAPTURE_SYNC_SECONDS) and one random draw against its
rate. `record` only queues the capture (a bounded queue; a full one drops it and counts the
drop, so serving never waits for the store). `run` is the single writer: it takes what has
queued up (at most BATCH), redacts it in a worker thread, then stores it in one transaction (one
commit, one fsync on SQLite, however busy the server is); where the policy carries a JSON
Schema, the answer is checked against it in the same thread (`OnlineQuality`). `sweep` deletes
expired captures (on a shared store one process at a time, by the store's lock).
"""

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from eval.schema import validator_of
from service.capture.model import (
    Capture,
    CapturePolicy,
    issued_at,
    policy_for,
    redact_capture,
)
from service.capture.online import OnlineQuality, SchemaOutcome, schema_outcome
from service.errors import AdapterdError
from service.metrics import Metrics
from service.store.base import Store, keep_in_step

QUEUE_SIZE = 1024
"""Captures waiting for the writer; past it a capture is dropped (and counted)."""
BATCH = 64
"""The most captures the writer stores in one transaction."""
CAPTURE_SYNC_SECONDS = 5.0
SWEEP_SECONDS = 60.0
SETTLE_SECONDS = 10.0
"""How long a read of a capture still being written waits for its writer."""
OTHER_WRITER_SECONDS = 3.0
"""How long a read looks again for a recent capture that another replica may be writing."""
RECENT_SECONDS = 900.0
STORED_POLL_SECONDS = 0.2

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Queued:
    capture: Capture
    label: str


class CaptureRecorder:
    """Chooses, redacts and stores captured requests."""

    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        online: OnlineQuality,
        *,
        queue_size: int = QUEUE_SIZE,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._online = online
        self._draw = draw
        self._queue: asyncio.Queue[_Queued] = asyncio.Queue(queue_size)
        self._policies: dict[tuple[str, str], CapturePolicy] = {}
        self._validators: dict[tuple[str, str], Any] = {}
        self._pending: dict[str, asyncio.Event] = {}
        self._changed = asyncio.Event()

    # ---- policies
    async def refresh(self) -> None:
        """Rereads the policies from the store; a schema's validator is built (in a worker
        thread) only when the schema is new or changed."""
        before, built = self._policies, self._validators
        policies = {(p.tenant, p.target): p for p in await self._store.capture_policies()}
        validators = {}
        for key, policy in policies.items():
            if policy.schema is None:
                continue
            unchanged = key in built and before[key].schema == policy.schema
            validators[key] = (
                built[key] if unchanged else await asyncio.to_thread(validator_of, policy.schema)
            )
        self._policies, self._validators = policies, validators

    def changed(self) -> None:
        """Another process changed a policy: reread them soon."""
        self._changed.set()

    async def sync(self) -> None:
        """Keeps the policies in step with a shared store, until cancelled."""
        await keep_in_step(
            self._changed, self.refresh, CAPTURE_SYNC_SECONDS, "capture policy refresh"
        )

    def targets(self) -> list[str]:
        """The targets some tenant's policy captures."""
        return sorted({target for _, target in self._policies})

    def decide(self, tenant: str, requested: str) -> CapturePolicy | None:
        """The policy under which `tenant`'s request for `requested` is captured; None: it is
        not (no policy covers it, or the draw left it out)."""
        policy = policy_for(self._policies, tenant, requested)
        if policy is None or self._draw() >= policy.rate:
            return None
        return policy

    # ---- captures
    def record(self, capture: Capture, label: str) -> None:
        """Queues `capture` (unredacted) for the writer; drops it when the queue is full."""
        try:
            self._queue.put_nowait(_Queued(capture, label))
        except asyncio.QueueFull:
            self._metrics.captures.labels(label, "queue_full").inc()
            return
        self._pending[capture.id] = asyncio.Event()

    async def stored(self, capture_id: str) -> Capture | None:
        """The stored capture of `capture_id`, once written. A capture this process queued is
        waited for (at most SETTLE_SECONDS). One that another replica may still be writing (an
        id issued in the last RECENT_SECONDS: a request may run for minutes before its capture
        is queued) is looked for again for OTHER_WRITER_SECONDS. None: there is no such capture
        (never captured, or dropped)."""
        pending = self._pending.get(capture_id)
        if pending is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(pending.wait(), SETTLE_SECONDS)
        issued = issued_at(capture_id)
        recent = issued is not None and -1.0 < time.time() - issued < RECENT_SECONDS
        deadline = time.monotonic() + (OTHER_WRITER_SECONDS if recent and pending is None else 0)
        while (capture := await self._store.get_capture(capture_id)) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            await asyncio.sleep(min(STORED_POLL_SECONDS, left))
        return capture

    async def run(self) -> None:
        """Writes queued captures, a batch at a time, until cancelled."""
        while True:
            batch = [await self._queue.get()]
            while len(batch) < BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._write(batch)
            finally:
                for queued in batch:
                    done = self._pending.pop(queued.capture.id, None)
                    if done is not None:
                        done.set()
                    self._queue.task_done()

    async def _write(self, batch: list[_Queued]) -> None:
        try:
            checked = await asyncio.to_thread(_checked, batch, self._validators)
            captures = [capture for capture, _ in checked]
            await self._store.add_captures(captures)
        except Exception as exc:  # the batch is lost; the writer goes on with the next
            if isinstance(exc, AdapterdError):  # the database is away
                logger.warning("%d captures dropped: %s", len(batch), exc)
            else:  # our bug
                logger.exception("%d captures dropped", len(batch))
            for queued in batch:
                self._metrics.captures.labels(queued.label, "store_error").inc()
            return
        for queued, (capture, outcome) in zip(batch, checked, strict=True):
            self._metrics.captures.labels(queued.label, "stored").inc()
            count_redactions(self._metrics, capture.redacted)
            if outcome is not None:
                self._online.schema_checked(queued.label, [outcome])

    async def drain(self, grace: float) -> None:
        """Waits, at most `grace` seconds, for the queued captures to be written."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), grace)

    async def sweep(self, interval: float = SWEEP_SECONDS) -> None:
        """Deletes expired captures every `interval` seconds, until cancelled."""
        while True:
            try:
                deleted = await self._store.delete_expired_captures(time.time())
            except AdapterdError as exc:
                logger.warning("capture retention sweep: %s", exc)
            else:
                self._metrics.captures_expired.inc(deleted)
            await asyncio.sleep(interval)


def _checked(
    batch: list[_Queued], validators: Mapping[tuple[str, str], Any]
) -> list[tuple[Capture, SchemaOutcome | None]]:
    """Each capture redacted, with its answer (as the model gave it) checked against its
    policy's schema if it has one."""
    checked = []
    for queued in batch:
        capture = queued.capture
        validator = validators.get((capture.tenant, capture.target))
        outcome = None if validator is None else schema_outcome(validator, capture.answer)
        checked.append((redact_capture(capture), outcome))
    return checked


def count_redactions(metrics: Metrics, counts: Mapping[str, int]) -> None:
    """Adds redaction counts (by `PiiKind` value) to the metric."""
    for kind, n in counts.items():
        metrics.capture_redactions.labels(kind).inc(n)
