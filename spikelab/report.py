"""The study's report: every sweep experiment -> a table per intervention (markdown + CSV) and a figure.

    python -m spikelab.report [--quick]   # make report; writes study/results/<sweep|quick>.{md,csv,png}
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
import io
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

from spikelab.files import atomic_path
from spikelab.study import SWEEP_FILE, Cell, Run, expand, format_value, load_defaults, load_sweep

RESULTS = Path("study/results")
RUN_COLUMNS = ("name", "cell", "seed", "state", "diverged", "divergence_epoch", "jump_ratio", "spike_ratio",
               "min_loss", "final_loss", "nan", "val_accuracy", "epochs_run", "rev")
TRAIN_KEYS = ("diverged", "divergence_epoch", "jump_ratio", "spike_ratio", "min_loss", "final_loss", "nan", "epochs_run")
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
    }


def aggregate(records: list[dict], cells: list[Cell]) -> list[dict]:
    """A row per cell, in sweep order; a cell that equals an earlier one reports that cell's runs."""
    rows = []
    for cell in cells:
        source = cell.same_as or cell.name
        row = {"cell": cell.name if not cell.same_as else f"{cell.name} (= {cell.same_as})",
               "overrides": " ".join(f"{k}={format_value(v)}" for k, v in cell.overrides.items()) or "(params.yaml)"}
        row.update(summarize([r for r in records if r["cell"] == source]))
        rows.append(row)
    return rows


def _format(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def markdown_table(rows: list[dict], columns=TABLE_COLUMNS) -> str:
    lines = ["| " + " | ".join(title for _, title in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_format(row.get(key)) for key, _ in columns) + " |")
    return "\n".join(lines) + "\n"


def representative(records: list[dict]) -> dict | None:
    """The finished run with the median peak/min ratio (lowest seed on ties): a typical curve, not the worst."""
    done = sorted((r for r in records if r["state"] == "success"), key=lambda r: r["seed"])
    if not done:
        return None
    ranked = sorted(done, key=lambda r: r["spike_ratio"] if r["spike_ratio"] is not None else math.inf)
    return ranked[(len(ranked) - 1) // 2]


def run_record(run: Run, experiment: dict | None) -> dict:
    """A planned run joined with its experiment (None: never queued, or removed)."""
    record = {"name": run.name, "cell": run.cell, "seed": run.seed, "state": "missing", "rev": None,
              **{key: None for key in RUN_COLUMNS[4:-1]}}
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


# ---- collection: dvc and git ------------------------------------------------------------------------


def parse_exp_show(payload: list[dict]) -> list[dict]:
    """`dvc exp show --json` -> [{name, rev, state, timestamp, baseline, metrics}], newest per name."""
    found: dict[str, dict] = {}
    for commit in payload:
        for experiment in commit.get("experiments") or []:
            revision = (experiment.get("revs") or [{}])[0]
            data = revision.get("data") or {}
            executor = experiment.get("executor") or {}
            state = executor.get("state") or "success"
            if revision.get("error"):
                state = "failed"
            record = {
                "name": experiment.get("name") or revision.get("name"),
                "rev": revision.get("rev"),
                "state": state,
                "timestamp": data.get("timestamp") or "",
                "baseline": commit.get("rev"),
                "metrics": {path: (value or {}).get("data") or {} for path, value in (data.get("metrics") or {}).items()},
                "params": {f"{section}.{key}": value
                           for section, values in (((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}).items()
                           if isinstance(values, dict) for key, value in values.items()},
            }
            if record["name"] and record["timestamp"] >= found.get(record["name"], {}).get("timestamp", ""):
                found[record["name"]] = record
    return list(found.values())


def experiments_of(all_commits: bool = True) -> list[dict]:
    args = ["dvc", "exp", "show", "--json"] + (["--all-commits"] if all_commits else [])
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
    return parse_exp_show(json.loads(result.stdout or "[]"))


def history_of(rev: str, path: str = "metrics/history.csv") -> list[dict]:
    """An experiment's per-epoch rows, from its commit; [] when the commit lacks them."""
    result = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True)
    if result.returncode != 0:
        return []
    return [{key: float(value) if value != "" else math.nan for key, value in row.items()}
            for row in csv.DictReader(io.StringIO(result.stdout))]


# ---- writing ----------------------------------------------------------------------------------------


def write_csv(path: Path, rows: list[dict], columns) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
            writer.writeheader()
            writer.writerows({key: ("" if row.get(key) is None else row.get(key)) for key in columns} for row in rows)


def plot_study(rows: list[dict], curves: dict[str, list[dict]], path: Path, title: str) -> None:
    """Left: divergence rate per intervention (k/n, failed). Right: one typical loss curve per intervention."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
        epochs = [row["epoch"] for row in history]
        losses = [row["loss"] if row["loss"] > 0 else math.nan for row in history]
        lines.plot(epochs, losses, label=cell, linewidth=1)
    lines.set_yscale("log")
    lines.set_xlabel("epoch")
    lines.set_ylabel("training loss (log)")
    lines.set_title("a typical run per intervention (median peak/min)", fontsize=10, loc="left")
    lines.grid(alpha=0.3)
    if curves:
        lines.legend(fontsize=7)
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=100)
    plt.close(figure)


def write_report(records: list[dict], cells: list[Cell], prefix: str, results: Path = RESULTS) -> list[dict]:
    rows = aggregate(records, cells)
    results.mkdir(parents=True, exist_ok=True)
    write_csv(results / f"{prefix}.csv", rows, ["cell", "overrides", "n_runs", "n_failed", "n_diverged", "divergence_rate",
                                                "n_nan", "median_spike_epoch", "median_jump_ratio", "median_spike_ratio",
                                                "median_final_loss", "median_val_accuracy"])
    write_csv(results / f"{prefix}_runs.csv", records, RUN_COLUMNS)
    states = {state: sum(1 for r in records if r["state"] == state) for state in sorted({r["state"] for r in records})}
    text = (f"# Study results: `{prefix}`\n\n{len(records)} planned runs: "
            + ", ".join(f"{n} {state}" for state, n in states.items())
            + ". Divergence rate, medians: over finished runs; a NaN run counts as diverged;"
              " failed, queued and missing runs are counted in `n failed`. Per run: "
            + f"`{prefix}_runs.csv`.\n\n" + markdown_table(rows) + f"\n![{prefix}]({prefix}.png)\n")
    with atomic_path(results / f"{prefix}.md") as tmp:
        tmp.write_text(text)
    curves = {}
    for cell in cells:
        if cell.same_as is None:
            typical = representative([r for r in records if r["cell"] == cell.name])
            history = history_of(typical["rev"]) if typical else []
            if history:
                curves[f"{cell.name} (seed {typical['seed']})"] = history
    plot_study(rows, curves, results / f"{prefix}.png", f"spikelab study: {prefix}")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spikelab.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="report the quick sweep's runs")
    parser.add_argument("--sweep", type=Path, default=SWEEP_FILE)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    try:
        cells, runs = expand(load_sweep(args.sweep), load_defaults(), quick=args.quick)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    experiments = {e["name"]: e for e in experiments_of(all_commits=True)}
    records = [run_record(run, experiments.get(run.name)) for run in runs]
    prefix = "quick" if args.quick else "sweep"
    rows = write_report(records, cells, prefix, args.results)
    print(markdown_table(rows))
    print(f"report: {args.results / prefix}.md, .csv, _runs.csv, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
