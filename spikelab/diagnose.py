"""The spike doctor on a finished run: `python -m spikelab.diagnose <history.csv | MLflow run id>`.

Reads the run's per-epoch history (a history.csv as the lab's train stage or SpikeMonitor writes
it, or an MLflow run's metric histories, step = epoch) and prints the verdict per spike
(spikelab.verdict). The rules are the lab's defaults unless --ratio / --min-rise / --plateau-ratio /
--plateau-epochs say otherwise; spikes are measured from a robust level of the recent past
(spikelab.verdict.RobustSpikeWatch), or with --lab-rule from the lowest loss so far.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from spikelab.history import read_history_csv
from spikelab.metric_names import lab_name
from spikelab.params import DivergenceParams, PlateauParams
from spikelab.plumbing.errors import UserError, one_line, run_entry_point
from spikelab.verdict import DEFAULT_DIVERGENCE, DEFAULT_PLATEAU, LEVEL_WINDOW, describe, diagnose, summary

RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def mlflow_history(run_id: str, tracking_uri: str | None) -> list[dict]:
    """The run's metrics as history rows, one per step >= 1 (step 0 holds the lab's run summaries),
    each under its history.csv name."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    try:
        keys = list(client.get_run(run_id).data.metrics)
    except MlflowException as error:
        raise UserError(f"MLflow run {run_id}: {one_line(error)}") from None
    rows: dict[int, dict] = {}
    for key in keys:
        for metric in client.get_metric_history(run_id, key):
            if metric.step >= 1:
                rows.setdefault(metric.step, {"epoch": metric.step})[lab_name(key)] = metric.value
    if not rows:
        raise UserError(f"MLflow run {run_id} has no per-epoch metrics (step >= 1) to diagnose")
    return [rows[step] for step in sorted(rows)]


def load_history(source: str, tracking_uri: str | None) -> list[dict]:
    if Path(source).is_file():
        rows = read_history_csv(source)
        if not rows or "loss" not in rows[0]:
            raise UserError(f"{source}: no 'loss' column; pass a history.csv with one row per epoch")
        return rows
    if RUN_ID.match(source):
        return mlflow_history(source, tracking_uri)
    raise UserError(f"{source}: neither a history.csv file nor an MLflow run id (32 hex digits)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spikelab.diagnose", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a history.csv, or an MLflow run id")
    parser.add_argument("--tracking-uri", help="the MLflow store (default: MLflow's own, MLFLOW_TRACKING_URI)")
    parser.add_argument("--ratio", type=float, default=DEFAULT_DIVERGENCE.ratio)
    parser.add_argument("--min-rise", type=float, default=DEFAULT_DIVERGENCE.min_rise)
    parser.add_argument("--plateau-ratio", type=float, default=DEFAULT_PLATEAU.ratio)
    parser.add_argument("--plateau-epochs", type=int, default=DEFAULT_PLATEAU.min_epochs)
    parser.add_argument(
        "--lab-rule",
        action="store_true",
        help="the lab's divergence rule (x the lowest loss so far) instead of the doctor's robust level",
    )
    parser.add_argument(
        "--details", action="store_true", help="every spike with all its numbers and the fix's evidence in full"
    )
    args = parser.parse_args(argv)
    try:
        rule = DivergenceParams(ratio=args.ratio, min_rise=args.min_rise)
        plateau = PlateauParams(ratio=args.plateau_ratio, min_epochs=args.plateau_epochs)
    except ValueError as error:
        raise UserError(f"bad rule: {one_line(error)}") from None
    window = None if args.lab_rule else LEVEL_WINDOW
    diagnosis = diagnose(load_history(args.source, args.tracking_uri), rule, plateau, window=window)
    print(describe(diagnosis) if args.details else summary(diagnosis, "--details"))
    return 0


if __name__ == "__main__":
    run_entry_point(main)
