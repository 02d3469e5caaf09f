"""`make compare`: your own default run, the committed one and the current commit's experiments in
one table that fits a terminal.

    python -m tools.compare [--all] [--all-commits]

A chaotic run differs per CPU model from the first epoch (the default run jumps 50x on the machine
that made the committed metrics, 11.5x on another), so an experiment is read against a default run
made on this machine by this code: the newest finished MLflow run of the committed params.yaml
whose host and CPU model are this machine's and whose commit has the same `spikelab/` and `stages/`
as HEAD. It stays found after a plain `dvc exp run -S` replaced the workspace's outputs. The
committed run follows as a reference, labelled with the machine and commit that made it; then the
workspace's last run where it is neither, then each experiment: its name, only the params that
differ from the committed params.yaml (`dvc exp run -S` leaves its changes in the workspace's
file, so a table against that file would show the wrong change, or none), and the metrics that
answer "did it spike, did it stay up, where did it end". The table fits WIDTH columns; `--all`
prints every column, unwrapped.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import textwrap
from pathlib import Path

from ruamel.yaml import YAML

from spikelab.metric_names import lab_name, mlflow_key
from spikelab.params import flat_raw, flatten, params_from_dict
from spikelab.plumbing.errors import run_entry_point
from spikelab.plumbing.machine import cpu_model
from study.dvc_calls import READ_RETRIES, dvc, parse_exp_show
from study.sweep import changed_params, format_value
from study.tables import format_cell
from tools.exp import committed_params_text, parse_params_text

WIDTH = 100  # a terminal's columns
GAP = "  "
NAME_WIDTH = 22  # the run column's most; longer names wrap after a comma
COLUMNS = (
    ("name", "run"),
    ("changed", "changed params"),
    ("spiked_at", "spike at"),
    ("jump_ratio", "jump"),
    ("plateaued", "stayed up"),
    ("final_loss", "final loss"),
    ("val_accuracy", "val acc"),
)
WRAPPED = {"name": NAME_WIDTH, "changed": None}  # None: whatever width the others leave
ALL_COLUMNS = (
    ("name", "run"),
    ("changed", "changed params (vs committed params.yaml)"),
    ("diverged", "diverged"),
    ("divergence_epoch", "divergence epoch"),
    ("jump_ratio", "jump"),
    ("min_epoch", "min epoch"),
    ("min_loss", "min loss"),
    ("peak_loss", "peak loss"),
    ("plateaued", "plateaued"),
    ("plateau_start_epoch", "plateau from"),
    ("final_loss", "final loss"),
    ("final_val_loss", "final val loss"),
    ("best_val_accuracy", "val accuracy (best)"),
    ("val_accuracy", "val accuracy (last)"),
)
# the columns read from train.json and rules.json
TRAINED = [key for key, _ in ALL_COLUMNS if key not in ("name", "changed", "best_val_accuracy", "val_accuracy")]
TRAIN, RULES, EVALUATE = "metrics/train.json", "metrics/rules.json", "metrics/evaluate.json"
FLAGS = ("diverged", "plateaued")  # logged to MLflow as 0/1
LOCAL, COMMITTED = "default, here", "default, committed"
# what a run's metrics depend on besides its params: the code the stages run (dvc.yaml's deps)
CODE = ("spikelab", "stages")
# params compared by the store's search, the rest compared here: a study's hundreds of runs stay there
SEARCHED = ("train.seed", "loss.name", "optimizer.name", "optimizer.learning_rate", "train.epochs")


def judged(metrics: dict) -> dict:
    """A run's train.json with its rules.json (the plateau rule, judged after training) merged in."""
    return metrics.get(TRAIN, {}) | metrics.get(RULES, {})


def compare_row(name: str, params: dict, train: dict, evaluate: dict, defaults: dict) -> dict:
    changed = [f"{key}={format_value(value)}" for key, value in changed_params(params, defaults).items()]
    row = {"name": name, "changed": " ".join(changed) or "(none)", **{key: train.get(key) for key in TRAINED}}
    row["spiked_at"] = train.get("divergence_epoch") if train.get("diverged") else ("no" if train else None)
    row["val_accuracy"] = (evaluate.get("last") or {}).get("accuracy")
    row["best_val_accuracy"] = (evaluate.get("best") or {}).get("accuracy")
    return row


