"""Every study's figures: divergence rate + typical curves per intervention, thresholds, the dead zone,
and the replay's curves. A figure only one study draws lives in that study's folder."""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.ticker import FormatStrFormatter, FuncFormatter, NullFormatter

from spikelab.figures import plt, save_figure

# One colour per intervention in every figure of the study (quick, evidence, structure, plateau,
# replays), no two interventions alike; a cell `<head>-<intervention>` takes its intervention's.
# Names not listed get a stable spare, distinct from the listed ones.
INTERVENTION_COLOURS = {
    "original": "#222222",
    "baseline": "#222222",
    "unchanged": "tab:orange",
    "eps-1e-8": "tab:brown",
    "eps-1e-3": "tab:olive",
    "eps-1e-2": "tab:cyan",
    "bce-keras3": "tab:blue",
    "log-cosh": "tab:green",
    "sgd": "tab:purple",
    "amsgrad": "tab:red",
    "clipnorm-1": "tab:pink",
    "twins-together": "#000080",
    "hidden-relu": "#b15928",
    "relu-twins-together": "#00a087",
    "xla": "#e6ab02",
}
SPARE_COLOURS = ("#7f7f7f", "#8dd3c7", "#fb8072", "#80b1d3", "#fdb462", "#bc80bd")
# taken in turn by a cell whose colour another cell of its panel already has
MORE_SPARES = ("#1b9e77", "#7570b3", "#66a61e", "#a6761d", "#e7298a", "#386cb0")


def colour_of(intervention: str) -> str:
    """The intervention's colour (its name before any ' (' suffix); unknown names get a stable spare."""
    name = intervention.split(" (")[0]
    if name in INTERVENTION_COLOURS:
        return INTERVENTION_COLOURS[name]
    return SPARE_COLOURS[sum(name.encode()) % len(SPARE_COLOURS)]


def _positive(values) -> list[float]:
    """A log axis cannot show 0 or below: those points are gaps."""
    return [value if value > 0 else math.nan for value in values]


def comparison_groups(rows: list[dict]) -> dict[str, list[str]]:
    """{reference cell: [it, and the cells compared with it]}: the first cell heads every cell without
    a `compare_with` of its own; a cell that others are compared with heads its own group."""
    first = rows[0]["cell"]
    heads = [first] + [row["cell"] for row in rows if any(other.get("reference") == row["cell"] for other in rows)]
    groups = {head: [] for head in dict.fromkeys(heads)}
    for row in rows:
        cell = row["cell"]
        groups[cell if cell in groups else (row.get("reference") or first)].append(cell)
    return groups


def group_colour(cell: str, head: str, first: str) -> str:
    """Within a group, a head drawn like the baseline and `<head>-<intervention>` in the intervention's
    colour: plateau-amsgrad is AMSGrad's red, and no two curves of one panel share a colour."""
    if cell == head:
        return colour_of(first)
    return colour_of(cell.removeprefix(f"{head}-"))


def cell_colours(groups: dict[str, list[str]], first: str) -> dict[str, str]:
    """Every cell's colour (group_colour), then within a group a cell whose colour an earlier cell
    already took gets the first spare nobody in the group has: two names can hash to one spare
    (the agreement study's plateau and plateau-amsgrad were one orange)."""
    colours = {}
    for head, members in groups.items():
        taken: set[str] = set()
        for cell in members:
            colour = group_colour(cell, head, first)
            if colour in taken:
                colour = next((spare for spare in SPARE_COLOURS + MORE_SPARES if spare not in taken), colour)
            taken.add(colour)
            colours[cell] = colour
    return colours


def loss_override(row: dict) -> str | None:
    """The loss.name a cell sets (None: the study's params.yaml loss)."""
    for change in (row.get("overrides") or "").split():
        key, _, value = change.partition("=")
        if key == "loss.name":
            return value
    return None


def curve_layout(count: int) -> tuple[int, int]:
    """(columns, rows) of the small multiples: one column for one or two curves, two up to six,
    three beyond; never fewer rows than the two panels on the left."""
    if count == 0:
        return 0, 2
    columns = 1 if count <= 2 else 2 if count <= 6 else 3
    return columns, max(2, math.ceil(count / columns))


def shared_limits(histories: list[list[dict]]) -> tuple[float, float]:
    """One log y range for curves that are compared: from the lowest to the highest positive loss."""
    values = [row["loss"] for history in histories for row in history if math.isfinite(row["loss"]) and row["loss"] > 0]
    return (min(values) / 1.4, max(values) * 1.4) if values else (1e-3, 1.0)


def not_drawn(row: dict) -> str | None:
    """Why a cell's spike rate is no bar (None: it is one): the rule cannot fire on its loss (the
    table's n/a), or none of its runs finished."""
    if str(row.get("divergence_rate_text") or "").startswith("n/a"):
        return "n/a: its bounded loss cannot reach the rule"
    if row.get("divergence_rate") is None:
        return "no finished run"
    return None


