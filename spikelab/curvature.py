"""The curvature Adam's step sees: the predictor of Bai et al. 2025 (arXiv 2506.04805).

Adam (Keras 3) moves the weights by -lr * P * m_hat with the diagonal preconditioner
P = sqrt(1 - beta_2^t) / (sqrt(v) + epsilon) = 1 / (sqrt(v_hat) + epsilon / sqrt(1 - beta_2^t))
(AMSGrad: v is its running maximum). With H the Hessian of the training loss, the dynamics near a
point are those of gradient descent on the preconditioned Hessian P H, whose eigenvalues are those
of the symmetric S = P^1/2 H P^1/2. Two numbers per epoch, on the fixed probe batch:

- lambda_grad: the curvature of S along the preconditioned gradient, u = P^1/2 g:
      lambda_grad = u^T S u / u^T u = (P g)^T H (P g) / (g^T P g)
  With beta_1 = 0 the quadratic model of the loss rises along Adam's step d = -lr P g exactly when
  lambda_grad > 2 / lr (the loss change is -lr g^T P g + lr^2/2 (P g)^T H (P g)). This is the form
  implemented: Bai et al. compare their gradient-directional curvature with 2 / lr; with momentum
  the classical threshold of the linearised Adam map is (2 + 2 beta_1) / ((1 - beta_1) lr)
  (38 / lr at beta_1 = 0.9; Cohen et al. 2022), so the run picture draws both lines.
  One Hessian-vector product per epoch, in the same graph as the gradient.
- lambda_max: the largest eigenvalue of S (= of P H), by power iteration started from
  P^1/2 g plus the last estimate's vector; `iterations` Hessian-vector products, every `every`
  epochs (the cost bound). A few iterations give a lower bound of the true value.

The products are exact (nested gradient tapes), not finite differences; the test compares them
with finite differences of the gradient and the two numbers with numpy's eigensolver.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from spikelab.model import logits_model

Vectors = list[np.ndarray]
HessianProduct = Callable[[Vectors], Vectors]


def adam_preconditioner(optimizer: keras.optimizers.Optimizer) -> Vectors | None:
    """P per variable, as the next Adam step applies it; None before the first step."""
    step = float(optimizer.iterations.numpy())
    if step == 0:
        return None
    velocities = optimizer._velocity_hats if optimizer.amsgrad else optimizer._velocities
    scale = math.sqrt(1.0 - optimizer.beta_2**step)
    return [scale / (np.sqrt(v.numpy()) + optimizer.epsilon) for v in velocities]


def _dot(a: Vectors, b: Vectors) -> float:
    # elementwise in float64 and numpy's own sum, not BLAS (np.vdot): OpenBLAS splits a dot this size
    # over its threads, which spin against TensorFlow's (measured beside a running study: 12.6 ms a
    # call instead of 0.29), and its result depends on how many threads the machine has
    return float(sum(np.multiply(x, y, dtype=np.float64).sum() for x, y in zip(a, b)))


def curvature_along_step(gradient: Vectors, preconditioner: Vectors, hessian_times_step: Vectors) -> float:
    """lambda_grad = (P g)^T H (P g) / (g^T P g), given g, P and H (P g)."""
    step = [p * g for p, g in zip(preconditioner, gradient)]
    denominator = _dot(gradient, step)
    return _dot(step, hessian_times_step) / denominator if denominator else math.nan


def top_eigenvalue(
    hessian_product: HessianProduct, preconditioner: Vectors, start: Vectors, iterations: int
) -> tuple[float, Vectors]:
    """Power iteration on S = P^1/2 H P^1/2: (Rayleigh quotient of the last vector, that vector).

    Power iteration finds the eigenvalue of largest magnitude; near a minimum that is the largest
    positive one. The returned vector warm-starts the next call, so few iterations suffice once
    the top direction moves slowly."""
    root = [np.sqrt(p) for p in preconditioner]
    vector = start
    estimate = math.nan
    for _ in range(iterations):
        norm = math.sqrt(_dot(vector, vector))
        if norm == 0.0:
            return math.nan, start
        vector = [x / norm for x in vector]
        image = [r * hv for r, hv in zip(root, hessian_product([r * x for r, x in zip(root, vector)]))]
        estimate = _dot(vector, image)
        vector = image
    return estimate, vector


class ProbeHessian:
    """Exact Hessian-vector products of the mean training loss on a fixed batch (nested tapes).

    Its graph also returns the probe's gradient norm and logits, which Diagnostics reads too:
    `at_epoch_end` runs it once per epoch for both callbacks (the probe's forward and backward
    pass ran twice per epoch before, ~2% of an epoch)."""

    def __init__(self, model: keras.Model, x: np.ndarray, y: np.ndarray, loss_fn):
        self.model, self.loss_fn = model, loss_fn
        self.x, self.y = tf.constant(x), tf.constant(y)
        self._logits_and_output = keras.Model(model.inputs, [logits_model(model).output, *model.outputs])
        self._product = tf.function(self._probe_and_product)
        self._last: tuple[tuple[int, int], tuple] | None = None
        # trace both graphs now (start-up), not inside the epochs that first call them
        specs = [tf.TensorSpec(v.shape, tf.float32) for v in model.trainable_variables]
        for times_gradient in (False, True):
            self._product.get_concrete_function(specs, times_gradient)

    def _probe_and_product(self, vectors, times_gradient: bool):
        """(|g|, logits, g, H w) with w = vectors, or w = vectors * g when times_gradient (P g: one call)."""
        variables = self.model.trainable_variables
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                logits, output = self._logits_and_output(self.x, training=True)
                loss = keras.ops.mean(self.loss_fn(self.y, output))
            gradient = inner.gradient(loss, variables)
            if times_gradient:
                vectors = [v * g for v, g in zip(vectors, gradient)]
            along = tf.add_n([tf.reduce_sum(g * tf.stop_gradient(v)) for g, v in zip(gradient, vectors)])
        product = outer.gradient(along, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return tf.linalg.global_norm(gradient), logits, gradient, product

    def product(self, vectors: Vectors) -> Vectors:
        """H v."""
        *_, products = self._product([np.asarray(v, np.float32) for v in vectors], False)
        return [hv.numpy() for hv in products]

    def probe_and_step_product(self, preconditioner: Vectors) -> tuple:
        """(|g|, logits, g, H (P g)), as the graph's tensors."""
        return self._product([np.asarray(p, np.float32) for p in preconditioner], True)

    def at_epoch_end(self, epoch: int, optimizer) -> tuple | None:
        """(P, (|g|, logits, g, H (P g)) as tensors) at this epoch's end, computed once for every
        callback that asks; None where there is no Adam preconditioner (another optimizer, step 0)."""
        preconditioner = adam_preconditioner(optimizer) if isinstance(optimizer, keras.optimizers.Adam) else None
        if preconditioner is None:
            return None
        # keyed by epoch AND step: a guard that restores an earlier state makes a step count recur
        key = (epoch, int(optimizer.iterations.numpy()))
        if self._last is None or self._last[0] != key:
            self._last = (key, (preconditioner, self.probe_and_step_product(preconditioner)))
        return self._last[1]


