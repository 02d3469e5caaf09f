"""train.jit_compile: XLA with the pooling as a block max, checked as the same function, really
compiled, and bit-identical run to run (issue 12)."""

import keras
import numpy as np
import pytest

from spikelab.data import generate, split
from spikelab.evaluation import load_model
from spikelab.model import BlockMax, resolve_data_format, to_model_input
from spikelab.params import params_from_dict
from spikelab.training import train


@pytest.mark.parametrize("data_format", ["channels_first", "channels_last"])
@pytest.mark.parametrize("spatial", [(2, 2), (5, 7)])  # the model's 2x2 map, and odd sizes (floored)
def test_block_max_is_max_pooling(data_format, spatial):
    shape = (3, 4, *spatial) if data_format == "channels_first" else (3, *spatial, 4)
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    expected = keras.layers.MaxPooling2D(2, data_format=data_format)(x)
    np.testing.assert_array_equal(BlockMax(data_format)(x), expected)


def test_jit_training_is_compiled_bit_identical_run_to_run_and_saves(tiny_raw, tmp_path):
    tiny_raw["train"].update(epochs=3, snapshot_every=0)
    params = params_from_dict(tiny_raw)
    arrays = split(*generate(params.data)[:2], params.split)
    data_format = resolve_data_format("auto")
    jit = params_from_dict(tiny_raw | {"train": tiny_raw["train"] | {"jit_compile": True}})

    first, second = (train(jit, arrays, data_format, None) for _ in range(2))
    plain = train(params, arrays, data_format, None)

    assert first.model.jit_compile and not plain.model.jit_compile
    assert first.history == second.history
    # XLA picks other kernels: the last bits differ (were it silently off, the histories would match)
    assert first.history != plain.history
    assert first.history[-1]["loss"] == pytest.approx(plain.history[-1]["loss"], rel=1e-3)
    first.model.save(tmp_path / "model.keras")  # the evaluate stage loads what train saved
    loaded = load_model(tmp_path / "model.keras")
    assert isinstance(loaded.get_layer("pool"), BlockMax)
    x = to_model_input(arrays["x_val"][:4], data_format)
    np.testing.assert_array_equal(loaded(x), first.model(x))
