"""The remedy atlas's verdicts, exactly as PREREGISTRATION.md fixes them, from the committed rows alone.

    python -m studies.remedies.atlas      # -> studies/remedies/results/atlas.{md,csv,png}, atlas_doses.png

Reads results/remedies_runs.csv (which runs finished) and results/remedies_histories.csv.gz (their
per-epoch rows); every outcome is recomputed from the histories, and the rule's verdict at the
pre-registered threshold is checked against the rows' own `diverged` / `plateaued` (the train
stage's rules), so a reader can trust that the two agree. Cells without finished runs are listed
as not yet run. Nothing here trains or reads an experiment.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spikelab.divergence import divergence_epoch, plateau_metrics
from spikelab.params import DivergenceParams, PlateauParams
from spikelab.plumbing.errors import UserError, run_entry_point
from study.stats import fisher_exact, holm, mann_whitney, wilson_interval
from study.sweep import expand, load_defaults, load_sweep, results_of
from study.tables import markdown_table, write_csv, write_text
from study.threshold_free import largest_jump

HERE = Path(__file__).resolve().parent
SWEEP = HERE / "sweep.yaml"
RESULTS = results_of(SWEEP)
PREFIX = "remedies"

# fixed by PREREGISTRATION.md
RULE = DivergenceParams(ratio=10.0, min_rise=0.01)
PLATEAU = PlateauParams(ratio=5.0, min_epochs=20)
ALPHA = 0.05
COST_FACTOR = 2.0
ROBUST_COST = (1.5, 3.0)
ROBUST_RATIOS = (5.0, 20.0)
RESAMPLES, BOOT_SEED = 2000, 0
COMMON = "full_loss_clipped"  # the training set's clipped cross-entropy: one scale for every cell
REGIMES = {"A": "baseline", "B": "plateau-baseline"}


class AtlasError(UserError, ValueError):
    """Rows the atlas cannot read; the message names the file."""


@dataclass
class Run:
    name: str
    cell: str
    seed: int
    losses: list[float]
    common: list[tuple[int, float]]  # (epoch, full_loss_clipped) where measured
    diverged_row: bool | None
    plateaued_row: bool | None


def _float(text: str) -> float:
    return float(text) if text not in ("", None) else math.nan


def read_runs(results: Path) -> dict[str, list[Run]]:
    """{cell: its finished runs}, from the committed rows and histories."""
    rows_path, histories_path = results / f"{PREFIX}_runs.csv", results / f"{PREFIX}_histories.csv.gz"
    if not rows_path.is_file() or not histories_path.is_file():
        raise AtlasError(
            f"atlas: no committed rows at {rows_path} and {histories_path}; run the study first "
            "(make study NAME=remedies), or check out a commit that has them"
        )
    with open(rows_path, newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["state"] == "success"]
    histories: dict[str, list[dict]] = {}
    with gzip.open(histories_path, "rt", newline="") as handle:
        for row in csv.DictReader(handle):
            histories.setdefault(row["run"], []).append(row)
    cells: dict[str, list[Run]] = {}
    for row in rows:
        history = sorted(histories.get(row["name"], []), key=lambda r: int(r["epoch"]))
        if not history:
            raise AtlasError(
                f"atlas: {row['name']} is a finished row of {rows_path} without a history in {histories_path}"
            )
        common = [(int(r["epoch"]), _float(r.get(COMMON, ""))) for r in history]
        run = Run(
            name=row["name"],
            cell=row["cell"],
            seed=int(row["seed"]),
            losses=[_float(r["loss"]) for r in history],
            common=[(epoch, value) for epoch, value in common if math.isfinite(value)],
            diverged_row=row["diverged"] == "True" if row["diverged"] else None,
            plateaued_row=row["plateaued"] == "True" if row["plateaued"] else None,
        )
        cells.setdefault(run.cell, []).append(run)
    return cells


# ---- outcomes, per run ---------------------------------------------------------------------------------


def spiked(run: Run, ratio: float = RULE.ratio) -> bool:
    return divergence_epoch(run.losses, DivergenceParams(ratio=ratio, min_rise=RULE.min_rise)) is not None


def stayed_up(run: Run, ratio: float = RULE.ratio) -> bool:
    return plateau_metrics(run.losses, DivergenceParams(ratio=ratio, min_rise=RULE.min_rise), PLATEAU)["plateaued"]


def lowest_common(run: Run) -> float:
    return min((value for _, value in run.common), default=math.nan)


def final_common(run: Run) -> float:
    return run.common[-1][1] if run.common else math.nan


def epochs_to(run: Run, level: float) -> tuple[int, bool]:
    """(the first measured epoch at or below level, reached?); censored at the run's last epoch."""
    for epoch, value in run.common:
        if value <= level:
            return epoch, True
    return len(run.losses), False