class Curvature(keras.callbacks.Callback):
    """Adds lambda_grad (every epoch) and lambda_max (every `every` epochs, else NaN) to the logs.

    Adam family only: other optimizers have no preconditioner, and their logs get no columns."""

    def __init__(self, hessian: ProbeHessian, every: int, iterations: int):
        super().__init__()
        self.hessian = hessian
        self.every, self.iterations = every, iterations
        self.cpu_seconds: dict[int, float] = {}  # 1-based epoch -> CPU seconds inside this callback
        self._vector: Vectors | None = None

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not isinstance(self.model.optimizer, keras.optimizers.Adam):
            return
        started = time.process_time()
        measured = self.hessian.at_epoch_end(epoch, self.model.optimizer)
        logs["lambda_grad"] = logs["lambda_max"] = math.nan
        if measured is not None:
            preconditioner, (_, _, gradient, hessian_times_step) = measured
            gradient = [g.numpy() for g in gradient]
            hessian_times_step = [hv.numpy() for hv in hessian_times_step]
            logs["lambda_grad"] = curvature_along_step(gradient, preconditioner, hessian_times_step)
            if self.every and (epoch + 1) % self.every == 0:
                start = self._start(gradient, preconditioner)
                logs["lambda_max"], self._vector = top_eigenvalue(
                    self.hessian.product, preconditioner, start, self.iterations
                )
        self.cpu_seconds[epoch + 1] = time.process_time() - started

    def _start(self, gradient: Vectors, preconditioner: Vectors) -> Vectors:
        """P^1/2 g (its Rayleigh quotient is lambda_grad, so the estimate starts at least there)
        plus the last estimate's unit vector (the top direction moves slowly between estimates)."""
        along = [np.sqrt(p) * g for p, g in zip(preconditioner, gradient)]
        norm = math.sqrt(_dot(along, along)) or 1.0
        along = [a / norm for a in along]
        if self._vector is None:
            return along
        norm = math.sqrt(_dot(self._vector, self._vector)) or 1.0
        return [a + v / norm for a, v in zip(along, self._vector)]