def label_log_ticks(axis, low: float, high: float) -> None:
    """Numbers on a short log y axis: under a factor 30 the minor ticks at 2, 3 and 5 carry plain
    labels (0.2, 0.3, 0.5), under a factor 3 every one does; a single major label ("1") says nothing."""
    if high / low >= 30:
        axis.yaxis.set_minor_formatter(NullFormatter())
        return
    every = high / low < 3
    axis.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    axis.yaxis.set_minor_formatter(
        FuncFormatter(lambda value, _: f"{value:g}" if every or f"{value:.0e}"[0] in "235" else "")
    )


def _rate_panel(bars, shown: list[dict], colours: dict[str, str], notes: dict[str, str] | None) -> None:
    """One bar per cell with a rate (k/n, 95% Wilson interval); a cell without one (n/a, nothing
    finished) gets its reason as text where its bar would be, never a 0 bar with an interval. notes:
    a text per cell in a column right of the bars, headed by notes[""]."""
    drawn = [(place, row) for place, row in enumerate(shown) if not_drawn(row) is None]
    rates = [row["divergence_rate"] for _, row in drawn]
    # whiskers from the Wilson bounds; clipped at 0: at k = n the bound can sit an ulp inside the rate
    low = [max(0.0, rate - row["divergence_rate_low"]) for rate, (_, row) in zip(rates, drawn)]
    high = [max(0.0, row["divergence_rate_high"] - rate) for rate, (_, row) in zip(rates, drawn)]
    bars.barh(
        [place for place, _ in drawn],
        rates,
        xerr=[low, high],
        color=[colours[row["cell"]] for _, row in drawn],
        alpha=0.85,
        capsize=3,
    )
    for place, row in enumerate(shown):
        if not_drawn(row) is not None:
            bars.text(0.01, place, not_drawn(row), va="center", fontsize=8, color="dimgray", style="italic")
    # the counts go in the labels: text inside the bars would sit under the interval whiskers
    labels = [
        f"{row['cell']}  " + ("n/a" if not_drawn(row).startswith("n/a") else "0 runs")
        if not_drawn(row)
        else f"{row['cell']}  {row['n_diverged']}/{row['n_runs']}"
        + (f", {row['n_plateaued']} up" if row.get("n_plateaued") else "")
        + (f", {row['n_failed']} failed" if row["n_failed"] else "")
        for row in shown
    ]
    bars.set_yticks(range(len(shown)), labels)
    bars.set_ylim(len(shown) - 0.4, -0.6)  # the first cell on top
    bars.set_xlim(0, 1.75 if notes else 1)
    bars.set_xticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    bars.tick_params(labelsize=9)
    bars.set_xlabel("share of finished runs that spiked (divergence rule), 95% interval", fontsize=9)
    bars.set_title("runs that spiked (k/n; 'up': stayed up by the plateau rule)", fontsize=10, loc="left")
    if notes:
        bars.axvline(1.0, color="gray", linewidth=0.8)
        bars.text(1.04, -0.55, notes.get("", ""), fontsize=8, va="bottom")
        for place, row in enumerate(shown):
            bars.text(1.04, place, notes.get(row["cell"], ""), va="center", fontsize=8)


def _survival_panel(survive, members: list[str], survival: dict, colours: dict, unjudged: dict[str, str]) -> None:
    """Kaplan-Meier curves of the cells whose runs spiked; a cell that stayed at 1.0 to its last
    epoch (no run spiked) is named, not drawn: several such lines would lie on one another and on the
    frame. Cells the rule cannot judge are named too."""
    flat = [cell for cell in members if cell in survival and min(f for _, f in survival[cell]) >= 1.0]
    for cell in (cell for cell in members if cell in survival and cell not in flat and cell not in unjudged):
        epochs, fractions = zip(*survival[cell])
        survive.step(epochs, fractions, where="post", color=colours[cell], label=cell, linewidth=1.6)
    flat = [cell for cell in flat if cell not in unjudged]
    said = [f"never spiked (at 1.0 throughout):\n{', '.join(flat)}"] if flat else []
    said += [f"not drawn, {why.split(':')[0]}:\n{cell}" for cell, why in unjudged.items() if cell in members]
    survive.set_ylim(-0.03, 1.03)
    survive.set_ylabel("share not yet spiked", fontsize=9)
    survive.grid(alpha=0.3)
    survive.tick_params(labelsize=8)
    if survive.get_lines():
        legend = survive.legend(fontsize=8, loc="best", framealpha=0.9, title="\n".join(said) or None)
        legend.get_title().set_fontsize(8)
    elif said:
        survive.text(0.5, 0.5, "\n".join(said), transform=survive.transAxes, ha="center", va="center", fontsize=9)
        last = [epoch for cell in flat for epoch, _ in survival[cell]]
        survive.set_xlim(0, max(last, default=1))


