"""Captured traffic as data: policies, captures, feedback, redaction, and what an export makes
of them. Pure, no I/O.

A tenant opts in per adapter name or alias (`CapturePolicy`): a share of its own requests that
name it is captured (request, answer, the version that answered, latency and tokens) and kept
for the policy's retention. A capture belongs to the tenant whose request it is, and only that
tenant rates it (`Feedback`). Everything a client wrote, and everything the model answered, is
redacted (`trainer.pii`) before it is stored; the counts per kind are kept instead.
"""

import enum
import json
import secrets
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from service.errors import InvalidArgumentError
from trainer.pii import PiiKind, redact
from trainer.preference import PreferencePair

MIN_RETENTION_SECONDS = 60.0
MAX_RETENTION_SECONDS = 366 * 86400.0
MAX_FLAG_REASON_CHARS = 1000
MAX_CORRECTION_CHARS = 1 << 16
MAX_PAGE = 1000
_ISSUED_DIGITS = 11
"""Milliseconds since the epoch in hex: 11 digits until the year 2527."""


def new_request_id(prefix: str, now: float | None = None) -> str:
    """A request's id, which its capture keeps: `prefix`, the time it was issued and 64 random
    bits ("gen-18f0c2a41b2" + 16 hex digits). The time lets any replica tell a capture that
    another replica may still be writing from one that never was (`issued_at`)."""
    issued = int((time.time() if now is None else now) * 1000)
    return f"{prefix}-{issued:0{_ISSUED_DIGITS}x}{secrets.token_hex(8)}"


def issued_at(request_id: str) -> float | None:
    """When `new_request_id` issued `request_id` (seconds since the epoch); None for an id of
    another form. Pure."""
    stamp = request_id.rpartition("-")[2]
    if len(stamp) != _ISSUED_DIGITS + 16:
        return None
    try:
        return int(stamp[:_ISSUED_DIGITS], 16) / 1000
    except ValueError:
        return None


MAX_EXPORT_ROWS = 20_000
"""The most captures one export reads (the oldest first; narrow the time for more)."""
THUMBS_UP, THUMBS_DOWN = 5, 1
"""Where a thumbs rating lies on the 1-5 scale every rating is stored in."""


def thumbs_rating(up: bool) -> int:
    """A thumbs up or down on the 1-5 scale."""
    return THUMBS_UP if up else THUMBS_DOWN


class FlagFilter(enum.Enum):
    """Which captures a listing or an export takes by their flag; mirrors adapterd.v1.Flag."""

    ANY = "any"
    FLAGGED = "flagged"
    UNFLAGGED = "unflagged"


class ExportFormat(enum.Enum):
    """What an export writes; mirrors adapterd.v1.ExportFormat."""

    SFT = "sft"
    """Chat rows (`messages`, or `prompt`/`completion` for raw prompts) for a training job."""
    PREFERENCE = "preference"
    """`trainer.preference` pairs: a correction chosen over the answer it corrects."""


@dataclass(frozen=True)
class CapturePolicy:
    """A tenant's opt-in to capture its requests that name `target`."""

    tenant: str
    target: str
    """A qualified adapter name or alias, "tenant/name" (requests for any of its versions)."""
    rate: float
    """The share of requests captured, in (0, 1]."""
    retention_seconds: float
    created: float
    schema: dict[str, Any] | None = None
    """A JSON Schema the target's answers must satisfy: each captured answer is checked
    against it (online schema adherence)."""


def check_policy(rate: float, retention_seconds: float) -> None:
    """Raises:
    InvalidArgumentError: naming the field out of its range."""
    if not 0.0 < rate <= 1.0:
        raise InvalidArgumentError(f"rate: {rate!r} must be in (0, 1]")
    if not MIN_RETENTION_SECONDS <= retention_seconds <= MAX_RETENTION_SECONDS:
        raise InvalidArgumentError(
            f"retention_seconds: {retention_seconds!r} must be {MIN_RETENTION_SECONDS:g} to "
            f"{MAX_RETENTION_SECONDS:g} (366 days)"
        )


