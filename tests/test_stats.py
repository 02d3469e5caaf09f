"""The study's statistics against values computed by hand or by the reference definitions."""

import statistics

import pytest

from study.stats import bootstrap_interval, fisher_exact, holm, kaplan_meier, mann_whitney, wilson_interval


def test_wilson_interval_matches_the_textbook_values():
    # Newcombe (1998), table I: 0/10 -> [0, 0.2775], 10/10 -> [0.7225, 1], 3/5 by the formula
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.72247, 1.0), abs=1e-4)
    low, high = wilson_interval(3, 5)
    assert (low, high) == pytest.approx((0.23072, 0.88236), abs=1e-4)
    assert wilson_interval(0, 0) is None


def test_fisher_exact_two_sided_p_values():
    # 5/5 vs 0/5: the most extreme tables either way, 2 x 1/252
    assert fisher_exact(5, 5, 0, 5) == pytest.approx(2 / 252)
    # 3/5 vs 5/5: P(table) for k = 3, 4, 5 of the first group with 8 successes among 10 ...
    # only k = 3 (p = 2/9) and k = 5 (p = 2/9) are at most as likely as the observed (k = 3)
    assert fisher_exact(3, 5, 5, 5) == pytest.approx(4 / 9)
    assert fisher_exact(2, 5, 2, 5) == pytest.approx(1.0)
    # an independent implementation (scipy comes with MLflow) on every table of two 20-seed cells
    scipy_stats = pytest.importorskip("scipy.stats")
    for a in range(21):
        for b in (0, 3, 10, 20):
            expected = scipy_stats.fisher_exact([[a, 20 - a], [b, 20 - b]]).pvalue
            assert fisher_exact(a, 20, b, 20) == pytest.approx(expected, rel=1e-9), (a, b)
    assert fisher_exact(1, 0, 1, 5) is None


def test_kaplan_meier_steps_at_events_and_keeps_censored_runs_at_risk_until_they_end():
    # spikes at 10 and 30; one run censored at 20 (never spiked in its 20 epochs), one at 150
    steps = kaplan_meier([10, 20, 30, 150], [True, False, True, False])
    assert steps == [(0.0, 1.0), (10.0, 0.75), (30.0, 0.375), (150.0, 0.375)]  # the curve spans the watch
    assert kaplan_meier([150, 150], [False, False]) == [(0.0, 1.0), (150.0, 1.0)]
    assert kaplan_meier([5, 5], [True, True]) == [(0.0, 1.0), (5.0, 0.0)]


def test_holm_on_a_documented_example():
    """Holm (1979)'s procedure as Wikipedia's "Holm-Bonferroni method" example states it: four tests
    with p = 0.01, 0.04, 0.03, 0.005 at alpha 0.05 reject the first and the last only. Adjusted:
    sorted 0.005, 0.01, 0.03, 0.04 -> 4 x 0.005 = 0.02, max(0.02, 3 x 0.01) = 0.03,
    max(0.03, 2 x 0.03) = 0.06, max(0.06, 1 x 0.04) = 0.06, in the input order."""
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert [p < 0.05 for p in adjusted] == [True, False, False, True]
    assert holm([0.5, None, 0.9]) == [pytest.approx(1.0), None, pytest.approx(1.0)]  # capped at 1; None kept


def test_mann_whitney_matches_scipy_with_ties():
    scipy_stats = pytest.importorskip("scipy.stats")
    a = [1.0, 2.0, 2.0, 3.5, 8.0, 9.0, 9.0, 12.0]
    b = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.0]
    expected = scipy_stats.mannwhitneyu(a, b, alternative="two-sided", method="asymptotic").pvalue
    assert mann_whitney(a, b) == pytest.approx(expected, rel=1e-9)
    assert mann_whitney(b, a) == pytest.approx(expected, rel=1e-9)
    assert mann_whitney([1.0], []) is None and mann_whitney([2.0, 2.0], [2.0]) is None


def test_bootstrap_interval_of_a_median_brackets_it_and_is_seeded():
    values = [float(v) for v in range(1, 21)]
    low, high = bootstrap_interval(values, statistics.median, resamples=500)
    assert low < statistics.median(values) < high
    assert bootstrap_interval(values, statistics.median, resamples=500) == (low, high)
    assert bootstrap_interval([3.0] * 5, statistics.median, resamples=50) == (3.0, 3.0)
