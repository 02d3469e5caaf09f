"""RMSprop's and Adadelta's second moment in the "v decayed" mechanism; every share within [0, 1]."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from spikelab.monitor import SpikeMonitor
from spikelab.verdict import diagnose


def _separable():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    return x, (x[:, 0] + x[:, 1] > 0).astype(np.int64)


@pytest.mark.parametrize(("optimizer", "slot"), [("RMSprop", "_velocities"), ("Adadelta", "_accumulated_grads")])
def test_the_second_moment_of_rmsprop_and_adadelta_is_read(optimizer, slot):
    x, y = _separable()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(getattr(keras.optimizers, optimizer)(0.01), "sparse_categorical_crossentropy")
    monitor = SpikeMonitor(x, y, report=False, budget=None)
    model.fit(x, y, batch_size=16, epochs=2, callbacks=[monitor], verbose=0)
    last = monitor.history[-1]
    v = np.concatenate([np.ravel(s.numpy()) for s in getattr(model.optimizer, slot)])
    assert last["v_sqrt_median"] == pytest.approx(float(np.median(np.sqrt(v))), rel=1e-6)
    assert last["g2_over_v_rms"] > 0 and "adam_ratio_max" not in last and "lambda_grad" not in last
    assert any(f"{optimizer} keeps v, not Adam's m" in line for line in monitor.skipped)


def test_an_rmsprop_history_with_v_decayed_gets_the_step_verdict():
    history = []
    for epoch in range(1, 61):
        v = 0.01 if epoch < 30 else 0.004  # v decays while the gradients are quiet
        history.append(
            {
                "epoch": epoch,
                "loss": max(0.01, 1 / epoch**2),
                "v_sqrt_median": v,
                "update_rms_over_lr": 1.0,
                "g2_over_v_rms": 0.5,
            }
        )
    history[49].update(loss=0.5, update_rms_over_lr=6.0)
    (verdict,) = diagnose(history).verdicts
    assert (verdict.epoch, verdict.mechanism) == (50, "adam_step")  # no adam_ratio_max needed


def test_the_dead_loss_share_is_a_share():
    """The pass runs at the epoch's end; the epoch's mean loss can be far below the dead samples'
    loss then (the issue's run printed dead_loss_share 3.42)."""
    history = [{"epoch": e, "loss": max(0.01, 1 / e**2)} for e in range(1, 41)]
    history[19].update(dead_fraction=0.0, dead_loss_clipped=0.0, full_loss_clipped=0.01, full_loss_unclipped=0.01)
    history[29].update(loss=2.0)
    history[30].update(
        loss=1.0, dead_fraction=0.2, dead_loss_clipped=3.42, full_loss_clipped=3.6, full_loss_unclipped=9.0
    )
    (verdict,) = diagnose(history, loss_clipped=True).verdicts
    share = verdict.numbers["dead_zone.dead_loss_share"]
    assert 0 <= share <= 1 and share == pytest.approx(3.42 / 3.6)
    assert verdict.numbers["dead_zone.dead_loss_over_epoch_loss"] == pytest.approx(3.42)
    assert verdict.mechanism == "dead_zone"
