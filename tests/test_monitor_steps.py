"""SpikeMonitor's per-step watch: each batch's own loss recovered exactly, a spike located to its
step with the probe read right after it and a snapshot near it, no alarm on a noisy healthy run,
and never the end of the fit when it fails."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from conftest import REPO
from spikelab.measurements import Diagnostics
from spikelab.monitor import BatchLosses, SpikeMonitor
from spikelab.verdict import DEFAULT_DIVERGENCE, STEP_WINDOW, onsets, step_onsets

# a spike made at a known step: the output layer's kernel negated (times 20) at the end of step
# KICK - 1, so step KICK's loss (computed before its update) is the first that sees it
SPIKE_SCRIPT = r"""
import json, sys
import keras, numpy as np
from spikelab.monitor import SpikeMonitor

KICK = 64 + 31  # epoch 2, batch 31 (64 steps an epoch)
rng = np.random.default_rng(0)
x = rng.normal(size=(512, 4)).astype("float32")
y = (x[:, 0] + x[:, 1] > 0).astype("int64")


class Kick(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.step = 0

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step == KICK - 1:
            layer = self.model.layers[-1]
            layer.kernel.assign(layer.kernel.numpy() * -20)


def fit(callbacks):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(2, activation="softmax")]
    )
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=8, epochs=3, shuffle=False, callbacks=callbacks, verbose=0)
    return model


monitor = SpikeMonitor(x, y, budget=None, report=False)
model = fit([Kick(), monitor])
first = monitor.step_spikes[0]
held = monitor.step_snapshot_steps[0]
state = monitor.step_snapshots[held]
after = [np.array(v.numpy()) for v in model.trainable_variables]
monitor.restore_step(held)
restored = [np.array(v.numpy()) for v in model.trainable_variables]
# a healthy fit: watched per step and not, the same weights
healthy = SpikeMonitor(x, y, budget=None, report=False)
watched = [np.array(v.numpy()) for v in fit([healthy]).trainable_variables]
plain = [np.array(v.numpy()) for v in fit([]).trainable_variables]
print(json.dumps({
    "backend": keras.backend.backend(),
    "first": {k: v for k, v in first.items()},
    "steps": len(monitor.step_losses),
    "loss_at_kick": monitor.step_losses[KICK - 1], "loss_before": monitor.step_losses[KICK - 2],
    "held": monitor.step_snapshot_steps,
    "restored_differs_from_end": any(not np.array_equal(a, b) for a, b in zip(after, restored)),
    "restored_matches_snapshot": all(
        np.array_equal(r, state[f"weight/{v.path}"]) for r, v in zip(restored, model.trainable_variables)
    ),
    "failures": monitor.failures + healthy.failures,
    "healthy_spikes": healthy.step_spikes,
    "unchanged": all(np.array_equal(a, b) for a, b in zip(watched, plain)),
}))
"""


def run_spike_script(backend: str) -> dict:
    environment = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-c", SPIKE_SCRIPT], capture_output=True, text=True, env=environment, cwd=REPO, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def known_loss(y_true, y_pred):
    """Each sample's loss is its label (the model's output times 0): every batch's loss is known."""
    return y_true[:, 0] + 0.0 * y_pred[:, 0]


def test_each_batch_loss_is_recovered_from_the_running_mean_short_last_batch_included():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(70, 3)).astype(np.float32)  # batches of 16: 16, 16, 16, 16, 6
    y = rng.uniform(0.1, 5.0, size=(70, 1)).astype(np.float32)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.01), known_loss)
    monitor = SpikeMonitor(x, y, budget=None, report=False, snapshot_every=0)
    model.fit(x, y, batch_size=16, epochs=2, shuffle=False, callbacks=[monitor], verbose=0)
    expected = [float(y[i : i + 16].mean()) for i in range(0, 70, 16)] * 2
    assert len(monitor.step_losses) == 10
    np.testing.assert_allclose(monitor.step_losses, expected, rtol=2e-6)
    # read as if every batch had 16 samples (no sample count), the short last batch's loss is off
    means = np.cumsum(y[:, 0], dtype=np.float64)[[15, 31, 47, 63, 69]] / np.array([16, 32, 48, 64, 70])
    reader = BatchLosses()
    naive = [reader.read(k, float(m)) for k, m in enumerate(means, start=1)]
    assert naive[:4] == pytest.approx(expected[:4], rel=1e-6)
    assert abs(naive[-1] - expected[4]) > 0.05 * expected[4]


