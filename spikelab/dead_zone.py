"""Dead-zone accounting on the whole training set: the samples the clipped loss gives no gradient.

A training sample is *dead* when the network is wrong about it AND its softmax is saturated past
the Keras-2 clip (its smaller probability < 1e-7): the clipped cross-entropy then charges it a
constant ~16.03 and gives it exactly zero gradient, so its own loss cannot pull it back. It is not
gone for good: the weights it shares with the live samples keep moving under their gradients, and
that can carry a dead sample back out (or throw more in); whether the dead set is a ratchet or a
balance is measured image by image (`dead_sets`, python -m studies.dead_dynamics.analysis). Each dead
sample costs exactly ~16.03, so 16.03 x the dead fraction matches most of the clipped loss by
construction; what the accounting measures is the rest, the loss the live samples carry. The
unclipped (Keras 3) form charges the same samples by their logits, and keeps a gradient.

At a cadence (`diagnostics.dead_zone_every` epochs, and always at the last epoch and at every
snapshot epoch) one forward pass over the training set logs per epoch:
- dead_fraction: the share of training samples that are dead;
- dead_loss_clipped: their share of the mean clipped loss (sum of their clipped loss / n);
- dead_loss_unclipped: the same under the unclipped form (sigmoid cross-entropy on the logits);
- full_loss_clipped, full_loss_unclipped: the whole set's mean loss in each form, same pass.
A forward pass over the training set costs about a tenth of a training epoch; every 10 epochs
(the default, which is also the snapshot cadence) keeps it near 1% of training.
"""

from __future__ import annotations

import time

import keras
import numpy as np

if keras.backend.backend() == "tensorflow":  # the other backends never import TensorFlow
    import tensorflow as tf

from spikelab.losses import KERAS2_EPSILON
from spikelab.model import logits_model, quiet_structure, to_model_input

DEAD_ZONE_KEYS = (
    "dead_fraction",
    "dead_loss_clipped",
    "dead_loss_unclipped",
    "full_loss_clipped",
    "full_loss_unclipped",
)
BATCH = 1024  # forward-pass batch: bounded memory at the seed's width and data size


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


def class_view(logits: np.ndarray, labels: np.ndarray, activation: str = "softmax") -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, one-hot labels), both (n, classes >= 2): a softmax's as they are (integer
    labels made one-hot), a single sigmoid unit's as the two columns [1 - p, p]. A ValueError for
    outputs with no one-class-per-sample reading (several sigmoid units: multi-label)."""
    if activation == "sigmoid":
        if logits.shape[-1] != 1:
            raise ValueError(f"{logits.shape[-1]} sigmoid units are multi-label: no dead zone of one class")
        p, y = sigmoid(logits.astype(np.float32)), np.reshape(labels, (-1, 1)).astype(np.float32)
        return np.concatenate([1 - p, p], axis=1), np.concatenate([1 - y, y], axis=1)
    if labels.ndim == 1 or (labels.shape[-1] == 1 and logits.shape[-1] > 1):
        labels = np.eye(logits.shape[-1], dtype=np.float32)[np.ravel(labels).astype(int)]
    return softmax(logits), labels


def clipped_bce(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Keras 2's binary cross-entropy per sample, in float32 like the training loss."""
    p = np.clip(probabilities.astype(np.float32), np.float32(KERAS2_EPSILON), np.float32(1 - KERAS2_EPSILON))
    return -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p), axis=1)


