"""MlflowEpochLogger: the Keras callback that logs a training's epochs to its MLflow run.

Apart from spikelab.tracking so that the stages that only log (rules, evaluate's bookkeeping)
start without importing Keras and TensorFlow (seconds of every `make exp`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import keras
from mlflow.entities import Metric

from spikelab.tracking import log_metric_list, numeric_metrics

if TYPE_CHECKING:
    from spikelab.tracking import TrainingRun


class MlflowEpochLogger(keras.callbacks.Callback):
    """Logs every numeric epoch log with step = epoch (1-based), in batches every few seconds.

    Batching keeps sqlite writes (and lock contention between parallel workers) rare. Through a
    TrainingRun, a failing store costs a few seconds once, then the logger only drops its batches
    (history.csv keeps them; `python -m tools.sync` uploads them later).
    """

    def __init__(self, run_id: str, flush_every_s: float = 5.0, run: TrainingRun | None = None):
        super().__init__()
        self.run_id = run_id
        self.flush_every_s = flush_every_s
        self.run = run
        self._pending: list[Metric] = []
        self._last_flush = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        self._pending += numeric_metrics(logs or {}, epoch + 1)
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def on_train_end(self, logs=None):
        self.flush()

    def flush(self):
        if self.run is None:
            log_metric_list(self.run_id, self._pending)
        else:
            self.run.call("log epoch metrics", log_metric_list, self.run_id, self._pending)
        self._pending = []
        self._last_flush = time.monotonic()