def test_batch_losses_from_running_means_is_exact_arithmetic():
    losses = [0.3, 0.2, 5.0, 0.25, 0.21]
    means = np.cumsum(losses) / np.arange(1, 6)
    reader = BatchLosses()
    assert [reader.read(k, m) for k, m in enumerate(means, start=1)] == pytest.approx(losses, rel=1e-12)
    reader.start_epoch()
    # steps_per_execution 2: the callback sees every second step, and gets the two steps' mean
    assert reader.read(2, means[1]) == pytest.approx(0.25) and reader.read(4, means[3]) == pytest.approx(2.625)
    assert math.isnan(reader.read(4, means[3]))  # a repeated report: nothing new


# torch is not in the lab's install: SPIKELAB_BACKENDS=torch in a venv that has it (docs/monitor.md)
@pytest.mark.parametrize("backend", [*os.environ.get("SPIKELAB_BACKENDS", "tensorflow jax").split()])
def test_a_spike_inside_an_epoch_is_located_to_its_step_read_and_kept(backend):
    if importlib_missing(backend):
        pytest.skip(f"{backend} is not installed (the test extra installs jax)")
    found = run_spike_script(backend)
    assert found["backend"] == backend and found["failures"] == []
    assert found["loss_at_kick"] > 20 * found["loss_before"]
    first = found["first"]
    # located at the step whose loss first saw the kick, flagged two steps later (three of five)
    assert (first["step"], first["flagged_at"], first["epoch"], first["batch"]) == (95, 97, 2, 31)
    assert first["jump"] >= 10 and first["loss"] == pytest.approx(found["loss_at_kick"])
    # the probe read right after it: the gradient, Adam's state and the saturation on the probe
    assert first["grad_norm"] > 1 and first["v_sqrt_median"] > 0 and first["adam_ratio_max"] > 0
    assert first["g2_over_v_rms"] > 0
    assert first["saturated_wrong_fraction"] > 0.5
    # a snapshot 2 steps after the flagging step, in a ring of 2; restoring it puts those weights back
    assert found["held"][0] == 99 and len(found["held"]) <= 2
    assert found["restored_differs_from_end"] and found["restored_matches_snapshot"]
    assert found["healthy_spikes"] == [] and found["unchanged"]


