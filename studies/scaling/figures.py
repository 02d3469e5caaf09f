"""The scaling study's figure: onset against each covariate with the law, observed against predicted
with the seed extrapolated, and where the spike stays up (results/scaling_law.png)."""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.ticker import FormatStrFormatter, NullFormatter

from spikelab.figures import plt, save_figure

SCALING_LABELS = {
    "learning_rate": "learning rate",
    "n_per_class": "training images per class",
    "filters": "filters (first conv)",
    "batch_size": "batch size",
}


SCALING_SHORT = {"learning_rate": "lr", "n_per_class": "n", "filters": "filters", "batch_size": "batch"}


def _onset_marks(axis, rows: list[dict], x_of, colour: str, label: str | None) -> None:
    """Kaplan-Meier medians with their 95% bars; a median not reached as an open triangle at the last step."""
    for row in rows:
        x = x_of(row)
        if row["km_median_steps"] is None:
            axis.plot([x], [row["last_time"]], "^", color=colour, markersize=8, markerfacecolor="white")
            continue
        lower = row["km_lower"] if row["km_lower"] is not None else row["km_median_steps"]
        upper = row["km_upper"] if row["km_upper"] is not None else row["last_time"]
        axis.errorbar(
            [x],
            [row["km_median_steps"]],
            yerr=[[row["km_median_steps"] - lower], [max(upper - row["km_median_steps"], 0)]],
            fmt="o",
            color=colour,
            capsize=3,
            label=label,
        )
        label = None  # one legend entry per series


def _covariate_panel(axis, name: str, rows: list[dict], fit, summary: dict) -> None:
    """The points that differ in one covariate alone, series by series, each with the law's line."""
    # the batch size is varied at lr 1e-2, the others around the center
    others = [key for key in SCALING_LABELS if key != name]
    series: dict[tuple, list[dict]] = {}
    for row in rows:
        if row["role"] == "fit":
            series.setdefault(tuple(row[key] for key in others), []).append(row)
    shown = [chosen for chosen in series.values() if len({r[name] for r in chosen}) > 1]
    for index, chosen in enumerate(shown):
        colour = ("black", "tab:purple", "tab:brown")[index % 3]
        where = ", ".join(f"{SCALING_SHORT[key]} {chosen[0][key]:g}" for key in others)
        chosen = sorted(chosen, key=lambda r: r[name])
        _onset_marks(axis, chosen, lambda r, name=name: r[name], colour, f"measured ({where})")
        low, high = chosen[0][name], chosen[-1][name]
        grid = [low * (high / low) ** (i / 40) for i in range(41)]
        axis.plot(
            grid, [fit.median_steps({**chosen[0], name: g}) for g in grid], color=colour, alpha=0.5, label="the law"
        )
    axis.set_xscale("log")
    axis.set_yscale("log")
    measured = sorted({r[name] for chosen in shown for r in chosen})
    axis.set_xticks(measured)
    axis.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    axis.xaxis.set_minor_formatter(NullFormatter())
    axis.set_xlabel(SCALING_LABELS[name])
    axis.set_ylabel("first-spike step (KM median, S <= 1/2; 95%)")
    axis.grid(alpha=0.3, which="both")
    exponent, low, high = summary["exponents"][name]
    profile = ", ".join("unbounded" if end is None else f"{end:+.2f}" for end in fit.profile[name])
    axis.set_title(
        f"exponent {exponent:+.2f}: bootstrap [{low:+.2f}, {high:+.2f}], profile [{profile}]", fontsize=9, loc="left"
    )
    axis.legend(fontsize=7)


def _observed_panel(observed, rows: list[dict], summary: dict) -> None:
    """Every point's observed onset against the law's prediction, and the seed extrapolated."""
    for role, colour in (("fit", "black"), ("held out", "tab:orange"), ("left out (never spiked)", "tab:grey")):
        chosen = [r for r in rows if r["role"] == role]
        if not chosen:
            continue
        _onset_marks(observed, chosen, lambda r: r["predicted_median_steps"], colour, f"{role} points")
    seed_median = summary["seed_median"][0]
    low, high = summary["seed_run"]
    observed.errorbar(
        [seed_median],
        [summary["seed_steps"]],
        xerr=[[seed_median - low], [high - seed_median]],
        fmt="*",
        color="tab:red",
        markersize=14,
        capsize=4,
        label="the seed's run (x: one run's 95% prediction)",
    )
    # the measured points set the lower end: the seed's interval may reach far below any of them
    limits = [min(r["predicted_lower"] for r in rows) / 3, max(high, summary["seed_steps"]) * 2]
    observed.set_xlim(*limits)
    observed.set_ylim(*limits)
    observed.plot(limits, limits, color="grey", linewidth=1, linestyle="--", label="observed = predicted")
    observed.set_xscale("log")
    observed.set_yscale("log")
    observed.set_xlabel("predicted median first-spike step")
    observed.set_ylabel("observed first-spike step")
    observed.set_title("every point, and the seed extrapolated", fontsize=10, loc="left")
    observed.grid(alpha=0.3, which="both")
    observed.legend(fontsize=8, loc="lower right")


def _stays_up_panel(figure, stays, rows: list[dict], summary: dict) -> None:
    """Where the spike stays up: each spiked point's stayed-up share against its predicted onset."""
    seed_median = summary["seed_median"][0]
    spiked = [r for r in rows if r["spiked"]]
    if spiked:
        colours = plt.get_cmap("viridis").with_extremes(bad="lightgrey")  # a point with no dead-zone accounting
        dots = stays.scatter(
            [r["predicted_median_steps"] for r in spiked],
            [r["stayed_up"] / r["spiked"] for r in spiked],
            c=[r["dead_fraction_median"] if r["dead_fraction_median"] is not None else math.nan for r in spiked],
            cmap=colours,
            s=60,
            vmin=0,
            plotnonfinite=True,
        )
        figure.colorbar(dots, ax=stays, label="dead fraction at the end (median)")
        for r in spiked:
            stays.annotate(
                r["point"],
                (r["predicted_median_steps"], r["stayed_up"] / r["spiked"]),
                xytext=(4, 4),
                textcoords="offset points",
                fontsize=7,
                rotation=30,
            )
    stays.axvline(seed_median, color="tab:red", linestyle=":", label="the seed (predicted)")
    stays.set_xscale("log")
    stays.set_ylim(-0.05, 1.05)
    stays.set_xlabel("predicted median first-spike step")
    stays.set_ylabel("spiked runs that stayed up (plateau rule)")
    stays.set_title("where the spike stays up", fontsize=10, loc="left")
    stays.grid(alpha=0.3)
    stays.legend(fontsize=8)


def plot_scaling(rows: list[dict], fit, summary: dict, path: Path) -> None:
    """One panel per covariate (the points that differ in it alone, with the law's line), observed against
    predicted onsets with the seed, and where the spike stays up."""
    names = [name for name in SCALING_LABELS if name in fit.names]
    figure, axes = plt.subplots(2, 3, figsize=(15, 9))
    panels = list(axes.flat)
    for axis, name in zip(panels, names):
        _covariate_panel(axis, name, rows, fit, summary)
    for axis in panels[len(names) : 4]:
        axis.axis("off")
    _observed_panel(panels[4], rows, summary)
    _stays_up_panel(figure, panels[5], rows, summary)
    figure.tight_layout()
    save_figure(figure, path, dpi=90)
