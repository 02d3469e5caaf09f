"""SpikeMonitor on networks the lab did not write, tiny: real values, skips said once, spikes diagnosed."""

from __future__ import annotations

import math
import sys
import types

import keras
import numpy as np
import pytest

from conftest import REPO
from spikelab import diagnose as diagnose_command
from spikelab.divergence import SpikeWatch
from spikelab.history import read_history_csv
from spikelab.metric_names import mlflow_key
from spikelab.monitor import AFTER_SPIKE_PASSES, SpikeMonitor
from spikelab.params import load_params
from spikelab.verdict import DEFAULT_DIVERGENCE, DEFAULT_PLATEAU
from study.architectures import ARCHITECTURES, build, digits, inputs_for


def fit(model, x, y, monitor, epochs=2, extra=(), optimizer=None, loss="sparse_categorical_crossentropy"):
    model.compile(optimizer=optimizer or keras.optimizers.Adam(1e-3), loss=loss)
    model.fit(x, y, batch_size=16, epochs=epochs, callbacks=[*extra, monitor], verbose=0)
    return monitor


def test_defaults_are_the_lab_params():
    params = load_params(REPO / "params.yaml")
    assert DEFAULT_DIVERGENCE == params.divergence and DEFAULT_PLATEAU == params.plateau
    monitor = SpikeMonitor(np.zeros((1, 2)), np.zeros(1))
    diagnostics = params.diagnostics
    assert (monitor.probe_size, monitor.eigen_every, monitor.power_iterations, monitor.dead_zone_every) == (
        1,  # the probe is at most the sample
        diagnostics.eigen_every,
        diagnostics.power_iterations,
        diagnostics.dead_zone_every,
    )
    assert SpikeMonitor(np.zeros((64, 2)), np.zeros(64)).probe_size == diagnostics.probe_size


@pytest.mark.slow  # builds and traces each network: tens of seconds apiece
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_each_foreign_architecture_gets_real_values(name, capsys):
    keras.utils.set_random_seed(0)
    images, labels = digits(32)
    x = inputs_for(name, images)
    cheap = name == "mobilenet"  # its curvature graph takes long to trace: the cheap mode is for such models
    monitor = fit(
        build(name), x, labels, SpikeMonitor(x, labels, probe_size=8, cheap=cheap, keep_snapshots=2, budget=None), 3
    )
    history = monitor.history
    assert [row["epoch"] for row in history] == [1, 2, 3]
    last = history[-1]
    assert last["grad_norm"] > 0 and math.isfinite(last["grad_norm"])
    assert 0 < last["v_sqrt_median"] < 1 and last["adam_ratio_max"] > 0
    assert 0.1 <= last["majority_prediction_fraction"] <= 1  # 10 classes: at least a tenth
    assert 0 <= last["dead_fraction"] <= 1 and last["full_loss_unclipped"] > 0
    # the categorical form: the whole-sample loss is what Keras's sparse cross-entropy reports
    assert abs(last["full_loss_unclipped"] - monitor.model.evaluate(x, labels, verbose=0)) < 1e-3
    assert ("lambda_grad" in last) is not cheap
    if not cheap:
        assert math.isfinite(last["lambda_grad"])
    assert monitor.snapshot_epochs == [2, 3]  # the ring buffer keeps the last two
    assert monitor.diagnosis is not None and "spike doctor" in capsys.readouterr().out


def test_what_does_not_apply_is_skipped_and_said_once(capsys):
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
    y = x @ np.array([1.0, -2.0, 0.5], np.float32)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(1)])
    monitor = fit(model, x, y, SpikeMonitor(x, y, dvclive=False), 3, optimizer=keras.optimizers.SGD(0.01), loss="mse")
    out = capsys.readouterr().out
    assert out.count("SpikeMonitor skips") == 1
    assert "Adam state and curvature (SGD has no Adam moments)" in out
    assert "dead zone and collapse (the output is not a softmax or sigmoid probability)" in out
    last = monitor.history[-1]
    assert last["grad_norm"] > 0 and "v_sqrt_median" not in last and "dead_fraction" not in last


