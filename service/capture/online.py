"""Online quality per adapter, from captured traffic: over the last WINDOW captures of each
adapter label, the share of answers that parse and validate against the policy's JSON Schema
(beside the offline `schema_valid_rate` of its evaluations), and over the last WINDOW ratings,
the mean rating and the flagged share. Gauges of this process (each replica reports what it
captured); updated by the capture writer and the feedback path, never per token.
"""

import enum
from collections import deque
from collections.abc import Iterable

from eval.schema import judge_output
from service.metrics import Metrics

WINDOW = 200


class SchemaOutcome(enum.StrEnum):
    """What an answer was against its policy's schema; the values are the metric's."""

    VALID = "valid"
    INVALID = "invalid"
    NOT_JSON = "not_json"


def schema_outcome(validator: object, answer: str) -> SchemaOutcome:
    """How `answer` fares under `validator` (`eval.schema.validator_of`). Pure."""
    judged = judge_output(validator, answer)
    if judged is None:
        return SchemaOutcome.NOT_JSON
    return SchemaOutcome.INVALID if judged[1] else SchemaOutcome.VALID


class OnlineQuality:
    """The sliding windows per adapter label, and the gauges they set."""

    def __init__(self, metrics: Metrics, window: int = WINDOW) -> None:
        self._metrics = metrics
        self._window = window
        self._schema: dict[str, deque[SchemaOutcome]] = {}
        self._ratings: dict[str, deque[tuple[int | None, bool]]] = {}

    def _recent(self, windows: dict[str, deque], label: str) -> deque:  # type: ignore[type-arg]
        return windows.setdefault(label, deque(maxlen=self._window))

    def schema_checked(self, label: str, outcomes: Iterable[SchemaOutcome]) -> None:
        """Adds answers checked against their policy's schema."""
        recent = self._recent(self._schema, label)
        for outcome in outcomes:
            recent.append(outcome)
            self._metrics.online_schema_checks.labels(label, outcome.value).inc()
        if recent:
            valid = sum(o is SchemaOutcome.VALID for o in recent)
            parsed = sum(o is not SchemaOutcome.NOT_JSON for o in recent)
            gauge = self._metrics.online_quality
            gauge.labels(label, "schema_valid_rate").set(valid / len(recent))
            gauge.labels(label, "schema_parse_rate").set(parsed / len(recent))

    def feedback_given(self, label: str, rating: int | None, flagged: bool) -> None:
        """Adds one feedback (a rating, a flag, or both)."""
        recent = self._recent(self._ratings, label)
        recent.append((rating, flagged))
        gauge = self._metrics.online_quality
        rated = [r for r, _ in recent if r is not None]
        if rated:
            gauge.labels(label, "mean_rating").set(sum(rated) / len(rated))
        gauge.labels(label, "flag_rate").set(sum(f for _, f in recent) / len(recent))
