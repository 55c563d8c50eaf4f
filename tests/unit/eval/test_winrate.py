import random

import pytest

from eval.winrate import Outcome, Verdict, combine, win_rate


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        (Verdict.FIRST, Verdict.SECOND, Outcome.WIN),  # candidate preferred in both orders
        (Verdict.SECOND, Verdict.FIRST, Outcome.LOSS),
        (Verdict.FIRST, Verdict.FIRST, Outcome.TIE),  # position bias: disagreement is a tie
        (Verdict.TIE, Verdict.SECOND, Outcome.WIN),
        (Verdict.TIE, Verdict.TIE, Outcome.TIE),
        (Verdict.INVALID, Verdict.FIRST, None),
    ],
)
def test_both_orders_combine_into_one_outcome(first, second, expected):
    assert combine(first, second) is expected


def test_win_rate_counts_ties_as_half_and_leaves_invalid_verdicts_out():
    outcomes = [Outcome.WIN] * 6 + [Outcome.TIE] * 2 + [Outcome.LOSS] * 2 + [None]
    result = win_rate(outcomes, [0.0] * len(outcomes))
    assert (result.n, result.wins, result.ties, result.losses, result.invalid) == (10, 6, 2, 2, 1)
    assert result.rate == pytest.approx(0.7)
    assert result.ci_low <= 0.7 <= result.ci_high


def test_no_valid_verdict_is_an_error_not_a_number():
    with pytest.raises(ValueError, match="did not parse"):
        win_rate([None, None], [1.0, 2.0])


def test_length_control_removes_a_judges_preference_for_longer_answers():
    # A synthetic judge that prefers whichever answer is longer; answers are equally good.
    rng = random.Random(1)
    differences = [rng.gauss(30, 40) for _ in range(400)]
    outcomes = [Outcome.WIN if d > 0 else Outcome.LOSS for d in differences]
    result = win_rate(outcomes, differences)
    assert result.rate > 0.7  # the raw rate rewards length
    assert result.length_controlled == pytest.approx(0.5, abs=0.12)


def test_the_bootstrap_interval_covers_the_true_rate_about_as_often_as_it_claims():
    # 200 synthetic evaluations of a candidate whose true win probability is 0.6; a 90%
    # interval should cover 0.6 in 90% of them, give or take sampling noise (tolerance 7 points).
    rng = random.Random(7)
    covered = 0
    for trial in range(200):
        outcomes = [Outcome.WIN if rng.random() < 0.6 else Outcome.LOSS for _ in range(80)]
        result = win_rate(outcomes, [0.0] * 80, confidence=0.9, resamples=400, seed=trial)
        covered += result.ci_low <= 0.6 <= result.ci_high
    assert covered / 200 == pytest.approx(0.9, abs=0.07)
