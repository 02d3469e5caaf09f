"""The study's report: every sweep experiment -> a table per intervention (markdown + CSV) and a figure.

    python -m study.report --sweep studies/<name>/sweep.yaml [--quick] [--engine population] [--from-files]
        # make report NAME=<name>; writes studies/<name>/results/<prefix>.{md,csv,png} and
        # <prefix>_runs.csv (one row per planned run), <prefix>_histories.csv.gz, <prefix>_jumps.*

Where the numbers come from: `dvc exp show --json --all-commits`, not the MLflow store. DVC lists
every experiment the sweep queued under the name the sweep gave it, including queued, running and
failed ones; a run that fails before train.py opens its MLflow run (a params error, a crashed
worker) exists only there. Its metrics are the pipeline's own files (metrics/train.json,
metrics/evaluate.json), and each experiment's commit holds its metrics/history.csv (cache: false),
so curves come from git (`git show <rev>:metrics/history.csv`) without the sqlite store or the
DVC cache. MLflow stays the second view (`mlflow ui`, tag dvc.exp_name) of the same runs.
Two traps handled here: a failed experiment's commit carries the metrics files of the commit it
started from, so its metrics are dropped (it is a row with state "failed"); and a run whose loss
went NaN has null losses in train.json (nan: true), so it is a diverged row, not a missing one.

collect (I/O: dvc, git) -> run records (plain dicts) -> aggregate (pure, tested) -> write.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import math
import statistics
from pathlib import Path

from spikelab.history import history_row, read_history_csv
from spikelab.params import load_params
from spikelab.plumbing.errors import UserError, run_entry_point
from study.dvc_calls import experiments_by_name, history_of
from study.figures import plot_dead_zone, plot_study, plot_thresholds
from study.population_members import POPULATIONS, is_finished, member_dir
from study.stats import bootstrap_interval, fisher_exact, holm, kaplan_meier, mann_whitney, wilson_interval
from study.sweep import (
    SWEEP_FILE,
    Cell,
    Run,
    expand,
    format_value,
    load_defaults,
    load_sweep,
    results_of,
    run_prefix,
)
from study.tables import markdown_table, write_csv, write_csv_gz, write_text
from study.threshold_free import RATIOS, largest_jump, loss_bound, rate_curve, rule_can_fire

LATE = 30  # epochs at the end over which the loss's slope says "still climbing" or "flat"
# what a run record takes from its train.json
TRAIN_KEYS = (
    "diverged",
    "divergence_epoch",
    "jump_ratio",
    "spike_ratio",
    "min_loss",
    "final_loss",
    "nan",
    "epochs_run",
    "plateaued",
    "plateau_level",
    "final_dead_fraction",
)
RUN_COLUMNS = ("name", "cell", "seed", "state", *TRAIN_KEYS, "val_accuracy", "rev", "engine")
# where a row's numbers come from, beyond its code revision: written where the rows carry them
PROVENANCE = ("data_seed", "split_seed", "convolutions")
UNRECORDED = "unrecorded"  # a finished run's code revision that its files never kept
TABLE_COLUMNS = (
    ("cell", "intervention"),
    ("overrides", "overrides"),
    ("reference", "compared with"),
    ("n_runs", "n runs"),
    ("n_failed", "n failed"),
    ("divergence_rate_text", "divergence rate [95% CI]"),
    ("divergence_p", "p (Fisher)"),
    ("divergence_p_holm", "p (Holm)"),
    ("divergence_verdict", "spikes vs reference"),
    ("n_nan", "n NaN"),
    ("median_spike_epoch", "median spike epoch"),
    ("median_jump_ratio", "median jump (diverged)"),
    ("median_spike_ratio", "median peak/min"),
    ("median_final_loss", "median final loss"),
    ("median_val_accuracy", "median val accuracy"),
    ("plateau_rate_text", "stays-up rate (plateau rule) [95% CI]"),
    ("plateau_p", "p (Fisher)"),
    ("plateau_p_holm", "p (Holm)"),
    ("plateau_verdict", "stays up vs reference"),
    ("median_final_dead_fraction", "median dead fraction at the end"),
    ("median_late_slope", f"median loss slope, last {LATE} epochs (log/epoch)"),
    ("median_late_rise", f"median loss(end) / loss(end - {LATE})"),
)
ALPHA = 0.05
FAMILIES = (
    "Holm's adjustment runs within a family, and a family is one column of tests: every cell's "
    "test against its reference for one question (spike rate; stayed-up rate; largest jump; the "
    "predictor table's rows); a cell whose rule cannot fire (n/a) is not a member."
)


# ---- aggregation: pure functions on run records ----------------------------------------------------


def _median(values) -> float | None:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return statistics.median(finite) if finite else None


def summarize(records: list[dict]) -> dict:
    """One cell's numbers. Only finished runs count toward the rates; failed/missing ones are counted apart."""
    done = [r for r in records if r["state"] == "success"]
    diverged = [r for r in done if r["diverged"] or r["nan"]]
    # None where a run predates the plateau rule (its train.json has no `plateaued`): unknown, not 0
    n_plateaued = None if any(r.get("plateaued") is None for r in done) else sum(1 for r in done if r["plateaued"])
    return {
        "n_runs": len(done),
        "n_failed": len(records) - len(done),
        "n_diverged": len(diverged),
        "divergence_rate": len(diverged) / len(done) if done else None,
        "n_nan": sum(1 for r in done if r["nan"]),
        "median_spike_epoch": _median(r["divergence_epoch"] for r in diverged),
        "median_jump_ratio": _median(r["jump_ratio"] for r in diverged),
        "median_spike_ratio": _median(r["spike_ratio"] for r in done),
        "median_final_loss": _median(r["final_loss"] for r in done),
        "median_val_accuracy": _median(r["val_accuracy"] for r in done),
        "n_plateaued": n_plateaued,
        "plateau_rate": None if n_plateaued is None or not done else n_plateaued / len(done),
        "median_final_dead_fraction": _median(r["final_dead_fraction"] for r in done),
        "median_late_slope": _median(r.get("late_slope") for r in done),
        "median_late_rise": _median(r.get("late_rise") for r in done),
    }