def study_figure(
    rows: list[dict],
    curves: dict[str, list[dict]],
    survival: dict[str, list[tuple]],
    title: str,
    notes: dict[str, str] | None = None,
):
    """Left, top: divergence rate per distinct intervention (k/n, with its 95% Wilson interval; a cell
    equal to an earlier one is not drawn again; one without a rate says why). Left, bottom: time to the
    first spike (Kaplan-Meier; runs that never spiked censored at their last epoch). Right: small
    multiples, one typical loss curve per intervention, on one shared log axis per loss: a bounded loss
    (log_cosh) gets its own, never the cross-entropy's. notes: a short text per cell beside its bar
    (the replication's judgements)."""
    shown = [row for row in rows if " (= " not in row["cell"]]
    columns, grid_rows = curve_layout(len(curves))
    figure = plt.figure(figsize=(7.5 + 3.4 * columns + (2.5 if notes else 0), max(7.0, 2.4 * grid_rows + 1)))
    grid = figure.add_gridspec(grid_rows, columns + 1, width_ratios=[1.6 + (1.0 if notes else 0)] + [1] * columns)
    half = grid_rows // 2
    names = [row["cell"] for row in shown]
    groups = comparison_groups(shown)
    colours = cell_colours(groups, names[0])
    _rate_panel(figure.add_subplot(grid[:half, 0]), shown, colours, notes)
    unjudged = {row["cell"]: not_drawn(row) for row in shown if not_drawn(row)}
    # one Kaplan-Meier panel per comparison group: thirteen curves in one panel repeat colours
    panels = grid[half:, 0].subgridspec(len(groups), 1, hspace=0.5)
    for index, (head, members) in enumerate(groups.items()):
        survive = figure.add_subplot(panels[index])
        _survival_panel(survive, members, survival, colours, unjudged)
        against = f"\n{head} and the cells compared with it" if len(groups) > 1 else ""
        survive.set_title(f"time to the first spike (Kaplan-Meier){against}", fontsize=9, loc="left")
    survive.set_xlabel("epoch", fontsize=9)
    row_of = {row["cell"]: row for row in rows}
    loss_of = {cell: loss_override(row_of.get(cell.split(" (")[0], {})) for cell in curves}
    limits = {
        loss: shared_limits([history for cell, history in curves.items() if loss_of[cell] == loss])
        for loss in set(loss_of.values())
    }
    for index, (cell, history) in enumerate(curves.items()):
        # a lone curve takes the whole right column: no empty panel beside the two on the left
        place = slice(None) if len(curves) == 1 else index // columns
        axis = figure.add_subplot(grid[place, 1 + index % columns])
        colour = colours.get(cell.split(" (")[0], colour_of(cell))  # keyed "<cell> (seed N)"
        axis.plot([row["epoch"] for row in history], _positive(row["loss"] for row in history), color=colour)
        axis.set_yscale("log")
        low, high = limits[loss_of[cell]]
        axis.set_ylim(low, high)
        label_log_ticks(axis, low, high)
        axis.set_ylabel(f"{loss_of[cell] or 'training'} loss (log)", fontsize=8)
        axis.set_title(cell, fontsize=9, loc="left")
        axis.grid(alpha=0.3)
        axis.tick_params(which="both", labelsize=8)
        axis.set_xlabel("epoch", fontsize=8)
    what = (
        "rates and time to spike (left), a typical run per intervention (right, one log axis per loss)"
        if curves
        else "rates, time to spike"
    )
    figure.suptitle(f"{title}: {what}", fontsize=11)
    figure.tight_layout()
    return figure


def plot_study(
    rows: list[dict],
    curves: dict[str, list[dict]],
    survival: dict[str, list[tuple]],
    path: Path,
    title: str,
    notes: dict[str, str] | None = None,
) -> None:
    """The study's figure (study_figure) written to path."""
    save_figure(study_figure(rows, curves, survival, title, notes), path, dpi=100)


