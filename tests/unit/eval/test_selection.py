"""Choosing the best candidate by one metric: which way is better, ties, missing values."""

import pytest

from eval.gates import MetricRef
from eval.selection import Candidate, maximizes, select


def ref(metric, **fields):
    return MetricRef.model_validate({"metric": metric, **fields})


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        (ref("eval_loss"), False),
        (ref("latency_p95_seconds"), False),
        (ref("unsafe_rate_upper"), False),
        (ref("over_refusal_rate"), False),
        (ref("schema_valid_rate"), True),
        (ref("win_rate_lower"), True),
        (ref("rubric_score"), True),
        (ref("task", task="arith", task_metric="acc,none"), True),
        (ref("task", task="wikitext", task_metric="word_perplexity,none"), False),
        (ref("task", task="wikitext", task_metric="bits_per_byte"), False),
    ],
)
def test_auto_decides_the_direction_by_the_metric(metric, expected):
    assert maximizes(metric, "auto") is expected
    assert maximizes(metric, "maximize") and not maximizes(metric, "minimize")


def test_the_best_value_wins_and_a_tie_goes_to_the_later_step():
    candidates = [
        Candidate("t/a-ckpt@1", 2, {"eval_loss": 1.5, "schema_valid_rate": 0.5}),
        Candidate("t/a-ckpt@2", 4, {"eval_loss": 1.2, "schema_valid_rate": 0.5}),
        Candidate("t/a@1", 6, {"eval_loss": 1.3, "schema_valid_rate": 0.25}),
    ]
    assert select(candidates, ref("eval_loss"), "auto").ref == "t/a-ckpt@2"
    assert select(candidates, ref("eval_loss"), "maximize").ref == "t/a-ckpt@1"
    assert select(candidates, ref("schema_valid_rate"), "auto").ref == "t/a-ckpt@2"  # the tie
    assert select(candidates, ref("schema_valid_rate"), "minimize").ref == "t/a@1"


def test_candidates_without_the_metric_are_not_ranked_and_none_at_all_is_an_error():
    candidates = [Candidate("t/a-ckpt@1", 2, {}), Candidate("t/a@1", 4, {"eval_loss": 3.0})]
    assert select(candidates, ref("eval_loss"), "auto").ref == "t/a@1"
    with pytest.raises(ValueError, match="win_rate was measured for none of t/a-ckpt@1, t/a@1"):
        select(candidates, ref("win_rate"), "auto")
