"""The study's report: every sweep experiment -> a table per intervention (markdown + CSV) and a figure.

    python -m study.report [--quick]      # make report; writes study/results/<sweep|quick>.{md,csv,png}
                                          # and <sweep|quick>_runs.csv (one row per planned run)

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

from spikelab.errors import UserError, run_entry_point
from spikelab.history import history_row, read_history_csv
from study.experiments import experiments_by_name, history_of
from study.figures import plot_dead_zone, plot_study
from study.population import POPULATIONS, is_finished, member_dir
from study.stats import fisher_exact, kaplan_meier, wilson_interval
from study.sweep import SWEEP_FILE, Cell, Run, expand, format_value, load_defaults, load_sweep, run_prefix
from study.tables import markdown_table, write_csv, write_csv_gz, write_text

RESULTS = Path("study/results")
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
TABLE_COLUMNS = (
    ("cell", "intervention"),
    ("overrides", "overrides"),
    ("reference", "compared with"),
    ("n_runs", "n runs"),
    ("n_failed", "n failed"),
    ("divergence_rate_text", "divergence rate [95% CI]"),
    ("divergence_p", "p (Fisher)"),
    ("n_nan", "n NaN"),
    ("median_spike_epoch", "median spike epoch"),
    ("median_jump_ratio", "median jump (diverged)"),
    ("median_spike_ratio", "median peak/min"),
    ("median_final_loss", "median final loss"),
    ("median_val_accuracy", "median val accuracy"),
    ("plateau_rate_text", "stays-up rate (plateau rule) [95% CI]"),
    ("plateau_p", "p (Fisher)"),
    ("median_final_dead_fraction", "median dead fraction at the end"),
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


def aggregate(records: list[dict], cells: list[Cell]) -> list[dict]:
    """A row per cell, in sweep order; a cell that equals an earlier one reports that cell's runs.

    Each rate carries its 95% Wilson interval and the two-sided p-value of Fisher's exact test
    against the cell's reference (`compare_with`, else the first cell, the sweep's baseline; None
    where the reference's runs are the row's own).
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
            known = row["reference"] is not None and row[count] is not None and against[count] is not None
            row[p_key] = fisher_exact(row[count], row["n_runs"], against[count], against["n_runs"]) if known else None
        rows.append(row)
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
    if experiment["state"] != "success":
        return record  # its metrics files are the start commit's, not its own
    return _with_metrics(
        record,
        experiment["metrics"].get("metrics/train.json", {}),
        experiment["metrics"].get("metrics/evaluate.json", {}),
    )


def _with_metrics(record: dict, train: dict, evaluate: dict) -> dict:
    record.update({key: train.get(key) for key in TRAIN_KEYS})
    record["val_accuracy"] = (evaluate.get("last") or {}).get("accuracy")
    if record["diverged"] is None:  # train.json missing: the run cannot be judged
        record["state"] = "failed"
    return record


def population_record(run: Run, folder: Path) -> dict:
    """A planned run joined with its population member's folder (study/population.py): the same
    record as run_record's, from the same train.json and evaluate.json; engine `population`."""
    record = run_record(run, None) | {"engine": "population"}
    if not is_finished(folder):
        return record | {"state": "failed" if folder.exists() else "missing"}
    metrics = folder / "metrics"
    record["state"] = "success"
    return _with_metrics(
        record, json.loads((metrics / "train.json").read_text()), json.loads((metrics / "evaluate.json").read_text())
    )


# ---- writing ----------------------------------------------------------------------------------------