def plot_replay(curves: dict[str, list[dict]], epoch: int, label: str, path: Path) -> None:
    """One small panel per variant from the resume epoch on, over the original in grey: no curve hides
    another, and "unchanged" visibly lies on the original (it must)."""
    original = [row for row in curves.get("original", []) if row["epoch"] >= epoch]
    variants = {name: history for name, history in curves.items() if name != "original"}
    columns = 3
    grid_rows = max(1, math.ceil(len(variants) / columns))
    figure, axes = plt.subplots(grid_rows, columns, figsize=(13, 2.4 * grid_rows + 0.8), sharex=True, squeeze=False)
    for axis in axes.flat[len(variants) :]:
        axis.set_visible(False)
    for axis, (name, history) in zip(axes.flat, variants.items()):
        shown = [row for row in history if row["epoch"] >= epoch]
        axis.plot(
            [r["epoch"] for r in original],
            _positive(r["loss"] for r in original),
            color="#bbbbbb",
            linewidth=3,
            label="original",
        )
        axis.plot(
            [r["epoch"] for r in shown],
            _positive(r["loss"] for r in shown),
            color=colour_of(name),
            linewidth=1.2,
            linestyle="--" if name == "unchanged" else "-",
            label=name,
        )
        axis.set_yscale("log")
        axis.set_title(name, fontsize=9, loc="left")
        axis.grid(alpha=0.3)
        axis.tick_params(labelsize=7)
    for axis in axes[-1]:
        axis.set_xlabel("epoch", fontsize=8)
    figure.suptitle(
        f"{label}, resumed from epoch {epoch} with one change each (grey: the original run; log loss)", fontsize=10
    )
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


def thresholds_figure(rows: list[dict], curves: dict[str, list[float]], ratios, rule_ratio: float, title: str):
    """Top: the spike rate as a curve over the rule's ratio, one panel per comparison group (a curve
    that drops only at high ratios means smaller spikes, one lower everywhere means rarer ones); a
    cell at 0 at every threshold is named, not drawn (such lines lie on one another). Bottom: every
    run's largest jump per cell (log), with the median, in the same colours; n/a cells are left out."""
    groups = comparison_groups([row for row in rows if row["cell"] in curves])
    first = rows[0]["cell"]
    colours = cell_colours(groups, first)
    figure = plt.figure(figsize=(13, 8.5))
    grid = figure.add_gridspec(2, len(groups), height_ratios=[1, 1.1])
    for index, (head, members) in enumerate(groups.items()):
        axis = figure.add_subplot(grid[0, index])
        never = [cell for cell in members if not any(curves[cell])]
        for cell in (cell for cell in members if cell not in never):
            axis.plot(ratios, curves[cell], marker=".", color=colours[cell], label=cell)
        axis.axvline(rule_ratio, color="gray", linestyle=":", label=f"the rule's {rule_ratio:g}x")
        axis.set_xscale("log")
        axis.set_xticks(list(ratios), [f"{r:g}" for r in ratios], fontsize=7)
        axis.minorticks_off()
        axis.set_ylim(-0.03, 1.03)
        axis.set_xlabel("threshold: loss / lowest loss before (x)", fontsize=8)
        axis.set_ylabel("share of runs that reach it", fontsize=8)
        axis.set_title(f"spike rate over thresholds: {head} and the cells compared with it", fontsize=9, loc="left")
        axis.grid(alpha=0.3)
        axis.set_xlim(min(ratios) / 1.1, max(ratios) * 1.1)
        said = f"no run reached {min(ratios):g}x its lowest loss: {', '.join(never)}" if never else None
        if len(never) == len(members):  # nothing drawn: say so where the curves would be
            axis.text(
                0.5, 0.5, said, transform=axis.transAxes, ha="center", va="center", fontsize=9, backgroundcolor="white"
            )
            said = None
        legend = axis.legend(fontsize=7, title=said)
        legend.get_title().set_fontsize(7)
    strip = figure.add_subplot(grid[1, :])
    shown = [row for row in rows if row["cell"] in curves]
    for position, row in enumerate(shown):
        jumps = row.get("jumps") or []
        offsets = [position + 0.25 * ((i % 7) - 3) / 3 for i in range(len(jumps))]
        strip.scatter(offsets, _positive(jumps), s=10, color=colours[row["cell"]], alpha=0.7)
        if row.get("median_jump"):
            strip.hlines(row["median_jump"], position - 0.35, position + 0.35, color="black", linewidth=1.5)
    strip.axhline(rule_ratio, color="gray", linestyle=":")
    strip.set_yscale("log")
    strip.set_xlim(-0.6, len(shown) - 0.4)
    strip.set_xticks(range(len(shown)), [row["cell"] for row in shown], rotation=30, ha="right", fontsize=8)
    label_log_ticks(strip, *strip.get_ylim())
    strip.set_ylabel("largest jump per run (x, log)", fontsize=8)
    strip.set_title(
        "every run's largest jump (black: the cell's median; dotted: the rule's threshold)", fontsize=9, loc="left"
    )
    strip.grid(alpha=0.3, axis="y")
    figure.suptitle(f"{title}: spikes without the rule's one threshold", fontsize=11)
    figure.tight_layout()
    return figure


def plot_thresholds(
    rows: list[dict], curves: dict[str, list[float]], ratios, rule_ratio: float, path: Path, title: str
) -> None:
    """The threshold figure (thresholds_figure) written to path."""
    save_figure(thresholds_figure(rows, curves, ratios, rule_ratio, title), path, dpi=100)