def baselines(payload: list[dict]) -> dict[str, dict]:
    """`dvc exp show --json` -> {commit: {params, metrics}} of each baseline commit (not the workspace)."""
    found = {}
    for commit in payload:
        if commit.get("rev") == "workspace":
            continue
        data = commit.get("data") or {}
        found[commit.get("rev")] = {
            "params": flat_raw(((data.get("params") or {}).get("params.yaml") or {}).get("data")),
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
        params.update(flat_raw(((stage or {}).get("params") or {}).get("params.yaml")))
    return params


def workspace_row(committed: dict) -> dict | None:
    """The workspace's last run, from its metrics files and dvc.lock (none before the first run)."""
    files = [Path(TRAIN), Path(RULES), Path(EVALUATE)]
    params = workspace_run_params()
    if params is None or not all(path.exists() for path in files):
        return None
    train, rules, evaluate = (json.loads(path.read_text()) for path in files)
    row = compare_row("workspace", params, train | rules, evaluate, committed["params"])
    run_file = Path("metrics/run.json")
    row["run_id"] = json.loads(run_file.read_text()).get("mlflow_run_id") if run_file.exists() else None
    return row


# ---- the baselines: your default run and the committed one ----------------------------------------


def git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], capture_output=True, text=True)


def same_code(commit: str, head: str) -> bool:
    """Whether the stages' code (CODE) at commit is HEAD's (False for a commit this repo lacks)."""
    return commit == head or (bool(commit) and git("diff", "--quiet", commit, head, "--", *CODE).returncode == 0)


def committed_params() -> dict[str, str]:
    """The committed params.yaml as the train stage logs it to MLflow: {`section.key`: str(value)}."""
    raw = parse_params_text(committed_params_text(), "params.yaml at HEAD")
    return {key: str(value) for key, value in flatten(params_from_dict(raw)).items()}


def mlflow_row(name: str, metrics: dict, defaults: dict) -> dict:
    """A run's row from its MLflow metrics: summary/<key> (train.json, rules.json; flags as 0/1) and
    eval/<model>.<key> (evaluate.json)."""
    metrics = {lab_name(key): value for key, value in metrics.items()}
    train = {key.removeprefix("summary."): value for key, value in metrics.items() if key.startswith("summary.")}
    train |= {key: bool(train[key]) for key in FLAGS if key in train}
    train |= {key: int(value) for key, value in train.items() if key.endswith("_epoch")}
    evaluate: dict = {}
    for key, value in metrics.items():
        if key.startswith("eval.") and key.count(".") == 2:
            _, model, score = key.split(".")
            evaluate.setdefault(model, {})[score] = value
    return compare_row(name, defaults, train, evaluate, defaults)


def local_default_run(experiment: str, head: str, defaults: dict) -> dict | None:
    """Your default run: the newest finished, evaluated run of the committed params in the project's
    MLflow store, made on this host and CPU model by HEAD's code; None when there is none (or no store)."""
    from mlflow.tracking import MlflowClient

    # spikelab.tracking.tracking_uri's store, without its import of Keras (seconds)
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return None
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    wanted = committed_params()
    host, machine = socket.gethostname(), cpu_model()
    search = " and ".join(
        ["attributes.status = 'FINISHED'", f"tags.`spikelab.host` = '{host}'"]
        + [f"params.`{key}` = '{wanted[key]}'" for key in SEARCHED]
    )
    for run in client.search_runs([found.experiment_id], search, order_by=["attributes.start_time DESC"]):
        tags, params = run.data.tags, run.data.params
        if (
            tags.get("spikelab.machine", machine) != machine  # runs made before the tag: the host says it
            or "mlflow.parentRunId" in tags  # a study's population member, trained beside others
            or mlflow_key("eval.last.accuracy") not in run.data.metrics  # its rules and evaluate stages never ran
            or any(params.get(key) != value for key, value in wanted.items())
            or not same_code(tags.get("mlflow.source.git.commit", ""), head)
        ):
            continue
        row = mlflow_row(LOCAL, run.data.metrics, defaults)
        commit = tags.get("mlflow.source.git.commit", "")[:7]
        row["about"] = f"MLflow run {run.info.run_id[:8]} (`{run.info.run_name}`), {machine}, commit {commit}"
        row["run_id"] = run.info.run_id
        return row
    return None


def committed_provenance() -> str:
    """Where the committed run was made: the machine and commit its run.json records, or the commit
    that last changed metrics/train.json."""
    commit = git("log", "-1", "--format=%H", "HEAD", "--", TRAIN).stdout.strip()
    if not commit:
        return f"none: HEAD has no {TRAIN}"
    shown = git("show", "HEAD:metrics/run.json")
    facts = json.loads(shown.stdout) if shown.returncode == 0 else {}
    machine = facts.get("machine") or "a machine metrics/run.json does not record"
    return f"a reference, committed in {(facts.get('git_commit') or commit)[:7]}, made on {machine}"


