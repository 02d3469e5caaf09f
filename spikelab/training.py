"""The training loop: model.fit on a seeded, resumable batch order, with the lab's callbacks.

Batch order: epoch e (0-based) visits the training set in the permutation
stateless_shuffle(range(n), seed=(train.seed, e)), so the order depends only on the seed and the
epoch number; a run resumed at epoch e from a snapshot sees exactly the batches the original did.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from spikelab import snapshots as training_state
from spikelab.callbacks import BestState, DivergenceGuard, EpochClock, HistoryRows, ProgressLine, Snapshots
from spikelab.dead_zone import accounting_epochs
from spikelab.losses import make_loss
from spikelab.measurements import diagnostic_callbacks
from spikelab.model import build_model, to_model_input
from spikelab.optimizers import make_optimizer, steps_per_epoch
from spikelab.params import Params


def seed_everything(seed: int) -> None:
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def epoch_order(count: int, seed: int, epoch) -> tf.Tensor:
    """The permutation of range(count) that epoch `epoch` (0-based, an int64 scalar) visits."""
    return tf.random.experimental.stateless_shuffle(
        tf.range(count), seed=tf.stack([tf.constant(seed, tf.int64), epoch])
    )


def batch_stream(
    images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int, first_epoch: int, epochs: int, data_format: str
) -> tf.data.Dataset:
    """Batches of epochs first_epoch..epochs-1 in their seeded order; images stay uint8 until batched."""
    images = tf.constant(images)  # (n, size, size) uint8: a quarter of the float32 footprint
    labels = tf.constant(labels)
    count = images.shape[0]
    channel_axis = 1 if data_format == "channels_first" else 3

    def epoch_batches(epoch):
        return tf.data.Dataset.from_tensor_slices(epoch_order(count, seed, epoch)).batch(batch_size)

    def gather(indices):
        x = tf.cast(tf.gather(images, indices), tf.float32) / 255.0
        return tf.expand_dims(x, channel_axis), tf.gather(labels, indices)

    # fixed parallelism, autotuning off: tf.data's autotuning thread wakes up at most once a minute
    # once a pipeline has run a while, and dropping the iterator at the end of `fit` waited for it:
    # up to a minute of idle wall time at the end of a run
    options = tf.data.Options()
    options.autotune.enabled = False
    return (
        tf.data.Dataset.range(first_epoch, epochs)
        .flat_map(epoch_batches)
        .map(gather, num_parallel_calls=2, deterministic=True)
        .prefetch(2)
        .with_options(options)
    )


@dataclass
class TrainResult:
    model: keras.Model
    history: list[dict]
    best_state: dict | None
    best_epoch: int | None
    guard_epochs: list[int] = field(default_factory=list)
    fresh_optimizer_variables: list[str] = field(default_factory=list)
    diagnostics_cpu_seconds: dict[str, dict[int, float]] = field(default_factory=dict)  # callback -> epoch -> CPU s
    epoch_seconds: list[float] = field(default_factory=list)  # wall s per epoch; the first includes tracing


def compile_model(params: Params, image_size: int, data_format: str, steps_per_execution: int = 1) -> keras.Model:
    jit = params.train.jit_compile
    model = build_model(params.model, image_size, data_format, block_max=jit)
    model.compile(
        optimizer=make_optimizer(params.optimizer, steps=steps_per_epoch(params), epochs=params.train.epochs),
        loss=make_loss(params.loss),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        steps_per_execution=steps_per_execution,
    )
    if jit:
        # Keras turns jit_compile=True off whenever op determinism is on, because some ops have no
        # deterministic XLA kernel; with BlockMax this model has none of those (TensorFlow itself
        # raises if one appears), and the result is bit-identical run to run (tests/test_xla.py)
        model._jit_compile = True
    return model


def steps_per_call(steps_per_epoch: int, most: int = 16) -> int:
    """Training steps per call into TensorFlow: the largest divisor of steps_per_epoch up to `most`.

    Running several steps in one call (a tf.while_loop) saves Python and dispatch time on every
    step, a large share of a small model's epoch at batch 32; the numbers are the same. It must divide the epoch: the batch stream spans all epochs, so an execution
    running over an epoch's end would pull the next epoch's first batches into this one.
    """
    return max(d for d in range(1, most + 1) if steps_per_epoch % d == 0)


def diagnostics_cpu_seconds(callbacks: list) -> dict[str, dict[int, float]]:
    """{callback class: {1-based epoch: CPU seconds inside it}}, for the cost benchmark."""
    return {type(callback).__name__: dict(callback.cpu_seconds) for callback in callbacks}


def train(
    params: Params,
    arrays: dict[str, np.ndarray],
    data_format: str,
    snapshot_dir: Path | None,
    extra_callbacks: list[keras.callbacks.Callback] = (),
    dead_sets: dict | None = None,
) -> TrainResult:
    """Train from scratch, or from the snapshot params.train.resume_from names.

    dead_sets: a dict the dead-zone accounting fills with {epoch: (dead mask, margin)} (None: not kept)."""
    seed_everything(params.train.seed)
    image_size = arrays["x_train"].shape[-1]
    steps = math.ceil(len(arrays["x_train"]) / params.train.batch_size)
    model = compile_model(params, image_size, data_format, steps_per_call(steps))
    history: list[dict] = []
    first_epoch, fresh = 0, []
    if params.train.resume_from is not None:
        first_epoch = params.train.resume_epoch
        state, history = training_state.load_resume(params.train.resume_from, first_epoch)
        fresh = training_state.restore(model, state)
    best = BestState()
    callbacks: list[keras.callbacks.Callback] = []
    measured: list = []  # the diagnostic callbacks, whose CPU seconds the benchmarks read
    diagnostics = params.diagnostics
    if diagnostics.enabled:
        probe = slice(0, diagnostics.probe_size)
        probe_x = to_model_input(arrays["x_train"][probe], data_format)
        epochs = accounting_epochs(params.train.epochs, diagnostics.dead_zone_every, params.train.snapshot_every)
        # the same callbacks SpikeMonitor composes: one implementation of every diagnostic
        measured = diagnostic_callbacks(
            model,
            probe_x,
            arrays["y_train"][probe],
            model.loss,
            arrays["x_train"],
            arrays["y_train"],
            data_format,
            epochs,
            curvature=diagnostics.curvature,
            power_iterations=diagnostics.power_iterations,
            eigen_every=diagnostics.eigen_every,
            dead_sets=dead_sets,
        )
        callbacks += measured
    lowest = min((row["loss"] for row in history), default=math.inf)  # a resumed run's history counts
    callbacks += [keras.callbacks.TerminateOnNaN(), ProgressLine(params.train.epochs, params.divergence, lowest)]
    guard = None
    if params.guard.enabled:
        guard = DivergenceGuard(params.divergence, params.guard, best, lowest)
        callbacks.append(guard)
    # HistoryRows before Snapshots, so a snapshot's history includes its own epoch
    callbacks += [HistoryRows(history), best]
    if snapshot_dir is not None and params.train.snapshot_every:
        callbacks.append(Snapshots(snapshot_dir, params.train.snapshot_every, history))
    callbacks += list(extra_callbacks)
    clock = EpochClock()  # last: every callback's epoch-end work counts in its epoch
    callbacks.append(clock)
    model.fit(
        batch_stream(
            arrays["x_train"],
            arrays["y_train"],
            params.train.batch_size,
            params.train.seed,
            first_epoch,
            params.train.epochs,
            data_format,
        ),
        steps_per_epoch=steps,
        epochs=params.train.epochs,
        initial_epoch=first_epoch,
        validation_data=(to_model_input(arrays["x_val"], data_format), arrays["y_val"]),
        validation_batch_size=params.train.batch_size,
        callbacks=callbacks,
        shuffle=False,  # the batch stream is already in its seeded order
        verbose=0,
    )
    return TrainResult(
        model,
        history,
        best.state,
        best.epoch,
        guard.triggered_epochs if guard else [],
        fresh,
        diagnostics_cpu_seconds(measured),
        clock.seconds,
    )