def unclipped_bce(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """What Keras 3 computes on a softmax output: sigmoid cross-entropy on each logit, mean over units."""
    z = logits.astype(np.float64)
    return np.mean(np.logaddexp(0, z) - labels * z, axis=1)


def clipped_cce(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Keras 2's categorical cross-entropy per sample (renormalised, clipped), in float32."""
    p = probabilities.astype(np.float32)
    p = np.clip(p / p.sum(axis=1, keepdims=True), np.float32(KERAS2_EPSILON), np.float32(1 - KERAS2_EPSILON))
    return -np.sum(labels * np.log(p), axis=1)


def unclipped_cce(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Softmax cross-entropy from the logits (what Keras 3 computes from a softmax's cached logits)."""
    z = logits.astype(np.float64)
    shift = z.max(axis=1, keepdims=True)
    return (np.log(np.exp(z - shift).sum(axis=1)) + shift[:, 0]) - np.sum(labels * z, axis=1)


def saturated_and_wrong(probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: past the Keras-2 clip (its smaller probability < 1e-7), and classified wrong."""
    return probabilities.min(axis=1) < KERAS2_EPSILON, probabilities.argmax(axis=1) != labels.argmax(axis=1)


def dead_mask(logits: np.ndarray, labels: np.ndarray, activation: str = "softmax") -> np.ndarray:
    """Per sample: dead (saturated past the clip and wrong), from (n, classes) logits and labels."""
    saturated, wrong = saturated_and_wrong(*class_view(logits, labels, activation))
    return saturated & wrong


def dead_zone_stats(
    logits: np.ndarray, labels: np.ndarray, activation: str = "softmax", cross_entropy: str = "binary"
) -> dict:
    """From (n, classes) logits and labels: the dead samples and the loss they carry, in the
    clipped and unclipped forms of the binary (per-unit mean, the lab's) or categorical cross-entropy."""
    probabilities, one_hot = class_view(logits, labels, activation)  # float32, as the model's softmax
    saturated, wrong = saturated_and_wrong(probabilities, one_hot)
    dead = saturated & wrong
    if cross_entropy == "categorical":
        clipped, unclipped = clipped_cce(probabilities, one_hot), unclipped_cce(logits, one_hot)
    else:
        raw = one_hot if activation == "softmax" else np.reshape(labels, logits.shape)
        clipped, unclipped = clipped_bce(probabilities, one_hot), unclipped_bce(logits, raw)
    n = len(labels)
    return {
        "dead_fraction": float(dead.mean()),
        "dead_loss_clipped": float(clipped[dead].sum() / n),
        "dead_loss_unclipped": float(unclipped[dead].sum() / n),
        "full_loss_clipped": float(clipped.mean()),
        "full_loss_unclipped": float(unclipped.mean()),
    }


def prediction_share(logits: np.ndarray, activation: str = "softmax") -> dict:
    """majority_prediction_fraction: the share of samples predicted as the most predicted class
    (1.0 = the network answers one class for everything: a collapse)."""
    logits = logits[np.isfinite(logits).all(axis=1)]  # a NaN row's argmax is 0: no answer, not class 0
    if len(logits) == 0:
        return {"majority_prediction_fraction": float("nan")}
    if activation == "sigmoid":
        predicted = (np.ravel(logits) > 0).astype(int)
    else:
        predicted = logits.argmax(axis=1)
    return {"majority_prediction_fraction": float(np.bincount(predicted).max() / len(predicted))}


def accounting_epochs(epochs: int, every: int, snapshot_every: int) -> set[int]:
    """The 1-based epochs that get the whole-set pass: every `every`, each snapshot's, and the last."""
    chosen = {epochs}
    for step in (every, snapshot_every):
        if step:
            chosen |= set(range(step, epochs + 1, step))
    return chosen


class DeadZoneAccounting(keras.callbacks.Callback):
    """Adds the dead-zone keys to the logs of the accounting epochs (other epochs leave them out).

    `images` are the lab's uint8 images (data_format says how to shape them) or, with data_format
    None, any model's inputs as they are; `stats` turns (logits, labels) into the logged keys
    (the lab's: dead_zone_stats on a 2-unit softmax with the binary cross-entropy).

    dead_sets: where to keep, per accounting epoch, which samples are dead and their signed margin
    (wrong logit minus right logit), {1-based epoch: (mask, margin)}, to follow the dead set image by
    image; None (the default) keeps nothing, and it changes nothing in the logs (the lab's 2-unit softmax).
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        data_format: str | None,
        epochs: set[int],
        stats=None,
        dead_sets: dict[int, tuple[np.ndarray, np.ndarray]] | None = None,
    ):
        super().__init__()
        self.images, self.labels, self.data_format, self.epochs = images, labels, data_format, epochs
        self.stats = stats or dead_zone_stats
        self.cpu_seconds: dict[int, float] = {}  # 1-based epoch -> CPU seconds inside this callback
        self.dead_sets = dead_sets

    def set_model(self, model):
        super().set_model(model)
        to_logits = logits_model(model)
        if keras.backend.backend() == "tensorflow":
            graph = tf.function(lambda x: to_logits(x, training=False))
            self._logits = lambda x: graph(tf.constant(x)).numpy()
        else:  # eager: a compiled function would hold the weights it was traced with

            def eager(x):
                with quiet_structure():
                    return keras.ops.convert_to_numpy(to_logits(x, training=False))

            self._logits = eager

    def _model_input(self, batch: np.ndarray) -> np.ndarray:
        return batch if self.data_format is None else to_model_input(batch, self.data_format)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or epoch + 1 not in self.epochs:
            return
        started = time.process_time()
        # uint8 images converted a batch at a time: the float copy of the seed's 500,000 would be 2 GB
        batches = (self._model_input(self.images[i : i + BATCH]) for i in range(0, len(self.images), BATCH))
        logits = np.concatenate([self._logits(batch) for batch in batches])
        logs.update(self.stats(logits, self.labels))
        if self.dead_sets is not None:
            right = self.labels.argmax(axis=1)
            margin = logits[np.arange(len(right)), 1 - right] - logits[np.arange(len(right)), right]
            self.dead_sets[epoch + 1] = (dead_mask(logits, self.labels), margin.astype(np.float32))
        self.cpu_seconds[epoch + 1] = time.process_time() - started
