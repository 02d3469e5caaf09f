"""The figures compare what they mean to compare (issue 24, item 4): one colour per intervention in
every study figure, one shared y range per loss in the small multiples, no empty halves."""

from __future__ import annotations

from study.figures import INTERVENTION_COLOURS, colour_of, curve_layout, loss_override, shared_limits


def test_no_two_interventions_share_a_colour():
    aliases = {"original": "baseline"}  # a replay's original run is the baseline's run
    colours = {name: colour for name, colour in INTERVENTION_COLOURS.items() if name not in aliases}
    assert len(set(colours.values())) == len(colours)
    assert colour_of("plateau-amsgrad".removeprefix("plateau-")) == colour_of("amsgrad (seed 3)")
    assert colour_of("someone-new") not in colours.values()


def test_a_bounded_loss_gets_its_own_axis_and_the_others_share_one():
    rows = [
        {"cell": "baseline", "overrides": "(params.yaml)"},
        {"cell": "log-cosh", "overrides": "loss.name=log_cosh"},
        {"cell": "bce-keras3", "overrides": "loss.form=keras3"},
    ]
    assert [loss_override(row) for row in rows] == [None, "log_cosh", None]
    curves = [[{"loss": 0.7}, {"loss": 0.001}], [{"loss": 0.5}, {"loss": 5.0}]]
    low, high = shared_limits(curves)
    assert low < 0.001 and high > 5.0


def test_small_multiples_leave_no_half_of_the_figure_empty():
    assert curve_layout(0) == (0, 2)
    assert curve_layout(1) == (1, 2)
    assert curve_layout(2) == (1, 2)
    assert curve_layout(4) == (2, 2)
    assert curve_layout(13) == (3, 5)
