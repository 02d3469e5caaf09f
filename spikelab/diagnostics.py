"""Per-epoch diagnostics of the optimizer state and the model: the mechanism behind a spike.

Computed at each epoch's end, from the real Keras variables:
- grad_norm: global gradient norm of the training loss on a fixed probe batch (the first
  `diagnostics.probe_size` training images, the same every epoch, so epochs compare);
- update_rms: root-mean-square of the weight change over the epoch, and update_rms_over_lr;
- Adam family only: adam_ratio_max / adam_ratio_p99 of |m_hat / (sqrt(v_hat) + epsilon)|,
  v_below_eps_fraction (share of weights with sqrt(v_hat) < epsilon), v_sqrt_median;
- Adam family only, the second-moment lag of Wortsman et al. 2023 (arXiv 2304.13013):
  g2_over_v_rms = sqrt(mean(g^2 / max(v_hat, epsilon^2))) over every weight, and
  g2_over_v_rms_<layer> per layer, with g the probe gradient and v_hat the bias-corrected second
  moment Adam divides by (AMSGrad: its running maximum). Above 1, v_hat underestimates the
  gradients now arriving: the step Adam takes is larger than its normalisation assumes;
- weight_norm_<layer> for every layer with a kernel (the last layer is `logits`);
- logit_max_abs on the probe batch, saturated_fraction (probe samples whose softmax is past the
  Keras-2 clip, so the clipped loss gives them zero gradient) and saturated_wrong_fraction (those
  among them that are classified wrong: the dead samples).
Training accuracy is Keras's own `accuracy` metric, already in the logs.
"""

from __future__ import annotations

import time

import keras
import numpy as np
import tensorflow as tf

from spikelab.curvature import ProbeHessian
from spikelab.dead_zone import class_view, saturated_and_wrong
from spikelab.model import LogitsAndOutput

ADAM_KEYS = ("adam_ratio_max", "adam_ratio_p99", "v_below_eps_fraction", "v_sqrt_median")


def adam_state_stats(optimizer: keras.optimizers.Optimizer) -> dict:
    """Statistics of m_hat / (sqrt(v_hat) + eps) over every weight, from the optimizer's slots."""
    step = float(optimizer.iterations.numpy())
    if step == 0:
        return {key: float("nan") for key in ADAM_KEYS}
    # Keras 3 keeps the slots in these lists, ordered like model.trainable_variables
    velocities = optimizer._velocity_hats if optimizer.amsgrad else optimizer._velocities
    m = np.concatenate([np.ravel(v.numpy()) for v in optimizer._momentums])
    v = np.concatenate([np.ravel(v.numpy()) for v in velocities])
    m_hat = m / (1.0 - optimizer.beta_1**step)
    v_sqrt = np.sqrt(v / (1.0 - optimizer.beta_2**step))
    ratio = np.abs(m_hat) / (v_sqrt + optimizer.epsilon)
    return {
        "adam_ratio_max": float(ratio.max()),
        "adam_ratio_p99": float(np.percentile(ratio, 99)),
        "v_below_eps_fraction": float(np.mean(v_sqrt < optimizer.epsilon)),
        "v_sqrt_median": float(np.median(v_sqrt)),
    }


def second_moment_lag(
    gradients: list[np.ndarray], variables: list, optimizer: keras.optimizers.Optimizer, per_layer: bool = True
) -> dict:
    """g2_over_v_rms overall and (per_layer) per layer (a variable's path is <...>/<layer>/<kernel or bias>)."""
    step = float(optimizer.iterations.numpy())
    velocities = optimizer._velocity_hats if optimizer.amsgrad else optimizer._velocities
    floor = optimizer.epsilon**2
    ratios: dict[str, list[np.ndarray]] = {}
    for gradient, variable, velocity in zip(gradients, variables, velocities):
        v_hat = velocity.numpy() / (1.0 - optimizer.beta_2**step) if step else np.zeros_like(gradient)
        layer = variable.path.split("/")[-2]
        ratios.setdefault(layer, []).append(np.ravel(gradient**2 / np.maximum(v_hat, floor)))
    every = np.concatenate([part for parts in ratios.values() for part in parts])
    stats = {"g2_over_v_rms": float(np.sqrt(every.mean()))}
    for layer, parts in ratios.items() if per_layer else ():
        stats[f"g2_over_v_rms_{layer}"] = float(np.sqrt(np.concatenate(parts).mean()))
    return stats