def policy_for(
    policies: Mapping[tuple[str, str], CapturePolicy], tenant: str, requested: str
) -> CapturePolicy | None:
    """The policy that covers `tenant`'s request naming the qualified `requested`
    ("tenant/name[@N]"; "" is the base model, never captured)."""
    if not requested:
        return None
    return policies.get((tenant, requested.partition("@")[0]))


@dataclass(frozen=True)
class Feedback:
    """What the owner of a capture said of its answer."""

    rating: int | None
    """1 to 5 (a thumbs up is 5, down 1); None: not rated."""
    flagged: bool
    flag_reason: str
    correction: str | None
    """A better answer, in the owner's words."""
    time: float


@dataclass(frozen=True)
class Capture:
    """One captured request and its answer, redacted."""

    id: str
    tenant: str
    target: str
    """The policy's target that caught it."""
    adapter_version: str
    """"tenant/name@N" that answered."""
    request: dict[str, Any]
    """{"messages": [...]} or {"prompt": "..."}, with "sampling" and "json_schema" (or None)."""
    answer: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    latency_seconds: float
    redacted: dict[str, int]
    """Redactions per `PiiKind` value, of request, answer and feedback together."""
    created: float
    expires: float
    feedback: Feedback | None = None


NUL_STAND_IN = "\ufffd"
"""What a NUL character in captured text is stored as (PostgreSQL text and JSON hold none)."""


def _redacted(text: str, counts: Counter[PiiKind]) -> str:
    result = redact(text)
    counts.update(result.counts)
    return result.text.replace("\x00", NUL_STAND_IN)


def _storable(value: Any) -> Any:
    """`value` (JSON) with NUL characters in its strings and keys replaced."""
    if isinstance(value, str):
        return value.replace("\x00", NUL_STAND_IN)
    if isinstance(value, list):
        return [_storable(v) for v in value]
    if isinstance(value, dict):
        return {_storable(k): _storable(v) for k, v in value.items()}
    return value


def _merged(known: Mapping[str, int], counts: Counter[PiiKind]) -> dict[str, int]:
    total = Counter(known)
    total.update({kind.value: n for kind, n in counts.items()})
    return dict(sorted(total.items()))


def redact_capture(capture: Capture) -> Capture:
    """`capture` with personal data replaced in every message, the prompt and the answer, and
    NUL characters anywhere in it."""
    counts: Counter[PiiKind] = Counter()
    request = _storable(capture.request)
    if "messages" in request:
        request["messages"] = [
            {**m, "content": _redacted(m["content"], counts)} for m in request["messages"]
        ]
    if "prompt" in request:
        request["prompt"] = _redacted(request["prompt"], counts)
    answer = _redacted(capture.answer, counts)
    return replace(
        capture, request=request, answer=answer, redacted=_merged(capture.redacted, counts)
    )


@dataclass(frozen=True)
class RedactedFeedback:
    """Feedback with its personal data replaced."""

    feedback: Feedback
    added: dict[str, int]
    """What this redaction replaced, per `PiiKind` value."""
    total: dict[str, int]
    """The capture's counts with these added."""


def redact_feedback(feedback: Feedback, capture: Capture) -> RedactedFeedback:
    """`feedback` with personal data replaced in its reason and correction."""
    counts: Counter[PiiKind] = Counter()
    redacted = replace(
        feedback,
        flag_reason=_redacted(feedback.flag_reason, counts),
        correction=None if feedback.correction is None else _redacted(feedback.correction, counts),
    )
    added = {kind.value: n for kind, n in counts.items()}
    return RedactedFeedback(redacted, added, _merged(capture.redacted, counts))