def test_a_sigmoid_output_and_a_non_log_loss():
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(1).normal(size=(32, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    monitor = fit(model, x, y, SpikeMonitor(x, y, report=False), 2, loss="binary_crossentropy")
    last = monitor.history[-1]
    logits = x @ model.layers[-1].kernel.numpy() + model.layers[-1].bias.numpy()
    share = max(np.mean(logits > 0), np.mean(logits <= 0))
    assert last["majority_prediction_fraction"] == pytest.approx(share)
    assert last["full_loss_unclipped"] == pytest.approx(model.evaluate(x, y, verbose=0), rel=1e-4)
    hinge = fit(keras.models.clone_model(model), x, y, SpikeMonitor(x, y, report=False), 2, loss="hinge")
    assert any("dead zone (the loss hinge" in line for line in hinge.skipped)
    assert "majority_prediction_fraction" in hinge.history[-1] and "dead_fraction" not in hinge.history[-1]


class Jolt(keras.callbacks.Callback):
    """At the end of one epoch, does something to the model that makes the next epoch's loss jump."""

    def __init__(self, epoch: int, action):
        super().__init__()
        self.epoch, self.action = epoch, action

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            self.action(self.model)


def _separable():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    return x, (x[:, 0] + x[:, 1] > 0).astype(np.int64)


def test_a_forced_collapse_is_diagnosed_and_a_weight_jolt_left_unexplained(capsys):
    x, y = _separable()

    def two_class_model():
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])

    def everything_to_class_0(model):
        model.layers[-1].bias.assign([200.0, -200.0])

    adam = keras.optimizers.Adam
    monitor = fit(two_class_model(), x, y, SpikeMonitor(x, y), 12, [Jolt(8, everything_to_class_0)], adam(0.05))
    (verdict,) = monitor.diagnosis.verdicts
    assert verdict.epoch == 9 and verdict.mechanism == "collapse"
    assert verdict.numbers["collapse.majority_prediction_fraction"] == 1.0
    assert "a collapse to one class" in capsys.readouterr().out

    def scramble(model):  # a jump no mechanism explains: v has not decayed yet, nothing collapsed
        kernel = model.layers[-1].kernel
        kernel.assign(-100 * kernel.numpy())

    monitor = fit(two_class_model(), x, y, SpikeMonitor(x, y, report=False), 5, [Jolt(2, scramble)], adam(0.05))
    (verdict,) = monitor.diagnosis.verdicts
    assert (verdict.epoch, verdict.mechanism) == (3, "unexplained")
    assert verdict.numbers["adam_step.v_sqrt_median_over_peak"] > 0.85  # v near its peak: no decay to blame


def test_the_budget_skips_the_curvature_and_defers_the_cadence_pass_not_the_spike_passes(capsys):
    x, y = _separable()

    def watched(budget, jolt=()):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
        monitor = SpikeMonitor(x, y, dead_zone_every=2, budget=budget, report=budget is not None)
        return fit(model, x, y, monitor, 8, jolt, keras.optimizers.Adam(0.05))

    unlimited = watched(None)
    assert all(math.isfinite(row["lambda_grad"]) for row in unlimited.history)
    assert [row["epoch"] for row in unlimited.history if "majority_prediction_fraction" in row] == [1, 2, 4, 6, 8]
    # a tiny model's epoch is a few steps: the probe alone is far above any small budget. The first
    # epoch (the graphs' tracing) is outside the share: everything runs in it
    starved = watched(1e-9)
    assert starved.cpu_share > 1e-9
    assert math.isfinite(starved.history[0]["lambda_grad"])
    assert all(math.isnan(row["lambda_grad"]) for row in starved.history[1:])
    # the first epoch's pass, and the last's (the state the fit ends in), whatever the budget
    assert [row["epoch"] for row in starved.history if "majority_prediction_fraction" in row] == [1, 8]
    assert starved.curvature_skipped == 7 and starved.passes_deferred == 6  # epoch 2's pass, deferred to 8
    assert all(math.isfinite(row["v_sqrt_median"]) for row in starved.history[1:])  # the probe's keys stay
    assert "curvature skipped at 7 epochs" in starved.details

    def everything_to_class_0(model):
        model.layers[-1].bias.assign([200.0, -200.0])

    spiked = watched(1e-9, [Jolt(4, everything_to_class_0)])
    passes = [row["epoch"] for row in spiked.history if "majority_prediction_fraction" in row]
    watch = SpikeWatch(DEFAULT_DIVERGENCE)
    flagged = [row["epoch"] for row in spiked.history if watch.observe(row["loss"])]
    assert flagged[0] == 5  # the jolt after epoch 4
    # over budget, the passes a flagged epoch asks for (it, +2, +5) run all the same; none else does
    asked = {epoch + after for epoch in flagged for after in AFTER_SPIKE_PASSES}
    assert passes == sorted({1, 8} | asked & set(range(1, 9)))
    with pytest.raises(ValueError, match="budget = 0"):
        SpikeMonitor(x, y, budget=0)


