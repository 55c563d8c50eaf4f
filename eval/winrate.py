"""Pairwise win rate of a candidate against a baseline, from a judge's verdicts. Pure.

Each prompt is judged twice, the candidate shown first and then second; the two verdicts
combine into win, loss or tie (disagreement is a tie, so a judge's position bias cancels out).
The win rate is (wins + ties / 2) / n, with a percentile bootstrap interval over prompts.
The length-controlled rate follows AlpacaEval 2: fit a logistic model of the outcome on the
normalized length difference of the two answers, and report its prediction at zero difference.
"""

import enum
import math
import random
from dataclasses import dataclass
from statistics import pstdev


class Verdict(enum.Enum):
    """One judgement of a shown pair: which position won."""

    FIRST = "first"
    SECOND = "second"
    TIE = "tie"
    INVALID = "invalid"
    """The judge's answer could not be parsed; counted and reported, never guessed."""


class Outcome(enum.Enum):
    """The candidate's result on one prompt."""

    WIN = 1.0
    TIE = 0.5
    LOSS = 0.0


def combine(candidate_first: Verdict, candidate_second: Verdict) -> Outcome | None:
    """The candidate's outcome from both orders; None if either verdict is INVALID."""
    if Verdict.INVALID in (candidate_first, candidate_second):
        return None
    won_first = {Verdict.FIRST: 1, Verdict.SECOND: -1, Verdict.TIE: 0}[candidate_first]
    won_second = {Verdict.SECOND: 1, Verdict.FIRST: -1, Verdict.TIE: 0}[candidate_second]
    total = won_first + won_second
    if total > 0:
        return Outcome.WIN
    if total < 0:
        return Outcome.LOSS
    return Outcome.TIE


@dataclass(frozen=True)
class WinRate:
    """The result of one pairwise comparison."""

    n: int
    wins: int
    ties: int
    losses: int
    invalid: int
    """Prompts whose verdicts did not parse (left out of n)."""
    rate: float
    ci_low: float
    ci_high: float
    length_controlled: float


def win_rate(
    outcomes: list[Outcome | None],
    length_differences: list[float],
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> WinRate:
    """Win rate, bootstrap interval and length-controlled rate.

    Args:
        outcomes: per prompt, the combined outcome (None: invalid verdicts).
        length_differences: per prompt, len(candidate answer) - len(baseline answer).
        confidence: interval coverage.
        resamples: bootstrap resamples.
        seed: bootstrap seed (the interval is reproducible).

    Raises:
        ValueError: when no prompt has a valid outcome, or the lists differ in length.
    """
    if len(outcomes) != len(length_differences):
        raise ValueError("outcomes and length_differences must have one entry per prompt")
    pairs = [(o.value, d) for o, d in zip(outcomes, length_differences, strict=True) if o]
    if not pairs:
        raise ValueError("no prompt has a valid verdict: the judge's answers did not parse")
    scores = [score for score, _ in pairs]
    n = len(scores)
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(scores, k=n)) / n for _ in range(resamples))
    tail = (1 - confidence) / 2
    return WinRate(
        n=n,
        wins=scores.count(Outcome.WIN.value),
        ties=scores.count(Outcome.TIE.value),
        losses=scores.count(Outcome.LOSS.value),
        invalid=len(outcomes) - n,
        rate=sum(scores) / n,
        ci_low=means[int(tail * (resamples - 1))],
        ci_high=means[int((1 - tail) * (resamples - 1))],
        length_controlled=_at_zero_length_difference(pairs),
    )


def _at_zero_length_difference(
    pairs: list[tuple[float, float]], steps: int = 500, learning_rate: float = 0.5
) -> float:
    """Fits P(win) = sigmoid(a + b * z), z the standardized length difference, by gradient
    descent on the log loss with ties as half a win; returns sigmoid(a) (z = 0 at no length
    difference, since the difference is scaled but not centred)."""
    spread = pstdev([d for _, d in pairs]) or 1.0
    data = [(score, d / spread) for score, d in pairs]
    a = b = 0.0
    for _ in range(steps):
        grad_a = grad_b = 0.0
        for score, z in data:
            error = 1 / (1 + math.exp(-(a + b * z))) - score
            grad_a += error
            grad_b += error * z
        a -= learning_rate * grad_a / len(data)
        b -= learning_rate * grad_b / len(data)
    return 1 / (1 + math.exp(-a))
