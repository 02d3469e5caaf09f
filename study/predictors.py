"""Are the spike predictors predictive? Measured on a study's runs (issue 11, part 3; corrected in issue 28).

    python -m study.predictors --sweep studies/evidence/sweep.yaml   # after `python -m study.report`

Reads the report's files (<prefix>_runs.csv, <prefix>_histories.csv.gz) and writes
<prefix>_predictors.md / .csv / .png. Definitions (the same for every predictor):

- a spike is an episode of epochs the divergence rule flags (divergence: in params.yaml); its
  onset is the episode's first epoch. Two targets, reported apart: *first spike* (each run's first
  onset only; the alarms and quiet epochs after it are left out) and *all onsets* (re-crossings of
  the line inside a run that already spiked count as spikes too);
- an alarm is an epoch where a predictor's value crosses its threshold from below (the first
  epoch above it counts too); alarms inside a flagged episode are not predictions and are left out;
- recall at horizon K: the share of target onsets with an alarm in the K epochs before them;
  precision at K: the share of alarms followed by a target onset within K epochs; lead: onset epoch
  minus the earliest alarm in that window;
- chance precision, within each alarm's own run: the share of that run's eligible (unflagged)
  epochs followed by a target onset within K, averaged over the alarms; what the same number of
  alarms at random epochs of the same runs would score. (Pooled over all runs, as before issue 28,
  it mixes calm cells into the baseline and flatters every predictor; the CSV keeps it.)
  lift = precision / chance;
- intervals: 95% percentile bootstrap over runs (a run is resampled whole, so the epochs of one
  run are never treated as independent); p: the two-sided bootstrap p-value of lift = 1, Holm-adjusted
  over every row of the table (one family: "does this predictor beat chance?").

Predictors: Bai et al.'s lambda_grad against 2/lr (beta_1 = 0) and against the momentum threshold
(2 + 2 beta_1) / ((1 - beta_1) lr); the largest eigenvalue against 2/lr (sampled every few epochs
only); Wortsman et al.'s g2_over_v_rms against 1; and the naive baseline: the loss at r x its lowest
so far, at the documented r = 2 and a small grid of r (NAIVE_RATIOS). A run enters a predictor only
where that predictor has at least one finite value (SGD: no preconditioner, so no lambda and no g2/v).
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np

from spikelab.divergence import SpikeWatch
from spikelab.figures import plt, save_figure
from spikelab.params import load_params
from spikelab.plumbing.errors import UserError, run_entry_point
from study.report import read_histories, read_records
from study.stats import holm, wilson_interval
from study.sweep import SWEEP_FILE, calm_cells, load_sweep, results_of, run_prefix
from study.tables import format_cell, markdown_table, write_csv, write_text

HORIZONS = (5, 10)
TARGETS = ("first spike", "all onsets")
NAIVE_RATIOS = (1.5, 2.0, 3.0, 5.0)  # 2 is the documented rule; the rest show the best naive threshold
NAIVE = "naive: loss > 2x lowest so far"
RESAMPLES = 10000  # the smallest bootstrap p is 2 / (RESAMPLES + 1)
WINDOW = (-20, 5)  # epochs around a spike onset drawn in the figure
# one lambda_grad curve suffices (its two thresholds differ by a constant); lambda_max is sampled sparsely
DRAWN = ("lambda_grad > 2/lr", "g2_over_v_rms > 1", NAIVE)

Predictor = tuple[str, str, Callable[[dict, dict], float]]  # (name, column it needs, row, context -> value / threshold)


def naive(ratio: float) -> Predictor:
    return (
        f"naive: loss > {ratio:g}x lowest so far",
        "loss",
        lambda row, context: row["loss"] / context["lowest"] / ratio,
    )


def predictors(beta_1: float) -> list[Predictor]:
    """Every value is the predictor divided by its threshold: an alarm is a crossing of 1."""
    momentum = (2 + 2 * beta_1) / (1 - beta_1)
    return [
        ("lambda_grad > 2/lr", "lambda_grad", lambda row, _: row["lambda_grad"] * row["learning_rate"] / 2),
        (
            f"lambda_grad > {momentum:g}/lr",
            "lambda_grad",
            lambda row, _: row["lambda_grad"] * row["learning_rate"] / momentum,
        ),
        ("lambda_max > 2/lr", "lambda_max", lambda row, _: row["lambda_max"] * row["learning_rate"] / 2),
        ("g2_over_v_rms > 1", "g2_over_v_rms", lambda row, _: row["g2_over_v_rms"]),
        *(naive(ratio) for ratio in NAIVE_RATIOS),
    ]


def flagged_epochs(losses: list[float], rule) -> list[bool]:
    watch = SpikeWatch(rule)
    return [watch.observe(loss) for loss in losses]


def onsets(flags: list[bool]) -> list[int]:
    """1-based first epochs of the flagged episodes."""
    return [i + 1 for i, flag in enumerate(flags) if flag and (i == 0 or not flags[i - 1])]


def predictor_values(history: list[dict], value: Callable[[dict, dict], float]) -> list[float]:
    """The predictor per epoch, NaN where not measured; `lowest` is the lowest loss before the epoch."""
    values, lowest = [], math.inf
    for row in history:
        try:
            values.append(value(row, {"lowest": lowest}))
        except (KeyError, TypeError, ZeroDivisionError):
            values.append(math.nan)
        if math.isfinite(row.get("loss", math.nan)):
            lowest = min(lowest, row["loss"])
    return values


def alarms(values: list[float], flags: list[bool], threshold: float = 1.0) -> list[int]:
    """1-based epochs where the value crosses the threshold from below, outside flagged episodes.
    A NaN (not measured that epoch) keeps the last measured state."""
    found, above = [], False
    for epoch, (value, flag) in enumerate(zip(values, flags), start=1):
        if math.isnan(value):
            continue
        now = value > threshold
        if now and not above and not flag:
            found.append(epoch)
        above = now
    return found


COUNTS = ("spikes", "preceded", "alarms", "followed", "chance_sum", "quiet", "quiet_followed")


def run_counts(
    spike_onsets: list[int], alarm_epochs: list[int], flags: list[bool], horizon: int, first_only: bool = False
) -> tuple[list[float], list[int]]:
    """One run's counts (in COUNTS order) and its leads. first_only: the target is the run's first
    onset alone, and only the epochs before it can raise an alarm or be a chance epoch.
    chance_sum: the alarms times the run's own chance (the share of its eligible quiet epochs
    followed by a target onset within the horizon)."""
    targets = spike_onsets[:1] if first_only else list(spike_onsets)
    last = targets[0] - 1 if first_only and targets else len(flags)  # the last eligible epoch
    raised = [a for a in alarm_epochs if a <= last]
    preceded, leads = 0, []
    for onset in targets:
        before = [a for a in raised if onset - horizon <= a < onset]
        if before:
            preceded += 1
            leads.append(onset - min(before))
    followed = sum(1 for a in raised if any(a < onset <= a + horizon for onset in targets))
    quiet = [epoch for epoch in range(1, last + 1) if not flags[epoch - 1]]
    quiet_followed = sum(1 for epoch in quiet if any(epoch < onset <= epoch + horizon for onset in targets))
    own_chance = quiet_followed / len(quiet) if quiet else 0.0
    return [len(targets), preceded, len(raised), followed, len(raised) * own_chance, len(quiet), quiet_followed], leads


def _ratio(numerator, denominator):
    return numerator / denominator if denominator else None


def score(runs: list[tuple[list[int], list[int], list[bool]]], horizon: int, first_only: bool = False) -> dict:
    """runs: (onsets, alarms, flags) per run -> counts, recall, precision, chance (within each alarm's
    run, and pooled), lift and median lead; `per_run`: the counts array the bootstrap resamples."""
    counted = [run_counts(*run, horizon, first_only) for run in runs]
    per_run = np.array([counts for counts, _ in counted], dtype=float).reshape(len(counted), len(COUNTS))
    total = dict(zip(COUNTS, per_run.sum(axis=0))) if len(counted) else dict.fromkeys(COUNTS, 0.0)
    leads = [lead for _, run_leads in counted for lead in run_leads]
    spikes, preceded, raised, followed = (int(total[key]) for key in ("spikes", "preceded", "alarms", "followed"))
    return {
        "spikes": spikes,
        "preceded": preceded,
        "recall": _ratio(preceded, spikes),
        "alarms": raised,
        "followed": followed,
        "precision": _ratio(followed, raised),
        "chance_precision": _ratio(total["chance_sum"], raised),
        "pooled_chance_precision": _ratio(total["quiet_followed"], total["quiet"]),
        "lift": _ratio(followed, total["chance_sum"]),
        "median_lead": statistics.median(leads) if leads else None,
        "per_run": per_run,
    }


def _percentiles(values: np.ndarray) -> tuple[float, float] | None:
    finite = values[np.isfinite(values)]
    return (float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5))) if finite.size else None


def bootstrap(per_run: np.ndarray, resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """Run-level percentile intervals of recall, precision and lift, and the two-sided bootstrap
    p-value of lift = 1 (the share of resampled lifts on the far side of 1, doubled)."""
    if not len(per_run):
        return {"recall_ci": None, "precision_ci": None, "lift_ci": None, "lift_p": None}
    draws = np.random.default_rng(seed).integers(0, len(per_run), size=(resamples, len(per_run)))
    sums = per_run[draws].sum(axis=1)  # (resamples, counts)
    column = {key: sums[:, i] for i, key in enumerate(COUNTS)}
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = column["preceded"] / column["spikes"]
        precision = column["followed"] / column["alarms"]
        lift = column["followed"] / column["chance_sum"]
    finite = lift[np.isfinite(lift)]
    p_value = None
    if finite.size:
        below, above = (np.sum(finite <= 1) + 1) / (finite.size + 1), (np.sum(finite >= 1) + 1) / (finite.size + 1)
        p_value = float(min(1.0, 2 * min(below, above)))
    return {
        "recall_ci": _percentiles(recall),
        "precision_ci": _percentiles(precision),
        "lift_ci": _percentiles(lift),
        "lift_p": p_value,
    }


def run_flags(histories: dict[str, list[dict]], rule) -> dict[str, list[bool]]:
    """{run: the divergence rule's flag per epoch}, computed once for the table and the figure."""
    return {name: flagged_epochs([row.get("loss", math.nan) for row in h], rule) for name, h in histories.items()}


def measured_runs(histories: dict[str, list[dict]], column: str) -> dict[str, list[dict]]:
    """The runs with at least one finite value of the column (the archive writes every column for
    every run, NaN where a run never measured it: SGD has no lambda_grad)."""
    return {
        run: history
        for run, history in histories.items()
        if any(math.isfinite(row.get(column, math.nan)) for row in history)
    }


def evaluate(histories: dict[str, list[dict]], flags: dict[str, list[bool]], beta_1: float) -> list[dict]:
    """A row per predictor x target x horizon; lift p-values Holm-adjusted over all rows."""
    rows = []
    for name, column, value in predictors(beta_1):
        per_run = []
        for run, history in measured_runs(histories, column).items():
            per_run.append((onsets(flags[run]), alarms(predictor_values(history, value), flags[run]), flags[run]))
        for target in TARGETS:
            for horizon in HORIZONS:
                scored = score(per_run, horizon, first_only=target == "first spike")
                counts = scored.pop("per_run")
                rows.append(
                    {"predictor": name, "target": target, "horizon": horizon, "runs": len(per_run), **scored}
                    | bootstrap(counts)
                )
    for row, adjusted in zip(rows, holm([row["lift_p"] for row in rows])):
        row["lift_p_holm"] = adjusted
    return rows


def rate(count: int, total: int, interval) -> str:
    if not total:
        return "-"
    low, high = interval
    return f"{count}/{total} = {count / total:.2f} [{low:.2f}, {high:.2f}]"


def _with_interval(value, interval, digits: int = 3) -> str:
    if value is None:
        return "—"
    if interval is None:
        return f"{value:.{digits}g}"
    return f"{value:.{digits}g} [{interval[0]:.{digits}g}, {interval[1]:.{digits}g}]"


def verdict(row: dict, alpha: float = 0.05) -> str:
    """Words that follow the Holm-adjusted p (and the lift's side of 1)."""
    adjusted = row.get("lift_p_holm")
    if adjusted is None or row["lift"] is None:
        return "—"
    if adjusted >= alpha:
        return "not distinguishable from chance"
    return "above chance" if row["lift"] > 1 else "below chance"


def table_rows(rows: list[dict]) -> list[dict]:
    return [
        {
            "predictor": row["predictor"],
            "target": row["target"],
            "K": row["horizon"],
            "runs": row["runs"],
            "recall [run bootstrap]": (
                f"{row['preceded']}/{row['spikes']} = " + _with_interval(row["recall"], row["recall_ci"], 2)
                if row["spikes"]
                else "—"
            ),
            "precision [run bootstrap]": (
                f"{row['followed']}/{row['alarms']} = " + _with_interval(row["precision"], row["precision_ci"], 2)
                if row["alarms"]
                else "—"
            ),
            "chance (own runs)": format_cell(row["chance_precision"]),
            "lift [run bootstrap]": _with_interval(row["lift"], row["lift_ci"], 2),
            "p": format_cell(row["lift_p"]),
            "p (Holm)": format_cell(row["lift_p_holm"]),
            "verdict": verdict(row),
            "median lead": format_cell(row["median_lead"]),
        }
        for row in rows
    ]


def aligned(histories, flags: dict[str, list[bool]], beta_1) -> dict[str, dict[int, list[float]]]:
    """{predictor: {offset from onset: values}} over every spike onset, and offset None: every quiet epoch."""
    found: dict[str, dict] = {}
    for name, column, value in predictors(beta_1):
        if name not in DRAWN:
            continue
        offsets = found.setdefault(name, {})
        for run, history in measured_runs(histories, column).items():
            values = predictor_values(history, value)
            for onset in onsets(flags[run]):
                for offset in range(WINDOW[0], WINDOW[1] + 1):
                    if 1 <= onset + offset <= len(values) and math.isfinite(values[onset + offset - 1]):
                        offsets.setdefault(offset, []).append(values[onset + offset - 1])
            offsets.setdefault(None, []).extend(v for v, f in zip(values, flags[run]) if not f and math.isfinite(v))
    return found


def plot(found: dict, path: Path, title: str) -> None:
    figure, axes = plt.subplots(1, len(found), figsize=(4.2 * len(found), 3.6), squeeze=False)
    for axis, (name, offsets) in zip(axes[0], found.items()):
        xs = sorted(o for o in offsets if o is not None)
        quartiles = [statistics.quantiles(offsets[x], n=4) if len(offsets[x]) > 1 else [offsets[x][0]] * 3 for x in xs]
        axis.fill_between(xs, [q[0] for q in quartiles], [q[2] for q in quartiles], alpha=0.25, label="spikes: IQR")
        axis.plot(xs, [q[1] for q in quartiles], marker=".", label="spikes: median")
        if offsets.get(None):
            axis.axhline(statistics.median(offsets[None]), color="gray", linestyle="--", label="quiet epochs: median")
        axis.axhline(1.0, color="tab:purple", linestyle=":", label="threshold")
        axis.axvline(0, color="red", linewidth=0.8)
        axis.set_yscale("log")
        axis.set_xlabel("epochs from the spike's onset")
        axis.set_title(f"{name}\n(value / threshold)", fontsize=9)
        axis.legend(fontsize=7)
        axis.grid(alpha=0.3)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    save_figure(figure, path)


def csv_row(row: dict) -> dict:
    """Intervals as two columns each, so the CSV stays one number per cell."""
    flat = {}
    for key, value in row.items():
        if key.endswith("_ci"):
            flat[f"{key}_low"], flat[f"{key}_high"] = value or (None, None)
        else:
            flat[key] = value
    return flat


def judged_runs(records: list[dict], cells) -> list[dict]:
    """The finished runs of these cells that the divergence rule could judge."""
    return [r for r in records if r["cell"] in cells and r["state"] == "success" and r["diverged"] is not None]


def rule_fired(runs: list[dict]) -> str:
    """How many of these runs the rule fired in: "k/n = r [low, high]"."""
    fired = sum(1 for r in runs if r["diverged"])
    return rate(fired, len(runs), wilson_interval(fired, len(runs)) or (0, 0))


def divergence_rule_firing(records: list[dict]) -> list[dict]:
    """Per cell: how often the divergence rule fired. In cells where no one expects a spike
    (AMSGrad, SGD) every firing is a false alarm of the rule."""
    rows = []
    for cell in dict.fromkeys(record["cell"] for record in records):
        done = judged_runs(records, {cell})
        jumps = [r["jump_ratio"] for r in done if r["diverged"] and r.get("jump_ratio") is not None]
        rows.append(
            {
                "cell": cell,
                "rule fired": rule_fired(done),
                "median jump when fired": format_cell(statistics.median(jumps) if jumps else None),
            }
        )
    return rows


def false_alarm_rate(records: list[dict], calm: list[str]) -> str | None:
    """The rule's firings pooled over the cells where no spike is expected."""
    done = judged_runs(records, set(calm))
    return rule_fired(done) if done else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.predictors", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", type=Path, default=SWEEP_FILE)
    parser.add_argument("--results", type=Path, help="the study's results folder (default: results/ beside the sweep)")
    args = parser.parse_args(argv)
    args.results = args.results or results_of(args.sweep)
    sweep = load_sweep(args.sweep)
    prefix = run_prefix(sweep, quick=False)
    calm = calm_cells(sweep, list(sweep.get("cells") or {}))
    histories = read_histories(args.results / f"{prefix}_histories.csv.gz")
    if not histories:
        raise UserError(
            f"predictors: no {prefix}_histories.csv.gz in {args.results}; run `python -m study.report --sweep {args.sweep}` first"
        )
    records = read_records(args.results / f"{prefix}_runs.csv")
    params = load_params()
    flags = run_flags(histories, params.divergence)
    rows = evaluate(histories, flags, params.optimizer.beta_1)
    write_csv(args.results / f"{prefix}_predictors.csv", [csv_row(row) for row in rows], list(csv_row(rows[0])))
    plot(
        aligned(histories, flags, params.optimizer.beta_1),
        args.results / f"{prefix}_predictors.png",
        prefix,
    )
    shown = table_rows(rows)
    firing = divergence_rule_firing(records)
    write_text(
        args.results / f"{prefix}_predictors.md",
        f"# Spike predictors on `{prefix}` ({len(histories)} runs)\n\n"
        "Definitions: study/predictors.py's docstring. Targets: each run's *first spike*, and *all onsets* "
        "(re-crossings inside a run that already spiked count too). Chance: alarms at random epochs of the "
        "alarm's own run. Intervals: 95% bootstrap over runs; p: bootstrap p of lift = 1, Holm-adjusted over "
        f"the {len(rows)} rows (one family). A run enters a predictor only where the predictor was measured "
        "(SGD has no lambda_grad or g2/v).\n\n"
        + markdown_table(shown, [(key, key) for key in shown[0]])
        + f"\n![predictors]({prefix}_predictors.png)\n\n## The divergence rule, per cell\n\n"
        "In cells where no one expects an Adam spike (AMSGrad: v cannot decay; SGD: no preconditioner), "
        "every firing is a false alarm of the rule.\n\n"
        + markdown_table(firing, [(key, key) for key in firing[0]])
        + (
            f"\n**False-alarm rate** of the rule, over the cells where no spike is expected ({', '.join(calm)}, "
            f"the sweep file's `no_spike_expected`): {false_alarm_rate(records, calm)}.\n"
            if calm
            else ""
        ),
    )
    print(markdown_table(shown, [(key, key) for key in shown[0]]))
    print(f"predictors: {args.results / prefix}_predictors.md, .csv, .png")
    return 0


if __name__ == "__main__":
    run_entry_point(main)
