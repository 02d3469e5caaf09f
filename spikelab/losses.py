"""The loss functions of params `loss:`, in the two forms the seed question hinges on.

- form keras3: what Keras 3 computes when handed a softmax output. Its cross-entropies find
  the logits the softmax op cached and compute cross-entropy from them: no clipping, so a
  saturated wrong sample still has a gradient.
- form keras2_clipped: what the seed's Keras 2 computed: probabilities clipped to
  [1e-7, 1 - 1e-7] before the log. Past the clip the gradient is exactly zero, so a
  saturated wrong sample gets no pull of its own ("dead zone"); only the weights it shares with
  the live samples can carry it back (spikelab/dead_zone.py).
log_cosh has one form (it never takes a log of a probability).
"""

from __future__ import annotations

import keras
from keras import ops

from spikelab.params import LossParams

KERAS2_EPSILON = 1e-7  # keras.backend.epsilon() in Keras 2, the clip bound


@keras.saving.register_keras_serializable(package="spikelab")
def clipped_binary_crossentropy(y_true, y_pred):
    """Keras 2's binary_crossentropy on probabilities: mean over the last axis."""
    p = ops.clip(y_pred, KERAS2_EPSILON, 1.0 - KERAS2_EPSILON)
    per_unit = -(y_true * ops.log(p) + (1.0 - y_true) * ops.log(1.0 - p))
    return ops.mean(per_unit, axis=-1)


@keras.saving.register_keras_serializable(package="spikelab")
def clipped_categorical_crossentropy(y_true, y_pred):
    """Keras 2's categorical_crossentropy on probabilities: renormalise, clip, sum."""
    p = y_pred / ops.sum(y_pred, axis=-1, keepdims=True)
    p = ops.clip(p, KERAS2_EPSILON, 1.0 - KERAS2_EPSILON)
    return -ops.sum(y_true * ops.log(p), axis=-1)


CLIPPED = {
    "binary_crossentropy": clipped_binary_crossentropy,
    "categorical_crossentropy": clipped_categorical_crossentropy,
}


@keras.saving.register_keras_serializable(package="spikelab")
class SmoothedClipped(keras.losses.Loss):
    """A keras2_clipped cross-entropy on smoothed targets (1 - s) y + s / 2, as Keras's own
    label_smoothing smooths two classes (binary: + 0.5 s; categorical: + s / 2 classes)."""

    def __init__(self, base: str, label_smoothing: float, name: str | None = None, **kwargs):
        super().__init__(name=name or base, **kwargs)
        self.base, self.label_smoothing = base, label_smoothing

    def call(self, y_true, y_pred):
        smooth = self.label_smoothing
        return CLIPPED[self.base](y_true * (1.0 - smooth) + 0.5 * smooth, y_pred)

    def get_config(self) -> dict:
        return super().get_config() | {"base": self.base, "label_smoothing": self.label_smoothing}


def make_loss(p: LossParams):
    """A loss callable for model.compile, from params `loss:`."""
    if p.name == "log_cosh":
        return keras.losses.LogCosh(name="log_cosh")
    if p.form == "keras2_clipped":
        if p.label_smoothing:
            return SmoothedClipped(p.name, p.label_smoothing)
        return CLIPPED[p.name]
    keras3 = {
        "binary_crossentropy": keras.losses.BinaryCrossentropy,
        "categorical_crossentropy": keras.losses.CategoricalCrossentropy,
    }
    return keras3[p.name](name=p.name, label_smoothing=p.label_smoothing)
