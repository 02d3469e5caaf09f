"""Complete a training's MLflow run from the files the train stage wrote:

    python -m tools.sync [--metrics metrics] [--models models]      (make sync)

For a run the stage reported incomplete (the store failed mid-training). Into the run named in
metrics/run.json, in the store the stages use (MLFLOW_TRACKING_URI, else the project's sqlite
store), it logs what the run lacks, under the keys the stages log (spikelab.metric_names): the
per-epoch metrics of history.csv (only the steps missing per key), train.json's summary/ and
evaluate.json's eval/ metrics, the PNG/JSON/CSV artifacts and models/*.keras checkpoints (missing,
or of another size than the file), the `diverged` tag; then it ends the run FINISHED. evaluate.json
is uploaded only when it scored this run's models: dvc.lock's evaluate stage must name the current
models/*.keras and run.json (by hash) and this evaluate.json; a `dvc repro -s train` leaves the last
evaluation of other models, which is left out (`dvc repro evaluate` scores these and logs them).
Running it again adds nothing. When the store has no such run (a new store), it creates one, tagged
study.synced_from = the old id, and reuses it next time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.tracking.context.registry import resolve_tags

from spikelab.history import read_history_csv
from spikelab.metric_names import mlflow_key
from spikelab.outputs import output_files
from spikelab.params import flatten, load_params, read_yaml
from spikelab.plumbing.errors import InputError, disk_full_error, disk_full_in, run_entry_point
from spikelab.plumbing.integrity import file_md5
from spikelab.tracking import (
    evaluation_metrics,
    log_metric_list,
    log_params,
    numeric_metrics,
    prepare_experiment,
    project_root,
    retry_locked,
    run_name,
    summary_metrics,
    tracking_uri,
)

SYNCED_FROM = "study.synced_from"


def target_run(client: MlflowClient, experiment_id: str, run_id: str, params: dict) -> str:
    """The run to complete: run_id itself, else the run an earlier sync created for it, else a new one."""
    try:
        return retry_locked(client.get_run, run_id).info.run_id
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    earlier = retry_locked(client.search_runs, [experiment_id], filter_string=f"tags.`{SYNCED_FROM}` = '{run_id}'")
    if earlier:
        return earlier[0].info.run_id
    created = retry_locked(
        client.create_run, experiment_id, tags=resolve_tags({SYNCED_FROM: run_id}), run_name=run_name()
    )
    log_params(client, created.info.run_id, params)
    return created.info.run_id


def missing_epoch_metrics(client: MlflowClient, run_id: str, history: list[dict]) -> list[Metric]:
    """history.csv's values at the (key, epoch) pairs the run lacks; step = epoch, as the epoch logger logs."""
    stamp = int(time.time() * 1000)
    missing = []
    for name in sorted({name for row in history for name in row} - {"epoch"}):
        key = mlflow_key(name)
        logged = {metric.step for metric in retry_locked(client.get_metric_history, run_id, key)}
        missing += [
            Metric(key, row[name], stamp, int(row["epoch"]))
            for row in history
            if name in row and int(row["epoch"]) not in logged
        ]
    return missing


def missing_artifacts(client: MlflowClient, run_id: str, files: list[Path], folder: str | None) -> list[Path]:
    """The files the run lacks under `folder`, or holds with another size (an upload cut short)."""
    held = {Path(item.path).name: item.file_size for item in retry_locked(client.list_artifacts, run_id, folder)}
    return [path for path in files if held.get(path.name) != path.stat().st_size]


def evaluation_matches(evaluate_file: Path, inputs: list[Path], root: Path) -> bool:
    """Whether evaluate_file is the evaluate stage's output for exactly these input files: dvc.lock
    records, per stage, the hashes of the inputs it ran on and of what it wrote."""
    lock_path = root / "dvc.lock"
    if not lock_path.is_file():
        return False
    stage = ((read_yaml(lock_path, "dvc.lock") or {}).get("stages") or {}).get("evaluate") or {}
    recorded = {
        (root / entry["path"]).resolve(): entry.get("md5")
        for entry in (stage.get("deps") or []) + (stage.get("outs") or [])
        if isinstance(entry, dict) and "path" in entry
    }
    return all(recorded.get(path.resolve()) == file_md5(path) for path in [evaluate_file, *inputs])


