"""SpikeMonitor on every Keras backend it can run here (a subprocess per backend: Keras picks its
backend once, at import), and never the end of a user's training: a failure inside it turns that
part off with one line and fit goes on."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from conftest import REPO
from spikelab import measurements
from spikelab.monitor import SpikeMonitor

# run under KERAS_BACKEND=<backend>: the probe gradient against the analytic one, a fit watched with
# every part on, and the watched fit's weights against an unwatched twin's
SCRIPT = r"""
import json, sys
import keras, numpy as np
from spikelab.measurements import probe_pass
from spikelab.model import LogitsAndOutput
from spikelab.monitor import SpikeMonitor

tensorflow_imported = "tensorflow" in sys.modules  # by the monitor's modules (fit's own data code may load it)
rng = np.random.default_rng(0)
x = rng.normal(size=(64, 4)).astype("float32")
y = (x[:, 0] + x[:, 1] > 0).astype("int64")

# one softmax layer: the mean cross-entropy's gradient is x^T (p - onehot) / n
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
kernel, bias = rng.normal(size=(4, 2)).astype("float32"), np.array([0.1, -0.2], "float32")
model.layers[-1].set_weights([kernel, bias])
loss = keras.losses.get("sparse_categorical_crossentropy")
norm, logits, gradients = probe_pass(model, LogitsAndOutput(model), x[:32], y[:32], loss)()
z = x[:32] @ kernel + bias
p = np.exp(z - z.max(1, keepdims=True)); p /= p.sum(1, keepdims=True)
error = (p - np.eye(2)[y[:32]]) / 32
expected = [x[:32].T @ error, error.sum(0)]
gradient_error = max(float(np.abs(np.asarray(g) - e).max()) for g, e in zip(gradients, expected))

def trained(monitor):
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.BatchNormalization(),
                            keras.layers.Dropout(0.3), keras.layers.Dense(2, activation="softmax")])
    net.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    net.fit(x, y, batch_size=16, epochs=3, shuffle=False, callbacks=[monitor] if monitor else [], verbose=0)
    return net, [np.asarray(v.numpy()) for v in net.variables]

monitor = SpikeMonitor(x, y, budget=None, keep_snapshots=2, report=False)
_, watched = trained(monitor)
_, plain = trained(None)
last = monitor.history[-1]
print(json.dumps({
    "backend": keras.backend.backend(),
    "gradient_error": gradient_error,
    "norm_error": abs(float(norm) - float(np.sqrt(sum((e ** 2).sum() for e in expected)))),
    "logits_error": float(np.abs(np.asarray(logits) - z).max()),
    "epochs": [row["epoch"] for row in monitor.history],
    "last": {k: v for k, v in last.items() if isinstance(v, float)},
    "failures": monitor.failures, "skipped": monitor.skipped,
    "snapshots": monitor.snapshot_epochs,
    "unchanged": all(np.array_equal(a, b) for a, b in zip(plain, watched)),
    "tensorflow_imported": tensorflow_imported,
}))
"""


def run_on(backend: str) -> dict:
    environment = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=environment, cwd=REPO, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("backend", [*os.environ.get("SPIKELAB_BACKENDS", "tensorflow jax").split()])
def test_the_monitor_runs_on_the_backend(backend):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed (the test extra installs it)")
    found = run_on(backend)
    assert found["backend"] == backend
    assert found["gradient_error"] < 1e-5 and found["norm_error"] < 1e-5 and found["logits_error"] < 1e-5
    assert found["epochs"] == [1, 2, 3] and found["failures"] == []
    last = found["last"]
    assert last["grad_norm"] > 0 and 0 < last["v_sqrt_median"] < 1 and last["adam_ratio_max"] > 0
    assert 0 <= last["dead_fraction"] <= 1 and 0.5 <= last["majority_prediction_fraction"] <= 1
    assert found["snapshots"] == [2, 3]
    assert found["unchanged"]  # the probe's batch-norm and dropout-seed moves are undone on every backend
    # the curvature needs nested tapes: TensorFlow only, and said so once elsewhere
    assert ("lambda_grad" in last) == (backend == "tensorflow")
    if backend != "tensorflow":
        assert any(line.startswith("curvature (nested gradients") for line in found["skipped"])
        assert not found["tensorflow_imported"]


def _separable():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    return x, (x[:, 0] + x[:, 1] > 0).astype(np.int64)


def _fit(monitor, epochs=4):
    x, y = _separable()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy")
    history = model.fit(x, y, batch_size=16, epochs=epochs, callbacks=[monitor], verbose=0)
    return history.history["loss"]


def test_a_failing_part_is_turned_off_with_one_line_and_fit_goes_on(monkeypatch, capsys):
    def broken(self, logs, epoch):
        raise RuntimeError("injected")

    monkeypatch.setattr(measurements.Diagnostics, "_add_diagnostics", broken)
    x, y = _separable()
    monitor = SpikeMonitor(x, y, budget=None)
    losses = _fit(monitor)
    assert len(losses) == 4  # every epoch trained
    assert monitor.failures == [
        "SpikeMonitor: the probe diagnostics failed (RuntimeError: injected); turned off, training goes on"
    ]
    err = capsys.readouterr().err
    assert err.count("SpikeMonitor: the probe diagnostics failed") == 1  # once, not once per epoch
    assert [row["epoch"] for row in monitor.history] == [1, 2, 3, 4]
    assert all("grad_norm" not in row for row in monitor.history)
    assert "majority_prediction_fraction" in monitor.history[-1]  # the other parts still ran
    assert monitor.diagnosis is not None


def test_a_failure_in_the_monitors_own_bookkeeping_never_ends_the_fit(monkeypatch, capsys):
    def broken(self, epoch):
        raise ValueError("bookkeeping")

    monkeypatch.setattr(SpikeMonitor, "_plan", broken)
    x, y = _separable()
    monitor = SpikeMonitor(x, y)
    assert len(_fit(monitor)) == 4
    assert monitor.failures == [
        "SpikeMonitor: SpikeMonitor failed (ValueError: bookkeeping); turned off, training goes on"
    ]
    assert capsys.readouterr().err.count("turned off") == 1
