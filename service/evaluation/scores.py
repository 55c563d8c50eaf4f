"""What an evaluation measures of one target, the cache of measurements on bundled data, and
the pure helpers that turn measurements into gate-readable values."""

import math
import statistics
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from eval.benchmarks import TaskScore
from eval.gates import Metric, metric_key
from trainer.layout import CheckpointSummary

CACHE_ENTRIES = 64
RAW_PATH_FIELDS = ("task_dir", "prompts", "schema_file", "families")
"""The fields of a section that name a file by its path on the server (an admin's)."""


@dataclass
class Scores:
    """What one target measured: gate-readable values and the report's details."""

    values: dict[str, float] = field(default_factory=dict)
    stderr: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)

    def add(self, part: "Scores") -> None:
        """Takes in one section's measurements."""
        self.values |= part.values
        self.stderr |= part.stderr
        self.details |= part.details
        self.latencies += part.latencies


CacheKey = tuple[str, str, str]


class ScoreCache:
    """Measurements of one section of one adapter version on bundled data, kept for later
    evaluations: versions never change and decoding is greedy, so the same section measures
    the same again (the baseline, above all, is measured once, not once per candidate)."""

    def __init__(self, size: int = CACHE_ENTRIES) -> None:
        self._size = size
        self._entries: OrderedDict[CacheKey, Scores] = OrderedDict()

    @staticmethod
    def key(section: str, ref: str, spec: BaseModel) -> CacheKey | None:
        """None when the section reads files by a server path (which may change); uploads
        never change, so their ids are part of the key."""
        if any(getattr(spec, field, "") for field in RAW_PATH_FIELDS):
            return None
        return section, ref, spec.model_dump_json()

    def get(self, key: CacheKey | None) -> Scores | None:
        if key is None or key not in self._entries:
            return None
        self._entries.move_to_end(key)
        return self._entries[key]

    def put(self, key: CacheKey | None, part: Scores) -> None:
        if key is None:
            return
        self._entries[key] = part
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)


def metric_key_of(score: TaskScore) -> str:
    """The gate key of a benchmark score: "task:<task>/<metric>"."""
    return metric_key(Metric.TASK, score.task, score.metric)


def only(values: dict[str, float], prefix: str) -> dict[str, float]:
    """The values whose keys start with `prefix`."""
    return {k: v for k, v in values.items() if k.startswith(prefix)}


def percentile(values: list[float], percent: int) -> float:
    """The `percent` percentile (inclusive method) of at least one value."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[percent - 1]


def trainer_losses(metrics: dict[str, Any]) -> dict[str, float]:
    """train_loss (mean over the last epoch), the eval loss of the adapter that was kept and
    its perplexity, from the trainer's final metrics."""
    kept = "best_eval_loss" if metrics.get("selected") == "best" else "final_eval_loss"
    return _with_perplexity({
        key: float(metrics[source])
        for key, source in (("train_loss", "train_loss"), ("eval_loss", kept))
        if isinstance(metrics.get(source), int | float)
    })  # fmt: skip


def checkpoint_losses(summary: CheckpointSummary) -> dict[str, float]:
    """A checkpoint's train_loss (its step's), and the eval loss measured at its step with its
    perplexity where one was."""
    measured = {} if summary.eval_loss is None else {"eval_loss": summary.eval_loss}
    return _with_perplexity({"train_loss": summary.loss, **measured})


def _with_perplexity(losses: dict[str, float]) -> dict[str, float]:
    if "eval_loss" in losses:
        losses["eval_perplexity"] = math.exp(losses["eval_loss"])
    return losses