def test_the_ring_buffer_in_a_folder_replays_an_epoch(tmp_path):
    x, y = _separable()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    history = tmp_path / "history.csv"
    monitor = SpikeMonitor(
        x, y, snapshot_folder=tmp_path / "ring", keep_snapshots=2, report=False, history_path=history
    )
    fit(model, x, y, monitor, 4)
    assert [row["epoch"] for row in read_history_csv(history)] == [1, 2, 3, 4]
    assert diagnose_command.main([str(history)]) == 0
    assert sorted(p.name for p in (tmp_path / "ring").glob("*.npz")) == ["epoch_00003.npz", "epoch_00004.npz"]
    after_four = model.layers[-1].kernel.numpy()
    monitor.restore(3)
    assert not np.array_equal(model.layers[-1].kernel.numpy(), after_four)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)  # replays epoch 4 (the fit above shuffled)
    with pytest.raises(ValueError, match="no snapshot of epoch 1"):
        monitor.restore(1)


def test_logs_to_mlflow_and_dvclive(tmp_path, monkeypatch):
    import mlflow

    logged = []

    class Live:  # DVCLive's interface as the monitor uses it
        def log_metric(self, name, value):
            logged.append(name)

        def next_step(self):
            logged.append("step")

        def end(self):
            logged.append("end")

    monkeypatch.setitem(sys.modules, "dvclive", types.SimpleNamespace(Live=Live))
    monkeypatch.chdir(tmp_path)
    x, y = _separable()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monitor = SpikeMonitor(x, y, tracking_uri=uri, report=False)
    fit(model, x, y, monitor, 2, optimizer=keras.optimizers.Adam(0.05))
    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("Default").experiment_id])
    assert [m.step for m in client.get_metric_history(run.info.run_id, mlflow_key("grad_norm"))] == [1, 2]
    # the spike doctor reads the run back under history.csv's names
    assert {"epoch", "loss", "grad_norm"} <= diagnose_command.mlflow_history(run.info.run_id, uri)[0].keys()
    assert run.data.tags["spike_doctor.mechanisms"] == "none"
    assert mlflow.active_run() is None  # the run it started, it ended
    assert logged.count("step") == 2 and logged[-1] == "end" and "spikemonitor/grad_norm" in logged
    assert monitor.skipped == []


def test_bad_input_is_refused_before_any_work():
    with pytest.raises(ValueError, match="x has 3 samples, y 2"):
        SpikeMonitor(np.zeros((3, 2)), np.zeros(2))
    with pytest.raises(ValueError, match="keep_snapshots = 0"):
        SpikeMonitor(np.zeros((3, 2)), np.zeros(3), keep_snapshots=0)


def test_watching_changes_nothing_in_the_training():
    """The probe runs in training mode; the batch-norm statistics and dropout seeds it moves are put back."""
    x, y = _separable()

    def trained(callbacks):
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [
                keras.Input((4,)),
                keras.layers.Dense(8),
                keras.layers.BatchNormalization(),
                keras.layers.Dropout(0.3),
                keras.layers.Dense(2, activation="softmax"),
            ]
        )
        model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
        model.fit(x, y, batch_size=16, epochs=3, shuffle=False, callbacks=callbacks, verbose=0)
        return [v.numpy() for v in model.variables]

    plain = trained([])
    watched = trained([SpikeMonitor(x, y, report=False)])
    assert all(np.array_equal(a, b) for a, b in zip(plain, watched))