def write_report(
    records: list[dict], cells: list[Cell], prefix: str, results: Path = RESULTS, histories: dict | None = None
) -> list[dict]:
    """Tables, figures and (read from git unless given) the per-epoch histories archive."""
    rows = aggregate(records, cells)
    results.mkdir(parents=True, exist_ok=True)
    write_csv(results / f"{prefix}.csv", rows, list(rows[0]) if rows else ["cell"])
    write_csv(results / f"{prefix}_runs.csv", records, RUN_COLUMNS)
    states = {state: sum(1 for r in records if r["state"] == state) for state in sorted({r["state"] for r in records})}
    text = (
        f"# Study results: `{prefix}`\n\n{len(records)} planned runs: "
        + ", ".join(f"{n} {state}" for state, n in states.items())
        + ". Divergence rate, medians: over finished runs; a NaN run counts as diverged; rates carry 95% Wilson"
        " intervals and Fisher's exact test (two-sided) against the cell named in 'compared with';"
        " failed, queued and missing runs are counted in `n failed`. Per run: "
        + f"`{prefix}_runs.csv`.\n\n"
        + markdown_table(rows, TABLE_COLUMNS)
        + f"\n![{prefix}]({prefix}.png)\n"
    )
    write_text(results / f"{prefix}.md", text)
    if histories is None:  # from git: each experiment's commit holds its history.csv
        histories = {r["name"]: history_of(r["rev"]) for r in records if r["state"] == "success"}
        write_histories(results / f"{prefix}_histories.csv.gz", histories)
    curves = {}
    for cell in cells:
        if cell.same_as is None:
            typical = representative([r for r in records if r["cell"] == cell.name])
            if typical and histories.get(typical["name"]):
                curves[f"{cell.name} (seed {typical['seed']})"] = histories[typical["name"]]
    plot_study(rows, curves, time_to_spike(records, cells), results / f"{prefix}.png", f"spikelab study: {prefix}")
    plateaued = [r for r in records if r["state"] == "success" and r["plateaued"]]
    if plateaued:  # the mechanism, on the first plateaued run in sweep order
        first = plateaued[0]
        title = f"{first['name']}: the plateau is its dead samples"
        plot_dead_zone(histories[first["name"]], title, results / f"{prefix}_dead_zone.png")
    return rows


def write_histories(path: Path, histories: dict[str, list[dict]]) -> None:
    """Every finished run's per-epoch history in one gzipped CSV (column `run` first), so each rate and
    curve of the report can be recomputed from the repository without re-running anything."""
    measured = sorted({key for rows in histories.values() for row in rows for key in row} - {"epoch"})
    rows = [{"run": name, **row} for name, history in histories.items() for row in history]
    write_csv_gz(path, rows, ["run", "epoch", *measured])


# ---- reading a report back from its files ------------------------------------------------------------


def _parsed(key: str, text: str):
    """A _runs.csv cell back to its value: "" is None, True/False bools, counts ints, the rest floats."""
    if text == "" or key in ("name", "cell", "state", "rev", "engine"):
        return text or None
    if text in ("True", "False"):
        return text == "True"
    return int(text) if key in ("seed", "divergence_epoch", "epochs_run") else float(text)


def read_records(path: Path) -> list[dict]:
    """A committed <prefix>_runs.csv as run records (columns it predates are None)."""
    with open(path, newline="") as handle:
        return [
            {key: _parsed(key, row.get(key, "") or "") for key in RUN_COLUMNS} | {"state": row["state"]}
            for row in csv.DictReader(handle)
        ]


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
    parser.add_argument("--results", type=Path, default=RESULTS)
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
    sweep = load_sweep(args.sweep)
    cells, runs = expand(sweep, load_defaults(), quick=args.quick)
    prefix = run_prefix(sweep, args.quick)
    if args.engine == "population" and not args.from_files:
        folders = {run.name: member_dir(prefix, run.name, args.populations) for run in runs}
        records = [population_record(run, folders[run.name]) for run in runs]
        if all(record["state"] == "missing" for record in records):
            raise UserError(
                f"report: none of the {len(records)} runs of {args.sweep} has a population member under "
                f"{args.populations / prefix}; nothing written (run `python -m study.population --sweep {args.sweep}` first)"
            )
        histories = {
            r["name"]: read_history_csv(folders[r["name"]] / "metrics" / "history.csv")
            for r in records
            if r["state"] == "success"
        }
        args.results.mkdir(parents=True, exist_ok=True)
        write_histories(args.results / f"{prefix}_histories.csv.gz", histories)
        rows = write_report(records, cells, prefix, args.results, histories)
    elif args.from_files:
        records = read_records(args.results / f"{prefix}_runs.csv")
        histories = read_histories(args.results / f"{prefix}_histories.csv.gz")
        rows = write_report(records, cells, prefix, args.results, histories)
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
        rows = write_report(records, cells, prefix, args.results)
    print(markdown_table(rows, TABLE_COLUMNS))
    print(f"report: {args.results / prefix}.md, .csv, _runs.csv, .png")
    return 0


if __name__ == "__main__":
    run_entry_point(main)
