"""SpikeMonitor: the lab's spike diagnostics as one Keras 3 callback, for any model.fit.

    monitor = SpikeMonitor(x_train[:2048], y_train[:2048])
    model.fit(x_train, y_train, epochs=100, callbacks=[monitor])   # prints the diagnosis at the end
    monitor.diagnosis                                               # spikelab.verdict.Diagnosis

It is the lab's own callbacks, composed (the train stage runs the same classes): Diagnostics (the
optimizer state and the probe gradient), Curvature (Bai et al.'s lambda_grad and lambda_max, on
an Adam-family optimizer), DeadZoneAccounting (the whole-sample pass: the dead zone of a
cross-entropy on a softmax or sigmoid output, and the collapse to one class), HistoryRows,
Snapshots (a ring buffer of the last `keep_snapshots` states: weights, optimizer slots and batch-norm
statistics, in memory or in a folder) and MLflow's epoch logger. What does not apply to the model,
loss or optimizer at hand is skipped and said once, in one line; nothing it measures changes the
training (the probe's effect on batch-norm statistics and dropout seeds is undone).

`x` and `y` are a sample of the training data, as model.fit takes them: the first `probe_size`
samples are the fixed probe batch, the whole sample feeds the dead-zone and collapse pass.
"""

from __future__ import annotations

import math
import sys
import time
from array import array
from collections import OrderedDict
from pathlib import Path

import keras
import numpy as np

from spikelab import snapshots as training_state
from spikelab.adam_state import SECOND_MOMENT_SLOTS
from spikelab.callbacks import HistoryRows, Snapshots
from spikelab.curvature import Curvature
from spikelab.dead_zone import accounting_epochs, dead_zone_stats, prediction_share
from spikelab.history import write_history_csv
from spikelab.measurements import Diagnostics, diagnostic_callbacks
from spikelab.model import LogitsAndOutput
from spikelab.params import DivergenceParams, PlateauParams
from spikelab.plumbing.errors import one_line
from spikelab.verdict import (
    DEFAULT_DIVERGENCE,
    DEFAULT_PLATEAU,
    LEVEL_WINDOW,
    STEP_CONFIRM,
    STEP_WINDOW,
    Diagnosis,
    StepSpikeWatch,
    describe,
    diagnose,
    spike_watch,
    summary,
)

BACKEND = keras.backend.backend()
# what a failure line calls each part
PART_NAMES = {
    "Diagnostics": "the probe diagnostics",
    "Curvature": "the curvature",
    "DeadZoneAccounting": "the whole-sample pass",
    "Snapshots": "the snapshots",
    "HistoryRows": "the history",
    "MlflowEpochLogger": "MLflow logging",
}
STEP_WATCH = "the per-step watch"

# epochs after a flagged one at which the whole-sample pass runs too, so the diagnosis sees what
# the spike did to the dead zone and the classes without waiting for the cadence
AFTER_SPIKE_PASSES = (0, 2, 5)


def cross_entropy_kind(loss) -> str | None:
    """'binary' or 'categorical' for the cross-entropies (Keras's and the lab's clipped forms), else None."""
    name = getattr(loss, "name", None) if isinstance(loss, keras.losses.Loss) else getattr(loss, "__name__", None)
    name = name or str(loss)
    if "binary_crossentropy" in name:
        return "binary"
    if "categorical_crossentropy" in name:
        return "categorical"
    return None


def clipped_form(loss) -> bool | None:
    """Whether a cross-entropy clips probabilities before its log: the lab's Keras-2 forms do;
    Keras 3's own read the logits a softmax or sigmoid layer leaves on its output (no clip, no dead
    zone: the output layers the monitor finds logits behind are exactly those). None: not known."""
    if cross_entropy_kind(loss) is None:
        return None
    if _loss_name(loss).startswith("clipped_"):
        return True
    module = type(loss).__module__ if isinstance(loss, keras.losses.Loss) else getattr(loss, "__module__", "")
    return False if module.startswith("keras.") else None


def _loss_name(loss) -> str:
    return getattr(loss, "name", None) or getattr(loss, "__name__", None) or type(loss).__name__


def _labels_to_output_rank(loss):
    """The loss function with labels of shape (n,) made (n, 1) for a one-unit output, as Keras's
    compiled loss does before it calls a plain function (a Loss instance does it itself)."""

    def per_sample(y_true, y_pred):
        if len(y_true.shape) == len(y_pred.shape) - 1 and y_pred.shape[-1] == 1:
            y_true = keras.ops.expand_dims(y_true, -1)
        return loss(y_true, y_pred)

    per_sample.__name__ = _loss_name(loss)
    return per_sample


