"""MLflow tracking: one store per project, reachable before training, safe for parallel runs.

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

from spikelab.cli import TrackingError  # defined there, so stages that never track stay light


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


def run_tags(root: Path) -> dict[str, str]:
    tags = {"mlflow.source.git.commit": git_commit(Path.cwd()), "spikelab.project_root": str(root)}
    for variable in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        if os.environ.get(variable):
            tags[f"dvc.{variable[4:].lower()}"] = os.environ[variable]
    return tags


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
        for key, value in (logs or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                # MLflow stores NaN and inf as they are: they show that the run blew up
                self._pending.append(Metric(key, float(value), stamp, epoch + 1))
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def on_train_end(self, logs=None):
        self.flush()

    def flush(self):
        for start in range(0, len(self._pending), 1000):  # MLflow's log_batch limit
            retry_locked(MlflowClient().log_batch, self.run_id, metrics=self._pending[start : start + 1000])
        self._pending = []
        self._last_flush = time.monotonic()
