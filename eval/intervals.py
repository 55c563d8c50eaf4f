"""Intervals of the scores evaluations report. Pure.

- `Rate`: a share with its Wilson score interval at 95%, good enough for the 8 prompts a safety
  category may hold (the normal approximation is not, and collapses at 0 and n).
- `Mean`: a mean score on a bounded scale (a rubric's 1-10, a human rating's 1-5) with its
  Student-t 95% interval, clipped to the scale.
Both from scipy.
"""

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats  # type: ignore[import-untyped]


@dataclass(frozen=True)
class Rate:
    """A share of prompts with its Wilson 95% interval."""

    count: int
    total: int

    @property
    def value(self) -> float:
        """count / total (0 for no prompts)."""
        return self.count / self.total if self.total else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        """The Wilson score interval at 95% (scipy's binomtest), the whole range for none."""
        if not self.total:
            return 0.0, 1.0
        found = stats.binomtest(self.count, self.total).proportion_ci(0.95, method="wilson")
        # Exact at the ends, where rounding would leave the bound a hair inside.
        lower = 0.0 if self.count == 0 else float(found.low)
        upper = 1.0 if self.count == self.total else float(found.high)
        return lower, upper

    def to_json(self) -> dict[str, float]:
        """The rate, its interval and its counts."""
        lower, upper = self.interval
        return {"value": self.value, "lower": lower, "upper": upper, "count": self.count,
                "total": self.total}  # fmt: skip


@dataclass(frozen=True)
class Mean:
    """A mean score with its Student-t 95% interval (the whole scale below two values)."""

    value: float
    lower: float
    upper: float
    count: int

    @classmethod
    def of(cls, values: Sequence[float], scale: tuple[float, float]) -> "Mean":
        """The mean of at least one value on `scale` (lowest, highest)."""
        low, high = scale
        mean = statistics.fmean(values)
        if len(values) < 2:
            return cls(mean, low, high, len(values))
        half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
        return cls(mean, max(low, mean - half), min(high, mean + half), len(values))