def _labels_fit(labels: np.ndarray, head: LogitsAndOutput, output_shape) -> str | None:
    """Why these labels and this output have no one-class-per-sample reading; None when they do."""
    units = output_shape[-1]
    if len(output_shape) != 2:
        return f"the output has shape {output_shape}, not (batch, classes)"
    if head.activation == "sigmoid" and units != 1:
        return f"{units} sigmoid units are multi-label"
    if head.activation == "softmax" and not (labels.ndim == 1 or labels.shape[-1] in (1, units)):
        return f"labels of shape {labels.shape[1:]} match neither {units} one-hot classes nor class indices"
    return None


STEP_KEYS = {  # what a step spike's line shows of the probe read right after it
    "grad_norm": "|g| {:.3g}",
    "v_sqrt_median": "v median {:.2g}",
    "adam_ratio_max": "m/sqrt(v) max {:.3g}",
    "g2_over_v_rms": "g^2/v {:.3g}",
    "saturated_wrong_fraction": "{:.0%} of the probe saturated wrong",
}


def describe_step_spike(spike: dict) -> str:
    numbers = ", ".join(form.format(spike[key]) for key, form in STEP_KEYS.items() if key in spike)
    return (
        f"step {spike['step']} (epoch {spike['epoch']}, batch {spike['batch']}): loss {spike['loss']:.3g}, "
        f"{spike['jump']:.3g}x its level {spike['level']:.3g}" + (f"; right after it: {numbers}" if numbers else "")
    )


def describe_step_spikes(spikes: list[dict]) -> str:
    """Every spike inside an epoch, one line each (monitor.details)."""
    return "\n".join(["spikes inside epochs (per-step watch):", *("  " + describe_step_spike(s) for s in spikes)])


def with_step_spikes(verdict: str, spikes: list[dict], steps: int) -> str:
    """The five-line verdict with the per-step watch's finding: one more line when the epochs showed
    no spike (the verdict is then one line), else the steps named in the first line."""
    if not spikes:
        return verdict
    where = ", ".join(str(spike["step"]) for spike in spikes[:4]) + ("..." if len(spikes) > 4 else "")
    if "\n" not in verdict:
        count = f"{len(spikes)} spike{'s' if len(spikes) > 1 else ''}"
        return (
            f"{verdict}; inside them, {count} in {steps} steps (at {where})\n  first: {describe_step_spike(spikes[0])}"
        )
    head, rest = verdict.split("\n", 1)
    return f"{head}; inside epochs at steps {where}\n{rest}"


class BatchLosses:
    """Each step's own loss, recovered from what Keras reports after it: `logs['loss']` at a batch's
    end is the running mean of the epoch's batch losses so far, each batch weighted by its size (the
    trainer's loss tracker, a keras.metrics.Mean updated with sample_weight = the batch's size, on
    every backend). After n_k samples, mean m_k = T_k / n_k with T_k = sum of b_i l_i, so the batch's
    own loss is l_k = (n_k m_k - n_{k-1} m_{k-1}) / (n_k - n_{k-1}).

    Every batch of an epoch has the same size b but possibly the last; counted in batches (b = 1)
    the formula needs no b: l_k = k m_k - (k - 1) m_{k-1}. The last batch's size comes from the
    tracker's count, read at the epoch's last step (`samples`, in samples; `batch_size`, read once).
    Where Keras runs several steps per call (steps_per_execution) the callback sees only every
    s-th step: the value is those steps' mean loss. Exact in real arithmetic; in float32 the tracker's
    running sum rounds, so l_k is good to about k x 1.2e-7 x the epoch's mean loss (5e-4 of it at
    step 4,000: far below a spike's 10x)."""

    def __init__(self):
        self.start_epoch()

    def start_epoch(self) -> None:
        self.mean, self.done = 0.0, 0.0  # the last running mean, and how many batches (or samples/b) it covers

    def read(
        self, steps_done: int, mean: float, samples: float | None = None, batch_size: float | None = None
    ) -> float:
        """The loss of the steps since the last read; steps_done: the epoch's steps so far (batch + 1);
        at the epoch's last step `samples` (the tracker's count) and `batch_size` make a short last
        batch exact (None: read as full-sized)."""
        done = samples / batch_size if samples is not None and batch_size else float(steps_done)
        if done <= self.done:  # a repeated or out-of-order report: nothing new
            return math.nan
        loss = (done * mean - self.done * self.mean) / (done - self.done)
        self.mean, self.done = mean, done
        return loss


