"""Networks this project did not design, on data that ships inside installed packages (no downloads):
the spike doctor's test bench (issue 26), shared by its tests, its benchmarks and the doctor's study
(`python -m studies.doctor.foreign_spikes` drives each into a spike).

- mobilenet: keras.applications.MobileNetV2 (weights=None, alpha 0.35) on scikit-learn's 8x8
  digits scaled up to its smallest input, 32x32 (one channel);
- lstm: a one-layer LSTM reading each digit as 8 rows of 8 pixels; gru: the same with a GRU;
- attention: one transformer encoder block (Keras MultiHeadAttention) over the same 8 rows.
All three end in a 10-way softmax and train with Keras's sparse categorical cross-entropy.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

ARCHITECTURES = ("mobilenet", "lstm", "gru", "attention")


@dataclass(frozen=True)
class Configuration:
    learning_rate: float
    epochs: int
    samples: int  # digits trained on (memorising a small set is what lets Adam's v decay)
    batch_size: int
    beta_2: float = 0.999
    amsgrad: bool = False


# each network's spiking configuration: what `python -m studies.doctor.foreign_spikes prove` drives into a
# spike (found with its `search`; docs/monitor.md) and benchmarks/monitor_cost.py times
CONFIGURATIONS = {
    "mobilenet": Configuration(learning_rate=0.005, epochs=100, samples=64, batch_size=8, beta_2=0.95),
    # beta_2 0.95: the usual setting for transformers, whose v forgets within ~20 steps
    "lstm": Configuration(learning_rate=0.01, epochs=120, samples=512, batch_size=16, beta_2=0.95),
    "gru": Configuration(learning_rate=0.01, epochs=120, samples=512, batch_size=16, beta_2=0.95),
    "attention": Configuration(learning_rate=0.003, epochs=220, samples=256, batch_size=16, beta_2=0.95),
}


def digits(count: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as float32 images in [0, 1], (n, 8, 8), and int labels, shuffled by seed."""
    from sklearn.datasets import load_digits

    data = load_digits()
    order = np.random.default_rng(seed).permutation(len(data.target))[:count]
    return (data.images[order] / 16.0).astype(np.float32), data.target[order].astype(np.int64)


def inputs_for(name: str, images: np.ndarray) -> np.ndarray:
    """The digits shaped for the network: 32x32x1 for MobileNetV2 (each pixel a 4x4 block), rows as a sequence else."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}")
    if name == "mobilenet":
        return np.kron(images, np.ones((4, 4), np.float32))[..., None]
    return images


def build(name: str, classes: int = 10) -> keras.Model:
    if name == "mobilenet":
        return keras.applications.MobileNetV2(
            input_shape=(32, 32, 1), alpha=0.35, weights=None, classes=classes, classifier_activation="softmax"
        )
    inputs = keras.Input((8, 8), name="rows")
    if name == "lstm":
        x = keras.layers.LSTM(32, name="lstm")(inputs)
    elif name == "gru":
        x = keras.layers.GRU(32, name="gru")(inputs)
    elif name == "attention":
        x = keras.layers.Dense(32, name="embed")(inputs)
        attended = keras.layers.MultiHeadAttention(num_heads=2, key_dim=16, name="attention")(x, x)
        x = keras.layers.LayerNormalization(name="norm1")(x + attended)
        x = keras.layers.LayerNormalization(name="norm2")(x + keras.layers.Dense(32, activation="relu", name="ffn")(x))
        x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    else:
        raise ValueError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}")
    outputs = keras.layers.Dense(classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name=name)
