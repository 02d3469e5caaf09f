"""Per-epoch measurements (the history's diagnostic columns) of the optimizer state and the model:
the mechanism behind a spike, which spikelab.verdict reads.

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

Every Keras 3 backend: the probe's gradient is each backend's own (a tf.GradientTape in a
tf.function, jax.value_and_grad over the variables' values in a keras.StatelessScope, torch.autograd);
everything else reads the variables as numpy arrays.
"""

from __future__ import annotations

import math
import time

import keras
import numpy as np

from spikelab.adam_state import AdamSlots, adam_slots, second_moment_slots
from spikelab.curvature import Curvature, ProbeHessian
from spikelab.dead_zone import DeadZoneAccounting, class_view, saturated_and_wrong
from spikelab.model import LogitsAndOutput, quiet_structure

BACKEND = keras.backend.backend()
if BACKEND == "tensorflow":  # the other backends never import TensorFlow (it may not be installed)
    import tensorflow as tf

ADAM_KEYS = ("adam_ratio_max", "adam_ratio_p99", "v_below_eps_fraction", "v_sqrt_median")


def adam_state_stats(optimizer: keras.optimizers.Optimizer) -> dict:
    """Statistics of m_hat / (sqrt(v_hat) + eps) over every weight, from the optimizer's slots."""
    return adam_ratio_stats(adam_slots(optimizer))


def adam_ratio_stats(slots: AdamSlots) -> dict:
    """adam_state_stats from the slots as arrays (NaN before the first step)."""
    step = slots.step
    if step == 0:
        return {key: float("nan") for key in ADAM_KEYS}
    m = np.concatenate([np.ravel(v) for v in slots.momentums])
    v = np.concatenate([np.ravel(v) for v in slots.velocities])
    m_hat = m / (1.0 - slots.beta_1**step)
    v_sqrt = np.sqrt(v / (1.0 - slots.beta_2**step))
    ratio = np.abs(m_hat) / (v_sqrt + slots.epsilon)
    return {
        "adam_ratio_max": float(ratio.max()),
        "adam_ratio_p99": float(np.percentile(ratio, 99)),
        "v_below_eps_fraction": float(np.mean(v_sqrt < slots.epsilon)),
        "v_sqrt_median": float(np.median(v_sqrt)),
    }


def second_moment_stats(slots: AdamSlots) -> dict:
    """v_below_eps_fraction and v_sqrt_median of an RMSprop/Adadelta second moment (no m: no ratio)."""
    if slots.step == 0:
        return {key: float("nan") for key in ADAM_KEYS[2:]}
    v_sqrt = np.sqrt(np.concatenate([np.ravel(v) for v in slots.velocities]))
    return {"v_below_eps_fraction": float(np.mean(v_sqrt < slots.epsilon)), "v_sqrt_median": float(np.median(v_sqrt))}


def layer_of(variable_path: str) -> str:
    """The layer a variable belongs to: its path is <...>/<layer>/<kernel or bias>."""
    return variable_path.split("/")[-2]


def second_moment_lag(gradients: list[np.ndarray], layers: list[str], slots: AdamSlots, per_layer: bool = True) -> dict:
    """g2_over_v_rms overall and (per_layer) per layer; layers: each gradient's layer name (layer_of)."""
    step = slots.step
    floor = slots.epsilon**2
    ratios: dict[str, list[np.ndarray]] = {}
    for gradient, layer, velocity in zip(gradients, layers, slots.velocities):
        v_hat = velocity / (1.0 - slots.beta_2**step) if step else np.zeros_like(gradient)
        ratios.setdefault(layer, []).append(np.ravel(gradient**2 / np.maximum(v_hat, floor)))
    every = np.concatenate([part for parts in ratios.values() for part in parts])
    stats = {"g2_over_v_rms": float(np.sqrt(every.mean()))}
    for layer, parts in ratios.items() if per_layer else ():
        stats[f"g2_over_v_rms_{layer}"] = float(np.sqrt(np.concatenate(parts).mean()))
    return stats


def update_rms(before: list[np.ndarray], after: list[np.ndarray]) -> float:
    """Root-mean-square of the weight change between two lists of arrays."""
    squared_change = sum(float(np.sum((a - b) ** 2)) for a, b in zip(after, before))
    return (squared_change / sum(w.size for w in after)) ** 0.5


def weight_norm(kernel: np.ndarray) -> float:
    # not np.linalg.norm: its BLAS call spins threads (see curvature._dot)
    return float(np.sqrt(np.multiply(kernel, kernel, dtype=np.float64).sum()))


