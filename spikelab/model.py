"""The seed's CNN: ReLU(input) -> Conv2D(f, k) -> Conv2D(2f, k) -> MaxPool(2) -> Dense(2) -> softmax."""

from __future__ import annotations

import contextlib
import functools
import warnings

import keras
import numpy as np

from spikelab.params import ModelParams


@functools.cache
def channels_first_supported() -> bool:
    """Whether this backend/device runs an NCHW Conv2D (TF on CPU needs oneDNN for it)."""
    layer = keras.layers.Conv2D(1, 3, data_format="channels_first")
    try:
        layer(np.zeros((1, 1, 8, 8), dtype="float32"))
    except Exception:  # TF raises InvalidArgumentError or UnimplementedError depending on version
        return False
    return True


def resolve_data_format(requested: str) -> str:
    """'auto' means the seed's channels_first where it runs here, else channels_last."""
    if requested == "auto":
        return "channels_first" if channels_first_supported() else "channels_last"
    if requested == "channels_first" and not channels_first_supported():
        raise ValueError(
            "model.data_format = channels_first is not supported by this TensorFlow build on this device "
            "(on CPU it needs oneDNN: unset TF_ENABLE_ONEDNN_OPTS=0); use auto or channels_last"
        )
    return requested


def input_shape(image_size: int, data_format: str) -> tuple[int, int, int]:
    return (1, image_size, image_size) if data_format == "channels_first" else (image_size, image_size, 1)


@keras.saving.register_keras_serializable(package="spikelab")
class BlockMax(keras.layers.Layer):
    """MaxPooling2D(2) (stride 2, valid) written as a reshape and a max: the same function, but a
    reduction, whose gradient XLA computes deterministically (TensorFlow has no deterministic XLA
    MaxPool gradient). Its gradient splits a tie between equal maxima where MaxPool's picks one."""

    def __init__(self, data_format: str, **kwargs):
        super().__init__(**kwargs)
        self.data_format = data_format

    def call(self, x):
        if self.data_format == "channels_first":
            _, channels, height, width = x.shape
            x = x[:, :, : height // 2 * 2, : width // 2 * 2]
            return keras.ops.max(keras.ops.reshape(x, (-1, channels, height // 2, 2, width // 2, 2)), axis=(3, 5))
        _, height, width, channels = x.shape
        x = x[:, : height // 2 * 2, : width // 2 * 2, :]
        return keras.ops.max(keras.ops.reshape(x, (-1, height // 2, 2, width // 2, 2, channels)), axis=(2, 4))

    def get_config(self):
        return super().get_config() | {"data_format": self.data_format}


def build_model(p: ModelParams, image_size: int, data_format: str, block_max: bool = False) -> keras.Model:
    """The seed's architecture exactly; filters=64, kernel=16 on 32x32 gives 2,113,986 params.
    block_max: the pooling as BlockMax (for XLA), else the seed's MaxPooling2D."""
    inputs = keras.Input(shape=input_shape(image_size, data_format), name="image")
    x = keras.layers.Activation("relu", name="input_relu")(inputs)
    x = keras.layers.Conv2D(p.filters, p.kernel_size, data_format=data_format, name="conv1")(x)
    if p.hidden_activation == "relu":  # not the seed's: without it conv1 -> conv2 is one linear map
        x = keras.layers.Activation("relu", name="hidden_relu")(x)
    x = keras.layers.Conv2D(2 * p.filters, p.kernel_size, data_format=data_format, name="conv2")(x)
    pool = (
        BlockMax(data_format, name="pool")
        if block_max
        else keras.layers.MaxPooling2D(2, data_format=data_format, name="pool")
    )
    x = pool(x)
    x = keras.layers.Flatten(data_format=data_format, name="flatten")(x)
    logits = keras.layers.Dense(2, name="logits")(x)
    outputs = keras.layers.Activation("softmax", name="softmax")(logits)
    return keras.Model(inputs, outputs, name="seed_cnn")


PROBABILITY_ACTIVATIONS = ("softmax", "sigmoid")


def _activation_name(layer) -> str | None:
    activation = getattr(layer, "activation", None)
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    if activation is None:
        return None
    name = getattr(activation, "__name__", None) or keras.activations.serialize(activation)
    return name if name in PROBABILITY_ACTIVATIONS else None


def output_layer(model: keras.Model):
    """The layer that produces the model's (single) output."""
    history = getattr(model.outputs[0], "_keras_history", None)
    return history[0] if history else model.layers[-1]


class LogitsAndOutput:
    """(logits, output) of a model in one forward pass, for any single-output model whose output is
    a softmax or sigmoid: the logits are the input of a final softmax/sigmoid activation layer (the
    lab's network: its `logits` Dense feeding the `softmax` layer), or the pre-activation of a final
    Dense-like layer that applies the activation itself (keras.applications' classifiers).

    `activation` is 'softmax' or 'sigmoid'; None when the output is not a probability (a regression
    head): then no logits exist and the output stands in their place, so the gradient still flows."""

    def __init__(self, model: keras.Model):
        if len(model.outputs) != 1:
            raise ValueError(f"{model.name} has {len(model.outputs)} outputs; the probe diagnostics need one")
        layer = output_layer(model)
        self.activation = _activation_name(layer)
        self._pre_activation = None
        if self.activation is None:
            self._model = keras.Model(model.inputs, [model.outputs[0], model.outputs[0]])
            return
        # the tensor entering the last layer: for an Activation layer it is the logits themselves
        self._model = keras.Model(model.inputs, [layer.input, *model.outputs])
        if not isinstance(layer, keras.layers.Activation | keras.layers.Softmax):
            if not hasattr(layer, "kernel"):
                raise ValueError(f"{model.name}: cannot take the logits out of its output layer {layer.name}")
            self._pre_activation = layer

    @property
    def has_logits(self) -> bool:
        return self.activation is not None

    def __call__(self, x, training: bool):
        first, output = self._model(x, training=training)
        layer = self._pre_activation
        if layer is None:
            return first, output
        logits = keras.ops.matmul(first, layer.kernel)
        return (logits + layer.bias if layer.use_bias else logits), output


def logits_model(model: keras.Model):
    """The same network stopped before the softmax, sharing weights (for logit diagnostics): a
    callable from inputs to logits."""
    head = LogitsAndOutput(model)
    return lambda x, training=False: head(x, training=training)[0]


def to_model_input(images: np.ndarray, data_format: str) -> np.ndarray:
    """uint8 (n, size, size) -> float32 in [0, 1] shaped for the model."""
    x = images.astype(np.float32) / 255.0
    return x[:, None, :, :] if data_format == "channels_first" else x[:, :, :, None]


@contextlib.contextmanager
def quiet_structure():
    """Silence Keras's warning that a one-input model got a tensor, not a list of one (JAX and torch
    warn at each eager call of a sub-model built on model.inputs; the call itself is right)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The structure of `inputs` doesn't match")
        yield
