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
with finite differences of the gradient and the two numbers with numpy's eigensolver. TensorFlow
backend only (nested tapes): on JAX and torch SpikeMonitor skips the curvature and says so.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import keras
import numpy as np

if keras.backend.backend() == "tensorflow":  # the other backends never import TensorFlow
    import tensorflow as tf

from spikelab.adam_state import AdamSlots, adam_slots
from spikelab.model import LogitsAndOutput

Vectors = list[np.ndarray]
HessianProduct = Callable[[Vectors], Vectors]


def adam_preconditioner(optimizer: keras.optimizers.Optimizer) -> Vectors | None:
    """P per variable, as the next Adam step applies it; None before the first step."""
    if float(optimizer.iterations.numpy()) == 0:
        return None
    return preconditioner_of(adam_slots(optimizer))


def preconditioner_of(slots: AdamSlots) -> Vectors | None:
    """adam_preconditioner from the slots as arrays (elementwise: stacked slots give stacked P)."""
    if slots.step == 0:
        return None
    scale = math.sqrt(1.0 - slots.beta_2**slots.step)
    return [scale / (np.sqrt(v) + slots.epsilon) for v in slots.velocities]


def _dot(a: Vectors, b: Vectors) -> float:
    # elementwise in float64 and numpy's own sum, not BLAS (np.vdot): OpenBLAS splits a dot this size
    # over its threads, which spin against TensorFlow's (tens of times slower beside a busy
    # TensorFlow), and its result depends on how many threads the machine has
    return float(sum(np.multiply(x, y, dtype=np.float64).sum() for x, y in zip(a, b)))


def curvature_along_step(gradient: Vectors, preconditioner: Vectors, hessian_times_step: Vectors) -> float:
    """lambda_grad = (P g)^T H (P g) / (g^T P g), given g, P and H (P g)."""
    step = [p * g for p, g in zip(preconditioner, gradient)]
    denominator = _dot(gradient, step)
    return _dot(step, hessian_times_step) / denominator if denominator else math.nan


def _dot64(a, b) -> tf.Tensor:
    """The dot product of two lists of tensors, summed in float64 (a few 10^4 float32 terms)."""
    return tf.add_n([tf.reduce_sum(tf.cast(x, tf.float64) * tf.cast(y, tf.float64)) for x, y in zip(a, b)])


def _along_leading(value, x):
    """value (a scalar, or one number per member) shaped to divide x (whose leading axis is the member's)."""
    return tf.reshape(value, [*value.shape, *[1] * (len(x.shape) - len(value.shape))])


def power_iteration(hessian_product: HessianProduct, root, start, iterations: int, dot=_dot64) -> tuple:
    """Power iteration on S = R H R, R = diag(root) = P^1/2: (Rayleigh quotient of the last unit
    vector, the last image S v), as tensors; TensorFlow ops only, so it runs inside a graph.

    Power iteration finds the eigenvalue of largest magnitude; near a minimum that is the largest
    positive one. The returned image warm-starts the next call, so few iterations suffice once the
    top direction moves slowly. A zero start gives NaN (0/0), which the caller reads as no estimate.
    dot: _dot64, or one returning a dot product per member (a population's stacked vectors): then
    every member is normalised by its own norm and gets its own estimate."""
    vector, estimate = list(start), tf.fill(tf.shape(dot(start, start)), tf.constant(math.nan, tf.float64))
    # tf.range: inside a tf.function this is one graph loop, traced once (a Python loop traced 8
    # copies: 1.1 s of start-up instead of 0.35); what the products share is computed before it
    for _ in tf.range(iterations):
        norm = tf.cast(tf.sqrt(dot(vector, vector)), vector[0].dtype)
        vector = [x / _along_leading(norm, x) for x in vector]
        image = [r * hv for r, hv in zip(root, hessian_product([r * x for r, x in zip(root, vector)]))]
        estimate = dot(vector, image)
        vector = image
    return estimate, vector