def epoch_diagnostics(
    before: list[np.ndarray],
    after: list[np.ndarray],
    learning_rate: float,
    grad_norm: float,
    gradients: list[np.ndarray],
    logits: np.ndarray | None,
    probe_y: np.ndarray,
    layers: list[str],
    kernels: dict[str, np.ndarray],
    slots: AdamSlots | None,
    activation: str = "softmax",
    per_layer: bool = True,
    moment: AdamSlots | None = None,
) -> dict:
    """One epoch's diagnostics keys from arrays: the weights at the epoch's start and end, the probe's
    gradient (norm, per variable) and logits (None: the output is no probability, no saturation
    keys), the kernels by layer, Adam's slots (None: not Adam), or RMSprop's or Adadelta's second
    moment (`moment`: v's keys and the lag, no ratio). per_layer False: whole-model keys only."""
    rms = update_rms(before, after)
    logs = {
        "grad_norm": float(grad_norm),
        "update_rms": rms,
        "update_rms_over_lr": rms / learning_rate if learning_rate > 0 else math.nan,
    }
    if slots is not None:
        logs.update(adam_ratio_stats(slots))
        logs.update(second_moment_lag(gradients, layers, slots, per_layer))
    elif moment is not None:
        logs.update(second_moment_stats(moment))
        logs.update(second_moment_lag(gradients, layers, moment, per_layer))
    for layer, kernel in kernels.items() if per_layer else ():
        logs[f"weight_norm_{layer}"] = weight_norm(kernel)
    if logits is not None:
        logs.update(saturation_stats(logits, probe_y, activation))
    return logs


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
        self.probe_x, self.probe_y = probe_x, np.asarray(probe_y)
        self.loss_fn = loss_fn
        self.per_layer, self.saturation = per_layer, saturation
        self.use_shared = True  # False: this epoch's probe pass is Diagnostics' own (the curvature is off for it)
        self._weights_at_start = None
        self.cpu_seconds: dict[int, float] = {}  # 1-based epoch -> CPU seconds inside this callback

    def set_model(self, model):
        super().set_model(model)
        # one forward pass gives both the logits and the softmax output the loss needs
        self._logits_and_output = LogitsAndOutput(model)
        self._probe_pass = probe_pass(model, self._logits_and_output, self.probe_x, self.probe_y, self.loss_fn)

    def trace_own_probe(self) -> None:
        """Trace the probe's own graph now: a caller that sometimes turns the shared curvature graph
        off (SpikeMonitor's budget) would otherwise pay its tracing inside an epoch."""
        if BACKEND == "tensorflow":
            self._probe_pass.get_concrete_function()

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
        optimizer = self.model.optimizer
        measured = self.shared.at_epoch_end(epoch, optimizer) if self.shared and self.use_shared else None
        grad_norm, logits, gradients = measured[1][:3] if measured else self._probe_pass()
        is_adam = isinstance(optimizer, keras.optimizers.Adam)  # AdamW subclasses Adam
        moment = None if is_adam else second_moment_slots(optimizer)
        variables = self.model.trainable_variables
        head = self._logits_and_output
        logs.update(
            epoch_diagnostics(
                self._weights_at_start,
                [v.numpy() for v in variables],
                float(keras.ops.convert_to_numpy(optimizer.learning_rate)),
                grad_norm,
                [keras.ops.convert_to_numpy(g) for g in gradients] if is_adam or moment else [],
                keras.ops.convert_to_numpy(logits) if self.saturation and head.has_logits else None,
                self.probe_y,
                [layer_of(v.path) for v in variables],
                {
                    layer.name: layer.kernel.numpy()
                    for layer in self.model.layers
                    if self.per_layer and hasattr(layer, "kernel")
                },
                adam_slots(optimizer) if is_adam else None,
                head.activation or "softmax",
                self.per_layer,
                moment,
            )
        )

    def at_step(self) -> dict:
        """The probe's reading now, inside an epoch (SpikeMonitor reads it at a spike's step): the
        gradient norm, the optimizer's state (Adam's ratio and v, or RMSprop's and Adadelta's v) with
        the lag g2_over_v_rms, and the saturation keys; not the epoch's weight change or weight norms.
        Always this callback's own probe pass (the curvature's shared graph is the epoch end's)."""
        optimizer = self.model.optimizer
        grad_norm, logits, gradients = self._probe_pass()
        is_adam = isinstance(optimizer, keras.optimizers.Adam)
        slots = adam_slots(optimizer) if is_adam else second_moment_slots(optimizer)
        found = {"grad_norm": float(grad_norm)}
        if slots is not None:
            found.update(adam_ratio_stats(slots) if is_adam else second_moment_stats(slots))
            found.update(
                second_moment_lag(
                    [keras.ops.convert_to_numpy(g) for g in gradients],
                    [layer_of(v.path) for v in self.model.trainable_variables],
                    slots,
                    per_layer=False,
                )
            )
        if self.saturation and self._logits_and_output.has_logits:
            activation = self._logits_and_output.activation or "softmax"
            found.update(saturation_stats(keras.ops.convert_to_numpy(logits), self.probe_y, activation))
        return found


