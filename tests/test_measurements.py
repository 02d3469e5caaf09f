"""The diagnostics read the real optimizer state: checked against a numpy re-implementation of Keras's Adam."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_model_params
from spikelab.adam_state import adam_slots
from spikelab.data import generate, split
from spikelab.losses import clipped_binary_crossentropy
from spikelab.measurements import adam_state_stats, layer_of, saturation_stats, second_moment_lag
from spikelab.model import build_model
from spikelab.params import params_from_dict
from spikelab.training import train

LEARNING_RATE, BETA_1, BETA_2, EPSILON = 0.01, 0.9, 0.999, 1e-7


def numpy_adam_step(weights, grads, m, v, step):
    """Keras 3's Adam: w -= lr*sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + eps), with the uncorrected v."""
    alpha = LEARNING_RATE * np.sqrt(1 - BETA_2**step) / (1 - BETA_1**step)
    for i, g in enumerate(grads):
        m[i] = m[i] + (g - m[i]) * (1 - BETA_1)
        v[i] = v[i] + (g * g - v[i]) * (1 - BETA_2)
        weights[i] = weights[i] - alpha * m[i] / (np.sqrt(v[i]) + EPSILON)


def test_adam_diagnostics_match_a_numpy_adam_over_three_steps():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.random((8, 32, 32, 1), dtype=np.float32)
    y = np.eye(2, dtype=np.float32)[rng.integers(0, 2, 8)]
    model = build_model(tiny_model_params(), 32, "channels_last")
    twin = build_model(tiny_model_params(), 32, "channels_last")  # computes the gradients numpy applies
    optimizer = keras.optimizers.Adam(LEARNING_RATE, beta_1=BETA_1, beta_2=BETA_2, epsilon=EPSILON)
    model.compile(optimizer=optimizer, loss=clipped_binary_crossentropy)
    weights = [w.numpy().copy() for w in model.trainable_variables]
    m = [np.zeros_like(w) for w in weights]
    v = [np.zeros_like(w) for w in weights]
    for step in (1, 2, 3):
        twin.set_weights(weights)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(clipped_binary_crossentropy(y, twin(x)))
        grads = [g.numpy() for g in tape.gradient(loss, twin.trainable_variables)]
        numpy_adam_step(weights, grads, m, v, step)
        model.train_on_batch(x, y)
    for ours, theirs in zip(weights, model.trainable_variables):
        np.testing.assert_allclose(
            theirs.numpy(), ours, rtol=1e-4, atol=1e-6
        )  # float32 conv gradients differ in summation order
    m_all = np.concatenate([a.ravel() for a in m])
    v_all = np.concatenate([a.ravel() for a in v])
    m_hat, v_sqrt = m_all / (1 - BETA_1**3), np.sqrt(v_all / (1 - BETA_2**3))
    ratio = np.abs(m_hat) / (v_sqrt + EPSILON)
    stats = adam_state_stats(optimizer)
    assert stats["adam_ratio_max"] == pytest.approx(ratio.max(), rel=1e-4)
    assert stats["adam_ratio_p99"] == pytest.approx(np.percentile(ratio, 99), rel=1e-4)
    assert stats["v_sqrt_median"] == pytest.approx(np.median(v_sqrt), rel=1e-4)
    assert stats["v_below_eps_fraction"] == pytest.approx(np.mean(v_sqrt < EPSILON))
    assert 0 < stats["adam_ratio_max"] <= 1 / (1 - BETA_1**3) * 3  # sanity: a bounded, normalised step

    # the second-moment lag (Wortsman et al. 2023) at the weights reached, against numpy's v
    twin.set_weights(weights)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(clipped_binary_crossentropy(y, twin(x)))
    grads = [g.numpy() for g in tape.gradient(loss, twin.trainable_variables)]
    layers = [layer_of(v.path) for v in model.trainable_variables]
    lag = [g**2 / np.maximum(vi / (1 - BETA_2**3), EPSILON**2) for g, vi in zip(grads, v)]
    lagged = second_moment_lag(grads, layers, adam_slots(optimizer))
    assert lagged["g2_over_v_rms"] == pytest.approx(np.sqrt(np.concatenate([a.ravel() for a in lag]).mean()), rel=1e-4)
    conv1 = [a.ravel() for a, w in zip(lag, model.trainable_variables) if w.path.split("/")[-2] == "conv1"]
    assert lagged["g2_over_v_rms_conv1"] == pytest.approx(np.sqrt(np.concatenate(conv1).mean()), rel=1e-4)
    assert set(lagged) == {"g2_over_v_rms", "g2_over_v_rms_conv1", "g2_over_v_rms_conv2", "g2_over_v_rms_logits"}
    # a second moment 100x too small reads as gradients 10x larger than v expects
    for velocity in optimizer._velocities:
        velocity.assign(velocity * 0.01)
    shrunk = second_moment_lag(grads, layers, adam_slots(optimizer))["g2_over_v_rms"]
    assert shrunk == pytest.approx(10 * lagged["g2_over_v_rms"], rel=1e-3)


def test_saturation_counts_only_samples_past_the_clip():
    logits = np.array([[20.0, -20.0], [20.0, -20.0], [1.0, 0.0], [-3.0, 3.0]], dtype=np.float32)
    labels = np.array([[1, 0], [0, 1], [1, 0], [0, 1]], dtype=np.float32)
    stats = saturation_stats(logits, labels)
    assert stats["saturated_fraction"] == 0.5  # the two samples with a logit gap of 40
    assert stats["saturated_wrong_fraction"] == 0.25  # one of them labelled broken: a dead sample
    assert stats["logit_max_abs"] == 20.0


def test_training_history_carries_every_diagnostic(tiny_raw):
    params = params_from_dict(tiny_raw)
    solid, broken, _ = generate(params.data)
    result = train(params, split(solid, broken, params.split), "channels_last", snapshot_dir=None)
    row = result.history[-1]
    for key in (
        "grad_norm",
        "update_rms",
        "update_rms_over_lr",
        "adam_ratio_max",
        "adam_ratio_p99",
        "v_below_eps_fraction",
        "v_sqrt_median",
        "g2_over_v_rms",
        "g2_over_v_rms_conv2",
        "weight_norm_conv1",
        "weight_norm_conv2",
        "weight_norm_logits",
        "logit_max_abs",
        "saturated_fraction",
        "saturated_wrong_fraction",
        "accuracy",
        "val_loss",
    ):
        assert np.isfinite(row[key]), key
    assert row["update_rms"] > 0 and row["grad_norm"] > 0
    assert len(result.history) == params.train.epochs
