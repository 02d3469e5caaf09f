"""Evidence that does not hinge on the divergence rule's one threshold (10x).

The rule fires at epoch t when loss(t) >= ratio x lowest(t) and loss(t) - lowest(t) >= min_rise,
lowest(t) being the lowest finite loss before t (a flagged epoch never lowers it: it sits above
it). So a run's *largest jump*, the largest loss(t) / lowest(t) over the epochs whose rise passes
min_rise, says at once at which ratios the rule would fire: at every ratio up to it. From it:

- per cell, the distribution of the largest jump (all runs, not only those that crossed 10x), with
  a bootstrap interval of its median and a rank test (Mann-Whitney) against the reference cell:
  an intervention that makes spikes smaller but not rarer shows here and not in a rate;
- the spike rate as a curve over ratios (3x..30x): the rate at 10x is one point of it;
- bounded losses: log_cosh on a softmax output cannot exceed log(cosh(1)) = 0.434 (both units
  miss by at most 1), so where 0.434 < ratio x the run's lowest loss the rule cannot fire at all;
  a cell where it cannot fire in any run gets "n/a", and is judged on what can move instead
  (training accuracy, dead fraction, its loss on its own scale: final loss / its bound).
"""

from __future__ import annotations

import math

LOG_COSH_BOUND = math.log(math.cosh(1.0))  # the most log_cosh can charge a softmax output
RATIOS = (3, 4, 5, 6, 7, 8, 10, 12, 15, 20, 25, 30)


def largest_jump(losses: list[float], min_rise: float) -> float:
    """The largest loss(t) / (lowest finite loss before t) over epochs t whose rise is >= min_rise;
    inf when a loss goes non-finite after a finite one; 1.0 when the loss never rises."""
    lowest, largest = math.inf, 1.0
    for loss in losses:
        if not math.isfinite(loss):
            if math.isfinite(lowest):
                return math.inf
            continue
        if math.isfinite(lowest) and lowest > 0 and loss - lowest >= min_rise:
            largest = max(largest, loss / lowest)
        lowest = min(lowest, loss)
    return largest


def loss_bound(cell_overrides: dict) -> float | None:
    """The most the cell's loss can be (None: unbounded, the cross-entropies)."""
    return LOG_COSH_BOUND if cell_overrides.get("loss.name") == "log_cosh" else None


def rule_can_fire(losses: list[float], bound: float | None, ratio: float) -> bool:
    """Whether any epoch could reach ratio x its lowest-before under the loss's bound."""
    if bound is None:
        return True
    lowest = math.inf
    for loss in losses:
        if math.isfinite(lowest) and bound >= ratio * lowest:
            return True
        if math.isfinite(loss):
            lowest = min(lowest, loss)
    return False


def rate_curve(jumps: list[float], ratios=RATIOS) -> list[float]:
    """The share of runs whose largest jump reaches each ratio (the rule's rate at that ratio)."""
    return [sum(1 for j in jumps if j >= r) / len(jumps) if jumps else math.nan for r in ratios]