# ---- statistics ----------------------------------------------------------------------------------------


def newcombe(a: int, n: int, b: int, m: int) -> tuple[float, float] | None:
    """95% interval of a/n - b/m: Newcombe's hybrid score interval from the two Wilson intervals."""
    if not n or not m:
        return None
    p, q = a / n, b / m
    (l1, u1), (l2, u2) = wilson_interval(a, n), wilson_interval(b, m)
    return p - q - math.sqrt((p - l1) ** 2 + (u2 - q) ** 2), p - q + math.sqrt((u1 - p) ** 2 + (q - l2) ** 2)


def median_ratio_interval(ours: list[float], theirs: list[float]) -> tuple[float, float] | None:
    """Percentile bootstrap of median(ours) / median(theirs), runs resampled within each cell."""
    ours, theirs = [v for v in ours if math.isfinite(v)], [v for v in theirs if math.isfinite(v)]
    if not ours or not theirs:
        return None
    rng = np.random.default_rng(BOOT_SEED)
    a, b = np.array(ours), np.array(theirs)
    ratios = np.median(rng.choice(a, (RESAMPLES, len(a))), axis=1) / np.median(
        rng.choice(b, (RESAMPLES, len(b))), axis=1
    )
    ratios = ratios[np.isfinite(ratios)]
    if not len(ratios):
        return None
    return float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))


def _median(values) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(finite) if finite else None


# ---- the atlas -----------------------------------------------------------------------------------------


def regime_of(cell: str) -> str:
    return "B" if cell.startswith("plateau-") else "A"


def remedy_of(cell: str) -> str:
    return cell.removeprefix("plateau-")


def compare(cells: dict[str, list[Run]], order: list[str], cost_factor: float, ratio: float) -> list[dict]:
    """One row per remedy cell with runs, against its regime's reference: counts, tests (Holm within
    each regime's family), effect sizes, the verdict."""
    rows = []
    for cell in order:
        reference = REGIMES[regime_of(cell)]
        if cell == reference or cell not in cells or reference not in cells:
            continue
        ours, theirs = cells[cell], cells[reference]
        level = _median([lowest_common(run) for run in theirs])
        row = {
            "regime": regime_of(cell),
            "remedy": remedy_of(cell),
            "cell": cell,
            "n": len(ours),
            "n_reference": len(theirs),
            "spiked": sum(spiked(r, ratio) for r in ours),
            "spiked_reference": sum(spiked(r, ratio) for r in theirs),
            "stayed_up": sum(stayed_up(r, ratio) for r in ours),
            "stayed_up_reference": sum(stayed_up(r, ratio) for r in theirs),
            "median_jump": _median([largest_jump(r.losses, RULE.min_rise) for r in ours]),
            "median_jump_reference": _median([largest_jump(r.losses, RULE.min_rise) for r in theirs]),
            "median_lowest": _median([lowest_common(r) for r in ours]),
            "median_lowest_reference": level,
            "median_final": _median([final_common(r) for r in ours]),
            "median_final_reference": _median([final_common(r) for r in theirs]),
        }
        reached = [epochs_to(r, level) for r in ours] if level is not None else []
        row["reached_reference_level"] = sum(ok for _, ok in reached)
        row["median_epochs_to_reference_level"] = _median([epoch for epoch, _ in reached])
        row["p_spike"] = fisher_exact(row["spiked"], row["n"], row["spiked_reference"], row["n_reference"])
        row["p_stayed_up"] = fisher_exact(row["stayed_up"], row["n"], row["stayed_up_reference"], row["n_reference"])
        row["p_jump"] = mann_whitney(
            [largest_jump(r.losses, RULE.min_rise) for r in ours],
            [largest_jump(r.losses, RULE.min_rise) for r in theirs],
        )
        row["p_lowest"] = mann_whitney([lowest_common(r) for r in ours], [lowest_common(r) for r in theirs])
        row["spike_difference"] = row["spiked"] / row["n"] - row["spiked_reference"] / row["n_reference"]
        row["spike_difference_ci"] = newcombe(row["spiked"], row["n"], row["spiked_reference"], row["n_reference"])
        row["stayed_up_difference"] = row["stayed_up"] / row["n"] - row["stayed_up_reference"] / row["n_reference"]
        row["stayed_up_difference_ci"] = newcombe(
            row["stayed_up"], row["n"], row["stayed_up_reference"], row["n_reference"]
        )
        row["jump_ratio"] = (
            row["median_jump"] / row["median_jump_reference"]
            if row["median_jump"] and row["median_jump_reference"]
            else None
        )
        row["jump_ratio_ci"] = median_ratio_interval(
            [largest_jump(r.losses, RULE.min_rise) for r in ours],
            [largest_jump(r.losses, RULE.min_rise) for r in theirs],
        )
        row["lowest_ratio"] = row["median_lowest"] / level if row["median_lowest"] is not None and level else None
        row["lowest_ratio_ci"] = median_ratio_interval(
            [lowest_common(r) for r in ours], [lowest_common(r) for r in theirs]
        )
        rows.append(row)
    for regime in REGIMES:  # Holm within each family: one outcome in one regime
        members = [row for row in rows if row["regime"] == regime]
        for key in ("p_spike", "p_stayed_up", "p_jump", "p_lowest"):
            for row, adjusted in zip(members, holm([row[key] for row in members])):
                row[f"{key}_holm"] = adjusted
    for row in rows:
        row["verdict"] = verdict(row, cost_factor)
    return rows


