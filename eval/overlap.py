"""Contamination check: n-grams shared between the training rows and an evaluation set. Pure.

Texts are normalized (lowercase, words of letters and digits only) and cut into word n-grams
(13 by default, as in GPT-3's contamination study). An evaluation item counts as contaminated
when any of its n-grams occurs in the training text; the report gives the contaminated share
and the first few items, and a gate can require the share to stay below a bound.
"""

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

WORD = re.compile(r"[a-z0-9]+")
DEFAULT_N = 13
MAX_EXAMPLES = 5


def ngrams(text: str, n: int = DEFAULT_N) -> Iterator[tuple[str, ...]]:
    """The word n-grams of `text` after normalization (none if it has fewer than n words)."""
    words = WORD.findall(text.lower())
    return (tuple(words[i : i + n]) for i in range(len(words) - n + 1))


@dataclass(frozen=True)
class OverlapReport:
    """How much of an evaluation set appears in the training data."""

    n: int
    items: int
    contaminated: int
    examples: list[int]
    """Indices of the first contaminated items."""

    @property
    def rate(self) -> float:
        """Share of evaluation items that share an n-gram with the training data."""
        return self.contaminated / self.items if self.items else 0.0


def overlap(training: Iterable[str], evaluation: list[str], n: int = DEFAULT_N) -> OverlapReport:
    """Checks every evaluation item against every training text."""
    if n < 1:
        raise ValueError(f"n = {n}: must be at least 1")
    seen = {gram for text in training for gram in ngrams(text, n)}
    hits = [i for i, item in enumerate(evaluation) if any(g in seen for g in ngrams(item, n))]
    return OverlapReport(n, len(evaluation), len(hits), hits[:MAX_EXAMPLES])
