"""MLflow tracking: one store per project, reachable before training, safe for parallel runs.

`training_run` is the whole life of a training's MLflow run (store, tags, params, the
FINISHED / KILLED / FAILED ending); `log_metrics_at` logs metrics at a step, for any stage.

The default store is sqlite:///<project root>/mlflow.db with artifacts in <project root>/mlruns,
which is what `mlflow ui` opens from the project root. DVC runs queued and temp experiments in
a copy of the repo under <root>/.dvc/tmp/exps/ that lacks git-ignored files; the project root is
found from that path so such runs still land in the one store. MLFLOW_TRACKING_URI overrides.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import keras
import mlflow
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from spikelab.errors import TrackingError


def project_root(start: Path | None = None) -> Path:
    """The repo root, seen through DVC's experiment copies (<root>/.dvc/tmp/exps/...)."""
    here = (start or Path.cwd()).resolve()
    parts = here.parts
    if ".dvc" in parts:
        index = parts.index(".dvc")
        if parts[index + 1 : index + 3] == ("tmp", "exps"):
            return Path(*parts[:index])
    return here


def tracking_uri(root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds, with the URI in the message, when a tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as response:
            response.read()
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise TrackingError(
            f"MLflow tracking server at {uri} (MLFLOW_TRACKING_URI) is unreachable: {reason}. "
            "Start it, or unset MLFLOW_TRACKING_URI to use the project's sqlite store."
        ) from None


@contextlib.contextmanager
def _store_lock(root: Path):
    """Serialise store creation: parallel first runs otherwise race on sqlite's schema migration."""
    with open(root / ".mlflow.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def retry_locked(call, *args, attempts: int = 20, **kwargs):
    """Run an MLflow call, retrying while sqlite says "database is locked" (parallel workers)."""
    for attempt in range(attempts):
        try:
            return call(*args, **kwargs)
        except Exception as error:  # MlflowException wraps sqlalchemy's OperationalError
            if "locked" not in str(error) or attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def prepare_experiment(experiment: str, root: Path) -> str:
    """Point MLflow at the store, create it and the experiment once; return the experiment id."""
    uri = tracking_uri(root)
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    is_local_sqlite = uri.startswith("sqlite:///")
    lock = _store_lock(root) if is_local_sqlite else contextlib.nullcontext()
    with lock:
        client = MlflowClient()
        found = retry_locked(client.get_experiment_by_name, experiment)
        if found is not None:
            return found.experiment_id
        # absolute artifact folder: a relative one would resolve inside DVC's throw-away copy
        location = (root / "mlruns" / experiment).as_uri() if is_local_sqlite else None
        return retry_locked(client.create_experiment, experiment, artifact_location=location)


def git_commit(root: Path) -> str:
    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def run_name() -> str:
    """The DVC experiment's name; `workspace` for a plain `dvc repro`."""
    return os.environ.get("DVC_EXP_NAME") or "workspace"


def run_tags(root: Path) -> dict[str, str]:
    tags = {"mlflow.source.git.commit": git_commit(Path.cwd()), "spikelab.project_root": str(root)}
    for variable in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        if os.environ.get(variable):
            tags[f"dvc.{variable[4:].lower()}"] = os.environ[variable]
    return tags


def _log_batch(run_id: str, metrics: list[Metric]) -> None:
    for start in range(0, len(metrics), 1000):  # MLflow's log_batch limit
        retry_locked(MlflowClient().log_batch, run_id, metrics=metrics[start : start + 1000])


def _is_number(value) -> bool:
    return isinstance(value, (int, float))  # a bool counts as 0/1 (diverged: 1)


def log_metrics_at(run_id: str, metrics: dict, step: int) -> None:
    """Log the numeric values of `metrics` at `step`; NaN and inf are stored as they are (they show a blow-up)."""
    stamp = int(time.time() * 1000)
    _log_batch(run_id, [Metric(key, float(value), stamp, step) for key, value in metrics.items() if _is_number(value)])


class MlflowEpochLogger(keras.callbacks.Callback):
    """Logs every numeric epoch log with step = epoch (1-based), in batches every few seconds.

    Batching keeps sqlite writes (and lock contention between parallel workers) rare.
    """

    def __init__(self, run_id: str, flush_every_s: float = 5.0):
        super().__init__()
        self.run_id = run_id
        self.flush_every_s = flush_every_s
        self._pending: list[Metric] = []
        self._last_flush = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        stamp = int(time.time() * 1000)
        self._pending += [
            Metric(key, float(value), stamp, epoch + 1) for key, value in (logs or {}).items() if _is_number(value)
        ]
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def on_train_end(self, logs=None):
        self.flush()

    def flush(self):
        _log_batch(self.run_id, self._pending)
        self._pending = []
        self._last_flush = time.monotonic()


class TrainingRun:
    """The open MLflow run of a training: its per-epoch logger, and what it records at the end."""

    def __init__(self, run_id: str):
        self.run_id = run_id

    def epoch_logger(self) -> MlflowEpochLogger:
        return MlflowEpochLogger(self.run_id)

    def log_results(self, metrics: dict, metric_files: list[Path], model_files: list[Path]) -> None:
        """summary.<key> metrics (bools as 0/1, nulls left out), the files as artifacts, a `diverged` tag."""
        log_metrics_at(self.run_id, {f"summary.{key}": value for key, value in metrics.items() if value is not None}, 0)
        for path in metric_files:
            retry_locked(mlflow.log_artifact, str(path))
        for path in model_files:
            retry_locked(mlflow.log_artifact, str(path), artifact_path="checkpoints")
        retry_locked(mlflow.set_tag, "diverged", str(metrics["diverged"]).lower())


@contextlib.contextmanager
def training_run(experiment: str, params: dict):
    """Open the run (named after the DVC experiment, tagged, params logged); end it FINISHED when the
    block completes, KILLED on an interrupt (SIGINT/SIGTERM arrive as KeyboardInterrupt), else FAILED."""
    root = project_root()
    experiment_id = prepare_experiment(experiment, root)
    run = retry_locked(mlflow.start_run, experiment_id=experiment_id, run_name=run_name(), tags=run_tags(root))
    status = "FAILED"
    try:
        retry_locked(mlflow.log_params, params)
        yield TrainingRun(run.info.run_id)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        retry_locked(mlflow.end_run, status=status)


def add_to_run(experiment: str, run_id: str, metrics: dict, step: int = 0) -> None:
    """Log metrics into an existing run (evaluate adds its scores to train's run)."""
    prepare_experiment(experiment, project_root())
    log_metrics_at(run_id, metrics, step)