def compare_rows(payload: list[dict], head: str, workspace: dict | None = None, local: dict | None = None) -> list:
    """Your default run first (where there is one), the committed run, the workspace's last run
    where it is neither, then each experiment with its changes against its own commit's params.yaml."""
    found = baselines(payload)
    committed = found.get(head) or {"params": {}, "metrics": {}}
    metrics = committed["metrics"]
    head_row = compare_row(
        COMMITTED, committed["params"], judged(metrics), metrics.get(EVALUATE, {}), committed["params"]
    )
    rows = [local] if local is not None else []
    rows.append(head_row)

    def results(row: dict) -> dict:
        return {key: value for key, value in row.items() if key not in ("name", "run_id", "about")}

    if workspace is not None:
        is_local = local is not None and workspace.get("run_id") == local.get("run_id")
        if not is_local and results(workspace) != results(head_row):
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


# ---- the table -----------------------------------------------------------------------------------


def wrap(text: str, width: int) -> list[str]:
    """text in lines of at most width characters, broken after a space or a comma; a longer piece
    is broken after its `=`, then cut."""
    pieces = []
    for piece in re.split(r"(?<=[ ,])", text):
        pieces += re.split(r"(?<==)", piece) if len(piece.rstrip()) > width else [piece]
    lines = [""]
    for piece in pieces:
        if len(lines[-1] + piece.rstrip()) > width:
            lines.append("")
        while len(piece.rstrip()) > width:
            lines[-1], piece = piece[:width], piece[width:]
            lines.append("")
        lines[-1] += piece
    return [line.rstrip() for line in lines if line.strip()] or [""]


def text_table(rows: list[dict], columns, width: int | None = WIDTH) -> str:
    """A padded table; with a width, the WRAPPED columns wrap so that every line fits it."""
    titles = [title for _, title in columns]
    cells = [[format_cell(row.get(key)) for key, _ in columns] for row in rows]
    widths = [max([len(title)] + [len(line[index]) for line in cells]) for index, title in enumerate(titles)]
    if width is not None:
        wrapped = [index for index, (key, _) in enumerate(columns) if key in WRAPPED]
        for index in wrapped:
            most = WRAPPED[columns[index][0]]
            if most is None:
                others = sum(widths[other] for other in range(len(columns)) if other != index)
                most = width - others - len(GAP) * (len(columns) - 1)
            widths[index] = max(len(titles[index]), min(widths[index], most))
    lines = [GAP.join(title.ljust(size) for title, size in zip(titles, widths)).rstrip()]
    lines.append(GAP.join("-" * size for size in widths))
    for line in cells:
        pieces = [wrap(cell, size) if width is not None else [cell] for cell, size in zip(line, widths)]
        for number in range(max(map(len, pieces))):
            parts = [(piece[number] if number < len(piece) else "").ljust(size) for piece, size in zip(pieces, widths)]
            lines.append(GAP.join(parts).rstrip())
    return "\n".join(lines) + "\n"


def notes(rows: list[dict], width: int | None = WIDTH) -> str:
    """Where each baseline row comes from, in lines that fit the width."""
    local = next((row for row in rows if row["name"] == LOCAL), None)
    if local is not None:
        said = [f"{LOCAL}: your newest default run here, {local['about']}."]
    else:
        said = [
            f"No default run of this code on this machine ({cpu_model()}) in the MLflow store: `make repro` "
            "makes one (`dvc repro --force` when DVC finds nothing to do). Until then the experiments "
            "can only be read against the committed run, made elsewhere."
        ]
    said.append(f"{COMMITTED}: {committed_provenance()}.")
    if width is None:
        return "\n".join(said) + "\n"
    return "".join(textwrap.fill(line, width, subsequent_indent="  ") + "\n" for line in said)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--all", action="store_true", help="every column, unwrapped (wider than a terminal)")
    parser.add_argument("--all-commits", action="store_true", help="experiments of every commit, not only HEAD's")
    args = parser.parse_args(argv)
    payload = json.loads(
        dvc("exp", "show", "--json", *(["--all-commits"] if args.all_commits else []), retries=READ_RETRIES).stdout
        or "[]"
    )
    head = git("rev-parse", "HEAD").stdout.strip()
    committed = baselines(payload).get(head) or {"params": {}, "metrics": {}}
    experiment = committed["params"].get("tracking.experiment")
    local = local_default_run(experiment, head, committed["params"]) if experiment else None
    rows = compare_rows(payload, head, workspace_row(committed), local)
    width = None if args.all else WIDTH
    print(text_table(rows, ALL_COLUMNS if args.all else COLUMNS, width) + "\n" + notes(rows, width), end="")
    return 0


if __name__ == "__main__":
    run_entry_point(main)
