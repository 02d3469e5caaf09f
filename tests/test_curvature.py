"""Bai et al.'s curvature predictor: exact Hessian-vector products, and the two numbers built on them."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_model_params
from spikelab.curvature import ProbeHessian, adam_preconditioner, curvature_along_step, power_iteration
from spikelab.data import generate, split
from spikelab.losses import clipped_binary_crossentropy
from spikelab.model import build_model
from spikelab.params import params_from_dict
from spikelab.training import train


def probe_problem():
    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    x = rng.random((16, 32, 32, 1), dtype=np.float32)
    y = np.eye(2, dtype=np.float32)[rng.integers(0, 2, 16)]
    model = build_model(tiny_model_params(hidden_activation="none"), 32, "channels_last")
    return model, x, y


def flat_gradient(model, x, y) -> np.ndarray:
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(clipped_binary_crossentropy(y, model(x, training=True)))
    return np.concatenate([g.numpy().ravel() for g in tape.gradient(loss, model.trainable_variables)])


def hessian_times(hessian: ProbeHessian, vector: list[np.ndarray]) -> list[np.ndarray]:
    """H v through the power iteration's graph: one iteration with P = 1 returns H (v / |v|)."""
    ones = [np.ones(v.shape, np.float32) for v in vector]
    _, image = hessian.top_eigenvalue(ones, vector)
    norm = np.sqrt(sum(np.sum(np.square(v, dtype=np.float64)) for v in vector))
    return [hv * norm for hv in image]


def test_hessian_vector_product_matches_finite_differences_of_the_gradient():
    model, x, y = probe_problem()
    hessian = ProbeHessian(model, x, y, clipped_binary_crossentropy, power_iterations=1)
    weights = [w.numpy().copy() for w in model.trainable_variables]
    rng = np.random.default_rng(2)
    direction = [rng.standard_normal(w.shape) for w in weights]
    norm = np.sqrt(sum(np.sum(d**2) for d in direction))
    direction = [(d / norm).astype(np.float32) for d in direction]  # a unit step: no kink of the max crossed
    rayleigh, _ = hessian.top_eigenvalue([np.ones(w.shape, np.float32) for w in weights], direction)
    exact = np.concatenate([hv.ravel() for hv in hessian_times(hessian, direction)])
    flat_direction = np.concatenate([d.ravel() for d in direction])
    assert rayleigh == pytest.approx(float(flat_direction @ exact), rel=1e-5)
    step = 1e-3
    gradients = []
    for sign in (1, -1):
        for variable, w, d in zip(model.trainable_variables, weights, direction):
            variable.assign(w + sign * step * d)
        gradients.append(flat_gradient(model, x, y))
    for variable, w in zip(model.trainable_variables, weights):
        variable.assign(w)
    central = (gradients[0] - gradients[1]) / (2 * step)
    assert np.linalg.norm(exact) > 1e-3  # a zero product would match a zero difference
    assert np.linalg.norm(exact - central) <= 5e-3 * np.linalg.norm(exact)  # measured 4e-4
    # the gradient returned beside the product is the loss's gradient
    _, _, gradient, along_step = hessian.probe_and_step_product([np.full(w.shape, 2.0, np.float32) for w in weights])
    gradient, along_step = [g.numpy() for g in gradient], [hv.numpy() for hv in along_step]
    np.testing.assert_allclose(np.concatenate([g.ravel() for g in gradient]), flat_gradient(model, x, y), rtol=1e-5)
    # ... and the product along P g is H (P g)
    expected = hessian_times(hessian, [2.0 * g for g in gradient])
    for ours, theirs in zip(along_step, expected):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6)


