"""Scoring a saved model on the validation set: loss (the params' loss), accuracy, confusion counts."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from spikelab.model import to_model_input
from spikelab.plumbing.errors import InputError
from spikelab.plumbing.integrity import damage

CLASSES = ("solid", "broken")


def model_data_format(model: keras.Model) -> str:
    """Read back from the input shape: (1, size, size) is channels_first."""
    return "channels_first" if model.input_shape[1] == 1 else "channels_last"


def score(model: keras.Model, loss_fn, images: np.ndarray, labels: np.ndarray, batch_size: int) -> dict:
    probabilities = model.predict(to_model_input(images, model_data_format(model)), batch_size=batch_size, verbose=0)
    loss = float(keras.ops.convert_to_numpy(keras.ops.mean(loss_fn(labels, probabilities))))
    truth, guess = labels.argmax(axis=1), probabilities.argmax(axis=1)
    confusion = {
        f"true_{CLASSES[t]}_predicted_{CLASSES[g]}": int(np.sum((truth == t) & (guess == g)))
        for t in range(2)
        for g in range(2)
    }
    return {"loss": loss if np.isfinite(loss) else None, "accuracy": float(np.mean(truth == guess)), **confusion}


def load_model(path: Path) -> keras.Model:
    hint = "re-run the 'train' stage: dvc repro train"
    if not path.exists():
        raise InputError(f"{path}: missing; {hint}")
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as error:  # Keras raises ValueError, OSError or zip errors for a damaged file
        raise InputError(f"{path}: unreadable ({error}); {damage(path) or hint}") from None
