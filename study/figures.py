"""The study's figures: divergence rate + typical curves per intervention, and the replay's curves."""

from __future__ import annotations

import math
from pathlib import Path

from spikelab.figures import plt, save_figure


def _positive(values) -> list[float]:
    """A log axis cannot show 0 or below: those points are gaps."""
    return [value if value > 0 else math.nan for value in values]


def plot_study(rows: list[dict], curves: dict[str, list[dict]], path: Path, title: str) -> None:
    """Left: divergence rate per intervention (k/n, failed). Right: one typical loss curve per intervention."""
    figure, (bars, lines) = plt.subplots(1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [1, 1.4]})
    names = [row["cell"] for row in rows]
    rates = [row["divergence_rate"] or 0.0 for row in rows]
    bars.barh(names, rates, color=["tab:red" if rate > 0 else "tab:green" for rate in rates])
    for y, row in enumerate(rows):
        label = f"{row['n_diverged']}/{row['n_runs']}" + (f", {row['n_failed']} failed" if row["n_failed"] else "")
        bars.text(min(rates[y], 1.0) + 0.02, y, label, va="center", fontsize=8)
    bars.set_xlim(0, 1.25)
    bars.invert_yaxis()
    bars.set_xlabel("divergence rate (finished runs)")
    bars.set_title("runs that spiked", fontsize=10, loc="left")
    for cell, history in curves.items():
        lines.plot(
            [row["epoch"] for row in history], _positive(row["loss"] for row in history), label=cell, linewidth=1
        )
    lines.set_yscale("log")
    lines.set_xlabel("epoch")
    lines.set_ylabel("training loss (log)")
    lines.set_title("a typical run per intervention (median peak/min)", fontsize=10, loc="left")
    lines.grid(alpha=0.3)
    if curves:
        lines.legend(fontsize=7)
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    save_figure(figure, path, dpi=100)


def plot_replay(curves: dict[str, list[dict]], epoch: int, label: str, path: Path) -> None:
    """Each variant's training loss from the resume epoch on; the original drawn thick under them."""
    figure, axis = plt.subplots(figsize=(10, 5))
    for name, history in curves.items():
        shown = [row for row in history if row["epoch"] >= epoch]
        axis.plot(
            [row["epoch"] for row in shown],
            _positive(row["loss"] for row in shown),
            label=name,
            linewidth=2.5 if name == "original" else 1,
            linestyle=":" if name == "unchanged" else "-",
        )
    axis.axvline(epoch, color="grey", linestyle="--", linewidth=0.8)
    axis.set_yscale("log")
    axis.set_xlabel("epoch")
    axis.set_ylabel("training loss (log)")
    axis.set_title(f"replays of {label} from epoch {epoch}", fontsize=10, loc="left")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    save_figure(figure, path, dpi=100)


def plot_dead_zone(history: list[dict], title: str, path: Path) -> None:
    """A plateaued run: the training loss, and the part of it the dead samples carry (clipped form),
    with the unclipped form's charge for the same samples, at the epochs with whole-set accounting."""
    figure, (loss_axis, fraction_axis) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True)
    epochs = [row["epoch"] for row in history]
    loss_axis.plot(epochs, _positive(row["loss"] for row in history), color="black", linewidth=1, label="training loss")
    accounted = [row for row in history if math.isfinite(row.get("dead_fraction", math.nan))]
    marked = [row["epoch"] for row in accounted]
    for key, label, color in (
        ("dead_loss_clipped", "carried by dead samples (clipped loss: ~16.03 each, zero gradient)", "tab:red"),
        ("dead_loss_unclipped", "the same samples under the unclipped form", "tab:blue"),
    ):
        loss_axis.plot(marked, _positive(row[key] for row in accounted), "o-", color=color, markersize=3, label=label)
    loss_axis.set_yscale("log")
    loss_axis.set_ylabel("loss (log)")
    loss_axis.legend(fontsize=8, loc="lower right")
    loss_axis.grid(alpha=0.3)
    loss_axis.set_title(title, fontsize=10, loc="left")
    fraction_axis.plot(marked, [row["dead_fraction"] for row in accounted], "o-", color="tab:red", markersize=3)
    fraction_axis.set_ylabel("dead fraction of the training set")
    fraction_axis.set_xlabel("epoch")
    fraction_axis.grid(alpha=0.3)
    figure.tight_layout()
    save_figure(figure, path, dpi=100)
