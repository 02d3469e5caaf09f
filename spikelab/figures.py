"""Figures: the one place matplotlib is set up, and the per-run picture.

The per-run picture: loss curves on a log scale and the diagnostics, one shared epoch axis.
The study's figures (study/figures.py) draw with `plt` and `save_figure` from here.
"""

from __future__ import annotations

import math
import os

import matplotlib

matplotlib.use("Agg")  # headless: stages run on servers and in CI
import matplotlib.pyplot as plt

from spikelab.plumbing.files import atomic_path

# (panel title, y scale, history columns drawn in it)
PANELS = (
    ("loss (log)", "log", ("loss", "val_loss")),
    ("accuracy", "linear", ("accuracy", "val_accuracy")),
    ("gradient norm, probe batch (log)", "log", ("grad_norm",)),
    ("update RMS / learning rate (log)", "log", ("update_rms_over_lr",)),
    ("Adam |m_hat / (sqrt(v_hat)+eps)| (log)", "log", ("adam_ratio_max", "adam_ratio_p99")),
    ("Adam median sqrt(v_hat), and epsilon (log)", "log", ("v_sqrt_median",)),
    # Wortsman et al. 2023: above 1, v_hat lags behind the gradients now arriving
    ("second-moment lag sqrt(mean(g^2 / v_hat)), probe batch (log)", "log", ("g2_over_v_rms",)),
    # Bai et al. 2025: the step is unstable along the gradient when lambda_grad passes 2 / lr
    ("preconditioned curvature P H, probe batch (log)", "log", ("lambda_grad", "lambda_max")),
    ("saturated past the clip, probe batch", "linear", ("saturated_fraction", "saturated_wrong_fraction")),
    # a plateau of the clipped loss is its dead samples: the loss sits on dead_loss_clipped (~16.03 x dead fraction)
    ("loss vs what dead samples carry, whole training set (log)", "log", ("loss", "dead_loss_clipped")),
)
SPARSE = ("dead_loss_clipped", "lambda_max")  # logged every few epochs: drawn through the epochs that have it


def save_figure(figure, path: str | os.PathLike, dpi: int = 90) -> None:
    """Write atomically and free the figure (a long report draws many)."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=dpi)
    plt.close(figure)


def _column(history: list[dict], key: str) -> list[float]:
    return [row.get(key, math.nan) for row in history]


def run_layout(count: int) -> tuple[int, int]:
    """(rows, columns) of the run picture: one column for up to three panels, else two."""
    columns = 1 if count <= 3 else 2
    return math.ceil(count / columns), columns


EPSILON_OFF_AXIS = 100  # epsilon this many times below the panel's lowest sqrt(v_hat) gets no line


def plot_run(
    history: list[dict],
    divergence_epoch: int | None,
    path: str | os.PathLike,
    title: str,
    epsilon: float | None = None,
    beta_1: float | None = None,
) -> None:
    """Draw the panels whose columns exist in history; mark the divergence epoch on each,
    epsilon on the sqrt(v_hat) panel (the scale it competes with), and on the curvature panel the
    stability thresholds 2 / lr and, with Adam's beta_1, (2 + 2 beta_1) / ((1 - beta_1) lr).
    Two columns of panels (the run on the left, Adam's internals on the right), every panel with
    its epoch axis labelled and its legend beside it, outside the curves."""
    # a panel is drawn when its last column was logged (diagnostics off: loss and accuracy only)
    panels = [panel for panel in PANELS if any(panel[2][-1] in row for row in history)] if history else PANELS[:1]
    rows, columns = run_layout(len(panels))
    figure, axes = plt.subplots(
        rows, columns, figsize=(8.5 * columns, 2.1 * rows + 0.7), sharex=True, squeeze=False, layout="constrained"
    )
    for axis in axes.flat[len(panels) :]:
        axis.set_visible(False)
    epochs = _column(history, "epoch")
    # filled column by column: the loss and the run's own measures first, the optimizer's after
    for axis, (name, scale, keys) in zip(axes.T.flat, panels):
        for key in keys:
            values = _column(history, key)
            if key in SPARSE:
                shown = [(e, v) for e, v in zip(epochs, values) if math.isfinite(v) and (scale == "linear" or v > 0)]
                xs, values = [e for e, _ in shown], [v for _, v in shown]
                axis.plot(xs, values, label=key, linewidth=1, marker=".", markersize=4)
            elif any(math.isfinite(v) and (scale == "linear" or v > 0) for v in values):
                axis.plot(epochs, values, label=key, linewidth=1)
        axis.set_yscale(scale)
        axis.set_title(name, fontsize=10, loc="left")
        if "v_sqrt_median" in keys and epsilon is not None:
            shown_v = [v for v in _column(history, "v_sqrt_median") if math.isfinite(v) and v > 0]
            if shown_v and epsilon < min(shown_v) / EPSILON_OFF_AXIS:
                # a line decades below the curve would stretch the axis and flatten the decay of v the
                # panel exists to show: epsilon is named in the legend instead
                axis.plot(
                    [], [], " ", label=f"epsilon = {epsilon:g}, {min(shown_v) / epsilon:.0f}x below the lowest value"
                )
            else:
                axis.axhline(epsilon, color="tab:purple", linestyle=":", linewidth=1.2, label=f"epsilon = {epsilon:g}")
        if "g2_over_v_rms" in keys:
            axis.axhline(1.0, color="tab:purple", linestyle=":", linewidth=1.2, label="1: v_hat matches g^2")
        if "lambda_grad" in keys:
            rates = _column(history, "learning_rate")
            # a schedule may reach a rate of 0 (cosine's last epoch): no threshold there
            axis.plot(
                epochs, [2 / r if r > 0 else math.nan for r in rates], color="tab:purple", linestyle=":", label="2 / lr"
            )
            if beta_1 is not None:
                momentum = (2 + 2 * beta_1) / (1 - beta_1)
                axis.plot(
                    epochs,
                    [momentum / r if r > 0 else math.nan for r in rates],
                    color="tab:gray",
                    linestyle=":",
                    label=f"{momentum:g} / lr",
                )
        if divergence_epoch is not None:
            axis.axvline(divergence_epoch, color="red", linestyle="--", linewidth=0.8, label="divergence")
        axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        axis.grid(alpha=0.3)
        axis.tick_params(labelbottom=True, labelsize=8)
        axis.set_xlabel("epoch", fontsize=8)
    figure.suptitle(title, fontsize=11)
    save_figure(figure, path)
