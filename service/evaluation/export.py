"""Scores as quality gauges per adapter, with bounded labels."""

import time

from eval.benchmarks import BUNDLED_TASKS
from service.evaluation.scores import Scores
from service.metrics import AdapterLabels, Metrics

BUNDLED_TASK_NAMES = frozenset(p.stem for p in BUNDLED_TASKS.glob("*.yaml"))
QUALITY_PREFIXES = (
    "schema_",
    "tool_call_",
    "win_rate",
    "unsafe_rate",
    "over_refusal_rate",
    "rubric_",
    "human_",
)
"""The quality gauge's metrics: a closed set of keys (safety categories stay in the report)."""
COMMON_TASK_METRICS = frozenset(
    {"acc", "acc_norm", "exact_match", "f1", "mcc", "bleu", "perplexity", "word_perplexity"}
)


def task_labels(task: str, metric: str) -> tuple[str, str]:
    """The bounded (task, metric) labels of a benchmark score: a client's own task is
    "other", and so is a metric outside the common ones. Pure."""
    if task in BUNDLED_TASK_NAMES:
        return task, metric
    metric = metric.partition(",")[0]
    return "other", metric if metric in COMMON_TASK_METRICS else "other"


def export_scores(metrics: Metrics, labels: AdapterLabels, candidate: str, scores: Scores) -> None:
    """Sets the candidate's task-score and quality gauges and its evaluation time."""
    label = labels.of(candidate.partition("@")[0])
    for key, value in scores.values.items():
        if key.startswith("task:"):
            task, _, metric = key.removeprefix("task:").partition("/")
            metrics.eval_task_score.labels(label, *task_labels(task, metric)).set(value)
        elif key.startswith(QUALITY_PREFIXES):
            metrics.eval_quality.labels(label, key).set(value)
    metrics.eval_timestamp.labels(label).set(time.time())
