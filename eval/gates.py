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


class Gate(BaseModel):
    """One condition. Exactly one of `threshold`, `margin`, `factor`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: Metric
    task: str = ""
    """For Metric.TASK: the task name."""
    task_metric: str = ""
    """For Metric.TASK: the task's metric, e.g. "acc"."""
    comparator: Comparator
    threshold: float | None = None
    """Absolute: value <comparator> threshold."""
    margin: float | None = None
    """Relative: value <comparator> baseline + margin."""
    factor: float | None = Field(None, gt=0)
    """Relative: value <comparator> baseline * factor."""

    @model_validator(mode="after")
    def _one_threshold(self) -> "Gate":
        given = [x is not None for x in (self.threshold, self.margin, self.factor)]
        if sum(given) != 1:
            raise ValueError("give exactly one of threshold, margin or factor")
        if (self.metric is Metric.TASK) != bool(self.task and self.task_metric):
            raise ValueError("task and task_metric are required for metric 'task', and only then")
        return self

    @property
    def key(self) -> str:
        """The results key this gate reads."""
        return metric_key(self.metric, self.task, self.task_metric)

    @property
    def needs_baseline(self) -> bool:
        """Relative gates need the baseline evaluated too."""
        return self.threshold is None


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
            bound = gate.threshold
        elif (base := baseline.get(gate.key)) is None:
            reason = f"{gate.key} of the baseline was not measured"
            checked.append(GateResult(gate, value, None, False, reason))
            continue
        else:
            bound = base + gate.margin if gate.margin is not None else base * (gate.factor or 1)
        passed = _COMPARE[gate.comparator](value, bound)
        symbol = gate.comparator.value if passed else f"not {gate.comparator.value}"
        checked.append(
            GateResult(gate, value, bound, passed, f"{gate.key} {value:.4g} {symbol} {bound:.4g}")
        )
    return checked
