"""Intervals of the scores evaluations report. Pure.

- `Rate`: a share with its Wilson score interval at 95%, exact enough for the 8 prompts a safety
  category may hold (the normal approximation is not, and collapses at 0 and n).
- `Mean`: a mean score on a bounded scale (a rubric's 1-10, a human rating's 1-5) with its
  Student-t 95% interval (scipy), clipped to the scale.
"""

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats  # type: ignore[import-untyped]

Z95 = 1.959963984540054


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
        """The Wilson score interval at 95%."""
        if not self.total:
            return 0.0, 1.0
        n, p = self.total, self.value
        centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
        half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / (1 + Z95**2 / n)
        # Exact at the ends, where rounding would leave the bound a hair inside.
        lower = 0.0 if self.count == 0 else max(0.0, centre - half)
        upper = 1.0 if self.count == n else min(1.0, centre + half)
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