def _significant(row: dict, key: str) -> bool:
    p = row.get(f"{key}_holm")
    return p is not None and p < ALPHA


def verdict(row: dict, cost_factor: float) -> str:
    """The pre-registered verdict words."""
    fewer = _significant(row, "p_spike") and row["spike_difference"] < 0
    fewer_up = row["regime"] == "B" and _significant(row, "p_stayed_up") and row["stayed_up_difference"] < 0
    more = (_significant(row, "p_spike") and row["spike_difference"] > 0) or (
        _significant(row, "p_stayed_up") and row["stayed_up_difference"] > 0
    )
    if fewer or fewer_up:
        cheap = row["lowest_ratio"] is not None and row["lowest_ratio"] <= cost_factor
        return "fix" if cheap else "prevents by not training"
    if more:
        return "makes it worse"
    return "no detectable effect"


def robustness(cells, order, base: list[dict]) -> dict[str, str]:
    """{cell: 'robust' or 'threshold-sensitive (...)'}: the verdict under the other cost factors and rule ratios."""
    variants = {f"cost {factor}x": compare(cells, order, factor, RULE.ratio) for factor in ROBUST_COST}
    variants |= {f"rule {ratio:g}x": compare(cells, order, COST_FACTOR, ratio) for ratio in ROBUST_RATIOS}
    found = {}
    for row in base:
        changed = [
            f"{name}: {other['verdict']}"
            for name, rows in variants.items()
            for other in rows
            if other["cell"] == row["cell"] and other["verdict"] != row["verdict"]
        ]
        found[row["cell"]] = "threshold-sensitive (" + "; ".join(changed) + ")" if changed else "robust"
    return found


def rule_checks(cells: dict[str, list[Run]]) -> list[str]:
    """Runs whose recomputed rule verdicts differ from their rows' (empty when every one agrees)."""
    wrong = []
    for runs in cells.values():
        for run in runs:
            if run.diverged_row is not None and spiked(run) != run.diverged_row:
                wrong.append(f"{run.name}: diverged {run.diverged_row} in its row, {spiked(run)} recomputed")
            if run.plateaued_row is not None and stayed_up(run) != run.plateaued_row:
                wrong.append(f"{run.name}: plateaued {run.plateaued_row} in its row, {stayed_up(run)} recomputed")
    return wrong


# ---- writing -------------------------------------------------------------------------------------------


def _p(value) -> str:
    return "" if value is None else f"{value:.2g}"


def _ci(pair, digits=2) -> str:
    return "" if pair is None else f"[{pair[0]:+.{digits}f}, {pair[1]:+.{digits}f}]"


def _ratio(value, pair) -> str:
    if value is None:
        return ""
    return f"{value:.2g}" + ("" if pair is None else f" [{pair[0]:.2g}, {pair[1]:.2g}]")


