"""The plateau half of the seed: dead samples counted on hand-made logits, the plateau rule on
hand-made curves, the twins split, and the optional nonlinearity between the convolutions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import tiny_model_params, with_changes
from spikelab.data import generate, split
from spikelab.dead_zone import accounting_epochs, dead_zone_stats
from spikelab.divergence import plateau_metrics
from spikelab.model import build_model
from spikelab.params import DivergenceParams, PlateauParams, params_from_dict
from spikelab.training import train

SOLID, BROKEN = [1.0, 0.0], [0.0, 1.0]


def test_dead_samples_are_the_wrong_ones_past_the_clip():
    logits = np.array(
        [
            [30.0, -30.0],  # says solid, saturated, but broken: dead
            [30.0, -30.0],  # says solid, saturated, and solid: right, not dead
            [1.0, -1.0],  # says solid, not saturated, broken: wrong but alive
            [8.0, -8.1],  # gap 16.1: p_min = exp(-16.1) = 1.0e-7, just inside the clip
            [8.1, -8.1],  # gap 16.2: p_min = 9.2e-8, just past it
        ],
        dtype=np.float32,
    )
    labels = np.array([BROKEN, SOLID, BROKEN, BROKEN, BROKEN], dtype=np.float32)
    stats = dead_zone_stats(logits, labels)
    assert stats["dead_fraction"] == pytest.approx(2 / 5)  # rows 0 and 4
    # a dead sample costs the clipped loss ~16.03 ((16.118 + 15.942) / 2 in float32)
    assert stats["dead_loss_clipped"] == pytest.approx(2 * 16.03 / 5, abs=0.01)
    # unclipped (sigmoid CE per logit): row 0 costs (softplus(30) + softplus(30)) / 2 = 30; row 4 about 8.1
    assert stats["dead_loss_unclipped"] == pytest.approx((30.0 + 8.1) / 5, abs=0.01)
    assert stats["full_loss_clipped"] > stats["dead_loss_clipped"]


def test_accounting_epochs_cover_cadence_snapshots_and_the_last():
    assert accounting_epochs(12, 5, 4) == {4, 5, 8, 10, 12}
    assert accounting_epochs(7, 0, 0) == {7}


DIVERGENCE = DivergenceParams(ratio=10.0, min_rise=0.01)
PLATEAU = PlateauParams(ratio=5.0, min_epochs=3)


def curve(*parts) -> list[float]:
    return [float(value) for part in parts for value in part]


def test_a_spike_that_stays_up_plateaus():
    losses = curve([1.0, 0.5, 0.1, 0.05], [1.9, 1.8, 1.85, 1.9, 1.88])
    found = plateau_metrics(losses, DIVERGENCE, PLATEAU)
    assert found["plateaued"] and found["plateau_start_epoch"] == 5
    assert found["plateau_epochs"] == 5 and found["plateau_to_end"]
    assert found["plateau_level"] == pytest.approx(1.88)  # the median of the 5 epochs from the spike on


def test_a_spike_that_recovers_does_not_plateau():
    losses = curve([1.0, 0.5, 0.1, 0.05], [1.9, 0.3, 0.06, 0.04, 0.03])
    assert plateau_metrics(losses, DIVERGENCE, PLATEAU) == {
        "plateaued": False,
        "plateau_start_epoch": None,
        "plateau_epochs": 0,
        "plateau_to_end": False,
        "plateau_level": None,
    }


def test_a_recovered_spike_then_a_lasting_one_dates_the_plateau_from_the_second():
    losses = curve([1.0, 0.1, 0.05], [1.0, 0.04, 0.03], [2.0, 2.0, 2.1, 2.0])
    found = plateau_metrics(losses, DIVERGENCE, PLATEAU)
    assert found["plateau_start_epoch"] == 7 and found["plateau_epochs"] == 4


def test_nan_counts_as_staying_up():
    losses = curve([1.0, 0.1, 0.05], [math.nan, math.nan, math.nan])
    found = plateau_metrics(losses, DIVERGENCE, PLATEAU)
    assert found["plateaued"] and found["plateau_start_epoch"] == 4 and found["plateau_level"] is None


def test_too_short_a_stay_is_not_a_plateau():
    losses = curve([1.0, 0.1, 0.05], [1.0, 1.0])  # up to the end, but only 2 < min_epochs epochs
    assert not plateau_metrics(losses, DIVERGENCE, PLATEAU)["plateaued"]


@pytest.fixture
def stacks(tiny_raw):
    params = params_from_dict(tiny_raw)
    solid, broken, _ = generate(params.data)
    return tiny_raw, solid, broken


def twin_rows(images: np.ndarray, stack: np.ndarray) -> set[int]:
    """Indices (in the generated stack) of the given images."""
    index = {image.tobytes(): i for i, image in enumerate(stack)}
    return {index[image.tobytes()] for image in images}


@pytest.mark.parametrize("twins", ["independent", "together"])
def test_twins_split_counts_and_no_overlap(stacks, twins):
    tiny_raw, solid, broken = stacks
    params = params_from_dict(with_changes(tiny_raw, {"split": {"twins": twins}}))
    parts = split(solid, broken, params.split)
    held = params.split.val_per_class
    assert len(parts["x_val"]) == 2 * held and len(parts["x_train"]) == 2 * (len(solid) - held)
    val_solid = twin_rows(parts["x_val"][parts["y_val"][:, 0] == 1], solid)
    train_solid = twin_rows(parts["x_train"][parts["y_train"][:, 0] == 1], solid)
    val_broken = twin_rows(parts["x_val"][parts["y_val"][:, 1] == 1], broken)
    assert not val_solid & train_solid and len(val_solid) == held
    if twins == "together":
        assert val_broken == val_solid  # every validation solid image's broken twin is in validation too
    else:
        assert val_broken != val_solid  # the seed's split: twins land on both sides


def test_hidden_relu_adds_no_parameters_and_changes_the_output():
    def model(hidden):
        import keras

        keras.utils.set_random_seed(0)
        params = tiny_model_params(hidden_activation=hidden)
        return build_model(params, 32, "channels_last")

    linear, nonlinear = model("none"), model("relu")
    assert linear.count_params() == nonlinear.count_params()
    nonlinear.set_weights(linear.get_weights())
    image = np.random.default_rng(0).random((1, 32, 32, 1), dtype=np.float32)
    assert not np.allclose(linear.predict(image, verbose=0), nonlinear.predict(image, verbose=0))


def test_training_history_has_the_dead_zone_at_the_accounting_epochs(tiny_raw):
    params = params_from_dict(with_changes(tiny_raw, {"train": {"epochs": 4}, "diagnostics": {"dead_zone_every": 2}}))
    solid, broken, _ = generate(params.data)
    arrays = split(solid, broken, params.split)
    history = train(params, arrays, "channels_last", None).history
    has = [math.isfinite(row.get("dead_fraction", math.nan)) for row in history]
    assert has == [True, True, True, True]  # snapshot_every 1 in the tiny params: every epoch
    params = params.model_copy(update={"train": params.train.model_copy(update={"snapshot_every": 0})})
    history = train(params, arrays, "channels_last", None).history
    assert [math.isfinite(row.get("dead_fraction", math.nan)) for row in history] == [False, True, False, True]
    assert all(0 <= row["dead_fraction"] <= 1 for row in history if "dead_fraction" in row)


def test_kept_dead_sets_match_the_logged_fraction_and_change_nothing(tiny_raw):
    params = params_from_dict(with_changes(tiny_raw, {"train": {"epochs": 3}}))
    solid, broken, _ = generate(params.data)
    arrays = split(solid, broken, params.split)
    plain = train(params, arrays, "channels_last", None).history
    dead_sets: dict = {}
    kept = train(params, arrays, "channels_last", None, dead_sets=dead_sets).history
    assert kept == plain  # the option only observes
    assert sorted(dead_sets) == [1, 2, 3]
    for row in kept:
        mask, margin = dead_sets[int(row["epoch"])]
        assert mask.shape == margin.shape == (len(arrays["y_train"]),)
        assert mask.mean() == pytest.approx(row["dead_fraction"])
        assert not np.any(mask & (margin < 16.0))  # a dead sample is wrong by more than the clip's margin


def test_dead_mask_agrees_with_the_stats():
    from spikelab.dead_zone import dead_mask

    logits = np.array([[30.0, -30.0], [30.0, -30.0], [1.0, -1.0], [8.1, -8.1]], dtype=np.float32)
    labels = np.array([BROKEN, SOLID, BROKEN, BROKEN], dtype=np.float32)
    assert dead_mask(logits, labels).tolist() == [True, False, False, True]
