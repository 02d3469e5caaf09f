"""The threshold-free evidence: the largest jump decides the rule at every ratio; bounded losses."""

import math

import pytest

from spikelab.divergence import divergence_epoch
from spikelab.params import DivergenceParams
from study.report import late_change, unreachable_cells
from study.sweep import Cell
from study.threshold_free import LOG_COSH_BOUND, largest_jump, rate_curve, rule_can_fire


@pytest.mark.parametrize(
    "losses",
    [
        [1.0, 0.5, 0.01, 0.2, 0.3, 0.01, 0.005, 0.2],
        [0.8, 0.4, 0.1, 0.05, 0.06, 0.9, 0.04],
        [1.0, 0.9, 0.8],
        [0.5, 0.001, 0.009, 0.0105],  # 10.5x but a rise under min_rise: never a spike
    ],
)
def test_the_rule_fires_at_a_ratio_exactly_when_the_largest_jump_reaches_it(losses):
    jump = largest_jump(losses, min_rise=0.01)
    for ratio in (1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 40.0):
        fired = divergence_epoch(losses, DivergenceParams(ratio=ratio, min_rise=0.01)) is not None
        assert fired == (jump >= ratio), (ratio, jump)


def test_largest_jump_values():
    assert largest_jump([1.0, 0.1, 2.0, 0.05, 0.4], 0.01) == pytest.approx(20.0)
    assert largest_jump([1.0, 0.5, math.nan], 0.01) == math.inf  # NaN after a finite loss: a spike
    assert largest_jump([1.0, 0.5, 0.25], 0.01) == 1.0
    assert rate_curve([1.0, 4.0, 12.0, math.inf], (3, 10, 30)) == [0.75, 0.5, 0.25]


def test_a_bounded_loss_that_cannot_reach_the_threshold_makes_its_cell_na():
    assert LOG_COSH_BOUND == pytest.approx(0.4338, abs=1e-4)
    assert not rule_can_fire([0.3, 0.2, 0.1, 0.2], LOG_COSH_BOUND, 10.0)  # 0.434 < 10 x 0.1
    assert rule_can_fire([0.3, 0.02, 0.2], LOG_COSH_BOUND, 10.0)  # 0.434 >= 10 x 0.02
    assert rule_can_fire([0.3, 0.2], None, 10.0)  # cross-entropy: unbounded
    rule = DivergenceParams(ratio=10.0, min_rise=0.01)
    cells = [Cell("baseline", {}), Cell("log-cosh", {"loss.name": "log_cosh"})]
    records = [
        {"name": "a", "cell": "baseline", "state": "success"},
        {"name": "b", "cell": "log-cosh", "state": "success"},
    ]
    histories = {"a": [{"loss": 0.3}, {"loss": 0.1}], "b": [{"loss": 0.3}, {"loss": 0.1}, {"loss": 0.2}]}
    assert unreachable_cells(records, cells, histories, rule) == {"log-cosh"}


def test_late_change_is_flat_on_a_plateau_and_positive_on_a_climb():
    flat = [1.0] * 40
    climb = [math.exp(0.01 * epoch) for epoch in range(40)]
    assert late_change(flat) == (pytest.approx(0.0), pytest.approx(1.0))
    slope, rise = late_change(climb)
    assert slope == pytest.approx(0.01) and rise == pytest.approx(math.exp(0.3))
