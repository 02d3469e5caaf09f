"""The figures compare what they mean to compare (issue 24, item 4): one colour per intervention in
every study figure, one shared y range per loss in the small multiples, no empty halves; and say what
their tables say (issue 37, item 4): no rate drawn for an n/a cell, no curves hidden on one another,
the replication's verdicts marked, numbers on a short log axis."""

from __future__ import annotations

from matplotlib.colors import to_hex

from studies.replication.analysis import marks
from study.figures import (
    INTERVENTION_COLOURS,
    colour_of,
    curve_layout,
    loss_override,
    shared_limits,
    study_figure,
    thresholds_figure,
)


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


# ---- issue 37, item 4: each study figure says what its table says -----------------------------------


def _row(cell: str, k: int | None, n: int = 20, reference: str = "", text: str | None = None) -> dict:
    """A report row as study.report.aggregate writes it: k of n spiked, its Wilson interval."""
    rate = None if k is None else k / n
    return {
        "cell": cell,
        "overrides": "loss.name=log_cosh" if "log-cosh" in cell else "(params.yaml)",
        "reference": reference or None,
        "n_runs": n if k is not None else 0,
        "n_diverged": k,
        "n_plateaued": 0,
        "n_failed": 0,
        "divergence_rate": rate,
        "divergence_rate_low": None if k is None else max(0.0, rate - 0.2),
        "divergence_rate_high": None if k is None else min(1.0, rate + 0.2),
        "divergence_rate_text": text or f"{k}/{n}",
    }


def _survival(*points):
    return [(0, 1.0), *points]


def _figure(rows, survival, curves=None, notes=None):
    figure = study_figure(rows, curves or {}, survival, "test", notes)
    figure.canvas.draw()  # tick labels exist once drawn
    return figure


NA = "n/a (the loss cannot reach the rule's threshold)"


def test_an_na_cell_is_no_bar_and_no_interval():
    rows = [
        _row("plateau", 20),
        _row("plateau-log-cosh", 0, reference="plateau", text=NA),
        _row("plateau-amsgrad", 20, reference="plateau"),
    ]
    survival = {"plateau": _survival((130, 0.0)), "plateau-log-cosh": _survival((200, 1.0))}
    survival["plateau-amsgrad"] = _survival((140, 0.0))
    figure = _figure(rows, survival)
    bars = figure.axes[0]
    labels = [label.get_text() for label in bars.get_yticklabels()]
    assert labels[1] == "plateau-log-cosh  n/a"  # not "0/20"
    drawn = [patch for patch in bars.patches if patch.get_height() > 0]
    assert sorted(round(patch.get_y() + patch.get_height() / 2) for patch in drawn) == [0, 2]
    whiskers = [line for collection in bars.collections for line in collection.get_segments()]
    assert sorted(round(segment[0][1]) for segment in whiskers) == [0, 2]  # none at the n/a cell's place
    assert any("cannot reach the rule" in text.get_text() for text in bars.texts)
    survive = figure.axes[1]
    assert "plateau-log-cosh" not in [line.get_label() for line in survive.get_lines()]
    assert "plateau-log-cosh" in survive.get_legend().get_title().get_text()


def test_cells_that_never_spiked_are_named_not_drawn_on_one_another():
    rows = [_row("baseline", 16), _row("log-cosh", 0, reference="baseline"), _row("sgd", 0, reference="baseline")]
    survival = {
        "baseline": _survival((90, 0.5), (120, 0.2)),
        "log-cosh": _survival((150, 1.0)),
        "sgd": _survival((150, 1.0)),
    }
    survive = _figure(rows, survival).axes[1]
    assert [line.get_label() for line in survive.get_lines()] == ["baseline"]
    legend = survive.get_legend()
    assert [text.get_text() for text in legend.get_texts()] == ["baseline"]  # the legend names every line
    assert "never spiked" in legend.get_title().get_text() and "log-cosh, sgd" in legend.get_title().get_text()


