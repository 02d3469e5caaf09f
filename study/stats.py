"""The study's statistics: rates with 95% Wilson intervals, Fisher's exact test between two rates,
Kaplan-Meier survival curves of the time to a spike, Holm's adjustment for a family of tests, the
Mann-Whitney rank test between two samples, and a percentile bootstrap over runs. Pure functions;
Fisher's test is exact (no normal approximation), so it holds at 5 and at 20 seeds per cell.
"""

from __future__ import annotations

import math
import random

Z_95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float] | None:
    """The Wilson score interval of successes / trials (None when there are no trials).

    Unlike the normal (Wald) interval it stays inside [0, 1] and does not collapse to a point
    at 0/n or n/n, which is where a 5-seed cell usually sits.
    """
    if trials == 0:
        return None
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def fisher_exact(successes_a: int, trials_a: int, successes_b: int, trials_b: int) -> float | None:
    """Two-sided p-value of Fisher's exact test on the 2x2 table (a: k of n, b: k of n).

    Under the null both groups share one rate; with the margins fixed, the first group's count is
    hypergeometric. The p-value sums the probabilities of every table at most as likely as the one
    observed (the usual two-sided definition, as R's fisher.test). None when a group is empty.
    """
    if trials_a == 0 or trials_b == 0:
        return None
    total_successes, total = successes_a + successes_b, trials_a + trials_b

    def probability(k: int) -> float:
        return (
            math.comb(total_successes, k)
            * math.comb(total - total_successes, trials_a - k)
            / math.comb(total, trials_a)
        )

    lowest, highest = max(0, total_successes - trials_b), min(total_successes, trials_a)
    observed = probability(successes_a)
    # a relative tolerance: tables as likely as the observed one must count despite rounding
    p_value = sum(p for k in range(lowest, highest + 1) if (p := probability(k)) <= observed * (1 + 1e-7))
    return min(1.0, p_value)


def kaplan_meier(times: list[float], events: list[bool]) -> list[tuple[float, float]]:
    """The Kaplan-Meier estimate of S(t) = P(no spike by epoch t) as steps [(t, S after t)].

    times: the epoch of each run's spike (event) or of its last epoch (censored: it never spiked
    while it was watched). Starts at (0, 1.0); a step at every epoch with at least one event; ends
    at the last epoch watched, so a curve without events still spans the runs' epochs.
    """
    steps = [(0.0, 1.0)]
    survival = 1.0
    at_risk = len(times)
    for t in sorted(set(times)):
        at_t = [event for time, event in zip(times, events) if time == t]
        spikes = sum(at_t)
        if spikes:
            survival *= 1 - spikes / at_risk
            steps.append((float(t), survival))
        at_risk -= len(at_t)
    if times and max(times) > steps[-1][0]:
        steps.append((float(max(times)), survival))
    return steps


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of one family of p-values, in the input order (None stays None).

    Sort the m p-values ascending; the k-th (from 1) is adjusted to max over j <= k of
    min(1, (m - j + 1) p_j). Rejecting where the adjusted p < alpha is Holm's procedure: it keeps the
    chance of any false rejection in the family at alpha, whatever the tests' dependence.
    """
    present = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m = len(present)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for k, (p, index) in enumerate(present):
        running = max(running, min(1.0, (m - k) * p))
        adjusted[index] = running
    return adjusted


def _normal_two_sided(z: float) -> float:
    return math.erfc(abs(z) / math.sqrt(2))


def mann_whitney(a: list[float], b: list[float]) -> float | None:
    """Two-sided p-value of the Mann-Whitney U (Wilcoxon rank-sum) test of a against b.

    Normal approximation with the tie correction and a continuity correction of 0.5 (as scipy's
    `mannwhitneyu(..., method="asymptotic")`); at 20 runs a side it is within a few per cent of the
    exact p. Ties get mid-ranks. None when a side is empty or every value is tied.
    """
    if not a or not b:
        return None
    values = sorted([(v, 0) for v in a] + [(v, 1) for v in b])
    ranks, tie_term, i = [0.0] * len(values), 0.0, 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1][0] == values[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2 + 1
        tied = j - i + 1
        tie_term += tied**3 - tied
        i = j + 1
    n1, n2 = len(a), len(b)
    n = n1 + n2
    u1 = sum(rank for rank, (_, side) in zip(ranks, values) if side == 0) - n1 * (n1 + 1) / 2
    variance = n1 * n2 / 12 * ((n + 1) - tie_term / (n * (n - 1)))
    if variance <= 0:
        return None
    mean = n1 * n2 / 2
    z = max(0.0, abs(u1 - mean) - 0.5) / math.sqrt(variance)
    return min(1.0, _normal_two_sided(z))


def bootstrap_interval(
    groups: list, statistic, resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of statistic(groups) over resamples of the groups (runs) with
    replacement: a run is the unit, so epochs of one run are never treated as independent.
    Resamples whose statistic is None (e.g. no alarm drawn) are left out; None when all are."""
    if not groups:
        return None
    rng = random.Random(seed)
    drawn = []
    for _ in range(resamples):
        value = statistic([groups[rng.randrange(len(groups))] for _ in groups])
        if value is not None and math.isfinite(value):
            drawn.append(value)
    if not drawn:
        return None
    drawn.sort()
    tail = (1 - level) / 2
    return drawn[int(tail * (len(drawn) - 1))], drawn[math.ceil((1 - tail) * (len(drawn) - 1))]