def importlib_missing(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is None


def healthy_noisy_steps(steps: int = 4000, seed: int = 0) -> list[float]:
    """A healthy run's batch losses: a level falling from 0.7 to 0.05, each batch log-normal around
    it (sd 0.6: batches 3x the level are common), and one batch in 200 a hard one at 6x."""
    rng = np.random.default_rng(seed)
    level = 0.05 + 0.65 * np.exp(-np.arange(steps) / 600)
    losses = level * np.exp(rng.normal(0, 0.6, steps))
    hard = rng.random(steps) < 1 / 200
    losses[hard] *= 6
    return list(losses)


def test_no_alarm_on_a_noisy_healthy_per_step_loss_where_the_lowest_so_far_rule_fires():
    for seed in range(3):
        losses = healthy_noisy_steps(seed=seed)
        assert step_onsets(losses, DEFAULT_DIVERGENCE) == []
        assert len(onsets(losses, DEFAULT_DIVERGENCE, window=None)) > 5  # x the lowest batch so far


def test_a_spike_in_a_per_step_sequence_is_located_and_one_hard_batch_is_not_one():
    losses = healthy_noisy_steps(seed=4)
    losses[3000] *= 40  # one hard batch: not a spike
    losses[3200:3202] = [3.0, 3.0]  # nor two
    assert step_onsets(losses, DEFAULT_DIVERGENCE) == []
    losses[3500:3520] = [2.0] * 20  # the model worse for 20 steps, from step 3501
    ((onset, flagged, level),) = step_onsets(losses, DEFAULT_DIVERGENCE)
    assert (onset, flagged) == (3501, 3503) and 0.03 < level < 0.2  # the mean of the 64 steps before
    assert STEP_WINDOW == 64


def _separable(n=256):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    return x, (x[:, 0] + x[:, 1] > 0).astype(np.int64)


def _fit(monitor, epochs=3):
    x, y = _separable()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy")
    return model.fit(x, y, batch_size=16, epochs=epochs, callbacks=[monitor], verbose=0).history["loss"]


def test_a_failing_per_step_watch_is_turned_off_with_one_line_and_fit_goes_on(monkeypatch, capsys):
    def broken(self, *args, **kwargs):
        raise RuntimeError("injected")

    monkeypatch.setattr(BatchLosses, "read", broken)
    x, y = _separable()
    monitor = SpikeMonitor(x, y, budget=None)
    assert len(_fit(monitor)) == 3
    assert monitor.failures == [
        "SpikeMonitor: the per-step watch failed (RuntimeError: injected); turned off, training goes on"
    ]
    assert capsys.readouterr().err.count("per-step watch failed") == 1  # once, not once per step
    assert [row["epoch"] for row in monitor.history] == [1, 2, 3]  # the epoch diagnostics still ran
    assert "grad_norm" in monitor.history[-1] and monitor.diagnosis is not None


def test_a_failing_probe_at_a_step_spike_keeps_the_spike_and_the_fit(monkeypatch):
    def broken(self):
        raise RuntimeError("probe")

    monkeypatch.setattr(Diagnostics, "at_step", broken)

    class Jolt(keras.callbacks.Callback):  # negates the output layer after step 20 (epoch 2, batch 4)
        def on_train_batch_end(self, batch, logs=None):
            self.steps = getattr(self, "steps", 0) + 1
            if self.steps == 20:
                layer = self.model.layers[-1]
                layer.kernel.assign(layer.kernel.numpy() * -30)

    x, y = _separable()
    monitor = SpikeMonitor(x, y, budget=None, report=False, step_confirm=1)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=16, epochs=3, callbacks=[Jolt(), monitor], verbose=0)
    assert monitor.step_spikes and monitor.step_spikes[0]["step"] == 21  # epoch 2, batch 5
    assert "grad_norm" not in monitor.step_spikes[0]
    assert monitor.failures == [
        "SpikeMonitor: the probe diagnostics at a step failed (RuntimeError: probe); turned off, training goes on"
    ]
    assert len(monitor.history) == 3


def test_per_step_off_leaves_keras_its_asynchronous_batch_dispatch():
    from keras.src import utils

    x, y = _separable()
    assert utils.is_default(SpikeMonitor(x, y, per_step=False).on_train_batch_end)
    assert not utils.is_default(SpikeMonitor(x, y).on_train_batch_end)
    monitor = SpikeMonitor(x, y, per_step=False, report=False)
    _fit(monitor, epochs=2)
    assert len(monitor.step_losses) == 0 and len(monitor.history) == 2


def test_a_spike_at_an_epochs_last_step_is_located_there_though_flagged_in_the_next():
    class Kick(keras.callbacks.Callback):  # negates the output layer after step 63 of 64
        def on_train_batch_end(self, batch, logs=None):
            if batch == 62 and not hasattr(self, "done"):
                self.done = True
                layer = self.model.layers[-1]
                layer.kernel.assign(layer.kernel.numpy() * -20)

    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 4)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(2, activation="softmax")]
    )
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    monitor = SpikeMonitor(x, y, budget=None, report=False, snapshot_every=0)
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, callbacks=[Kick(), monitor], verbose=0)
    first = monitor.step_spikes[0]
    assert (first["step"], first["flagged_at"], first["epoch"], first["batch"]) == (64, 66, 1, 64)
