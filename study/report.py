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
import math
import statistics
from pathlib import Path

from spikelab.errors import run_entry_point
from study.experiments import experiments_by_name, history_of
from study.figures import plot_dead_zone, plot_study
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
RUN_COLUMNS = ("name", "cell", "seed", "state", *TRAIN_KEYS, "val_accuracy", "rev")
TABLE_COLUMNS = (
    ("cell", "intervention"),
    ("overrides", "overrides"),
    ("n_runs", "n runs"),
    ("n_failed", "n failed"),
    ("divergence_rate", "divergence rate"),
    ("n_nan", "n NaN"),
    ("median_spike_epoch", "median spike epoch"),
    ("median_jump_ratio", "median jump (diverged)"),
    ("median_spike_ratio", "median peak/min"),
    ("median_final_loss", "median final loss"),
    ("median_val_accuracy", "median val accuracy"),
    ("plateau_rate", "stays-up rate (plateau rule)"),
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
        "n_plateaued": sum(1 for r in done if r["plateaued"]),
        "plateau_rate": sum(1 for r in done if r["plateaued"]) / len(done) if done else None,
        "median_final_dead_fraction": _median(r["final_dead_fraction"] for r in done),
    }


def aggregate(records: list[dict], cells: list[Cell]) -> list[dict]:
    """A row per cell, in sweep order; a cell that equals an earlier one reports that cell's runs."""
    rows = []
    for cell in cells:
        source = cell.same_as or cell.name
        row = {
            "cell": cell.name if not cell.same_as else f"{cell.name} (= {cell.same_as})",
            "overrides": " ".join(f"{k}={format_value(v)}" for k, v in cell.overrides.items()) or "(params.yaml)",
        }
        row.update(summarize([r for r in records if r["cell"] == source]))
        rows.append(row)
    return rows


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
        **{key: None for key in (*TRAIN_KEYS, "val_accuracy")},
    }
    if experiment is None:
        return record
    record.update(state=experiment["state"], rev=experiment["rev"])
    if experiment["state"] != "success":
        return record  # its metrics files are the start commit's, not its own
    train = experiment["metrics"].get("metrics/train.json", {})
    evaluate = experiment["metrics"].get("metrics/evaluate.json", {})
    record.update({key: train.get(key) for key in TRAIN_KEYS})
    record["val_accuracy"] = (evaluate.get("last") or {}).get("accuracy")
    if record["diverged"] is None:  # train.json missing: the run cannot be judged
        record["state"] = "failed"
    return record


# ---- writing ----------------------------------------------------------------------------------------


def write_report(records: list[dict], cells: list[Cell], prefix: str, results: Path = RESULTS) -> list[dict]:
    rows = aggregate(records, cells)
    results.mkdir(parents=True, exist_ok=True)
    write_csv(results / f"{prefix}.csv", rows, list(rows[0]) if rows else ["cell"])
    write_csv(results / f"{prefix}_runs.csv", records, RUN_COLUMNS)
    states = {state: sum(1 for r in records if r["state"] == state) for state in sorted({r["state"] for r in records})}
    text = (
        f"# Study results: `{prefix}`\n\n{len(records)} planned runs: "
        + ", ".join(f"{n} {state}" for state, n in states.items())
        + ". Divergence rate, medians: over finished runs; a NaN run counts as diverged;"
        " failed, queued and missing runs are counted in `n failed`. Per run: "
        + f"`{prefix}_runs.csv`.\n\n"
        + markdown_table(rows, TABLE_COLUMNS)
        + f"\n![{prefix}]({prefix}.png)\n"
    )
    write_text(results / f"{prefix}.md", text)
    histories = {r["name"]: history_of(r["rev"]) for r in records if r["state"] == "success"}
    write_histories(results / f"{prefix}_histories.csv.gz", histories)
    curves = {}
    for cell in cells:
        if cell.same_as is None:
            typical = representative([r for r in records if r["cell"] == cell.name])
            if typical and histories.get(typical["name"]):
                curves[f"{cell.name} (seed {typical['seed']})"] = histories[typical["name"]]
    plot_study(rows, curves, results / f"{prefix}.png", f"spikelab study: {prefix}")
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="report the quick sweep's runs")
    parser.add_argument("--sweep", type=Path, default=SWEEP_FILE)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    sweep = load_sweep(args.sweep)
    cells, runs = expand(sweep, load_defaults(), quick=args.quick)
    experiments = experiments_by_name()
    records = [run_record(run, experiments.get(run.name)) for run in runs]
    prefix = run_prefix(sweep, args.quick)
    rows = write_report(records, cells, prefix, args.results)
    print(markdown_table(rows, TABLE_COLUMNS))
    print(f"report: {args.results / prefix}.md, .csv, _runs.csv, .png")
    return 0


if __name__ == "__main__":
    run_entry_point(main)