def sync(metrics_dir: Path, models_dir: Path) -> dict:
    """Complete the run; returns what it did (run id, values and files uploaded). A full disk under
    the store is one line naming the folder and the space the upload needs."""
    run_file = metrics_dir / "run.json"
    metric_files, model_files = output_files(models_dir, metrics_dir)
    for path in [run_file, *metric_files, *model_files]:
        if not path.is_file():
            raise InputError(f"{path}: missing; nothing to sync before the train stage completed: dvc repro train")
    params = load_params()
    try:
        return complete_run(params, metrics_dir, models_dir)
    except Exception as error:
        if disk_full_in(error) is None:
            raise
        needed = sum(path.stat().st_size for path in [*metric_files, *model_files])
        uri = tracking_uri(project_root())
        folder = project_root() / "mlruns" if uri.startswith("sqlite:///") else uri
        raise disk_full_error(folder, needed, "(the run's files, which sync uploads there)") from None


def complete_run(params, metrics_dir: Path, models_dir: Path) -> dict:
    run_file = metrics_dir / "run.json"
    metric_files, model_files = output_files(models_dir, metrics_dir)
    old_id = json.loads(run_file.read_text())["mlflow_run_id"]
    experiment_id = prepare_experiment(params.tracking.experiment, project_root())
    client = MlflowClient()
    run_id = target_run(client, experiment_id, old_id, flatten(params))
    logged = retry_locked(client.get_run, run_id).data.metrics
    metrics = missing_epoch_metrics(client, run_id, read_history_csv(metric_files[1], skip_empty=True))
    train = json.loads(metric_files[0].read_text())
    scores = summary_metrics(train)
    rules_file = metrics_dir / "rules.json"
    if rules_file.is_file():
        scores |= summary_metrics(json.loads(rules_file.read_text()))
    evaluate_file = metrics_dir / "evaluate.json"
    evaluated = [models_dir / "best.keras", models_dir / "last.keras", run_file]
    evaluation = "none"
    if evaluate_file.is_file():
        evaluation = "other"
        if evaluation_matches(evaluate_file, [p for p in evaluated if p.is_file()], Path.cwd()):
            scores |= evaluation_metrics(json.loads(evaluate_file.read_text()))
            evaluation = "uploaded"
    metrics += numeric_metrics({key: value for key, value in scores.items() if key not in logged}, 0)
    log_metric_list(run_id, metrics)
    uploads = [(path, None) for path in missing_artifacts(client, run_id, metric_files, None)]
    uploads += [(path, "checkpoints") for path in missing_artifacts(client, run_id, model_files, "checkpoints")]
    for path, folder in uploads:
        retry_locked(client.log_artifact, run_id, str(path), folder)
    retry_locked(client.set_tag, run_id, "diverged", str(train["diverged"]).lower())
    retry_locked(client.set_terminated, run_id, "FINISHED")
    return {
        "run_id": run_id,
        "synced_from": old_id,
        "metric_values": len(metrics),
        "files": len(uploads),
        "evaluation": evaluation,
        "evaluate_file": str(evaluate_file),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.sync", description=__doc__.split("\n\n")[0])
    parser.add_argument("--metrics", type=Path, default=Path("metrics"))
    parser.add_argument("--models", type=Path, default=Path("models"))
    args = parser.parse_args(argv)
    done = sync(args.metrics, args.models)
    into = "" if done["run_id"] == done["synced_from"] else f" (a new run for {done['synced_from']})"
    other = (
        f"; {done['evaluate_file']} left out: it scored other models (`dvc repro evaluate` scores this run's)"
        if done["evaluation"] == "other"
        else ""
    )
    print(
        f"sync: run {done['run_id']}{into}: {done['metric_values']} metric values and {done['files']} files "
        f"uploaded; FINISHED{other}"
    )


if __name__ == "__main__":
    run_entry_point(main)
