"""`make compare`: the committed baseline and the experiments of the current commit in one narrow table.

    python -m tools.compare [--all-commits]

`dvc exp show` is ~1,000 columns wide (every param, every metric, every dependency hash), so the
parameter a user changed scrolls out of sight. This prints one row for the committed baseline (git
HEAD's params.yaml and metrics), one for the workspace's last run where it differs from that, and
one per experiment: its name, only the params that differ from its commit's params.yaml, and the
handful of metrics that answer "did it spike, and where did it end". The changes are always
counted against the committed params.yaml, never the workspace's: `dvc exp run -S` leaves its
changes in the workspace file, and a table against that file would show the wrong change, or none.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from ruamel.yaml import YAML

from spikelab.plumbing.errors import run_entry_point
from study.dvc_calls import READ_RETRIES, dvc, parse_exp_show
from study.sweep import changed_params, format_value
from study.tables import markdown_table

COLUMNS = (
    ("name", "experiment"),
    ("changed", "changed params (vs committed params.yaml)"),
    ("diverged", "diverged"),
    ("divergence_epoch", "divergence epoch"),
    ("jump_ratio", "jump"),
    ("plateaued", "plateaued"),
    ("final_loss", "final loss"),
    ("val_accuracy", "val accuracy (last)"),
)
TRAIN, RULES, EVALUATE = "metrics/train.json", "metrics/rules.json", "metrics/evaluate.json"


def judged(metrics: dict) -> dict:
    """A run's train.json with its rules.json (the plateau rule, judged after training) merged in."""
    return metrics.get(TRAIN, {}) | metrics.get(RULES, {})


def compare_row(name: str, params: dict, train: dict, evaluate: dict, defaults: dict) -> dict:
    changed = [f"{key}={format_value(value)}" for key, value in changed_params(params, defaults).items()]
    return {
        "name": name,
        "changed": " ".join(changed) or "(none)",
        **{key: train.get(key) for key in ("diverged", "divergence_epoch", "jump_ratio", "plateaued", "final_loss")},
        "val_accuracy": (evaluate.get("last") or {}).get("accuracy"),
    }


def flat_params(params_file: dict) -> dict:
    """{section: {key: value}} or DVC's dotted keys {`section.key`: value} -> {`section.key`: value}."""
    flat = {}
    for key, value in (params_file or {}).items():
        if isinstance(value, dict):
            flat.update({f"{key}.{name}": item for name, item in value.items()})
        else:
            flat[key] = value
    return flat


def baselines(payload: list[dict]) -> dict[str, dict]:
    """`dvc exp show --json` -> {commit: {params, metrics}} of each baseline commit (not the workspace)."""
    found = {}
    for commit in payload:
        if commit.get("rev") == "workspace":
            continue
        data = commit.get("data") or {}
        found[commit.get("rev")] = {
            "params": flat_params(((data.get("params") or {}).get("params.yaml") or {}).get("data")),
            "metrics": {path: (value or {}).get("data") or {} for path, value in (data.get("metrics") or {}).items()},
        }
    return found


def workspace_run_params(lock_path: Path = Path("dvc.lock")) -> dict | None:
    """The params the workspace's outputs were made with, as dvc.lock records them: the workspace's
    params.yaml may have changed since (a `git checkout params.yaml` after an experiment)."""
    if not lock_path.exists():
        return None
    stages = (YAML(typ="safe", pure=True).load(lock_path.read_text()) or {}).get("stages") or {}
    params = {}
    for stage in stages.values():
        params.update(flat_params(((stage or {}).get("params") or {}).get("params.yaml")))
    return params


def workspace_row(committed: dict) -> dict | None:
    """The workspace's last run, from its metrics files and dvc.lock (none before the first run)."""
    files = [Path(TRAIN), Path(RULES), Path(EVALUATE)]
    params = workspace_run_params()
    if params is None or not all(path.exists() for path in files):
        return None
    train, rules, evaluate = (json.loads(path.read_text()) for path in files)
    train |= rules
    return compare_row("workspace", params, train, evaluate, committed["params"])


def compare_rows(payload: list[dict], head: str, workspace: dict | None = None) -> list[dict]:
    """The committed row first, then the workspace's last run where it differs from the committed
    one, then each experiment with its changes against its own commit's params.yaml."""
    found = baselines(payload)
    committed = found.get(head) or {"params": {}, "metrics": {}}
    metrics = committed["metrics"]
    head_row = compare_row(
        f"committed ({head[:7]})",
        committed["params"],
        judged(metrics),
        metrics.get(EVALUATE, {}),
        committed["params"],
    )
    rows = [head_row]
    if workspace is not None and {**workspace, "name": head_row["name"]} != head_row:
        rows.append(workspace)
    for experiment in sorted(parse_exp_show(payload), key=lambda record: record["name"]):
        succeeded = experiment["state"] == "success"
        row = compare_row(
            experiment["name"],
            experiment["params"],
            judged(experiment["metrics"]) if succeeded else {},
            experiment["metrics"].get(EVALUATE, {}) if succeeded else {},
            (found.get(experiment["baseline"]) or committed)["params"],
        )
        if not succeeded:
            row["changed"] += f" [{experiment['state']}]"
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--all-commits", action="store_true", help="experiments of every commit, not only HEAD's")
    args = parser.parse_args(argv)
    payload = json.loads(
        dvc("exp", "show", "--json", *(["--all-commits"] if args.all_commits else []), retries=READ_RETRIES).stdout
        or "[]"
    )
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    committed = baselines(payload).get(head) or {"params": {}, "metrics": {}}
    print(markdown_table(compare_rows(payload, head, workspace_row(committed)), COLUMNS), end="")
    return 0


if __name__ == "__main__":
    run_entry_point(main)