def test_a_study_where_nothing_spiked_says_so_and_labels_its_loss_axis():
    rows = [_row("plateau-n16k", 0, n=5), _row("default-n16k", None, reference="plateau-n16k")]
    history = [{"epoch": epoch, "loss": 0.71 + 0.0004 * epoch} for epoch in range(1, 81)]
    figure = _figure(rows, {"plateau-n16k": _survival((80, 1.0))}, {"plateau-n16k (seed 50)": history})
    bars, survive, curve = figure.axes
    assert [label.get_text() for label in bars.get_yticklabels()] == ["plateau-n16k  0/5", "default-n16k  0 runs"]
    assert not survive.get_lines()
    assert "never spiked" in survive.texts[0].get_text() and "no finished run" in survive.texts[0].get_text()
    low, high = curve.get_ylim()
    ticks = curve.yaxis.get_major_ticks() + curve.yaxis.get_minor_ticks()
    shown = [tick.label1.get_text() for tick in ticks if low <= tick.get_loc() <= high and tick.label1.get_text()]
    assert len(shown) >= 3, shown  # not the lone "1" of a log axis spanning under a decade


def test_replication_marks_each_cells_verdicts_beside_its_bar():
    def verdict(family, cell, original, judgement):
        words = {"original verdict": original, "replication verdict": original, "judgement": judgement}
        return {"family": family, "comparison": f"{cell} vs baseline", **words}

    judged = [
        verdict("spike rate", "amsgrad", "fewer", "not replicated"),
        verdict("largest jump", "amsgrad", "smaller", "replicated"),
        verdict("spike rate", "sgd", "fewer", "replicated"),
        verdict("spike rate", "eps-1e-3", "no detectable difference", "still not significant"),
        verdict("predictors", "naive", "above chance", "replicated"),
    ]
    notes = marks(judged)
    assert notes["amsgrad"] == "✗ fewer spikes  ✓ smaller jumps"
    assert notes["sgd"] == "✓ fewer spikes"
    assert "eps-1e-3" not in notes and "naive" not in notes
    rows = [_row("baseline", 15), _row("amsgrad", 8, reference="baseline"), _row("sgd", 0, reference="baseline")]
    survival = {"baseline": _survival((90, 0.3)), "amsgrad": _survival((100, 0.6)), "sgd": _survival((150, 1.0))}
    bars = _figure(rows, survival, notes=notes).axes[0]
    beside = {round(text.get_position()[1]): text.get_text() for text in bars.texts if text.get_position()[0] > 1}
    assert beside[1] == notes["amsgrad"] and beside[2] == notes["sgd"] and "replicated" in beside[-1]


def test_threshold_strip_takes_the_curves_colours_and_zero_curves_are_named():
    # the seed-shape study's cells: its first cell is named plateau-<something>, and heads its group
    rows = [
        {"cell": "plateau-n16k", "jumps": [1.05, 1.04], "median_jump": 1.045},
        {"cell": "default-n16k", "reference": "plateau-n16k", "jumps": [30.0, 25.0], "median_jump": 27.5},
    ]
    curves = {"plateau-n16k": [0.0, 0.0, 0.0], "default-n16k": [1.0, 1.0, 0.5]}
    figure = thresholds_figure(rows, curves, (3, 10, 30), 10, "test")
    top, strip = figure.axes
    drawn = [line for line in top.get_lines() if not line.get_label().startswith("the rule")]
    assert [line.get_label() for line in drawn] == ["default-n16k"]
    assert "no run reached 3x its lowest loss: plateau-n16k" in top.get_legend().get_title().get_text()
    colours = [
        to_hex(collection.get_facecolor()[0]) for collection in strip.collections[::2]
    ]  # each scatter, then its median
    assert colours == [colour_of("plateau-n16k"), drawn[0].get_color()]