def table(rows: list[dict], robust: dict[str, str]) -> list[dict]:
    return [
        {
            "regime": row["regime"],
            "remedy": row["remedy"],
            "n": f"{row['n']} vs {row['n_reference']}",
            "spiked": f"{row['spiked']}/{row['n']} vs {row['spiked_reference']}/{row['n_reference']}",
            "spike rate difference [95% CI]": f"{row['spike_difference']:+.2f} {_ci(row['spike_difference_ci'])}",
            "p (Holm)": _p(row.get("p_spike_holm")),
            "stayed up": f"{row['stayed_up']}/{row['n']} vs {row['stayed_up_reference']}/{row['n_reference']}",
            "p stayed up (Holm)": _p(row.get("p_stayed_up_holm")),
            "largest jump, ratio of medians [95% CI]": _ratio(row["jump_ratio"], row["jump_ratio_ci"]),
            "p jump (Holm)": _p(row.get("p_jump_holm")),
            "lowest loss, ratio of medians [95% CI]": _ratio(row["lowest_ratio"], row["lowest_ratio_ci"]),
            "p lowest (Holm)": _p(row.get("p_lowest_holm")),
            "reached the reference's level": f"{row['reached_reference_level']}/{row['n']}",
            "verdict": row["verdict"],
            "robustness": robust.get(row["cell"], ""),
        }
        for row in rows
    ]


COLUMNS = [
    (key, key)
    for key in (
        "regime",
        "remedy",
        "spiked",
        "spike rate difference [95% CI]",
        "p (Holm)",
        "stayed up",
        "p stayed up (Holm)",
        "largest jump, ratio of medians [95% CI]",
        "p jump (Holm)",
        "lowest loss, ratio of medians [95% CI]",
        "p lowest (Holm)",
        "reached the reference's level",
        "verdict",
        "robustness",
    )
]


