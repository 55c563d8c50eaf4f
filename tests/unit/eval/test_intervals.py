"""Score intervals: Wilson's for rates, Student-t for bounded means, against published values."""

import pytest

from eval.intervals import Mean, Rate


@pytest.mark.parametrize(
    ("count", "total", "lower", "upper"),
    [(0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0), (0, 0, 0.0, 1.0)],
)
def test_the_wilson_interval_matches_its_published_values(count, total, lower, upper):
    got = Rate(count, total).interval
    assert got == pytest.approx((lower, upper), abs=1e-4)


def test_a_mean_has_a_student_t_interval_clipped_to_its_scale():
    mean = Mean.of([8, 6, 10], (1, 10))
    # t(0.975, 2) = 4.3027, sd 2, n 3: half-width 4.968
    assert (mean.value, mean.count) == (8.0, 3)
    assert (mean.lower, mean.upper) == pytest.approx((8 - 4.968, 10.0), abs=1e-3)
    assert Mean.of([5, 5, 5], (1, 5)) == Mean(5.0, 5.0, 5.0, 3)
    assert Mean.of([4], (1, 5)) == Mean(4.0, 1.0, 5.0, 1)  # one value says nothing of the spread
