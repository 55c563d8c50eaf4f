"""Choosing the best of several candidates (a training job's adapter and its kept checkpoints)
by one metric, before the gates are checked on it. Pure.

Which way a metric is better follows its meaning: losses, latencies, the harm, over-refusal and
overlap rates are better lower, as are lm-eval's perplexities and bits per byte (lm-eval's own
`higher_is_better` of those metrics); every other metric is better higher. A spec may say so
itself (`goal`), for a task metric of its own.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from eval.gates import Metric, MetricRef

Goal = Literal["auto", "maximize", "minimize"]
LOWER_IS_BETTER = frozenset(
    {Metric.EVAL_LOSS, Metric.TRAIN_LOSS, Metric.LATENCY_P50, Metric.LATENCY_P95,
     Metric.OVERLAP_RATE, Metric.UNSAFE_RATE, Metric.UNSAFE_RATE_UPPER, Metric.OVER_REFUSAL_RATE,
     Metric.OVER_REFUSAL_RATE_UPPER}
)  # fmt: skip
LOWER_IS_BETTER_TASK_METRICS = frozenset(
    {"perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte"}
)
"""lm-eval's metrics that are better lower (its name before the filter: "perplexity,none")."""


def maximizes(metric: MetricRef, goal: Goal) -> bool:
    """Whether a larger value of `metric` is better under `goal`."""
    if goal != "auto":
        return goal == "maximize"
    if metric.metric is Metric.TASK:
        return metric.task_metric.partition(",")[0] not in LOWER_IS_BETTER_TASK_METRICS
    return metric.metric not in LOWER_IS_BETTER


@dataclass(frozen=True)
class Candidate:
    """One adapter version scored by the evaluation."""

    ref: str
    """Its version, "tenant/name@N"."""
    step: int
    """The optimizer steps its weights had."""
    values: Mapping[str, float]
    """Its gate-readable measurements."""


def select(candidates: Sequence[Candidate], by: MetricRef, goal: Goal) -> Candidate:
    """The candidate with the best value of `by`; on a tie the one of the later step (more
    training for the same result). Candidates without a value of `by` are not ranked.

    Raises:
        ValueError: no candidate has a value of `by`.
    """
    ranked = [c for c in candidates if by.key in c.values]
    if not ranked:
        shown = ", ".join(c.ref for c in candidates)
        raise ValueError(f"checkpoints.select_by: {by.key} was measured for none of {shown}")
    sign = 1.0 if maximizes(by, goal) else -1.0
    return max(ranked, key=lambda c: (sign * c.values[by.key], c.step))