class SpikeMonitor(keras.callbacks.Callback):
    """Per-epoch spike diagnostics, a snapshot ring buffer, logging, and a diagnosis at the end of fit.

    The defaults are the lab's params.yaml values (a test checks they agree). cheap=True is the
    mode for large models: no curvature (its Hessian-vector products cost a probe backward pass or
    more per epoch) and no per-layer columns.

    budget: the most the monitor may spend, as a share of the epochs' CPU time (its own included,
    from the second epoch on: the first holds the graphs' tracing). The probe diagnostics, the
    snapshots, the last epoch's pass and those after a flagged spike always run; the curvature
    (lambda_grad, and lambda_max when due) and the whole-sample pass on its cadence run when their
    expected cost (the last measured, or a guess before the first) keeps the share within the budget. A pass or lambda_max that does not fit runs at the next epoch
    that affords it; a skipped curvature epoch logs NaN. None: no limit, everything on its cadence.

    per_step: watch every batch's loss too (BatchLosses recovers it from Keras's running mean; the
    rule is StepSpikeWatch over `step_window` steps, read from the median of the last `step_confirm`).
    At a spike's step the probe diagnostics are read right after it (`step_spikes`, one dict per
    spike), the whole-sample pass is forced at that epoch's end, and `step_snapshot_after` steps
    after it the state is kept in a ring of the last `keep_step_snapshots` (`restore_step`)."""

    def __init__(
        self,
        x,
        y,
        *,
        probe_size: int = 32,
        cheap: bool = False,
        eigen_every: int = 10,
        power_iterations: int = 8,
        dead_zone_every: int = 10,
        snapshot_every: int = 1,
        keep_snapshots: int = 5,
        snapshot_folder: str | Path | None = None,
        per_layer: bool = True,
        divergence: DivergenceParams = DEFAULT_DIVERGENCE,
        plateau: PlateauParams = DEFAULT_PLATEAU,
        spike_window: int | None = LEVEL_WINDOW,
        history_path: str | Path | None = None,
        tracking_uri: str | None = None,
        dvclive: bool = True,
        report: bool = True,
        budget: float | None = 0.10,
        per_step: bool = True,
        step_window: int = STEP_WINDOW,
        step_confirm: int = STEP_CONFIRM,
        step_snapshot_after: int = 2,
        keep_step_snapshots: int = 2,
    ):
        super().__init__()
        x, y = np.asarray(x), np.asarray(y)
        x = x.astype(np.float32) if x.dtype.kind == "f" else x
        if len(x) == 0 or len(x) != len(y):
            raise ValueError(
                f"SpikeMonitor needs a sample of the training data: x has {len(x)} samples, y {len(y)}; pass equal, non-empty arrays"
            )
        for name, value in (
            ("probe_size", probe_size),
            ("keep_snapshots", keep_snapshots),
            ("step_window", step_window),
            ("step_confirm", step_confirm),
        ):
            if value < 1:
                raise ValueError(f"SpikeMonitor {name} = {value}: use an integer >= 1")
        for name, value in (
            ("eigen_every", eigen_every),
            ("dead_zone_every", dead_zone_every),
            ("snapshot_every", snapshot_every),
            ("step_snapshot_after", step_snapshot_after),
            ("keep_step_snapshots", keep_step_snapshots),
        ):
            if value < 0:
                raise ValueError(f"SpikeMonitor {name} = {value}: use an integer >= 0 (0 = never)")
        if budget is not None and not 0 < budget <= 1:
            raise ValueError(f"SpikeMonitor budget = {budget}: use a share in (0, 1], or None for no limit")
        self.budget = budget
        self.x, self.y = x, y
        self.probe_size, self.cheap = min(probe_size, len(x)), cheap
        self.eigen_every, self.power_iterations = eigen_every, power_iterations
        self.dead_zone_every, self.snapshot_every, self.keep_snapshots = dead_zone_every, snapshot_every, keep_snapshots
        self.snapshot_folder = Path(snapshot_folder) if snapshot_folder is not None else None
        self.per_layer = per_layer and not cheap
        self.divergence, self.plateau, self.spike_window = divergence, plateau, spike_window
        self.tracking_uri, self.use_dvclive, self.report = tracking_uri, dvclive, report
        self.history_path = Path(history_path) if history_path is not None else None
        self.history: list[dict] = []
        self.cpu_seconds: dict[int, float] = {}  # 1-based epoch -> CPU seconds inside the monitor (all threads)
        self.skipped: list[str] = []  # what did not apply, one entry each
        self.diagnosis: Diagnosis | None = None
        self.details = ""  # the diagnosis with every number, and what the budget skipped (after fit)
        self.loss_clipped: bool | None = None
        self.parts: list[keras.callbacks.Callback] = []
        self._snapshots: Snapshots | None = None
        self._curvature: Curvature | None = None
        self._mlflow_run = None
        self._started_run = False
        self._live = None
        self.failures: list[str] = []  # what failed inside the monitor and was turned off, one line each
        self._off = False  # the monitor's own bookkeeping failed: it watches no more of this fit
        self.per_step, self.step_window, self.step_confirm = per_step, step_window, step_confirm
        self.step_snapshot_after, self.keep_step_snapshots = step_snapshot_after, keep_step_snapshots
        self.step_losses = array("d")  # every step's own loss, in order (BatchLosses)
        self.step_spikes: list[dict] = []  # per spike inside an epoch: where, how large, the probe right after
        self.step_snapshots: OrderedDict[int, dict] = OrderedDict()  # global step -> state after it
        self.step_cpu_seconds = 0.0  # CPU seconds inside the per-step watch, this fit
        self._step_watch: StepSpikeWatch | None = None
        if not per_step:  # no batch hook: Keras keeps its asynchronous batch dispatch (JAX, torch)
            self.on_train_batch_end = keras.callbacks.Callback.on_train_batch_end.__get__(self)

    # --- never the user's training's end ---------------------------------------------------------

    def _guard(self, name: str, action, *args) -> bool:
        """Run one piece of the monitor; a failure turns that piece off with one line, never the fit.
        `name` SpikeMonitor: its own bookkeeping failed, and it watches no more of this fit."""
        try:
            action(*args)
            return True
        except Exception as error:
            line = f"SpikeMonitor: {name} failed ({type(error).__name__}: {one_line(error)[:160]}); turned off, training goes on"
            self.failures.append(line)
            if name == "SpikeMonitor":
                self._off = True
            if self.report:
                print(line, file=sys.stderr, flush=True)
            return False

    def _part_hook(self, part, hook: str, *args) -> None:
        """One part's callback hook, guarded: a part that fails leaves the monitor."""
        if not self._guard(PART_NAMES.get(type(part).__name__, type(part).__name__), getattr(part, hook), *args):
            self.parts = [kept for kept in self.parts if kept is not part]
            if part is self._curvature:
                self._curvature = None

    # --- assembling the lab's callbacks for this model -------------------------------------------

    def on_train_begin(self, logs=None):
        self.failures.clear()
        self._off = False
        self.parts = []
        self._guard("SpikeMonitor", self._assemble)

    def _assemble(self):
        model, optimizer = self.model, self.model.optimizer
        self.history.clear()
        self.cpu_seconds.clear()
        self.skipped.clear()
        self.diagnosis = None
        self._passes: set[int] = set()  # the whole-sample pass's epochs; a spike adds some
        self._forced: set[int] = set()  # of those, the last epoch's and the ones a spike added (never deferred)
        self.training_cpu_seconds = 0.0  # the epochs' CPU outside the monitor, from the second epoch on
        self._first_epoch = None  # 1-based: the first epoch of this fit
        self.curvature_skipped = self.passes_deferred = 0
        # the last measured CPU seconds of an epoch with no optional measurement, and of each one beyond it
        self._cost: dict[str, float | None] = dict.fromkeys(("base", "curvature", "eigen", "pass"))
        loss = keras.losses.get(model.loss) if isinstance(model.loss, str) else model.loss
        self.loss_clipped = clipped_form(loss)
        if callable(loss) and not isinstance(loss, keras.losses.Loss):
            loss = _labels_to_output_rank(loss)
        try:
            head = LogitsAndOutput(model)
        except ValueError as error:
            head = None
            self.skipped.append(f"probe diagnostics ({error})")
        adam = isinstance(optimizer, keras.optimizers.Adam)
        if not adam and type(optimizer).__name__ in SECOND_MOMENT_SLOTS:
            self.skipped.append(f"Adam's ratio and curvature ({type(optimizer).__name__} keeps v, not Adam's m)")
        elif not adam:
            self.skipped.append(f"Adam state and curvature ({type(optimizer).__name__} has no Adam moments)")
        elif self.cheap:
            self.skipped.append("curvature (the cheap mode)")
        elif BACKEND != "tensorflow":
            self.skipped.append(f"curvature (nested gradients: TensorFlow backend only, not {BACKEND})")
        probe_x, probe_y = self.x[: self.probe_size], self.y[: self.probe_size]
        if head is not None and not callable(loss):
            self.skipped.append(f"probe diagnostics (the compiled loss {loss!r} is not one callable)")
            head = None
        labels_problem = _labels_fit(self.y, head, tuple(model.outputs[0].shape)) if head and head.has_logits else None
        parts: list[keras.callbacks.Callback] = []
        if head is not None:
            stats = self._whole_sample_stats(head, loss, labels_problem)
            options = {
                "power_iterations": self.power_iterations,
                "eigen_every": self.eigen_every,
                "per_layer": self.per_layer,
                "saturation": head.has_logits and labels_problem is None,
                "stats": stats,
            }
            sample = (self.x, self.y, None, self._passes) if stats else (None, None, None, self._passes)
            curvature = adam and not self.cheap and BACKEND == "tensorflow"
            try:
                parts = diagnostic_callbacks(model, probe_x, probe_y, loss, *sample, curvature=curvature, **options)
            except Exception as error:  # a layer without second derivatives: the rest still runs
                if not curvature:
                    raise
                self.skipped.append(f"curvature ({type(error).__name__}: {one_line(error)[:120]})")
                parts = diagnostic_callbacks(model, probe_x, probe_y, loss, *sample, curvature=False, **options)
        parts.append(HistoryRows(self.history))
        if self.snapshot_every:
            if self.snapshot_folder is not None:
                self.snapshot_folder.mkdir(parents=True, exist_ok=True)
            self._snapshots = Snapshots(
                self.snapshot_folder, self.snapshot_every, self.history, self.keep_snapshots, with_non_trainable=True
            )
            parts.append(self._snapshots)
        parts += self._loggers()
        for part in parts:
            part.set_model(model)
        self.parts = parts
        self._curvature = next((part for part in parts if isinstance(part, Curvature)), None)
        if self._curvature is not None and self.budget is not None:
            for part in parts:
                if isinstance(part, Diagnostics):
                    part.trace_own_probe()  # the budget turns the curvature off at some epochs
        self._watch = spike_watch(self.divergence, self.spike_window)
        self._assemble_step_watch(model)
        if self.skipped and self.report:
            print("SpikeMonitor skips: " + "; ".join(self.skipped), flush=True)

    def _assemble_step_watch(self, model) -> None:
        self.step_losses = array("d")
        self.step_spikes, self.step_cpu_seconds = [], 0.0
        self.step_snapshots.clear()
        self._step_watch = None
        if not self.per_step:
            return
        self._step_watch = StepSpikeWatch(self.divergence, self.step_window, self.step_confirm)
        self._batch_losses = BatchLosses()
        self._step_flagged = False
        self._steps_before = 0  # the steps of the epochs before this one (this fit)
        self._epoch_steps = self._previous_epoch_steps = 0  # this epoch's steps so far, the last epoch's
        self._step_seconds = 0.0  # this epoch's CPU seconds inside the per-step watch
        self._snapshot_at: list[int] = []  # global steps whose end takes a step snapshot
        # the loss tracker's sample count sizes a short last batch (read once, then at each epoch's end)
        self._loss_tracker = getattr(model, "_loss_tracker", None)
        self._batch_size: float | None = None
        self._diagnostics = next((part for part in self.parts if isinstance(part, Diagnostics)), None)

    def _whole_sample_stats(self, head, loss, labels_problem):
        """The whole-sample pass's statistics for this output and loss; None where it cannot run."""
        if not head.has_logits:
            self.skipped.append("dead zone and collapse (the output is not a softmax or sigmoid probability)")
            return None
        if labels_problem:
            self.skipped.append(f"dead zone and collapse ({labels_problem})")
            return None
        kind = cross_entropy_kind(loss)
        if kind is None:
            self.skipped.append(f"dead zone (the loss {_loss_name(loss)} takes no log of a probability to clip)")
        activation = head.activation

        def stats(logits, labels):
            found = prediction_share(logits, activation)
            if kind is not None:
                found.update(dead_zone_stats(logits, labels, activation, kind))
            return found

        # epoch 1 too: a baseline for what a spike changes, and its graph traced at the start
        last = self.params.get("epochs") or 1
        self._passes.update({1} | accounting_epochs(last, self.dead_zone_every, 0))
        self._forced.add(last)  # the state the fit ends in: never deferred past the end
        return stats

    def _loggers(self) -> list[keras.callbacks.Callback]:
        loggers = []
        # an active run needs mlflow imported already: without one, the monitor does not load it
        mlflow = sys.modules.get("mlflow")
        if self.tracking_uri is not None:
            import mlflow

            mlflow.set_tracking_uri(self.tracking_uri)
        run = mlflow.active_run() if mlflow is not None else None
        if run is None and self.tracking_uri is not None:
            run, self._started_run = mlflow.start_run(), True
        if run is not None:
            from spikelab.epoch_logging import MlflowEpochLogger

            self._mlflow_run = run.info.run_id
            loggers.append(MlflowEpochLogger(self._mlflow_run))
        if self.use_dvclive:
            try:
                from dvclive import Live
            except ImportError:
                pass  # an optional logger: silent when absent
            else:
                self._live = Live()
        return loggers

    # --- the epoch -------------------------------------------------------------------------------

    def on_epoch_begin(self, epoch, logs=None):
        if not self._off:
            self._guard("SpikeMonitor", self._epoch_begin, epoch, logs)

    def _epoch_begin(self, epoch, logs):
        started = time.process_time()
        if self._first_epoch is None:
            self._first_epoch = epoch + 1
        self._epoch = epoch + 1
        for part in list(self.parts):
            self._part_hook(part, "on_epoch_begin", epoch, logs)
        if self._step_watch is not None:
            self._batch_losses.start_epoch()
            self._steps_before += self._epoch_steps
            self._previous_epoch_steps, self._epoch_steps = self._epoch_steps, 0
        self._epoch_started = time.process_time()
        self.cpu_seconds[epoch + 1] = self._epoch_started - started

    def on_train_batch_end(self, batch, logs=None):
        if self._step_watch is not None and logs and not self._off:
            if not self._guard(STEP_WATCH, self._batch_end, batch, logs):
                self._step_watch = None

    def _batch_end(self, batch: int, logs: dict) -> None:
        """One step: its own loss, the rule, and at a spike the probe and a snapshot to come. It reads
        nothing from the model but at a spike, a due snapshot and the epoch's last step (on JAX each
        read brings the model's state back from the training loop)."""
        started = time.process_time()
        steps = batch + 1
        last = steps == self.params.get("steps")
        samples = None
        if self._loss_tracker is not None and (last or self._batch_size is None):
            count = float(keras.ops.convert_to_numpy(self.model._loss_tracker.count))
            self._batch_size = self._batch_size or count / steps
            samples = count if last else None
        loss = self._batch_losses.read(steps, float(logs["loss"]), samples, self._batch_size)
        self._epoch_steps = steps
        step = self._steps_before + steps
        self.step_losses.append(loss)
        flagged = self._step_watch.observe(loss)
        if flagged and not self._step_flagged:
            self._step_spike(step, loss)
        self._step_flagged = flagged
        if self._snapshot_at and self._snapshot_at[0] <= step:
            self._snapshot_at.pop(0)
            self.step_snapshots[step] = training_state.capture(self.model, with_non_trainable=True)
            while len(self.step_snapshots) > self.keep_step_snapshots:
                self.step_snapshots.popitem(last=False)
        self._step_seconds += time.process_time() - started

    def _step_spike(self, step: int, loss: float) -> None:
        """A spike inside an epoch: where it began, its size, the probe's reading right after it."""
        watch, epoch = self._step_watch, self._epoch
        onset = step - watch.onset_back
        onset_loss = self.step_losses[onset - 1]
        batch = onset - self._steps_before
        if batch < 1:  # the five steps the rule read began in the epoch before
            epoch, batch = epoch - 1, batch + self._previous_epoch_steps
        found = {
            "step": onset,
            "flagged_at": step,
            "epoch": epoch,
            "batch": batch,
            "loss": onset_loss,
            "level": watch.lowest,
            "jump": onset_loss / watch.lowest if watch.lowest > 0 else math.inf,
        }
        if self._diagnostics is not None and self._diagnostics in self.parts:
            kept = [v.numpy() for v in self.model.non_trainable_variables]
            if not self._guard("the probe diagnostics at a step", lambda: found.update(self._diagnostics.at_step())):
                self._diagnostics = None
            for variable, value in zip(self.model.non_trainable_variables, kept):
                variable.assign(value)
        self.step_spikes.append(found)
        added = {self._epoch + after for after in AFTER_SPIKE_PASSES}  # the whole-sample pass at this epoch's end
        self._passes.update(added)
        self._forced.update(added)
        self._snapshot_at.append(step + self.step_snapshot_after)

    @property
    def step_snapshot_steps(self) -> list[int]:
        """The global steps (1-based, after that step) whose state the per-step ring holds."""
        return list(self.step_snapshots)

    def restore_step(self, step: int) -> None:
        """Put the model and optimizer back to the state after `step` (a snapshot near a step spike)."""
        if step not in self.step_snapshots:
            raise ValueError(f"no snapshot of step {step}; the per-step ring holds {self.step_snapshot_steps}")
        training_state.restore(self.model, self.step_snapshots[step])

    def _share_with(self, cost: float) -> float:
        """The monitor's share of the epochs' CPU (its own included) from the second epoch on (the
        first holds the one-time tracing of its graphs), were it to spend `cost` more seconds now."""
        spent = cost + sum(seconds for epoch, seconds in self.cpu_seconds.items() if epoch > self._first_epoch)
        return spent / (spent + self.training_cpu_seconds) if spent else 0.0

    @property
    def cpu_share(self) -> float:
        """The monitor's CPU seconds as a share of the epochs' (its own included), so far."""
        return self._share_with(0.0)

    def _affords(self, cost: float | None) -> bool:
        """Whether spending `cost` more CPU seconds now keeps the share within the budget; a cost not
        yet measured: whether the share so far is."""
        return self._share_with(cost or 0.0) <= self.budget

    def _expected(self, kind: str) -> float | None:
        """The CPU seconds an optional measurement is expected to cost: its last measured cost, or
        before it has run, a generous guess from what has been measured (a Hessian-vector product is
        a few probe passes; the eigenvalue is power_iterations of them)."""
        cost, base = self._cost, self._cost["base"]
        if cost[kind] is not None or kind == "pass":
            return cost[kind]
        curvature = cost["curvature"] if cost["curvature"] is not None else 3 * base
        return curvature if kind == "curvature" else (1 + self.power_iterations) * curvature

    def _plan(self, epoch: int) -> tuple[bool, bool, bool]:
        """(curvature, its eigenvalue, the whole-sample pass) for this epoch: each optional measurement
        runs if its expected cost fits the budget; a pass that does not fit moves to the next epoch.
        All run in the first epoch (outside the share: it traces their graphs); after it, none runs
        (but a spike's passes) until an epoch without them has measured the base cost."""
        curvature = self._curvature
        eigen = curvature is not None and curvature.eigen_due(epoch)
        if self.budget is None or epoch + 1 == self._first_epoch:  # the first epoch is outside the share
            return curvature is not None, eigen, epoch + 1 in self._passes
        known = self._cost["base"] is not None
        cost = self._expected("eigen" if eigen else "curvature") if known else None
        run_curvature = curvature is not None and known and self._affords(cost)
        if curvature is not None and not run_curvature:
            curvature.owed = curvature.owed or eigen
            self.curvature_skipped += 1
        due = epoch + 1 in self._passes
        before = (cost or 0.0) if run_curvature else 0.0
        pass_cost = None if self._cost["pass"] is None else before + self._cost["pass"]
        run_pass = due and (epoch + 1 in self._forced or (known and self._affords(pass_cost)))
        if due and not run_pass:
            self._passes.discard(epoch + 1)
            self._passes.add(epoch + 2)
            self.passes_deferred += 1
        return run_curvature, run_curvature and eigen, run_pass

    def _learn_costs(self, spent: float, curvature: bool, eigen: bool, run_pass: bool) -> None:
        """What this epoch's optional measurements cost beyond the base (the epochs with none)."""
        if not (curvature or run_pass):
            # the least seen: an epoch that collected garbage or traced a graph says nothing of the next
            base = self._cost["base"]
            self._cost["base"] = spent if base is None else min(base, spent)
            return
        extra = max(spent - (self._cost["base"] or 0.0), 0.0)
        kind = "eigen" if eigen else "curvature"
        if curvature and run_pass:
            if self._cost["pass"] is not None:
                self._cost[kind] = max(extra - self._cost["pass"], 0.0)
            elif self._cost[kind] is not None:
                self._cost["pass"] = max(extra - self._cost[kind], 0.0)
            else:
                self._cost[kind] = extra  # both unknown: all of it on the curvature, the larger
        elif curvature:
            self._cost[kind] = extra
        else:
            self._cost["pass"] = extra

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and not self._off:
            self._guard("SpikeMonitor", self._epoch_end, epoch, logs)

    def _epoch_end(self, epoch, logs):
        started = time.process_time()
        step_seconds, self._step_seconds = getattr(self, "_step_seconds", 0.0), 0.0
        self.step_cpu_seconds += step_seconds
        if epoch + 1 > self._first_epoch:  # the first epoch's tracing is not the training's
            self.training_cpu_seconds += started - self._epoch_started - step_seconds
        if self._watch.observe(logs.get("loss", math.nan)):
            added = {epoch + 1 + after for after in AFTER_SPIKE_PASSES}
            self._passes.update(added)
            self._forced.update(added)
        curvature, eigen, run_pass = self._plan(epoch)
        # the probe runs the model in training mode: batch-norm statistics and dropout seeds move,
        # and are put back so that watching changes nothing in the training
        kept = [v.numpy() for v in self.model.non_trainable_variables]
        for part in list(self.parts):
            if isinstance(part, Curvature) and not curvature:
                logs["lambda_grad"] = logs["lambda_max"] = math.nan
                continue
            if isinstance(part, Diagnostics):
                part.use_shared = curvature
            self._part_hook(part, "on_epoch_end", epoch, logs)
            if isinstance(part, Diagnostics | Curvature):
                for variable, value in zip(self.model.non_trainable_variables, kept):
                    variable.assign(value)
        if self._live is not None and not self._guard("DVCLive logging", self._log_live, logs):
            self._live = None
        self.cpu_seconds[epoch + 1] = self.cpu_seconds.get(epoch + 1, 0.0) + time.process_time() - started
        if epoch + 1 > self._first_epoch:
            self._learn_costs(self.cpu_seconds[epoch + 1], curvature, eigen, run_pass)
        self.cpu_seconds[epoch + 1] += step_seconds  # the per-step watch always runs: in the share, not a cost to plan

    def _log_live(self, logs):
        for key, value in logs.items():
            if isinstance(value, int | float) and math.isfinite(value):
                self._live.log_metric(f"spikemonitor/{key}", float(value))
        self._live.next_step()

    def on_train_end(self, logs=None):
        if not self.history:  # it failed before the first epoch's end: nothing to judge
            return
        for part in list(self.parts):
            self._part_hook(part, "on_train_end", logs)
        self._guard("the diagnosis", self._train_end)

    def _train_end(self):
        self.diagnosis = diagnose(self.history, self.divergence, self.plateau, self.loss_clipped, self.spike_window)
        if self.history_path is not None:
            write_history_csv(self.history_path, self.history)
        text = describe(self.diagnosis)  # every number: monitor.details and MLflow's spike_diagnosis.txt
        if self.step_spikes:
            text += "\n" + describe_step_spikes(self.step_spikes)
        if self.budget is not None and (self.curvature_skipped or self.passes_deferred):
            times = "time" if self.passes_deferred == 1 else "times"
            text += (
                f"\nSpikeMonitor's budget ({self.budget:.0%} of the epochs' CPU): curvature skipped at "
                f"{self.curvature_skipped} epochs, whole-sample pass deferred {self.passes_deferred} {times}; "
                f"it spent {self.cpu_share:.1%}"
            )
            if self.cpu_share > self.budget:
                text += " (its probe diagnostics alone cost more at this epoch size: cheap=True, or a larger epoch)"
        self.details = text
        if self.report:  # the verdict in at most five lines
            print(with_step_spikes(summary(self.diagnosis), self.step_spikes, len(self.step_losses)), flush=True)
        if self._mlflow_run is not None:
            self._guard("MLflow logging", self._log_diagnosis, text)
        if self._live is not None:
            self._guard("DVCLive logging", self._live.end)

    def _log_diagnosis(self, text: str) -> None:
        import mlflow

        mlflow.MlflowClient().log_text(self._mlflow_run, text, "spike_diagnosis.txt")
        mechanisms = ",".join(sorted(self.diagnosis.mechanisms)) or "none"
        mlflow.MlflowClient().set_tag(self._mlflow_run, "spike_doctor.mechanisms", mechanisms)
        if self._started_run:
            mlflow.end_run()

    # --- replay ----------------------------------------------------------------------------------

    @property
    def snapshot_epochs(self) -> list[int]:
        """The epochs (1-based, after that epoch) whose state the ring buffer holds."""
        return sorted(self._snapshots.held) if self._snapshots else []

    def restore(self, epoch: int) -> None:
        """Put the model and its optimizer back to the state after `epoch`, to replay what followed."""
        if epoch not in self.snapshot_epochs:
            raise ValueError(f"no snapshot of epoch {epoch}; the ring buffer holds {self.snapshot_epochs}")
        held = self._snapshots.held[epoch]
        state = training_state.load_snapshot(held)[0] if isinstance(held, Path) else held
        training_state.restore(self.model, state)
