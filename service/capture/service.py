"""The capture domain the Capture RPCs and the feedback route call: policies, captures,
feedback and exports, with the tenant rights of each.

A policy is its tenant's, for a target the tenant may read (its own adapters and aliases, or the
shared tenant's). A capture is readable by its tenant (and an admin); another tenant's id is
NOT_FOUND exactly as an unknown one. Only the capture's own tenant gives feedback on it. An
export becomes a dataset upload of the caller, which a training job names by its id.
"""

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace

from eval.prompts import read_schema
from service.auth import Principal
from service.authz import qualify_read, visible_tenant
from service.capture.model import (
    MAX_EXPORT_ROWS,
    MAX_PAGE,
    Capture,
    CaptureFilter,
    CapturePolicy,
    ExportFormat,
    Feedback,
    check_feedback,
    check_policy,
    export_rows,
    redact_feedback,
)
from service.capture.online import OnlineQuality
from service.capture.recorder import CaptureRecorder, count_redactions
from service.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
)
from service.metrics import Metrics
from service.store.base import (
    MAX_ID_CHARS,
    CapturePage,
    Store,
    UploadRecord,
    could_be_issued,
    page_cursor,
)
from service.uploads import UploadKind, UploadService


def _target(principal: Principal, text: str) -> str:
    """A policy's target as "tenant/name", if the caller may read it."""
    if not text:
        raise InvalidArgumentError("target: empty; name an adapter or alias")
    qualified = qualify_read(principal, text, "target")
    if "@" in qualified:
        raise InvalidArgumentError(
            f"target: {text!r} names a version; a policy covers a name or alias (every version)"
        )
    return qualified