def probe_pass(model: keras.Model, head: LogitsAndOutput, x: np.ndarray, y: np.ndarray, loss_fn):
    """A function of no arguments: (|g|, logits, g per trainable variable) of the mean loss on the
    probe batch (x, y), the model in training mode, by this backend's own gradient. TensorFlow's
    returns tensors (a tf.function, traced at the first call); JAX's and torch's numpy arrays."""
    variables = model.trainable_variables
    if BACKEND == "tensorflow":
        x, y = tf.constant(x), tf.constant(y)

        def tensorflow_pass():
            with tf.GradientTape() as tape:
                logits, output = head(x, training=True)
                loss = keras.ops.mean(loss_fn(y, output))
            gradients = tape.gradient(loss, variables)
            return tf.linalg.global_norm(gradients), logits, gradients

        return tf.function(tensorflow_pass)
    if BACKEND == "jax":
        import jax

        state = [*variables, *model.non_trainable_variables]  # batch-norm statistics, dropout seeds

        def loss_and_logits(trainable, other):
            # every variable read inside sees these values; what the pass assigns stays in the scope
            with keras.StatelessScope(state_mapping=list(zip(state, [*trainable, *other]))):
                logits, output = head(x, training=True)
                return keras.ops.mean(loss_fn(y, output)), logits

        gradient = jax.jit(jax.value_and_grad(loss_and_logits, has_aux=True))

        def jax_pass():
            with quiet_structure():
                (_, logits), gradients = gradient(
                    [v.value for v in variables], [v.value for v in state[len(variables) :]]
                )
            return _with_norm(np.asarray(logits), [np.asarray(g) for g in gradients])

        return jax_pass
    if BACKEND == "torch":
        import torch

        def torch_pass():
            # torch's unseeded dropout draws from its global generator: forked, so the fit's draws stay its own
            with torch.enable_grad(), torch.random.fork_rng(), quiet_structure():
                logits, output = head(keras.ops.convert_to_tensor(x), training=True)
                loss = keras.ops.mean(loss_fn(keras.ops.convert_to_tensor(y), output))
                values = [v.value for v in variables]
                gradients = torch.autograd.grad(loss, values, allow_unused=True)
            gradients = [torch.zeros_like(v) if g is None else g for g, v in zip(gradients, values)]
            return _with_norm(logits.detach().cpu().numpy(), [g.detach().cpu().numpy() for g in gradients])

        return torch_pass
    raise NotImplementedError(f"the probe gradient on the {BACKEND} backend")


def _with_norm(logits: np.ndarray, gradients: list[np.ndarray]) -> tuple:
    norm = np.sqrt(sum(np.sum(np.square(g, dtype=np.float64)) for g in gradients))
    return np.float32(norm), logits, gradients


def diagnostic_callbacks(
    model: keras.Model,
    probe_x: np.ndarray,
    probe_y: np.ndarray,
    loss,
    sample_x: np.ndarray | None,
    sample_y: np.ndarray | None,
    sample_format: str | None,
    passes: set[int],
    *,
    curvature: bool,
    power_iterations: int,
    eigen_every: int,
    per_layer: bool = True,
    saturation: bool = True,
    stats=None,
    dead_sets: dict | None = None,
) -> list[keras.callbacks.Callback]:
    """The per-epoch diagnostics of `model`, in the order they run: Diagnostics on the probe batch,
    the whole-sample pass over sample_x at the epochs in `passes` (none when sample_x is None;
    sample_format: the lab's uint8 images' data format, None for inputs as they are; stats: what
    the pass logs, the lab's dead_zone_stats by default), and with `curvature` Curvature, sharing
    one probe graph with Diagnostics. dead_sets: where the pass keeps which samples are dead (the
    lab's dead-set tracking; DeadZoneAccounting). SpikeMonitor and the lab's train stage both build their diagnostics here."""
    hessian = ProbeHessian(model, probe_x, probe_y, loss, power_iterations) if curvature else None
    parts: list[keras.callbacks.Callback] = [Diagnostics(probe_x, probe_y, loss, hessian, per_layer, saturation)]
    if sample_x is not None:
        parts.append(DeadZoneAccounting(sample_x, sample_y, sample_format, passes, stats, dead_sets))
    if hessian is not None:
        parts.append(Curvature(hessian, eigen_every))
    return parts