def saturation_stats(logits: np.ndarray, labels: np.ndarray, activation: str = "softmax") -> dict:
    """From (n, classes) logits and labels: the samples the clipped loss no longer trains."""
    saturated, wrong = saturated_and_wrong(*class_view(logits, labels, activation))
    return {
        "logit_max_abs": float(np.abs(logits).max()),
        "saturated_fraction": float(saturated.mean()),
        "saturated_wrong_fraction": float((saturated & wrong).mean()),
    }


class Diagnostics(keras.callbacks.Callback):
    """Adds the diagnostics to each epoch's logs, so every logger downstream records them.

    Any single-output model: the saturation keys need a softmax or sigmoid output (`saturation`
    False leaves them out), the Adam keys an Adam-family optimizer; per_layer False keeps only the
    whole-model numbers (a large model has hundreds of layers)."""

    def __init__(
        self,
        probe_x: np.ndarray,
        probe_y: np.ndarray,
        loss_fn,
        shared: ProbeHessian | None = None,
        per_layer: bool = True,
        saturation: bool = True,
    ):
        super().__init__()
        self.shared = shared  # with the curvature on, its graph gives the probe's pass (one per epoch)
        self.probe_x = tf.constant(probe_x)
        self.probe_y = tf.constant(probe_y)
        self.loss_fn = loss_fn
        self.per_layer, self.saturation = per_layer, saturation
        self._weights_at_start = None
        self.cpu_seconds: dict[int, float] = {}  # 1-based epoch -> CPU seconds inside this callback

    def set_model(self, model):
        super().set_model(model)
        # one forward pass gives both the logits and the softmax output the loss needs
        self._logits_and_output = LogitsAndOutput(model)
        self._probe_pass = tf.function(self._probe_gradient_norm_and_logits)

    def _probe_gradient_norm_and_logits(self):
        with tf.GradientTape() as tape:
            logits, output = self._logits_and_output(self.probe_x, training=True)
            loss = keras.ops.mean(self.loss_fn(self.probe_y, output))
        gradients = tape.gradient(loss, self.model.trainable_variables)
        return tf.linalg.global_norm(gradients), logits, gradients

    def on_epoch_begin(self, epoch, logs=None):
        started = time.process_time()
        self._weights_at_start = [v.numpy() for v in self.model.trainable_variables]
        self._spent_at_begin = time.process_time() - started

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        started = time.process_time()
        self._add_diagnostics(logs, epoch)
        self.cpu_seconds[epoch + 1] = self._spent_at_begin + time.process_time() - started

    def _add_diagnostics(self, logs: dict, epoch: int) -> None:
        weights = [v.numpy() for v in self.model.trainable_variables]
        squared_change = sum(
            float(np.sum((after - before) ** 2)) for after, before in zip(weights, self._weights_at_start)
        )
        update_rms = (squared_change / sum(w.size for w in weights)) ** 0.5
        optimizer = self.model.optimizer
        measured = self.shared.at_epoch_end(epoch, optimizer) if self.shared else None
        grad_norm, logits, gradients = measured[1][:3] if measured else self._probe_pass()
        logs["grad_norm"] = float(grad_norm)
        logs["update_rms"] = update_rms
        logs["update_rms_over_lr"] = update_rms / float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        if isinstance(optimizer, keras.optimizers.Adam):  # AdamW subclasses Adam
            logs.update(adam_state_stats(optimizer))
            gradients = [g.numpy() for g in gradients]
            logs.update(second_moment_lag(gradients, self.model.trainable_variables, optimizer, self.per_layer))
        for layer in self.model.layers if self.per_layer else ():
            if hasattr(layer, "kernel"):
                # not np.linalg.norm: its BLAS call spins threads (see curvature._dot)
                kernel = layer.kernel.numpy()
                logs[f"weight_norm_{layer.name}"] = float(np.sqrt(np.multiply(kernel, kernel, dtype=np.float64).sum()))
        if self.saturation and self._logits_and_output.has_logits:
            logs.update(saturation_stats(logits.numpy(), self.probe_y.numpy(), self._logits_and_output.activation))
