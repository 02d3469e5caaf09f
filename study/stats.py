"""The study's statistics: rates with 95% Wilson intervals, Fisher's exact test between two rates,
and Kaplan-Meier survival curves of the time to a spike. Pure functions on counts; exact (no
normal approximation for the test), so they hold at 5 and at 20 seeds per cell.
"""

from __future__ import annotations

import math

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
