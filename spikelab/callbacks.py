"""The lab's Keras callbacks, one job each: print, record, keep the best state, snapshot, guard."""

from __future__ import annotations

import math
import time
from pathlib import Path

import keras

from spikelab import snapshots as training_state
from spikelab.divergence import SpikeWatch
from spikelab.params import DivergenceParams, GuardParams


def current_learning_rate(model: keras.Model) -> float:
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


class ProgressLine(keras.callbacks.Callback):
    """Prints one aligned line per epoch, and marks the epochs the divergence rule flags. Changes no logs."""

    def __init__(self, epochs: int, rule: DivergenceParams, lowest_loss: float = math.inf):
        super().__init__()
        self.epochs, self.watch = epochs, SpikeWatch(rule, lowest_loss)
        self._width = len(f"epoch {epochs}/{epochs}")  # lines align; `epoch 1/150` stays greppable

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        loss = logs.get("loss", math.nan)
        mark = ""
        if self.watch.observe(loss):
            mark = (
                f"  <- spike: {loss / self.watch.lowest:.0f}x the lowest loss so far"
                if math.isfinite(loss)
                else "  <- NaN"
            )
        print(
            f"{f'epoch {epoch + 1}/{self.epochs}':<{self._width}}  loss {loss:<10.4g} val_loss {logs.get('val_loss', math.nan):<10.4g}"
            f"accuracy {logs.get('accuracy', math.nan):.4f}  val_accuracy {logs.get('val_accuracy', math.nan):.4f}  "
            f"{time.perf_counter() - self._started:5.2f}s{mark}",
            flush=True,
        )


class EpochClock(keras.callbacks.Callback):
    """Wall and process-CPU seconds of each epoch, from the start of training (the first epoch
    includes tracing). Put it last in the callback list, so every other callback's epoch-end work
    counts in its epoch. Kept out of the history, so the history stays bit-identical; CPU seconds
    (all threads) inflate far less than wall seconds when other work shares the machine."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []
        self.cpu_seconds: list[float] = []

    def on_train_begin(self, logs=None):
        self._last = (time.perf_counter(), time.process_time())

    def on_epoch_end(self, epoch, logs=None):
        now = (time.perf_counter(), time.process_time())
        self.seconds.append(now[0] - self._last[0])
        self.cpu_seconds.append(now[1] - self._last[1])
        self._last = now


class HistoryRows(keras.callbacks.Callback):
    """Appends each epoch's logs (diagnostics included) and learning rate to a shared list of rows."""

    def __init__(self, rows: list[dict]):
        super().__init__()
        self.rows = rows

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, "learning_rate": current_learning_rate(self.model)}
        row.update({key: float(value) for key, value in (logs or {}).items()})
        self.rows.append(row)


class BestState(keras.callbacks.Callback):
    """Keeps the lowest-val_loss state in memory, like the seed's callback.

    In memory, not on disk each epoch: checkpointing stays off the hot path; the stage writes
    best and last once, when training ends.
    """

    def __init__(self):
        super().__init__()
        self.state = None
        self.epoch = None
        self.val_loss = math.inf

    def on_epoch_end(self, epoch, logs=None):
        val_loss = (logs or {}).get("val_loss", math.nan)
        if math.isfinite(val_loss) and val_loss < self.val_loss:
            self.val_loss, self.epoch = val_loss, epoch + 1
            self.state = training_state.capture(self.model)


class Snapshots(keras.callbacks.Callback):
    """Every `every` epochs: weights + optimizer state, and the history so far beside them, for replays.

    keep: how many of the latest to keep (a ring buffer: the epochs before a spike, at bounded
    cost), None for all. folder None keeps them in memory (`held`: epoch -> state) instead of as
    epoch_NNNNN.npz files. with_non_trainable: the layers' other state too (batch-norm statistics),
    which a replay of such a model needs."""

    def __init__(
        self,
        folder: Path | None,
        every: int,
        history: list[dict],
        keep: int | None = None,
        with_non_trainable: bool = False,
    ):
        super().__init__()
        if keep is not None and keep < 1:
            raise ValueError(f"Snapshots keep = {keep}: keep at least 1 snapshot, or None for all")
        self.folder, self.every, self.history = folder, every, history
        self.keep, self.with_non_trainable = keep, with_non_trainable
        self.held: dict[int, dict] = {}

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        state = training_state.capture(self.model, self.with_non_trainable)
        if self.folder is None:
            self.held[epoch + 1] = state
        else:
            path = self.folder / f"epoch_{epoch + 1:05d}.npz"
            training_state.save_snapshot(path, state, epoch + 1, self.history)
            self.held[epoch + 1] = path
        while self.keep is not None and len(self.held) > self.keep:
            dropped = self.held.pop(min(self.held))
            if isinstance(dropped, Path):
                dropped.unlink(missing_ok=True)


class DivergenceGuard(keras.callbacks.Callback):
    """When the divergence rule flags an epoch: restore the best state, then stop or cut the rate."""

    def __init__(self, rule: DivergenceParams, guard: GuardParams, best: BestState, lowest_loss: float):
        super().__init__()
        self.watch, self.guard, self.best = SpikeWatch(rule, lowest_loss), guard, best
        self.triggered_epochs: list[int] = []

    def on_epoch_end(self, epoch, logs=None):
        if not self.watch.observe((logs or {}).get("loss", math.nan)):
            return
        self.triggered_epochs.append(epoch + 1)
        if self.best.state is not None:
            training_state.restore(self.model, self.best.state)
        if self.guard.action == "stop":
            self.model.stop_training = True
        else:
            self.model.optimizer.learning_rate.assign(current_learning_rate(self.model) * self.guard.lr_factor)
        print(
            f"guard: epoch {epoch + 1} spiked; restored epoch {self.best.epoch}'s state, action {self.guard.action}",
            flush=True,
        )
