"""The divergence guard, on runs forced to diverge by a learning-rate kick in the middle of training."""

import keras
import numpy as np
import pytest

from spikelab.data import generate, split
from spikelab.divergence import train_metrics
from spikelab.params import params_from_dict
from spikelab.training import train

KICK_EPOCH = 3  # from this 1-based epoch on, Adam's learning rate is 10


class LearningRateKick(keras.callbacks.Callback):
    """Every weight then moves by ~10 a step: the loss explodes within an epoch or two."""

    def on_epoch_begin(self, epoch, logs=None):
        if epoch + 1 == KICK_EPOCH:
            self.model.optimizer.learning_rate.assign(10.0)


def kicked_run(tiny_raw, **guard):
    tiny_raw["train"]["epochs"] = 6
    tiny_raw["guard"].update(**guard)
    params = params_from_dict(tiny_raw)
    solid, broken, _ = generate(params.data)
    result = train(params, split(solid, broken, params.split), "channels_last", None, [LearningRateKick()])
    return result, train_metrics(result.history, params.divergence, result.guard_epochs, result.best_epoch)


@pytest.fixture
def unguarded(tiny_raw):
    return kicked_run(tiny_raw, enabled=False)


def test_without_the_guard_the_kick_is_recorded_as_divergence(unguarded):
    result, metrics = unguarded
    assert metrics["diverged"] is True and metrics["divergence_epoch"] in (KICK_EPOCH, KICK_EPOCH + 1)
    assert metrics["guard_triggered"] is False and len(result.history) == 6


def test_guard_fires_where_the_metrics_rule_does_restores_the_best_state_and_stops(tiny_raw, unguarded):
    spike_epoch = unguarded[1]["divergence_epoch"]
    result, metrics = kicked_run(tiny_raw, enabled=True, action="stop")
    assert result.guard_epochs == [spike_epoch]
    assert len(result.history) == spike_epoch  # stopped right there
    for variable in result.model.trainable_variables:  # the weights are the best epoch's again
        np.testing.assert_array_equal(variable.numpy(), result.best_state[f"weight/{variable.path}"])
    assert metrics["guard_triggered"] is True and metrics["guard_epoch"] == spike_epoch


def test_guard_reduce_lr_continues_with_a_smaller_rate(tiny_raw, unguarded):
    spike_epoch = unguarded[1]["divergence_epoch"]
    result, _ = kicked_run(tiny_raw, enabled=True, action="reduce_lr", lr_factor=0.5)
    assert result.guard_epochs[0] == spike_epoch
    assert len(result.history) == 6  # kept training
    assert result.history[spike_epoch - 1]["learning_rate"] == pytest.approx(5.0)  # the kick's 10, halved