def write_figure(rows: list[dict], path: Path) -> None:
    """Spike risk (the remedy's spike rate, stayed-up rate in regime B) against cost (its lowest loss
    over the reference's), one panel per regime: a fix sits low and left of the cost line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {
        "fix": "tab:green",
        "prevents by not training": "tab:orange",
        "makes it worse": "tab:red",
        "no detectable effect": "tab:grey",
    }
    figure, axes = plt.subplots(1, 2, figsize=(13, 5.5), squeeze=False)
    for axis, (regime, title) in zip(axes[0], (("A", "spike-and-recover (default)"), ("B", "stay-up (plateau)"))):
        members = [row for row in rows if row["regime"] == regime and row["lowest_ratio"]]
        risk_key = "spiked" if regime == "A" else "stayed_up"
        for row in members:
            rate = row[risk_key] / row["n"]
            low, high = wilson_interval(row[risk_key], row["n"])
            axis.errorbar(
                row["lowest_ratio"],
                rate,
                yerr=[[max(0.0, rate - low)], [max(0.0, high - rate)]],
                fmt="o",
                color=colours[row["verdict"]],
                capsize=2,
            )
            axis.annotate(
                row["remedy"], (row["lowest_ratio"], rate), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
        reference = [row for row in rows if row["regime"] == regime]
        if reference:
            first = reference[0]
            axis.axhline(first[f"{risk_key}_reference"] / first["n_reference"], color="black", lw=0.8, ls=":")
        axis.axvline(COST_FACTOR, color="tab:orange", lw=0.8, ls="--")
        axis.set_xscale("log")
        axis.set_xlabel("cost: median lowest loss / the reference's (clipped cross-entropy, log)")
        axis.set_ylabel("spike rate" if regime == "A" else "stayed-up rate")
        axis.set_ylim(-0.05, 1.05)
        axis.set_title(f"regime {regime}: {title}", fontsize=10)
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=v) for v, c in colours.items()]
    handles += [
        plt.Line2D([], [], color="black", ls=":", label="the reference's rate"),
        plt.Line2D([], [], color="tab:orange", ls="--", label=f"cost limit ({COST_FACTOR:g}x)"),
    ]
    figure.legend(handles=handles, loc="lower center", ncol=6, fontsize=8)
    figure.suptitle("What to change when the loss spikes: risk against cost (95% Wilson intervals)")
    figure.tight_layout(rect=(0, 0.06, 1, 0.95))
    figure.savefig(path, dpi=110)
    plt.close(figure)


DOSES = {
    "epsilon": [
        ("baseline", 1e-7),
        ("eps-1e-5", 1e-5),
        ("eps-1e-3", 1e-3),
        ("eps-1e-2", 1e-2),
        ("eps-1e-1", 1e-1),
        ("eps-1", 1.0),
    ],
    "global clip norm (none = 1e2)": [("baseline", 1e2), ("gclip-1", 1.0), ("gclip-03", 0.3), ("gclip-01", 0.1)],
    "weight decay (none = 1e-4)": [("baseline", 1e-4), ("adamw-wd001", 1e-2), ("adamw-wd01", 1e-1)],
}


def write_doses(cells: dict[str, list[Run]], path: Path) -> None:
    """Spike rate and cost against each dose, both regimes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, len(DOSES), figsize=(4.5 * len(DOSES), 7), squeeze=False)
    for column, (name, doses) in enumerate(DOSES.items()):
        for regime, marker in (("A", "o-"), ("B", "s--")):
            prefix = "plateau-" if regime == "B" else ""
            reference = cells.get(REGIMES[regime], [])
            level = _median([lowest_common(r) for r in reference])
            points = [(dose, cells[prefix + cell]) for cell, dose in doses if cells.get(prefix + cell)]
            if not points:
                continue
            risk = [sum(spiked(r) for r in runs) / len(runs) for _, runs in points]
            cost = [
                (_median([lowest_common(r) for r in runs]) or math.nan) / level if level else math.nan
                for _, runs in points
            ]
            axes[0][column].plot([d for d, _ in points], risk, marker, label=f"regime {regime}")
            axes[1][column].plot([d for d, _ in points], cost, marker, label=f"regime {regime}")
        axes[0][column].set_title(name, fontsize=10)
        axes[0][column].set_ylabel("spike rate")
        axes[0][column].set_ylim(-0.05, 1.05)
        axes[1][column].set_ylabel("median lowest loss / reference's")
        axes[1][column].set_yscale("log")
        for row in (0, 1):
            axes[row][column].set_xscale("log")
            axes[row][column].set_xlabel("dose")
            axes[row][column].legend(fontsize=8)
    figure.suptitle("Dose-response: spike rate (top) and cost (bottom)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.remedies.atlas", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the committed rows are and the atlas goes")
    args = parser.parse_args(argv)
    cells = read_runs(args.results)
    order = [cell.name for cell in expand(load_sweep(SWEEP), load_defaults())[0]]
    wrong = rule_checks(cells)
    if wrong:
        raise AtlasError(
            f"atlas: the rules recomputed from the histories disagree with the rows: {'; '.join(wrong[:3])}"
        )
    rows = compare(cells, order, COST_FACTOR, RULE.ratio)
    robust = robustness(cells, order, rows)
    shown = table(rows, robust)
    write_csv(args.results / "atlas.csv", shown, [key for key, _ in COLUMNS] + ["n"])
    missing = [cell for cell in order if cell not in cells]
    runs = sum(len(r) for r in cells.values())
    text = (
        "# The remedy atlas: verdicts so far\n\n"
        f"{runs} finished runs in {len(cells)} of {len(order)} cells (pre-registered: PREREGISTRATION.md). "
        "Each remedy against its regime's reference (A: `baseline`, B: `plateau-baseline`), on the same 20 "
        "datasets; Holm within each outcome and regime over the cells run so far; the cost is the "
        "training set's clipped cross-entropy (one scale for every cell). Every rule verdict recomputed "
        "from the histories agrees with the runs' rows. No verdict here is a finding until it replicates "
        "(seeds 40-59).\n\n"
        + (markdown_table(shown, COLUMNS) if shown else "No remedy cell has runs yet.\n")
        + ("\n**Not yet run**: " + ", ".join(f"`{cell}`" for cell in missing) + "\n" if missing else "")
        + "\n![risk against cost](atlas.png)\n\n![dose-response](atlas_doses.png)\n"
    )
    write_text(args.results / "atlas.md", text)
    write_figure(rows, args.results / "atlas.png")
    write_doses(cells, args.results / "atlas_doses.png")
    print(markdown_table(shown, COLUMNS[:5] + COLUMNS[12:13]) if shown else "atlas: no remedy cell has runs yet")
    print(f"atlas: {args.results / 'atlas.md'}, atlas.csv, atlas.png, atlas_doses.png")
    return 0


if __name__ == "__main__":
    run_entry_point(main)
