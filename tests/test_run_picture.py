"""The run picture (spikelab/figures.py plot_run) says its point on any history a run can write."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from spikelab import figures  # noqa: E402


def history(rates):
    return [
        {
            "epoch": epoch,
            "loss": 0.5 / epoch,
            "val_loss": 0.6 / epoch,
            "learning_rate": rate,
            "v_sqrt_median": 1e-3 / epoch,  # decays from 1e-3 to about 1e-4: decades above epsilon 1e-7
            "lambda_grad": 10.0,
        }
        for epoch, rate in enumerate(rates, start=1)
    ]


def panel(axes, title_start):
    return next(axis for axis in axes if axis.get_title(loc="left").startswith(title_start))


def test_epsilon_far_below_v_is_named_not_drawn_and_the_axis_keeps_the_decay(tmp_path, monkeypatch):
    drawn = {}
    monkeypatch.setattr(figures, "save_figure", lambda figure, path: drawn.setdefault("axes", figure.axes))
    figures.plot_run(history([0.003] * 10), None, tmp_path / "run.png", "run", epsilon=1e-7, beta_1=0.9)
    axis = panel(drawn["axes"], "Adam median sqrt(v_hat)")
    low, high = axis.get_ylim()
    assert low > 1e-5 and high < 1e-2  # the 10x decay fills the panel; 1e-7 would have set low to ~1e-7
    labels = [text.get_text() for text in axis.get_legend().get_texts()]
    assert any(label.startswith("epsilon = 1e-07, ") and "below the lowest value" in label for label in labels)


def test_epsilon_near_v_is_drawn(tmp_path, monkeypatch):
    drawn = {}
    monkeypatch.setattr(figures, "save_figure", lambda figure, path: drawn.setdefault("axes", figure.axes))
    figures.plot_run(history([0.003] * 10), None, tmp_path / "run.png", "run", epsilon=1e-4)
    axis = panel(drawn["axes"], "Adam median sqrt(v_hat)")
    assert any(line.get_label() == "epsilon = 0.0001" for line in axis.get_lines())


def test_a_schedule_that_reaches_a_rate_of_zero_draws_no_threshold_there(tmp_path):
    # cosine decay ends at exactly 0: the stability thresholds 2 / lr are undefined, not a crash
    figures.plot_run(history([0.003, 0.002, 0.001, 0.0]), None, tmp_path / "run.png", "cosine", beta_1=0.9)
    assert (tmp_path / "run.png").stat().st_size > 0