class CaptureService:
    """Policies, captures, feedback and exports for callers."""

    def __init__(
        self,
        *,
        store: Store,
        recorder: CaptureRecorder,
        online: OnlineQuality,
        uploads: UploadService,
        metrics: Metrics,
        label: Callable[[str], str],
    ) -> None:
        self._store = store
        self._recorder = recorder
        self._online = online
        self._uploads = uploads
        self._metrics = metrics
        self._label = label
        """The `adapter` label of a qualified name (`AdapterManager.label`)."""

    # ---- policies
    async def set_policy(
        self,
        principal: Principal,
        target: str,
        rate: float,
        retention_seconds: float,
        schema_upload: str = "",
    ) -> CapturePolicy:
        """Stores (or replaces) the caller's tenant's policy for `target`; with the JSON Schema
        of `schema_upload` (one of the caller's uploads), every captured answer is checked
        against it.

        Raises:
            InvalidArgumentError: a bad target, rate or retention, naming it.
            NotFoundError: a target the caller may not read, or no such schema upload.
        """
        qualified = _target(principal, target)
        check_policy(rate, retention_seconds)
        schema = None
        if schema_upload:
            path = await self._uploads.path_of(
                principal, schema_upload, UploadKind.JSON_SCHEMA, "schema_upload"
            )
            schema = await asyncio.to_thread(read_schema, path)  # checked when it was uploaded
        policy = CapturePolicy(
            principal.tenant, qualified, rate, retention_seconds, time.time(), schema
        )
        await self._store.set_capture_policy(policy)
        await self._recorder.refresh()
        return policy

    async def policies(self, principal: Principal) -> list[CapturePolicy]:
        """The caller's tenant's policies (every tenant's, for an admin)."""
        tenant = visible_tenant(principal)
        return [
            p for p in await self._store.capture_policies() if tenant is None or p.tenant == tenant
        ]

    async def delete_policy(self, principal: Principal, target: str) -> None:
        """Ends the caller's tenant's capture of `target` (what was captured stays until it
        expires).

        Raises:
            NotFoundError: the tenant has no policy for it.
        """
        qualified = _target(principal, target)
        if not await self._store.delete_capture_policy(principal.tenant, qualified):
            raise NotFoundError(f"target: tenant {principal.tenant!r} captures no {qualified!r}")
        await self._recorder.refresh()

    # ---- captures
    async def get(self, principal: Principal, capture_id: str) -> Capture:
        """A capture the caller may read.

        Raises:
            NotFoundError: no such capture, or another tenant's.
        """
        capture = await self._recorder.stored(capture_id) if could_be_issued(capture_id) else None
        tenant = visible_tenant(principal)
        if capture is None or (tenant is not None and capture.tenant != tenant):
            raise NotFoundError(f"capture_id: no capture {capture_id[:MAX_ID_CHARS]!r}")
        return capture

    async def list(
        self, principal: Principal, selected: CaptureFilter, page_size: int, page_token: str
    ) -> CapturePage:
        """A page of the captures the caller may read that `selected` takes, oldest first."""
        if not 0 <= page_size <= MAX_PAGE:
            raise InvalidArgumentError(f"page_size: {page_size} must be 0 to {MAX_PAGE}")
        return await self._store.list_captures(
            self._visible(principal, selected), page_size or 100, page_cursor(page_token)
        )

    def _visible(self, principal: Principal, selected: CaptureFilter) -> CaptureFilter:
        """`selected` within what the caller may read: its tenant's, its target qualified."""
        target = _target(principal, selected.target) if selected.target else ""
        return replace(selected, tenant=visible_tenant(principal), target=target)

    async def feedback(self, principal: Principal, capture_id: str, feedback: Feedback) -> Capture:
        """Stores the owner's feedback on a capture (replacing any earlier), redacted.

        Raises:
            InvalidArgumentError: a rating off the scale, nothing given, text too long.
            NotFoundError: no such capture, or another tenant's.
            PermissionDeniedError: an admin's feedback on another tenant's capture.
        """
        check_feedback(feedback)
        capture = await self.get(principal, capture_id)
        if capture.tenant != principal.tenant:
            raise PermissionDeniedError(
                f"capture_id: {capture_id!r} is tenant {capture.tenant!r}'s; only it rates it"
            )
        redacted = await asyncio.to_thread(redact_feedback, feedback, capture)
        stored = await self._store.set_feedback(capture_id, redacted.feedback, redacted.total)
        label = self._label(capture.target)
        for kind, given in (
            ("rating", feedback.rating is not None),
            ("flag", feedback.flagged),
            ("correction", feedback.correction is not None),
        ):
            if given:
                self._metrics.feedback.labels(label, kind).inc()
        if feedback.rating is not None:
            self._metrics.feedback_rating.labels(label).observe(feedback.rating)
        self._online.feedback_given(label, feedback.rating, feedback.flagged)
        count_redactions(self._metrics, redacted.added)
        return stored

    # ---- exports
    async def export(
        self,
        principal: Principal,
        selected: CaptureFilter,
        fmt: ExportFormat,
        *,
        min_rating: int,
        corrections: bool,
    ) -> tuple[UploadRecord, int, int]:
        """Writes the captures `selected` takes as a dataset upload of the caller; returns it,
        the rows written and the captures that made none.

        Raises:
            InvalidArgumentError: a bad filter or rating.
            FailedPreconditionError: the filter makes no row (nothing is stored).
            ResourceExhaustedError: past the caller's upload quota.
        """
        if not 0 <= min_rating <= 5:
            raise InvalidArgumentError(f"min_rating: {min_rating} must be 0 to 5")
        if fmt is ExportFormat.SFT and not min_rating and not corrections:
            raise InvalidArgumentError(
                "min_rating: 0 with corrections off exports nothing; rated answers need a "
                "minimum rating"
            )
        visible = self._visible(principal, selected)
        captures: list[Capture] = []
        after = 0
        while len(captures) < MAX_EXPORT_ROWS:
            page = await self._store.list_captures(visible, MAX_PAGE, after)
            captures += page.captures
            after = page.next_after
            if not after:
                break
        taken = captures[:MAX_EXPORT_ROWS]
        exported = await asyncio.to_thread(export_rows, taken, fmt, min_rating, corrections)
        if not exported.rows:
            raise FailedPreconditionError(
                f"export: {len(taken)} captures match the filter and none makes a {fmt.value} row"
            )
        data = await asyncio.to_thread(exported.jsonl)
        name = f"captures-{fmt.value}-{int(time.time())}.jsonl"
        record, _ = await self._uploads.add_file(principal, UploadKind.DATASET, name, data)
        return record, len(exported.rows), exported.skipped