def test_the_collapse_share_counts_only_finite_answers():
    from spikelab.dead_zone import prediction_share

    logits = np.array([[np.nan, np.nan], [1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    assert prediction_share(logits)["majority_prediction_fraction"] == pytest.approx(2 / 3)
    assert math.isnan(prediction_share(logits[:1])["majority_prediction_fraction"])
    assert prediction_share(np.array([[-1.0], [2.0], [3.0]]), "sigmoid")["majority_prediction_fraction"] == 2 / 3


def test_the_loss_form_is_known_for_keras_and_the_lab():
    from spikelab.losses import clipped_binary_crossentropy
    from spikelab.monitor import clipped_form

    assert clipped_form(keras.losses.get("sparse_categorical_crossentropy")) is False  # reads the cached logits
    assert clipped_form(keras.losses.BinaryCrossentropy()) is False
    assert clipped_form(clipped_binary_crossentropy) is True
    assert clipped_form(keras.losses.get("mse")) is None

    def my_crossentropy(y_true, y_pred):
        return keras.losses.categorical_crossentropy(y_true, y_pred)

    assert clipped_form(my_crossentropy) is None  # unknown: the diagnosis reads it off the history


def test_the_budget_runs_what_its_last_measured_cost_affords():
    """The plan from fabricated costs: spent 0.5 s of 10 s of training, budget 10%."""
    x, y = _separable()
    monitor = SpikeMonitor(x, y, budget=0.10)
    owed = types.SimpleNamespace(owed=False, eigen_due=lambda epoch: (epoch + 1) % 10 == 0 or owed.owed)
    monitor._curvature, monitor._first_epoch, monitor.training_cpu_seconds = owed, 1, 10.0
    monitor.cpu_seconds, monitor.curvature_skipped, monitor.passes_deferred = {1: 9.0, 2: 0.5}, 0, 0
    monitor._passes, monitor._forced = {20}, set()
    monitor._cost = {"base": 0.05, "curvature": 0.6, "eigen": 0.7, "pass": 0.2}
    assert monitor._plan(epoch=4) == (True, False, False)  # (0.5 + 0.6) / 11.1 = 9.9%
    assert monitor._plan(epoch=9) == (False, False, False) and owed.owed  # 1.2 / 11.2 = 10.7%: lambda_max owed
    monitor._cost["eigen"] = 0.1
    assert monitor._plan(epoch=12) == (True, True, False)  # the owed lambda_max, off its cadence
    owed.owed = False  # as Curvature does once it has computed it
    monitor._cost["pass"] = 0.6
    # the pass at 20 beside the curvature would be (0.5 + 0.1 + 0.6) / 11.2 = 10.7%: it moves to 21
    assert monitor._plan(epoch=19) == (True, True, False) and monitor._passes == {21}
    monitor._cost["curvature"] = 5.0
    assert monitor._plan(epoch=20) == (False, False, True)  # alone it fits: 1.1 / 11.1
    assert monitor.passes_deferred == 1 and monitor.curvature_skipped == 2
    # before any measurement: nothing optional runs until an epoch has measured the base cost
    monitor._cost = dict.fromkeys(("base", "curvature", "eigen", "pass"))
    monitor._passes = {31}
    assert monitor._plan(epoch=30) == (False, False, False) and monitor._passes == {32}
    # then the guesses: a curvature epoch 3 x the base, the eigenvalue (1 + power_iterations) x that
    monitor._cost["base"] = 0.05
    assert monitor._expected("curvature") == pytest.approx(0.15)
    assert monitor._expected("eigen") == pytest.approx(9 * 0.15) and monitor._expected("pass") is None
    assert monitor._plan(epoch=31) == (True, False, True)  # (0.5 + 0.15) / 10.65 = 6.1%; the pass's cost unknown
    assert monitor._plan(epoch=39) == (False, False, False) and owed.owed  # (0.5 + 1.35) / 11.85 = 15.6%
