"""Stage train: <split.npz> -> <models>/, <metrics>/{train.json, history.csv, run.json, loss_curve.png}; one MLflow run.

    python -m stages.train data/split.npz models metrics      (the paths come from dvc.yaml)

Order matters: every check that can fail (params, inputs, data format, the tracking store) runs
before the MLflow run opens and before any training, so a bad setup costs seconds and leaves
neither outputs nor an orphan run.
"""

import signal
import sys
from pathlib import Path

from spikelab.divergence import describe_training
from spikelab.params import flatten, load_params
from spikelab.plumbing.errors import DiskFullError, InputError, disk_full_error, disk_full_in, one_line, run_entry_point
from spikelab.plumbing.files import read_npz
from spikelab.plumbing.lean_imports import without_sklearn
from spikelab.plumbing.lifetime import die_with_parent
from spikelab.plumbing.machine import cpu_model
from spikelab.plumbing.native_logs import quiet_native_startup
from spikelab.plumbing.timing import StageClock
from spikelab.snapshots import check_resume, check_resume_in_project

STOPPED_BY: list[str] = []  # the signal that stopped the training, once one arrived


def _raise_interrupt(signum, frame):
    # one signal ends the training; the ones after it are ignored, or a second SIGTERM (dvc forwards
    # one, the kernel's parent-death signal is another) would cut short the MLflow run's KILLED ending
    for ignored in (signal.SIGTERM, signal.SIGINT):
        signal.signal(ignored, signal.SIG_IGN)
    STOPPED_BY.append(signal.Signals(signum).name)
    raise KeyboardInterrupt(f"signal {STOPPED_BY[0]}")


def main() -> None:
    split_path, models_dir, metrics_dir = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    clock = StageClock("train")
    die_with_parent(signal.SIGTERM)  # a killed `dvc repro` stops this stage (run KILLED, no outputs)
    # params and data are checked before TensorFlow and MLflow load (seconds of imports)
    params = load_params()
    if params.train.resume_from is not None:
        check_resume_in_project(params.train.resume_from)
        check_resume(params.train.resume_from, params.train.resume_epoch)
    arrays = read_npz(split_path, ("x_train", "y_train", "x_val", "y_val"), produced_by="split")

    with quiet_native_startup(), without_sklearn():  # TensorFlow's import and first op (a test convolution) print noise
        from spikelab.epoch_logging import MlflowEpochLogger
        from spikelab.model import resolve_data_format
        from spikelab.outputs import write_training_outputs
        from spikelab.tracking import git_commit, log_metrics_at, training_run
        from spikelab.training import train

        try:
            data_format = resolve_data_format(params.model.data_format)
        except ValueError as error:
            raise InputError(one_line(error)) from None
        if params.train.resume_from is not None:  # before the MLflow run opens
            from spikelab.model import build_model
            from spikelab.snapshots import check_resume_weights

            image_size = arrays["x_train"].shape[-1]
            check_resume_weights(params.train.resume_from, build_model(params.model, image_size, data_format))
    print(f"train: data format {data_format} (model.data_format = {params.model.data_format})")
    # both signals end the run as KILLED; SIGINT is set explicitly because a process started in
    # the background by a non-interactive shell inherits it ignored, and Python then never raises
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _raise_interrupt)

    with training_run(params.tracking.experiment, flatten(params) | {"model.data_format_used": data_format}) as run:
        clock.lap("startup")  # imports, checks, data, the MLflow run opened
        try:
            result = train(
                params, arrays, data_format, models_dir / "snapshots", [MlflowEpochLogger(run.run_id, run=run)]
            )
        except Exception as error:
            # an interrupt raised inside one of TensorFlow's context managers can come out as its
            # RuntimeError ("Exiting device scope ..."): still an interrupt, so the run ends KILLED
            if STOPPED_BY:
                raise KeyboardInterrupt(f"signal {STOPPED_BY[0]}") from error
            # a full disk at a snapshot, raised inside Keras's fit: the one line, not the traceback
            if isinstance(full := disk_full_in(error), DiskFullError):
                raise full from None
            raise
        seconds = clock.lap("training")
        if result.fresh_optimizer_variables:
            print(f"train: resumed with fresh optimizer state for {len(result.fresh_optimizer_variables)} variables")
        epochs_trained = max(1, len(result.history) - (params.train.resume_epoch or 0))
        run_facts = {
            "mlflow_run_id": run.run_id,
            "data_format": data_format,
            "train_seconds": seconds,
            "seconds_per_epoch": seconds / epochs_trained,
            # where the run was made: `make compare` labels the committed run with these
            "machine": cpu_model(),
            "git_commit": git_commit(Path.cwd()),
        }
        try:
            metrics, metric_files, model_files = write_training_outputs(
                result, params, models_dir, metrics_dir, run_facts
            )
        except OSError as error:
            if disk_full_in(error) is None:
                raise
            # two models (last, best) of the state's size, plus the metrics and the picture
            needed = 2 * sum(v.numpy().nbytes for v in result.model.weights) + 1_000_000
            raise disk_full_error(models_dir, needed, "(the training's models and metrics)") from None
        run.log_results(metrics, metric_files, model_files)
        clock.lap("outputs")  # written, and logged to MLflow
        first_epoch = result.epoch_seconds[0] if result.epoch_seconds else 0.0
        run.call("log timing", log_metrics_at, run.run_id, clock.metrics(first_epoch=first_epoch), 0)
    sentence = describe_training(metrics, result.history, params.divergence, params.plateau)
    print(f"train: {sentence}; MLflow run {run.name} ({run.run_id})")
    # an MLflow failure after the run opened exits 0 all the same: every output is written and valid,
    # DVC records it, and the one line below says how to complete the MLflow run from those files
    if run.incomplete_line():
        print(run.incomplete_line())


if __name__ == "__main__":
    try:
        run_entry_point(main, stage="train")
    except KeyboardInterrupt as interrupt:
        reason = str(interrupt) or "signal SIGINT"  # Python's own KeyboardInterrupt carries no text
        print(
            f"train: interrupted ({reason}); no final outputs written (complete snapshots may remain), "
            "MLflow run marked KILLED",
            file=sys.stderr,
        )
        sys.exit(130)