def rate_with_interval(row: dict, count: str, rate: str) -> None:
    """Adds <rate>_low / _high (95% Wilson) and <rate>_text ("3/5 = 0.60 [0.23, 0.88]") to a row."""
    interval = None if row[count] is None else wilson_interval(row[count], row["n_runs"])
    row[f"{rate}_low"], row[f"{rate}_high"] = interval or (None, None)
    row[f"{rate}_text"] = (
        f"{row[count]}/{row['n_runs']} = {row[rate]:.2f} [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else None
    )


# (count, rate, p-value key): the rates every table gives with an interval and a test against the baseline
RATES = (("n_diverged", "divergence_rate", "divergence_p"), ("n_plateaued", "plateau_rate", "plateau_p"))


def verdict_words(p_holm: float | None, difference: float | None, fewer: str, more: str) -> str | None:
    """What a comparison says, following the Holm-adjusted p (alpha 0.05)."""
    if p_holm is None or difference is None:
        return None
    if p_holm >= ALPHA:
        return "no detectable difference"
    return fewer if difference < 0 else more


def aggregate(records: list[dict], cells: list[Cell], unreachable: frozenset[str] = frozenset()) -> list[dict]:
    """A row per cell, in sweep order; a cell that equals an earlier one reports that cell's runs.

    Each rate carries its 95% Wilson interval and the two-sided p-value of Fisher's exact test
    against the cell's reference (`compare_with`, else the first cell, the sweep's baseline; None
    where the reference's runs are the row's own), Holm-adjusted within its column (FAMILIES), and
    the words that adjusted p allows. unreachable: cells whose loss cannot reach the rule's
    threshold (a bounded loss): their rates read "n/a" and they take no test.
    """
    source_of = {cell.name: cell.same_as or cell.name for cell in cells}
    summaries = {name: summarize([r for r in records if r["cell"] == name]) for name in set(source_of.values())}
    rows = []
    for cell in cells:
        source, reference = source_of[cell.name], cell.reference or cells[0].name
        row = {
            "cell": cell.name if not cell.same_as else f"{cell.name} (= {cell.same_as})",
            "overrides": " ".join(f"{k}={format_value(v)}" for k, v in cell.overrides.items()) or "(params.yaml)",
            "reference": None if source == source_of[reference] else reference,
            **summaries[source],
        }
        against = summaries[source_of[reference]]
        for count, rate, p_key in RATES:
            rate_with_interval(row, count, rate)
            if source in unreachable:
                row[f"{rate}_text"] = "n/a (the loss cannot reach the rule's threshold)"
                row[p_key] = None
                continue
            known = row["reference"] is not None and row[count] is not None and against[count] is not None
            row[p_key] = fisher_exact(row[count], row["n_runs"], against[count], against["n_runs"]) if known else None
            measured = known and row[rate] is not None and against[rate] is not None
            row[f"{p_key}_difference"] = row[rate] - against[rate] if measured else None
        rows.append(row)
    for _, _, p_key in RATES:
        for row, adjusted in zip(rows, holm([row[p_key] for row in rows])):
            row[f"{p_key}_holm"] = adjusted
            row[p_key.replace("_p", "_verdict")] = verdict_words(
                adjusted, row.get(f"{p_key}_difference"), "fewer", "more"
            )
    return rows


