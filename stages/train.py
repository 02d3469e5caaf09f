"""Stage train: data/split.npz -> models/, metrics/train.json, metrics/history.csv, the PNG; one MLflow run.

Order matters: every check that can fail (params, inputs, data format, the tracking store) runs
before the MLflow run opens and before any training, so a bad setup costs seconds and leaves
neither outputs nor an orphan run. The run then always ends FINISHED, KILLED or FAILED.
"""
import json
import os
import signal
import sys
import time
from pathlib import Path

from spikelab.cli import run_stage
from spikelab.files import InputError, read_npz, write_json
from spikelab.params import Params, flatten, load_params

INPUT = "data/split.npz"
MODELS = Path("models")
METRICS = Path("metrics")
PLOT = METRICS / "loss_curve.png"
SUMMARY_KEYS = ("min_loss", "final_loss", "spike_ratio", "diverged", "divergence_epoch")


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def read_inputs() -> tuple[Params, dict]:
    """Params and data, checked before TensorFlow and MLflow load (seconds of imports)."""
    params = load_params()
    if params.train.resume_from is not None and not Path(params.train.resume_from).exists():
        raise InputError(f"train.resume_from = {params.train.resume_from}: no such snapshot file")
    return params, read_npz(INPUT, ("x_train", "y_train", "x_val", "y_val"), produced_by="split")


def write_outputs(result, params: Params, data_format: str, run_id: str, seconds: float) -> tuple[dict, dict]:
    from spikelab import outputs
    from spikelab.plots import plot_run

    (MODELS / "snapshots").mkdir(parents=True, exist_ok=True)  # a declared output, even when empty
    metrics = outputs.train_metrics(result, params)
    model_paths = outputs.save_models(result, MODELS)
    outputs.write_history_csv(METRICS / "history.csv", result.history)
    write_json(METRICS / "train.json", metrics)
    epochs_trained = max(1, len(result.history) - (params.train.resume_epoch or 0))
    write_json(METRICS / "run.json", {"mlflow_run_id": run_id, "data_format": data_format,
                                      "train_seconds": seconds, "seconds_per_epoch": seconds / epochs_trained})
    optimizer, loss = params.optimizer, params.loss
    title = f"{optimizer.name} lr={optimizer.learning_rate} eps={optimizer.epsilon} {loss.name}/{loss.form}"
    plot_run(result.history, metrics["divergence_epoch"], PLOT, title=title)
    return metrics, model_paths


def log_outputs(metrics: dict, model_paths: dict) -> None:
    import mlflow

    numbers = {f"summary.{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    mlflow.log_metrics(numbers)  # bools count as 0/1; nulls (NaN runs) are left out
    for path in (METRICS / "train.json", METRICS / "history.csv", PLOT):
        mlflow.log_artifact(str(path))
    for path in model_paths.values():
        mlflow.log_artifact(str(path), artifact_path="checkpoints")
    mlflow.set_tag("diverged", str(metrics["diverged"]).lower())


def main() -> None:
    params, arrays = read_inputs()
    # the heavy imports come only now that params and data are known good
    import mlflow

    from spikelab.model import resolve_data_format
    from spikelab.tracking import MlflowEpochLogger, prepare_experiment, project_root, retry_locked, run_tags
    from spikelab.training import train

    try:
        data_format = resolve_data_format(params.model.data_format)
    except ValueError as error:
        raise InputError(str(error)) from None
    print(f"train: data format {data_format} (model.data_format = {params.model.data_format})")
    root = project_root()
    experiment_id = prepare_experiment(params.tracking.experiment, root)
    # both signals end the run as KILLED; SIGINT is set explicitly because a process started in
    # the background by a non-interactive shell inherits it ignored, and Python then never raises
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _raise_interrupt)

    # a DVC experiment's name is the natural run name; a plain `dvc repro` gets MLflow's random one
    run = retry_locked(mlflow.start_run, experiment_id=experiment_id, run_name=os.environ.get("DVC_EXP_NAME"),
                       tags=run_tags(root))
    status = "FAILED"
    try:
        mlflow.log_params(flatten(params) | {"model.data_format_used": data_format})
        started = time.perf_counter()
        result = train(params, arrays, data_format, MODELS / "snapshots", [MlflowEpochLogger(run.info.run_id)])
        if result.fresh_optimizer_variables:
            print(f"train: resumed with fresh optimizer state for {len(result.fresh_optimizer_variables)} variables")
        metrics, model_paths = write_outputs(result, params, data_format, run.info.run_id,
                                             time.perf_counter() - started)
        log_outputs(metrics, model_paths)
        status = "FINISHED"
        print("train: " + json.dumps({key: metrics[key] for key in SUMMARY_KEYS}))
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        retry_locked(mlflow.end_run, status=status)


if __name__ == "__main__":
    try:
        run_stage(main)
    except KeyboardInterrupt as interrupt:
        reason = str(interrupt) or "signal SIGINT"  # Python's own KeyboardInterrupt carries no text
        print(f"train: interrupted ({reason}); no final outputs written (complete snapshots may remain), "
              "MLflow run marked KILLED", file=sys.stderr)
        sys.exit(130)
