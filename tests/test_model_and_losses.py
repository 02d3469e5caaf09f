import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_model_params
from spikelab.losses import clipped_binary_crossentropy, clipped_categorical_crossentropy, make_loss
from spikelab.model import build_model, resolve_data_format
from spikelab.params import LossParams


def test_seed_architecture_has_the_seed_parameter_count():
    model = build_model(tiny_model_params(filters=64), 32, "channels_last")
    assert model.count_params() == 2_113_986  # 16,448 + 2,097,280 + 258, as in SEED.md


@pytest.mark.parametrize("data_format", ["channels_last", resolve_data_format("auto")])
def test_output_is_a_two_way_softmax(data_format):
    model = build_model(tiny_model_params(), 32, data_format)
    shape = (3, 1, 32, 32) if data_format == "channels_first" else (3, 32, 32, 1)
    output = model(np.random.default_rng(0).random(shape, dtype=np.float32)).numpy()
    assert output.shape == (3, 2)
    np.testing.assert_allclose(output.sum(axis=1), 1.0, rtol=1e-6)


def _gradient_wrt_logits(loss_fn, logits, label):
    logits = tf.Variable(logits)
    with tf.GradientTape() as tape:
        loss = keras.ops.mean(loss_fn(label, keras.activations.softmax(logits)))
    return float(loss), tape.gradient(loss, logits).numpy()


def test_clipped_form_has_zero_gradient_on_a_saturated_wrong_sample_and_keras3_does_not():
    logits = np.array([[30.0, -30.0]], dtype=np.float32)  # sure it is solid ...
    broken = np.array([[0.0, 1.0]], dtype=np.float32)  # ... but it is broken
    clipped_loss, clipped_grad = _gradient_wrt_logits(
        make_loss(LossParams(name="binary_crossentropy", form="keras2_clipped", label_smoothing=0.0)), logits, broken
    )
    keras3_loss, keras3_grad = _gradient_wrt_logits(
        make_loss(LossParams(name="binary_crossentropy", form="keras3", label_smoothing=0.0)), logits, broken
    )
    assert clipped_loss == pytest.approx(16.03, abs=0.01)  # the Keras 2 ceiling in float32 (NOTES.md: ~16.0)
    assert np.all(clipped_grad == 0.0)  # the dead zone
    # sigmoid CE on the cached logits: each unit costs ~30 (softplus(30)), the mean is 30
    assert keras3_loss == pytest.approx(30.0, rel=1e-3)
    assert np.abs(keras3_grad).max() > 0.4


def test_clipped_binary_crossentropy_matches_the_formula_inside_the_clip():
    y = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    p = np.array([[0.8, 0.2], [0.3, 0.7]], dtype=np.float32)
    expected = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p), axis=1)
    np.testing.assert_allclose(clipped_binary_crossentropy(y, p).numpy(), expected, rtol=1e-6)


def test_log_cosh_on_known_values():
    loss = make_loss(LossParams(name="log_cosh", form="keras3", label_smoothing=0.0))
    y = np.array([[1.0, 0.0]], dtype=np.float32)
    p = np.array([[0.5, 0.5]], dtype=np.float32)
    assert float(loss(y, p)) == pytest.approx(np.log(np.cosh(0.5)), rel=1e-6)  # 0.12011
    assert float(loss(y, y)) == 0.0


def test_clipped_categorical_crossentropy_matches_the_formula_and_has_the_dead_zone():
    y = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    p = np.array([[0.8, 0.2], [0.3, 0.7]], dtype=np.float32)
    np.testing.assert_allclose(clipped_categorical_crossentropy(y, p).numpy(), -np.log([0.8, 0.7]), rtol=1e-6)
    loss_fn = make_loss(LossParams(name="categorical_crossentropy", form="keras2_clipped", label_smoothing=0.0))
    loss, gradient = _gradient_wrt_logits(loss_fn, np.array([[30.0, -30.0]], np.float32), y[1:])
    assert loss == pytest.approx(-np.log(np.float32(1e-7)), rel=1e-3)  # the clip's ceiling, ~16.1
    assert np.all(gradient == 0.0)


@pytest.mark.parametrize("name", ["binary_crossentropy", "categorical_crossentropy"])
@pytest.mark.parametrize("form", ["keras2_clipped", "keras3"])
def test_label_smoothing_trains_on_targets_moved_toward_one_half(name, form):
    # s = 0.2 turns [0, 1] into [0.1, 0.9]: the form's own loss on those targets (Keras's rule for two
    # classes); the clipped form's is the textbook cross-entropy there
    y = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    logits = np.array([[2.0, -1.0], [0.5, 0.25]], dtype=np.float32)

    def per_sample(smoothing, targets):
        loss_fn = make_loss(LossParams(name=name, form=form, label_smoothing=smoothing))
        probabilities = keras.ops.softmax(logits)  # keras3 reads the logits this op caches
        call = loss_fn.call if isinstance(loss_fn, keras.losses.Loss) else loss_fn
        return np.asarray(call(targets, probabilities))

    smooth = y * 0.8 + 0.1
    np.testing.assert_allclose(per_sample(0.2, y), per_sample(0.0, smooth), rtol=1e-6)
    assert not np.allclose(per_sample(0.2, y), per_sample(0.0, y))
    if form == "keras2_clipped":
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        if name == "binary_crossentropy":
            expected = -(smooth * np.log(p) + (1 - smooth) * np.log(1 - p)).mean(axis=1)
        else:
            expected = -(smooth * np.log(p)).sum(axis=1)
        np.testing.assert_allclose(per_sample(0.2, y), expected, rtol=1e-5)
