"""Are the spike predictors predictive? Measured on a study's runs (issue 11, part 3).

    python -m study.predictors [--sweep study/evidence.yaml]   # after `python -m study.report`

Reads the report's files (<prefix>_runs.csv, <prefix>_histories.csv.gz) and writes
<prefix>_predictors.md / .csv / .png. Definitions (the same for every predictor):

- a spike is an episode of epochs the divergence rule flags (divergence: in params.yaml); its
  onset is the episode's first epoch;
- an alarm is an epoch where a predictor's value crosses its threshold from below (the first
  epoch above it counts too); alarms inside a flagged episode are not predictions and are left out;
- recall at horizon K: the share of spike onsets with an alarm in the K epochs before them;
  precision at K: the share of alarms followed by a spike onset within K epochs; lead: onset epoch
  minus the earliest alarm in that window; chance precision: the share of all unflagged epochs
  followed by an onset within K (what alarms at random epochs would score).

Predictors: Bai et al.'s lambda_grad against 2/lr (beta_1 = 0) and against the momentum threshold
(2 + 2 beta_1) / ((1 - beta_1) lr); the largest eigenvalue against 2/lr (sampled every few epochs
only); Wortsman et al.'s g2_over_v_rms against 1; and the naive baseline: the loss at 2x its lowest
so far. Runs whose history lacks a predictor's column (SGD: no preconditioner) are left out of it.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Callable
from pathlib import Path

from spikelab.divergence import SpikeWatch
from spikelab.errors import UserError, run_entry_point
from spikelab.figures import plt, save_figure
from spikelab.params import load_params
from study.report import RESULTS, read_histories, read_records
from study.stats import wilson_interval
from study.sweep import SWEEP_FILE, calm_cells, load_sweep, run_prefix
from study.tables import format_cell, markdown_table, write_csv, write_text

HORIZONS = (5, 10)
WINDOW = (-20, 5)  # epochs around a spike onset drawn in the figure
# one lambda_grad curve suffices (its two thresholds differ by a constant); lambda_max is sampled sparsely
DRAWN = ("lambda_grad > 2/lr", "g2_over_v_rms > 1", "naive: loss > 2 x lowest so far")

Predictor = tuple[str, str, Callable[[dict, dict], float]]  # (name, column it needs, row, context -> value / threshold)


def predictors(beta_1: float) -> list[Predictor]:
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
        ("naive: loss > 2 x lowest so far", "loss", lambda row, context: row["loss"] / context["lowest"]),
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


def score(runs: list[tuple[list[int], list[int], list[bool]]], horizon: int) -> dict:
    """runs: (onsets, alarms, flags) per run -> recall, precision, lead, chance precision."""
    spikes = preceded = raised = followed = quiet = quiet_followed = 0
    leads = []
    for spike_onsets, alarm_epochs, flags in runs:
        for onset in spike_onsets:
            spikes += 1
            before = [a for a in alarm_epochs if onset - horizon <= a < onset]
            if before:
                preceded += 1
                leads.append(onset - min(before))
        for alarm in alarm_epochs:
            raised += 1
            followed += any(alarm < onset <= alarm + horizon for onset in spike_onsets)
        for epoch, flag in enumerate(flags, start=1):
            if not flag:
                quiet += 1
                quiet_followed += any(epoch < onset <= epoch + horizon for onset in spike_onsets)
    return {
        "spikes": spikes,
        "preceded": preceded,
        "recall": preceded / spikes if spikes else None,
        "recall_ci": wilson_interval(preceded, spikes),
        "alarms": raised,
        "followed": followed,
        "precision": followed / raised if raised else None,
        "precision_ci": wilson_interval(followed, raised),
        "chance_precision": quiet_followed / quiet if quiet else None,
        "median_lead": statistics.median(leads) if leads else None,
    }


def run_flags(histories: dict[str, list[dict]], rule) -> dict[str, list[bool]]:
    """{run: the divergence rule's flag per epoch}, computed once for the table and the figure."""
    return {name: flagged_epochs([row.get("loss", math.nan) for row in h], rule) for name, h in histories.items()}


def evaluate(histories: dict[str, list[dict]], flags: dict[str, list[bool]], beta_1: float) -> list[dict]:
    rows = []
    for name, column, value in predictors(beta_1):
        measured = {run: h for run, h in histories.items() if any(column in row for row in h)}
        per_run = []
        for run, history in measured.items():
            values = predictor_values(history, value)
            per_run.append((onsets(flags[run]), alarms(values, flags[run]), flags[run]))
        for horizon in HORIZONS:
            rows.append({"predictor": name, "horizon": horizon, "runs": len(per_run), **score(per_run, horizon)})
    return rows


def rate(count: int, total: int, interval) -> str:
    if not total:
        return "-"
    low, high = interval
    return f"{count}/{total} = {count / total:.2f} [{low:.2f}, {high:.2f}]"


def table_rows(rows: list[dict]) -> list[dict]:
    return [
        {
            "predictor": row["predictor"],
            "K": row["horizon"],
            "runs": row["runs"],
            "recall: spikes with an alarm in the K epochs before": rate(
                row["preceded"], row["spikes"], row["recall_ci"]
            ),
            "precision: alarms followed by a spike within K": rate(row["followed"], row["alarms"], row["precision_ci"]),
            "chance precision": format_cell(row["chance_precision"]),
            "median lead (epochs)": format_cell(row["median_lead"]),
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
        for run, history in histories.items():
            if not any(column in row for row in history):
                continue
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
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    sweep = load_sweep(args.sweep)
    prefix = run_prefix(sweep, quick=False)
    calm = calm_cells(sweep, list(sweep.get("cells") or {}))
    histories = read_histories(args.results / f"{prefix}_histories.csv.gz")
    if not histories:
        raise UserError(
            f"predictors: no {prefix}_histories.csv.gz in {args.results}; run `python -m study.report` first"
        )
    records = read_records(args.results / f"{prefix}_runs.csv")
    params = load_params()
    flags = run_flags(histories, params.divergence)
    rows = evaluate(histories, flags, params.optimizer.beta_1)
    write_csv(args.results / f"{prefix}_predictors.csv", rows, list(rows[0]))
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
        "Definitions: `python -m study.predictors --help` / study/predictors.py. Rates with 95% Wilson intervals.\n\n"
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
    return 0


if __name__ == "__main__":
    run_entry_point(main)
