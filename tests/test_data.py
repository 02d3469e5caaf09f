import numpy as np
import pytest

from spikelab.data import generate, line_pixels, split
from spikelab.params import params_from_dict


@pytest.fixture
def params(tiny_raw):
    return params_from_dict(tiny_raw)


def test_generate_shapes_dtype_and_determinism(params):
    solid, broken, gaps = generate(params.data)
    assert solid.shape == broken.shape == (96, 32, 32)
    assert solid.dtype == broken.dtype == np.uint8
    again = generate(params.data)
    assert np.array_equal(solid, again[0]) and np.array_equal(broken, again[1])
    other_seed = generate(params.data.__class__(**{**params.data.__dict__, "seed": 1}))
    assert not np.array_equal(solid, other_seed[0])


def test_each_broken_image_is_its_solid_twin_minus_a_gap_of_the_configured_size(params):
    solid, broken, gaps = generate(params.data)
    assert set(np.unique(solid)) == {0, 255}
    for s, b, gap in zip(solid, broken, gaps):
        removed = (s == 255) & (b == 0)
        assert removed.sum() == gap
        assert params.data.gap_min <= gap <= params.data.gap_max
        assert np.array_equal(b[~removed], s[~removed])  # nothing else changed
        assert (b == 255).sum() >= 2  # line left on both sides of the gap


def test_line_pixels_are_connected_and_of_the_asked_length():
    pixels = line_pixels(3.0, 4.0, 0.3, 12)
    steps = np.abs(np.diff(pixels, axis=0)).max(axis=1)
    assert np.all(steps == 1)  # 8-connected, no holes, no repeats
    # a sloped line rasterises with some axis-aligned steps, so it has up to ~1.5x its length in pixels
    assert 12 <= len(pixels) <= 18
    assert len({tuple(p) for p in pixels}) == len(pixels)


def test_split_counts_labels_and_no_overlap(params):
    solid, broken, _ = generate(params.data)
    parts = split(solid, broken, params.split)
    held = params.split.val_per_class
    assert parts["x_val"].shape[0] == 2 * held
    assert parts["x_train"].shape[0] == 2 * (96 - held)
    assert parts["y_val"].sum(axis=0).tolist() == [held, held]
    # labels: solid = [1, 0] (an unbroken line), broken = [0, 1]
    solid_set = {image.tobytes() for image in solid}
    for image, label in zip(parts["x_train"], parts["y_train"]):
        assert (image.tobytes() in solid_set) == (label.tolist() == [1.0, 0.0])
    train = {image.tobytes() for image in parts["x_train"]}
    assert not train & {image.tobytes() for image in parts["x_val"]}
