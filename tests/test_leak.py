"""The leak check's bookkeeping: which validation image's twin was trained on, checked against split() itself."""

import numpy as np
import pytest

from spikelab.data import split
from spikelab.params import SplitParams
from studies.leak.analysis import leak_rows, twin_in_training


@pytest.mark.parametrize("twins", ["independent", "together"])
def test_twin_in_training_matches_what_split_did(twins):
    per_class, held = 40, 10
    # image i of either stack carries its index in pixel 0 and its class in pixel 1
    solid = np.zeros((per_class, 8, 8), np.uint8)
    solid[:, 0, 0] = np.arange(per_class)
    broken = solid.copy()
    broken[:, 0, 1] = 1
    p = SplitParams(val_per_class=held, seed=3, twins=twins)
    parts = split(solid, broken, p)
    trained = {(int(x[0, 0]), int(x[0, 1])) for x in parts["x_train"]}
    expected = np.array([(int(x[0, 0]), 1 - int(x[0, 1])) in trained for x in parts["x_val"]])
    groups = twin_in_training(per_class, p)
    np.testing.assert_array_equal(groups["twin_trained"], expected)
    np.testing.assert_array_equal(groups["label"], np.argmax(parts["y_val"], axis=1))
    assert expected.any() == (twins == "independent")  # together: no validation image has a trained twin


def test_leak_rows_count_each_group():
    predicted = np.array([0, 0, 1, 1])
    label = np.array([0, 1, 1, 0])
    twin_trained = np.array([True, True, False, False])
    rows = leak_rows(predicted, label, twin_trained)
    assert [row["images"] for row in rows] == [2, 2]
    assert rows[0]["accuracy"].startswith("1/2 = 0.500") and rows[1]["accuracy"].startswith("1/2 = 0.500")