def quadratic(seed: int, size: int = 6):
    """A known symmetric H (one negative eigenvalue smaller in magnitude) and a positive diagonal P."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((size, size)))
    hessian = basis @ np.diag([9.0, 4.0, 2.0, 1.0, 0.5, -0.3]) @ basis.T
    preconditioner = rng.uniform(0.5, 3.0, size)
    return hessian, preconditioner


def test_curvature_along_the_step_is_the_rayleigh_quotient_of_the_preconditioned_hessian():
    hessian, p = quadratic(0)
    g = np.random.default_rng(3).standard_normal(6)
    # split into two "variables" of shapes (2, 2) and (2,), as the model's kernels and biases are
    as_parts = lambda flat: [flat[:4].reshape(2, 2), flat[4:]]  # noqa: E731
    joined = lambda parts: np.concatenate([np.ravel(a) for a in parts])  # noqa: E731
    step = p * g
    ours = curvature_along_step(as_parts(g), as_parts(p), as_parts(hessian @ step))
    assert ours == pytest.approx(step @ hessian @ step / (g @ step), rel=1e-12)
    # the quadratic model's loss change along Adam's step (beta_1 = 0) changes sign at lr = 2 / lambda_grad
    for lr, rises in ((1.9 / ours, False), (2.1 / ours, True)):
        change = -lr * g @ step + lr**2 / 2 * step @ hessian @ step
        assert bool(change > 0) == rises
    # the largest eigenvalue of P H, from a start with a component along it (in eager mode, float64)
    product = lambda parts: as_parts(hessian @ joined(parts))  # noqa: E731
    root, start = as_parts(np.sqrt(p)), as_parts(np.ones(6))
    estimate, _ = power_iteration(product, root, start, iterations=200)
    assert float(estimate) == pytest.approx(max(np.linalg.eigvals(np.diag(p) @ hessian).real), rel=1e-6)


def test_curvature_columns_are_logged_for_adam_at_their_cadence_and_not_for_sgd(tiny_raw):
    tiny_raw["train"]["epochs"] = 4
    tiny_raw["diagnostics"].update({"eigen_every": 2, "power_iterations": 3})
    params = params_from_dict(tiny_raw)
    solid, broken, _ = generate(params.data)
    arrays = split(solid, broken, params.split)
    result = train(params, arrays, "channels_last", None)
    rows = result.history
    assert all(np.isfinite(row["lambda_grad"]) and row["lambda_grad"] != 0 for row in rows)
    assert [np.isfinite(row["lambda_max"]) for row in rows] == [False, True, False, True]
    # the estimate is a Rayleigh quotient of the same operator, so it bounds lambda_grad's scale
    assert rows[3]["lambda_max"] > 0
    assert adam_preconditioner(result.model.optimizer) is not None
    tiny_raw["optimizer"]["name"] = "sgd"
    sgd = train(params_from_dict(tiny_raw), arrays, "channels_last", None)
    assert "lambda_grad" not in sgd.history[0]
    tiny_raw["optimizer"]["name"] = "adam"
    tiny_raw["diagnostics"]["curvature"] = False
    off = train(params_from_dict(tiny_raw), arrays, "channels_last", None).history
    assert "lambda_grad" not in off[0]
    # with the curvature on, Diagnostics reads the probe pass from the Hessian product's graph: the
    # same numbers as its own pass gives with the curvature off
    shared = ("grad_norm", "g2_over_v_rms", "logit_max_abs", "saturated_fraction")
    assert [[row[key] for key in shared] for row in off] == [[row[key] for key in shared] for row in rows]


def test_the_probe_pass_runs_once_per_epoch_end_and_only_under_an_adam_preconditioner():
    model, x, y = probe_problem()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=clipped_binary_crossentropy)
    model.train_on_batch(x, y)  # one step: Adam's v exists
    hessian = ProbeHessian(model, x, y, clipped_binary_crossentropy, power_iterations=1)
    first = hessian.at_epoch_end(0, model.optimizer)
    assert hessian.at_epoch_end(0, model.optimizer) is first  # the second callback reads the first's pass
    # a new epoch at the same step count (a guard restored an earlier state) is measured again
    assert hessian.at_epoch_end(1, model.optimizer) is not first
    assert hessian.at_epoch_end(1, keras.optimizers.SGD(0.01)) is None