def time_to_spike(records: list[dict], cells: list[Cell]) -> dict[str, list[tuple[float, float]]]:
    """Kaplan-Meier curves of the epoch of the first spike, one per distinct cell with finished runs:
    a run that never spiked is censored at its last epoch (it might have spiked later)."""
    curves = {}
    for cell in cells:
        done = [r for r in records if r["cell"] == cell.name and r["state"] == "success"]
        if cell.same_as is None and done:
            spiked = [bool(r["diverged"] or r["nan"]) and r["divergence_epoch"] is not None for r in done]
            times = [r["divergence_epoch"] if event else r["epochs_run"] for r, event in zip(done, spiked)]
            curves[cell.name] = kaplan_meier(times, spiked)
    return curves


def representative(records: list[dict]) -> dict | None:
    """The finished run with the median peak/min ratio (lowest seed on ties): a typical curve, not the worst."""
    done = sorted((r for r in records if r["state"] == "success"), key=lambda r: r["seed"])
    if not done:
        return None
    ranked = sorted(done, key=lambda r: r["spike_ratio"] if r["spike_ratio"] is not None else math.inf)
    return ranked[(len(ranked) - 1) // 2]


def run_record(run: Run, experiment: dict | None) -> dict:
    """A planned run joined with its experiment (None: never queued, or removed)."""
    record = {
        "name": run.name,
        "cell": run.cell,
        "seed": run.seed,
        "state": "missing",
        "rev": None,
        "engine": "dvc",
        **{key: None for key in (*TRAIN_KEYS, "val_accuracy")},
    }
    if experiment is None:
        return record
    record.update(state=experiment["state"], rev=experiment["rev"])
    params = experiment.get("params") or {}
    record.update(data_seed=params.get("data.seed"), split_seed=params.get("split.seed"))
    if experiment["state"] != "success":
        return record  # its metrics files are the start commit's, not its own
    return _with_metrics(
        record,
        experiment["metrics"].get("metrics/train.json", {}) | experiment["metrics"].get("metrics/rules.json", {}),
        experiment["metrics"].get("metrics/evaluate.json", {}),
    )


def planned_seeds(run: Run) -> dict:
    """The data and split seeds the plan gave a run, where its overrides set them (a sweep with
    data_seed_offset); None where the run took params.yaml's of its day, which the plan does not fix."""
    given = dict(override.split("=", 1) for override in run.overrides)
    return {
        "data_seed": int(given["data.seed"]) if "data.seed" in given else None,
        "split_seed": int(given["split.seed"]) if "split.seed" in given else None,
    }


def with_provenance(records: list[dict], runs: list[Run]) -> list[dict]:
    """Every row names its data: rows made before the seeds were recorded take the ones their run was
    queued with (the sweep's overrides); a finished row without a code revision says `unrecorded`
    (made before run.json kept one: its code is at or before the commit that added the row)."""
    plan = {run.name: planned_seeds(run) for run in runs}
    completed = []
    for record in records:
        record = dict(record)
        for key, value in plan.get(record["name"], {}).items():
            if record.get(key) is None:
                record[key] = value
        if record["state"] == "success" and not record.get("rev"):
            record["rev"] = UNRECORDED
        completed.append(record)
    return completed


def _with_metrics(record: dict, train: dict, evaluate: dict) -> dict:
    record.update({key: train.get(key) for key in TRAIN_KEYS})
    record["val_accuracy"] = (evaluate.get("last") or {}).get("accuracy")
    if record["diverged"] is None:  # train.json missing: the run cannot be judged
        record["state"] = "failed"
    return record


def population_record(run: Run, folder: Path) -> dict:
    """A planned run joined with its population member's folder (study/population_members.py): the same
    record as run_record's, from the same train.json and evaluate.json; engine `population`."""
    record = run_record(run, None) | {"engine": "population"}
    if not is_finished(folder):
        # a member stopped with its snapshots kept resumes where it was: not a failed run
        stopped = any((folder / "models" / "snapshots").glob("resume_*.npz"))
        return record | {"state": "stopped" if stopped else "failed" if folder.exists() else "missing"}
    metrics = folder / "metrics"
    record["state"] = "success"
    facts = json.loads((metrics / "run.json").read_text())
    flat = json.loads((folder / "params.json").read_text())
    record |= {
        "rev": facts.get("git_commit"),
        "data_seed": flat.get("data.seed"),
        "split_seed": flat.get("split.seed"),
        "convolutions": " ".join(f"{k}={v}" for k, v in sorted((facts.get("convolutions") or {}).items())) or None,
    }
    train = json.loads((metrics / "train.json").read_text()) | json.loads((metrics / "rules.json").read_text())
    return _with_metrics(record, train, json.loads((metrics / "evaluate.json").read_text()))


# ---- writing ----------------------------------------------------------------------------------------


def losses_of(history: list[dict]) -> list[float]:
    return [row.get("loss", math.nan) for row in history]


def late_change(losses: list[float], last: int = LATE) -> tuple[float | None, float | None]:
    """(slope of log(loss) per epoch over the last `last` epochs, loss(end) / loss(end - last)):
    about 0 and 1 on a flat plateau, above while the loss still climbs."""
    points = [(i, math.log(v)) for i, v in enumerate(losses[-last:]) if math.isfinite(v) and v > 0]
    slope = None
    if len(points) >= 2:
        mean_x, mean_y = statistics.fmean(x for x, _ in points), statistics.fmean(y for _, y in points)
        slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sum((x - mean_x) ** 2 for x, _ in points)
    rise = None
    if len(losses) > last and all(math.isfinite(v) for v in (losses[-1], losses[-1 - last])) and losses[-1 - last] > 0:
        rise = losses[-1] / losses[-1 - last]
    return slope, rise


def with_curve_facts(records: list[dict], histories: dict, rule) -> list[dict]:
    """Each record plus what its history says beyond train.json: its largest jump (all runs, not only
    those the rule flagged), its late slope and rise, and its last epoch's training accuracy. The
    _runs.csv columns stay as they are."""
    added = []
    for record in records:
        history = histories.get(record["name"]) or []
        losses = losses_of(history)
        slope, rise = late_change(losses) if history else (None, None)
        last_accuracy = next(
            (row["accuracy"] for row in reversed(history) if math.isfinite(row.get("accuracy", math.nan))), None
        )
        added.append(
            record
            | {
                "largest_jump": largest_jump(losses, rule.min_rise) if history else None,
                "late_slope": slope,
                "late_rise": rise,
                "final_accuracy": last_accuracy,
            }
        )
    return added


def dead_zone_at_the_end(records: list[dict], cells: list[Cell], histories: dict) -> list[dict]:
    """Per cell with dead images at the end: ranges over its runs of the last accounting's dead
    fraction, the dead images' share of the clipped loss, and what the unclipped form would charge a
    dead image on average. Each dead image costs the clipped loss exactly ~16.03, so the share is
    16.03 x the dead fraction / the loss by construction; what it measures is the rest, the share
    the live images carry."""
    rows = []
    for cell in cells:
        facts = []
        for record in (r for r in records if r["cell"] == cell.name and r["state"] == "success"):
            accounted = [
                row for row in histories.get(record["name"]) or [] if math.isfinite(row.get("dead_fraction", math.nan))
            ]
            if accounted and accounted[-1]["dead_fraction"] > 0:
                last = accounted[-1]
                facts.append(
                    (
                        last["dead_fraction"],
                        last["dead_loss_clipped"] / last["full_loss_clipped"],
                        last["dead_loss_unclipped"],
                        last["dead_loss_unclipped"] / last["dead_fraction"],
                    )
                )
        if len(facts) * 2 >= len([r for r in records if r["cell"] == cell.name]) and facts:
            fractions, shares, unclipped, charges = zip(*facts)
            rows.append(
                {
                    "cell": cell.name,
                    "runs with dead images at the end": len(facts),
                    "dead fraction": f"{min(fractions):.3f}-{max(fractions):.3f}",
                    "dead images' share of the clipped loss": f"{min(shares):.3f}-{max(shares):.3f}",
                    "live images' share": f"{max(0.0, 1 - max(shares)):.3f}-{max(0.0, 1 - min(shares)):.3f}",
                    "their unclipped loss (per training image)": f"{min(unclipped):.0f}-{max(unclipped):.0f}",
                    "unclipped charge per dead image": f"{min(charges):.0f}-{max(charges):.0f}",
                }
            )
    return rows


def unreachable_cells(records: list[dict], cells: list[Cell], histories: dict, rule) -> frozenset[str]:
    """Cells with a bounded loss that cannot reach ratio x its lowest in any of their runs."""
    found = set()
    for cell in cells:
        bound = loss_bound(cell.overrides)
        runs = [histories.get(r["name"]) for r in records if r["cell"] == cell.name and r["state"] == "success"]
        runs = [h for h in runs if h]
        if bound is not None and runs and not any(rule_can_fire(losses_of(h), bound, rule.ratio) for h in runs):
            found.add(cell.name)
    return frozenset(found)


JUMP_COLUMNS = (
    ("cell", "intervention"),
    ("reference", "compared with"),
    ("n_runs", "n runs"),
    ("rule", "rule can fire"),
    ("median_jump_text", "median largest jump [95% bootstrap]"),
    ("jump_p", "p (Mann-Whitney)"),
    ("jump_p_holm", "p (Holm)"),
    ("jump_verdict", "jump vs reference"),
    *((f"rate_{r}", f"rate at {r}x") for r in (5, 10, 20)),
    ("median_final_accuracy", "median training accuracy at the end"),
    ("median_final_dead_fraction", "median dead fraction at the end"),
    ("median_own_scale", "median final loss / its bound"),
)


def jump_rows(records: list[dict], cells: list[Cell], unreachable: frozenset[str]) -> list[dict]:
    """The threshold-free table (study/threshold_free.py): per distinct cell the distribution of the
    largest jump over all its finished runs, tested against its reference's by rank; for a cell whose
    loss cannot reach the rule, what can move: accuracy, dead fraction, its loss on its own scale."""
    done = {cell.name: [r for r in records if r["cell"] == cell.name and r["state"] == "success"] for cell in cells}
    rows = []
    for cell in cells:
        if cell.same_as is not None or not done[cell.name]:
            continue
        jumps = [r["largest_jump"] for r in done[cell.name] if r["largest_jump"] is not None]
        reference = cell.reference or cells[0].name
        against = [r["largest_jump"] for r in done[reference] if r["largest_jump"] is not None]
        interval = bootstrap_interval(jumps, statistics.median)
        bound = loss_bound(cell.overrides)
        middle = statistics.median(jumps) if jumps else None  # a run that went NaN jumped by inf
        row = {
            "cell": cell.name,
            "reference": None if reference == cell.name else reference,
            "jumps": jumps,
            "n_runs": len(done[cell.name]),
            "rule": "n/a (bounded loss)" if cell.name in unreachable else "yes",
            "median_jump": middle,
            "median_jump_text": f"{middle:.3g} [{interval[0]:.3g}, {interval[1]:.3g}]" if interval else middle,
            "jump_p": None,
            **{f"rate_{r}": share for r, share in zip(RATIOS, rate_curve(jumps))},
            "median_final_accuracy": _median(r["final_accuracy"] for r in done[cell.name]),
            "median_final_dead_fraction": _median(r["final_dead_fraction"] for r in done[cell.name]),
            "median_own_scale": _median(
                r["final_loss"] / bound for r in done[cell.name] if bound and r["final_loss"] is not None
            ),
        }
        for r in (5, 10, 20):
            row[f"rate_{r}"] = "n/a" if cell.name in unreachable else f"{row[f'rate_{r}']:.2f}"
        if row["reference"] is not None and cell.name not in unreachable and jumps and against:
            row["jump_p"] = mann_whitney(jumps, against)
            row["jump_difference"] = middle - statistics.median(against)
        rows.append(row)
    for row, adjusted in zip(rows, holm([row["jump_p"] for row in rows])):
        row["jump_p_holm"] = adjusted
        row["jump_verdict"] = verdict_words(adjusted, row.get("jump_difference"), "smaller", "larger")
    return rows


def bounded_rows(records: list[dict], cells: list[Cell], unreachable: frozenset[str]) -> list[dict]:
    """A cell the rule cannot judge, against its reference on what can move (Mann-Whitney, raw p)."""
    rows = []
    for cell in (cell for cell in cells if cell.name in unreachable):
        reference = cell.reference or cells[0].name
        mine = [r for r in records if r["cell"] == cell.name and r["state"] == "success"]
        theirs = [r for r in records if r["cell"] == reference and r["state"] == "success"]
        for key, what in (
            ("final_accuracy", "training accuracy at the end"),
            ("final_dead_fraction", "dead fraction at the end"),
            ("val_accuracy", "validation accuracy at the end"),
        ):
            a = [r[key] for r in mine if r[key] is not None]
            b = [r[key] for r in theirs if r[key] is not None]
            rows.append(
                {
                    "cell": cell.name,
                    "reference": reference,
                    "measure": what,
                    "median": _median(a),
                    "reference median": _median(b),
                    "p (Mann-Whitney)": mann_whitney(a, b),
                }
            )
    return rows


def write_threshold_free(records, cells, prefix: str, results: Path, unreachable, rule) -> list[dict]:
    rows = jump_rows(records, cells, unreachable)
    write_csv(
        results / f"{prefix}_jumps.csv", rows, [key for key in rows[0] if key not in ("jumps", "median_jump_text")]
    )
    bounded = bounded_rows(records, cells, unreachable)
    text = (
        f"# Threshold-free evidence: `{prefix}`\n\n"
        f"Largest jump: per run, the largest loss(t) / (lowest loss before t) over the epochs whose rise is at "
        f"least {rule.min_rise:g} (study/threshold_free.py), over *all* finished runs; the divergence rule fires "
        f"at ratio r exactly in the runs whose largest jump reaches r, so 'rate at r x' is the rule's rate had "
        f"its threshold been r. Median with a 95% bootstrap interval (runs resampled); Mann-Whitney against the "
        f"reference. {FAMILIES}\n\n"
        + markdown_table(rows, JUMP_COLUMNS)
        + f"\n![spike rate over thresholds]({prefix}_thresholds.png)\n"
    )
    if bounded:
        text += (
            "\n## Cells the rule cannot judge, on what can move\n\n"
            "log_cosh on a softmax output is at most log(cosh(1)) = 0.434: where that is below "
            f"{rule.ratio:g}x a run's lowest loss, neither the divergence nor the plateau rule can fire.\n\n"
            + markdown_table(bounded, [(key, key) for key in bounded[0]])
        )
    write_text(results / f"{prefix}_jumps.md", text)
    curves = {
        row["cell"]: rate_curve(
            [
                r["largest_jump"]
                for r in records
                if r["cell"] == row["cell"] and r["state"] == "success" and r["largest_jump"] is not None
            ]
        )
        for row in rows
        if row["cell"] not in unreachable
    }
    plot_thresholds(rows, curves, RATIOS, rule.ratio, results / f"{prefix}_thresholds.png", f"spikelab study: {prefix}")
    return rows


def write_report(
    records: list[dict],
    cells: list[Cell],
    prefix: str,
    results: Path,
    histories: dict | None = None,
    rule=None,
) -> list[dict]:
    """The report of one sweep in `results`: the per-run rows, the tables and the figures.

    Everything it reads comes first, then it only writes: rule is the divergence rule (params.yaml's
    when None) and histories each finished run's per-epoch rows; when None (a caller with DVC's
    records only, such as team mode's collect) they are read from git and archived as
    <prefix>_histories.csv.gz, as main does for every engine before it calls this."""
    rule = rule or load_params().divergence
    fetched = histories is None
    if fetched:
        histories = histories_from_git(records)
    results.mkdir(parents=True, exist_ok=True)
    if fetched:
        write_histories(results / f"{prefix}_histories.csv.gz", histories)
    provenance = [key for key in PROVENANCE if any(r.get(key) is not None for r in records)]
    write_csv(results / f"{prefix}_runs.csv", records, [*RUN_COLUMNS, *provenance])
    records = with_curve_facts(records, histories, rule)
    unreachable = unreachable_cells(records, cells, histories, rule)
    rows = aggregate(records, cells, unreachable)
    write_csv(results / f"{prefix}.csv", rows, list(rows[0]) if rows else ["cell"])
    states = {state: sum(1 for r in records if r["state"] == state) for state in sorted({r["state"] for r in records})}
    text = (
        f"# Study results: `{prefix}`\n\n{len(records)} planned runs: "
        + ", ".join(f"{n} {state}" for state, n in states.items())
        + ". Divergence rate, medians: over finished runs; a NaN run counts as diverged; rates carry 95% Wilson"
        " intervals and Fisher's exact test (two-sided) against the cell named in 'compared with';"
        " failed, stopped (unfinished, resumable from snapshots), queued and missing runs are counted"
        " in `n failed`. "
        + FAMILIES
        + " Verdict words follow the Holm-adjusted p (alpha 0.05). The same comparisons without the rule's"
        + f" one threshold: `{prefix}_jumps.md`. Per run: `{prefix}_runs.csv`.\n\n"
        + markdown_table(rows, TABLE_COLUMNS)
        + f"\n![{prefix}]({prefix}.png)\n"
    )
    dead = dead_zone_at_the_end(records, cells, histories)
    if dead:
        text += (
            "\n## The dead zone at the end (ranges over the runs; cells where most runs end with dead images)\n\n"
            "A dead image costs the clipped loss exactly ~16.03, so the dead images' share of it is 16.03 x the "
            "dead fraction / the loss by construction; the measured content is the live images' share.\n\n"
            + markdown_table(dead, [(key, key) for key in dead[0]])
        )

    write_text(results / f"{prefix}.md", text)
    if any(histories.values()):
        write_threshold_free(records, cells, prefix, results, unreachable, rule)
    draw_study(records, cells, rows, histories, results / f"{prefix}.png", f"spikelab study: {prefix}")
    plateaued = [r for r in records if r["state"] == "success" and r["plateaued"]]
    if plateaued:  # the mechanism, on the first plateaued run in sweep order
        first = plateaued[0]
        title = f"{first['name']}: the plateau is its dead samples"
        plot_dead_zone(histories[first["name"]], title, results / f"{prefix}_dead_zone.png")
    return rows


def draw_study(records, cells, rows, histories, path: Path, title: str, notes: dict[str, str] | None = None) -> None:
    """The study's figure: the rows' rates, time to the first spike, a typical run per distinct cell."""
    curves = {}
    for cell in cells:
        if cell.same_as is None:
            typical = representative([r for r in records if r["cell"] == cell.name])
            if typical and histories.get(typical["name"]):
                curves[f"{cell.name} (seed {typical['seed']})"] = histories[typical["name"]]
    plot_study(rows, curves, time_to_spike(records, cells), path, title, notes)


def redraw_study(sweep_file: Path, notes: dict[str, str]) -> Path:
    """The study figure <prefix>.png redrawn from the committed rows with a note beside each cell's
    bar (a later analysis's judgement); returns its path."""
    sweep, results, rule = load_sweep(sweep_file), results_of(sweep_file), load_params().divergence
    cells, _ = expand(sweep, load_defaults())
    prefix = run_prefix(sweep, quick=False)
    histories = read_histories(results / f"{prefix}_histories.csv.gz")
    records = with_curve_facts(read_records(results / f"{prefix}_runs.csv"), histories, rule)
    rows = aggregate(records, cells, unreachable_cells(records, cells, histories, rule))
    draw_study(records, cells, rows, histories, results / f"{prefix}.png", f"spikelab study: {prefix}", notes)
    return results / f"{prefix}.png"


def histories_from_git(records: list[dict]) -> dict[str, list[dict]]:
    """Each finished DVC run's per-epoch rows: its experiment's commit holds its history.csv."""
    return {r["name"]: history_of(r["rev"]) for r in records if r["state"] == "success"}


def population_rows(runs: list[Run], prefix: str, populations: Path, results: Path) -> tuple[list[dict], dict]:
    """(records, histories) of a population study: each run's member folder, or its committed row and
    history where the folder is not here (with_committed); histories in run order."""
    folders = {run.name: member_dir(prefix, run.name, populations) for run in runs}
    records = [population_record(run, folders[run.name]) for run in runs]
    histories = {
        r["name"]: read_history_csv(folders[r["name"]] / "metrics" / "history.csv")
        for r in records
        if r["state"] == "success"
    }
    taken = with_committed(records, histories, results, prefix)
    if taken:
        print(f"report: {taken} finished runs without a member folder here taken from the committed rows")
    return records, {r["name"]: histories[r["name"]] for r in records if r["state"] == "success"}


def write_histories(path: Path, histories: dict[str, list[dict]]) -> None:
    """Every finished run's per-epoch history in one gzipped CSV (column `run` first), so each rate and
    curve of the report can be recomputed from the repository without re-running anything."""
    measured = sorted({key for rows in histories.values() for row in rows for key in row} - {"epoch"})
    rows = [{"run": name, **row} for name, history in histories.items() for row in history]
    write_csv_gz(path, rows, ["run", "epoch", *measured])


# ---- reading a report back from its files ------------------------------------------------------------


def _parsed(key: str, text: str):
    """A _runs.csv cell back to its value: "" is None, True/False bools, counts ints, the rest floats."""
    if text == "" or key in ("name", "cell", "state", "rev", "engine", "convolutions"):
        return text or None
    if text in ("True", "False"):
        return text == "True"
    return int(text) if key in ("seed", "divergence_epoch", "epochs_run", "data_seed", "split_seed") else float(text)


def read_records(path: Path) -> list[dict]:
    """A committed <prefix>_runs.csv as run records (columns it predates are None; provenance
    columns only where it has them)."""
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        columns = [*RUN_COLUMNS, *(key for key in PROVENANCE if key in (reader.fieldnames or []))]
        return [
            {key: _parsed(key, row.get(key, "") or "") for key in columns} | {"state": row["state"]} for row in reader
        ]


def with_committed(records: list[dict], histories: dict, results: Path, prefix: str) -> int:
    """Runs with no member folder here that the committed rows hold as finished (a study spread over
    sittings on other machines): their committed record and history stand in. Returns how many."""
    path = results / f"{prefix}_runs.csv"
    if not path.exists():
        return 0
    committed = {r["name"]: r for r in read_records(path) if r["state"] == "success"}
    committed_histories = read_histories(results / f"{prefix}_histories.csv.gz")
    taken = 0
    for index, record in enumerate(records):
        found = committed.get(record["name"])
        if record["state"] == "missing" and found is not None and record["name"] in committed_histories:
            records[index] = found
            histories[record["name"]] = committed_histories[record["name"]]
            taken += 1
    return taken


def read_histories(path: Path) -> dict[str, list[dict]]:
    """A committed <prefix>_histories.csv.gz back to {run name: its rows}; {} when there is none."""
    if not path.exists():
        return {}
    histories: dict[str, list[dict]] = {}
    with gzip.open(path, "rt", newline="") as handle:
        for cells in csv.DictReader(handle):
            histories.setdefault(cells.pop("run"), []).append(history_row(cells))
    return histories


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="report the quick sweep's runs")
    parser.add_argument("--sweep", type=Path, default=SWEEP_FILE)
    parser.add_argument("--results", type=Path, help="where the results go (default: results/ beside the sweep file)")
    parser.add_argument(
        "--from-files",
        action="store_true",
        help="recompute from the committed <prefix>_runs.csv and _histories.csv.gz, without DVC's experiments",
    )
    parser.add_argument(
        "--engine",
        choices=("dvc", "population"),
        default="dvc",
        help="where the runs are: DVC experiments (dvc), or population members' folders (population)",
    )
    parser.add_argument("--populations", type=Path, default=POPULATIONS, help="the population members' root folder")
    args = parser.parse_args(argv)
    args.results = args.results or results_of(args.sweep)
    sweep = load_sweep(args.sweep)
    cells, runs = expand(sweep, load_defaults(), quick=args.quick)
    prefix = run_prefix(sweep, args.quick)
    rule = load_params().divergence
    # read everything first: the rows and each finished run's history, from where the runs are
    if args.from_files:
        records = read_records(args.results / f"{prefix}_runs.csv")
        histories = read_histories(args.results / f"{prefix}_histories.csv.gz")
    elif args.engine == "population":
        records, histories = population_rows(runs, prefix, args.populations, args.results)
        if all(record["state"] == "missing" for record in records):
            raise UserError(
                f"report: none of the {len(records)} runs of {args.sweep} has a population member under "
                f"{args.populations / prefix}; nothing written (run `python -m study.population --sweep {args.sweep}` first)"
            )
    else:
        experiments = experiments_by_name()
        records = [run_record(run, experiments.get(run.name)) for run in runs]
        if all(record["state"] == "missing" for record in records):
            # a checkout without the study's experiments (a fresh clone, another machine) would
            # overwrite the committed results with a table of missing runs
            raise UserError(
                f"report: none of the {len(records)} runs of {args.sweep} is a DVC experiment in this repository; "
                f"nothing written (run the study first, or recompute from the committed rows with --from-files)"
            )
        histories = histories_from_git(records)
    records = with_provenance(records, runs)
    # then write: the histories archive (unless it is what was read), the rows, tables and figures
    if not args.from_files:
        args.results.mkdir(parents=True, exist_ok=True)
        write_histories(args.results / f"{prefix}_histories.csv.gz", histories)
    rows = write_report(records, cells, prefix, args.results, histories, rule)
    print(markdown_table(rows, TABLE_COLUMNS))
    print(f"report: {args.results / prefix}.md, .csv, _runs.csv, .png")
    return 0


if __name__ == "__main__":
    run_entry_point(main)