def check_feedback(feedback: Feedback) -> None:
    """Raises:
    InvalidArgumentError: naming the field: a rating off the scale, an empty submission, a
        reason without a flag, text past its cap."""
    if feedback.rating is not None and not 1 <= feedback.rating <= 5:
        raise InvalidArgumentError(f"score: {feedback.rating} must be 1 to 5")
    if feedback.rating is None and not feedback.flagged and feedback.correction is None:
        raise InvalidArgumentError("feedback: give a rating, a flag or a correction")
    if feedback.flag_reason and not feedback.flagged:
        raise InvalidArgumentError("flag_reason: given without flagged")
    if len(feedback.flag_reason) > MAX_FLAG_REASON_CHARS:
        raise InvalidArgumentError(f"flag_reason: longer than {MAX_FLAG_REASON_CHARS} characters")
    if feedback.correction is not None and not (
        0 < len(feedback.correction) <= MAX_CORRECTION_CHARS
    ):
        raise InvalidArgumentError(f"correction: must be 1 to {MAX_CORRECTION_CHARS} characters")


@dataclass(frozen=True)
class CaptureFilter:
    """Which captures a listing or an export reads. Pure data; the stores turn it into SQL."""

    tenant: str | None
    """None: every tenant's (an admin)."""
    target: str = ""
    """A qualified adapter name or alias; "" any."""
    since: float = 0.0
    until: float = 0.0
    """Created in [since, until); 0 leaves that end open."""
    min_rating: int = 0
    """Rated at least this; 0 takes unrated captures too."""
    flag: FlagFilter = FlagFilter.ANY
    with_correction: bool = False


@dataclass(frozen=True)
class Exported:
    """What an export wrote."""

    rows: list[dict[str, Any]]
    skipped: int
    """Captures the filter took that make no row of the format."""

    def jsonl(self) -> bytes:
        """The rows as a JSONL file."""
        return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in self.rows).encode()


def _messages(request: Mapping[str, Any]) -> list[dict[str, str]] | None:
    messages = request.get("messages")
    return None if messages is None else [dict(m) for m in messages]


def _sft_row(request: Mapping[str, Any], answer: str) -> dict[str, Any]:
    messages = _messages(request)
    if messages is None:
        return {"prompt": request["prompt"], "completion": answer}
    row = {"messages": [*messages, {"role": "assistant", "content": answer}]}
    # A chat that offered tools trains with them: its answer's raw `<tool_call>` text renders
    # as the calls did under the tool template.
    return {"tools": request["tools"], **row} if request.get("tools") else row


def export_rows(
    captures: Iterable[Capture], fmt: ExportFormat, min_rating: int, corrections: bool
) -> Exported:
    """The rows of an export.

    SFT: a capture with a correction (when `corrections`) gives the correction as the answer;
    one rated at least `min_rating` (> 0) and not flagged gives its own answer. PREFERENCE: a
    chat capture with a correction gives the pair correction-over-answer (a raw prompt is no
    conversation and makes no pair). A row equal to an earlier one (the same question answered
    the same way again) is written once: the trainer refuses duplicate rows.
    """
    rows: list[dict[str, Any]] = []
    skipped = 0
    seen: set[str] = set()
    for row in _made(captures, fmt, min_rating, corrections):
        if row is None:
            skipped += 1
            continue
        key = json.dumps(row, sort_keys=True)
        if key in seen:
            skipped += 1
            continue
        seen.add(key)
        rows.append(row)
    return Exported(rows, skipped)


def _made(
    captures: Iterable[Capture], fmt: ExportFormat, min_rating: int, corrections: bool
) -> Iterable[dict[str, Any] | None]:
    """The row each capture makes, or None."""
    for capture in captures:
        feedback = capture.feedback
        correction = feedback.correction if feedback else None
        if fmt is ExportFormat.PREFERENCE:
            messages = _messages(capture.request)
            if correction is None or messages is None:
                yield None
            else:
                yield PreferencePair(tuple(messages), correction, capture.answer).row()
        elif corrections and correction is not None:
            yield _sft_row(capture.request, correction)
        elif (
            feedback is not None
            and min_rating > 0
            and (feedback.rating or 0) >= min_rating
            and not feedback.flagged
        ):
            yield _sft_row(capture.request, capture.answer)
        else:
            yield None