class ProbeHessian:
    """Exact Hessian-vector products of the mean training loss on a fixed batch (nested tapes).

    Two graphs. The step product's also returns the probe's gradient norm and logits, which
    Diagnostics reads too: `at_epoch_end` runs it once per epoch for both callbacks (the probe's
    forward and backward pass ran twice per epoch before, ~2% of an epoch). The power iteration's
    records the forward and first backward pass once on a persistent tape and takes each product
    as one more backward pass through them (it recomputed both for each of its products before)."""

    def __init__(self, model: keras.Model, x: np.ndarray, y: np.ndarray, loss_fn, power_iterations: int):
        self.model, self.loss_fn = model, loss_fn
        self.x, self.y = tf.constant(x), tf.constant(y)
        self.iterations = power_iterations
        self._logits_and_output = LogitsAndOutput(model)
        self._step_product = tf.function(self._probe_and_step_product)
        self._power_iteration = tf.function(self._power_iteration_on_probe)
        self._last: tuple[tuple[int, int], tuple] | None = None
        # trace both graphs now (start-up), not inside the epochs that first call them
        specs = [tf.TensorSpec(v.shape, tf.float32) for v in model.trainable_variables]
        self._step_product.get_concrete_function(specs)
        self._power_iteration.get_concrete_function(specs, specs)

    def _tapes(self):
        """(outer tape, the probe's logits, its loss gradient), the gradient recorded on the outer tape."""
        variables = self.model.trainable_variables
        with tf.GradientTape(persistent=True) as outer:
            with tf.GradientTape() as inner:
                logits, output = self._logits_and_output(self.x, training=True)
                loss = keras.ops.mean(self.loss_fn(self.y, output))
            gradient = inner.gradient(loss, variables)
        return outer, logits, gradient

    def _hessian_product(self, outer, gradient):
        # H v as the vector-Jacobian product of the gradient (H is symmetric): one backward pass
        variables = self.model.trainable_variables
        return lambda vectors: outer.gradient(
            gradient, variables, output_gradients=vectors, unconnected_gradients=tf.UnconnectedGradients.ZERO
        )

    def _probe_and_step_product(self, preconditioner):
        """(|g|, logits, g, H (P g))."""
        outer, logits, gradient = self._tapes()
        step = [p * g for p, g in zip(preconditioner, gradient)]
        return tf.linalg.global_norm(gradient), logits, gradient, self._hessian_product(outer, gradient)(step)

    def _power_iteration_on_probe(self, root, start):
        outer, _, gradient = self._tapes()
        return power_iteration(self._hessian_product(outer, gradient), root, start, self.iterations)

    def probe_and_step_product(self, preconditioner: Vectors) -> tuple:
        """(|g|, logits, g, H (P g)), as the graph's tensors."""
        return self._step_product([np.asarray(p, np.float32) for p in preconditioner])

    def top_eigenvalue(self, preconditioner: Vectors, start: Vectors) -> tuple[float, Vectors | None]:
        """(lambda_max estimate, the vector to warm-start the next call), by power iteration on
        P^1/2 H P^1/2 from `start`; (NaN, None) when the start is zero or the product not finite."""
        root = [np.sqrt(p).astype(np.float32) for p in preconditioner]
        estimate, vector = self._power_iteration(root, [np.asarray(x, np.float32) for x in start])
        estimate = float(estimate)
        return (estimate, [v.numpy() for v in vector]) if math.isfinite(estimate) else (math.nan, None)

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

    def __init__(self, hessian: ProbeHessian, every: int):
        super().__init__()
        self.hessian = hessian
        self.every = every
        self.cpu_seconds: dict[int, float] = {}  # 1-based epoch -> CPU seconds inside this callback
        self.owed = False  # a caller that skipped a due lambda_max sets this: the next call computes it
        self._vector: Vectors | None = None

    def eigen_due(self, epoch: int) -> bool:
        return bool(self.every) and ((epoch + 1) % self.every == 0 or self.owed)

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
            if self.eigen_due(epoch):
                start = power_start(gradient, preconditioner, self._vector)
                logs["lambda_max"], self._vector = self.hessian.top_eigenvalue(preconditioner, start)
                self.owed = False
        self.cpu_seconds[epoch + 1] = time.process_time() - started


def power_start(gradient: Vectors, preconditioner: Vectors, last: Vectors | None) -> Vectors:
    """The power iteration's start: P^1/2 g (its Rayleigh quotient is lambda_grad, so the estimate
    starts at least there) plus the last estimate's unit vector (the top direction moves slowly
    between estimates)."""
    along = [np.sqrt(p) * g for p, g in zip(preconditioner, gradient)]
    norm = math.sqrt(_dot(along, along)) or 1.0
    along = [a / norm for a in along]
    if last is None:
        return along
    norm = math.sqrt(_dot(last, last)) or 1.0
    return [a + v / norm for a, v in zip(along, last)]
