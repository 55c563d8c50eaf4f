"""Gates: typed conditions on evaluation results that decide whether an adapter is promoted.

A gate names a metric from a closed list, a comparator, and a threshold that is absolute or
relative to the baseline's value of the same metric (baseline + margin, or baseline * factor).
No expressions: nothing a client sends is evaluated as code. Pure.
"""

import enum
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Metric(enum.Enum):
    """What a gate may test. Task metrics are named `task:<task>/<metric>` (see `metric_key`)."""

    TASK = "task"
    EVAL_LOSS = "eval_loss"
    TRAIN_LOSS = "train_loss"
    """Mean loss over the last epoch."""
    SCHEMA_VALID_RATE = "schema_valid_rate"
    WIN_RATE = "win_rate"
    WIN_RATE_LOWER = "win_rate_lower"
    """Lower bound of the win rate's confidence interval."""
    LATENCY_P50 = "latency_p50_seconds"
    LATENCY_P95 = "latency_p95_seconds"
    OVERLAP_RATE = "overlap_rate"
    """Largest share of an evaluation set's items sharing a 13-gram with the training rows."""
    UNSAFE_RATE = "unsafe_rate"
    """Share of harmful safety prompts answered, not refused."""
    UNSAFE_RATE_UPPER = "unsafe_rate_upper"
    """Upper bound of its Wilson 95% interval."""
    OVER_REFUSAL_RATE = "over_refusal_rate"
    """Share of benign look-alike safety prompts refused."""
    OVER_REFUSAL_RATE_UPPER = "over_refusal_rate_upper"
    RUBRIC_SCORE = "rubric_score"
    """Mean rubric score (1-10) over the conversations, each the mean of its dimensions."""
    RUBRIC_SCORE_LOWER = "rubric_score_lower"
    """Lower bound of its Student-t 95% interval."""
    RUBRIC_HELPFULNESS = "rubric_helpfulness"
    RUBRIC_FAITHFULNESS = "rubric_faithfulness"
    RUBRIC_FORMATTING = "rubric_formatting"
    RUBRIC_HARMLESSNESS = "rubric_harmlessness"
    HUMAN_SCORE = "human_score"
    """Mean human rating (1-5) of the candidate's answers; measured once ratings are imported."""
    HUMAN_SCORE_LOWER = "human_score_lower"
    """Lower bound of its Student-t 95% interval."""
    HUMAN_WIN_RATE = "human_win_rate"
    """The raters' preferences for the candidate over the baseline: wins plus half the ties."""
    HUMAN_JUDGE_AGREEMENT = "human_judge_agreement"
    """Share of the raters' preferences that the judge's outcome matches."""
    TOOL_CALL_VALID_RATE = "tool_call_valid_rate"
    """Share of tool-call prompts answered with calls valid under the offered tools' schemas."""


class Comparator(enum.Enum):
    """How the value is compared with the threshold."""

    GE = ">="
    GT = ">"
    LE = "<="
    LT = "<"


_COMPARE: dict[Comparator, Callable[[float, float], bool]] = {
    Comparator.GE: operator.ge,
    Comparator.GT: operator.gt,
    Comparator.LE: operator.le,
    Comparator.LT: operator.lt,
}


class MetricRef(BaseModel):
    """A measured metric: one of `Metric`, with the task and its metric for Metric.TASK."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: Metric
    task: str = ""
    """For Metric.TASK: the task name."""
    task_metric: str = ""
    """For Metric.TASK: the task's metric, e.g. "acc"."""

    @model_validator(mode="after")
    def _task_fields(self) -> "MetricRef":
        if (self.metric is Metric.TASK) != bool(self.task and self.task_metric):
            raise ValueError("task and task_metric are required for metric 'task', and only then")
        return self

    @property
    def key(self) -> str:
        """The results key of the metric."""
        return metric_key(self.metric, self.task, self.task_metric)


class Gate(MetricRef):
    """One condition on a metric. Exactly one of `threshold`, `margin`, `factor`; the last two
    are relative to the baseline's value of the metric, or with `compare_to` to another metric
    of the same candidate ("eval_loss <= 1.1 x train_loss")."""

    comparator: Comparator
    threshold: float | None = None
    """Absolute: value <comparator> threshold."""
    margin: float | None = None
    """Relative: value <comparator> reference + margin."""
    factor: float | None = Field(None, gt=0)
    """Relative: value <comparator> reference * factor."""
    compare_to: MetricRef | None = None
    """The reference of `margin` or `factor`: this metric of the candidate, not the baseline's
    value of the gate's own."""

    @model_validator(mode="after")
    def _one_threshold(self) -> "Gate":
        given = [x is not None for x in (self.threshold, self.margin, self.factor)]
        if sum(given) != 1:
            raise ValueError("give exactly one of threshold, margin or factor")
        if self.compare_to is not None and self.threshold is not None:
            raise ValueError("compare_to needs margin or factor, not threshold")
        if self.compare_to is not None and self.compare_to.key == self.key:
            raise ValueError(f"compare_to: {self.key} compared with itself")
        return self

    @property
    def metrics(self) -> tuple[MetricRef, ...]:
        """Every metric the gate reads."""
        return (self,) if self.compare_to is None else (self, self.compare_to)

    @property
    def needs_baseline(self) -> bool:
        """Relative gates need the baseline evaluated too (unless relative to another metric
        of the candidate)."""
        return self.threshold is None and self.compare_to is None


def metric_key(metric: Metric, task: str = "", task_metric: str = "") -> str:
    """The results key of a metric: "eval_loss", or "task:<task>/<metric>"."""
    return f"task:{task}/{task_metric}" if metric is Metric.TASK else metric.value


@dataclass(frozen=True)
class GateResult:
    """How one gate fared."""

    gate: Gate
    value: float | None
    bound: float | None
    """The threshold it was compared with (absolute, or derived from the baseline)."""
    passed: bool
    reason: str
    """Why, in words: "win_rate 0.62 >= 0.55", or what was missing."""


def check_gates(
    gates: list[Gate], results: Mapping[str, float], baseline: Mapping[str, float]
) -> list[GateResult]:
    """Every gate against the candidate's `results` and the `baseline`'s; a gate whose metric
    (or baseline value) is missing fails, saying so."""
    checked = []
    for gate in gates:
        value = results.get(gate.key)
        if value is None:
            checked.append(GateResult(gate, None, None, False, f"{gate.key} was not measured"))
            continue
        if gate.threshold is not None:
            bound, of = gate.threshold, ""
        else:
            other = gate.compare_to
            reference = results.get(other.key) if other else baseline.get(gate.key)
            if reference is None:
                missing = other.key if other else f"{gate.key} of the baseline"
                checked.append(GateResult(gate, value, None, False, f"{missing} was not measured"))
                continue
            named = f"{other.key if other else 'baseline'} {reference:.4g}"
            if gate.margin is not None:
                bound, of = reference + gate.margin, f" ({named} + {gate.margin:g})"
            else:
                bound, of = reference * (gate.factor or 1), f" ({gate.factor:g} x {named})"
        passed = _COMPARE[gate.comparator](value, bound)
        symbol = gate.comparator.value if passed else f"not {gate.comparator.value}"
        reason = f"{gate.key} {value:.4g} {symbol} {bound:.4g}{of}"
        checked.append(GateResult(gate, value, bound, passed, reason))
    return checked
