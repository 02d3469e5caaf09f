"""`make compare`: the experiments of the current commit in one narrow table.

    python -m study.compare [--all-commits]

`dvc exp show` is ~1,000 columns wide (every param, every metric, every dependency hash), so the
parameter a user changed scrolls out of sight. This prints one row per experiment, the workspace
first: its name, only the params that differ from params.yaml, and the handful of metrics that
answer "did it spike, and where did it end".
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from spikelab.errors import run_entry_point
from study.experiments import experiments_of
from study.sweep import changed_params, format_value, load_defaults
from study.tables import markdown_table

COLUMNS = (
    ("name", "experiment"),
    ("changed", "changed params (vs params.yaml)"),
    ("diverged", "diverged"),
    ("divergence_epoch", "divergence epoch"),
    ("jump_ratio", "jump"),
    ("plateaued", "plateaued"),
    ("final_loss", "final loss"),
    ("val_accuracy", "val accuracy (last)"),
)


def compare_row(name: str, params: dict, train: dict, evaluate: dict, defaults: dict) -> dict:
    changed = [f"{key}={format_value(value)}" for key, value in changed_params(params, defaults).items()]
    return {
        "name": name,
        "changed": " ".join(changed) or "(none)",
        **{key: train.get(key) for key in ("diverged", "divergence_epoch", "jump_ratio", "plateaued", "final_loss")},
        "val_accuracy": (evaluate.get("last") or {}).get("accuracy"),
    }


def workspace_row(defaults: dict) -> dict | None:
    """The last `dvc repro` here, from its metrics files (none before the first run)."""
    files = [Path("metrics/train.json"), Path("metrics/rules.json"), Path("metrics/evaluate.json")]
    if not all(path.exists() for path in files):
        return None
    train, rules, evaluate = (json.loads(path.read_text()) for path in files)
    train |= rules
    return compare_row("workspace", defaults, train, evaluate, defaults)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--all-commits", action="store_true", help="experiments of every commit, not only HEAD's")
    args = parser.parse_args(argv)
    defaults = load_defaults()
    rows = [row for row in [workspace_row(defaults)] if row]
    for experiment in sorted(experiments_of(args.all_commits), key=lambda record: record["name"]):
        metrics = experiment["metrics"]
        row = compare_row(
            experiment["name"],
            experiment["params"],
            metrics.get("metrics/train.json", {}) | metrics.get("metrics/rules.json", {})
            if experiment["state"] == "success"
            else {},
            metrics.get("metrics/evaluate.json", {}) if experiment["state"] == "success" else {},
            defaults,
        )
        if experiment["state"] != "success":
            row["changed"] += f" [{experiment['state']}]"
        rows.append(row)
    print(markdown_table(rows, COLUMNS), end="")
    return 0


if __name__ == "__main__":
    run_entry_point(main)
