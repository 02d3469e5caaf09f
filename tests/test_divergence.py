import math

import pytest

from spikelab.divergence import divergence_epoch, divergence_metrics
from spikelab.params import DivergenceParams

RULE = DivergenceParams(ratio=10.0, min_rise=0.01)


def test_monotone_curve_does_not_diverge():
    losses = [0.7, 0.5, 0.2, 0.05, 0.01]
    metrics = divergence_metrics(losses, losses, RULE)
    assert metrics["diverged"] is False and metrics["divergence_epoch"] is None and metrics["jump_ratio"] is None
    assert metrics["min_loss"] == 0.01 and metrics["min_epoch"] == 5
    assert metrics["peak_loss"] == 0.01 and metrics["spike_ratio"] == 1.0
    assert metrics["epochs_run"] == 5 and metrics["nan"] is False


def test_spike_is_found_at_its_first_epoch_with_peak_after_the_minimum():
    losses = [0.7, 0.1, 0.02, 0.01, 0.05, 0.2, 8.0, 7.9]
    metrics = divergence_metrics(losses, [0.7] * 8, RULE)
    assert metrics["divergence_epoch"] == 6  # 0.2 >= 10 x 0.01 first
    assert metrics["peak_loss"] == 8.0 and metrics["peak_epoch"] == 7
    assert metrics["spike_ratio"] == pytest.approx(800.0)
    assert metrics["final_loss"] == 7.9 and metrics["diverged"] is True
    assert metrics["jump_ratio"] == pytest.approx(800.0)


def test_jump_ratio_keeps_the_size_of_a_spike_the_run_recovered_from():
    losses = [0.7, 0.01, 0.5, 0.02, 0.001]  # spike at 3, then a lower minimum at 5
    metrics = divergence_metrics(losses, losses, RULE)
    assert metrics["divergence_epoch"] == 3 and metrics["spike_ratio"] == 1.0
    assert metrics["jump_ratio"] == pytest.approx(50.0)


def test_tiny_absolute_rise_is_noise_not_divergence():
    assert divergence_epoch([1e-3, 1e-6, 5e-5], RULE) is None  # 50x, but a rise of 5e-5 only


def test_nan_diverges_and_becomes_null():
    losses = [0.7, 0.3, math.nan]
    metrics = divergence_metrics(losses, [0.7, 0.6, math.nan], RULE)
    assert metrics["nan"] is True and metrics["diverged"] is True
    assert metrics["divergence_epoch"] == 3
    assert metrics["final_loss"] is None and metrics["final_val_loss"] is None
    assert metrics["min_loss"] == 0.3 and metrics["epochs_run"] == 3


# ---- broken from the start (issue 15): a run that never learned is not "fine" ------------------------


def test_a_run_collapsed_from_epoch_1_is_broken_from_start_though_not_diverged():
    losses = [8.01, 8.0, 8.02, 7.99, 8.0]  # the one-class collapse level of the clipped BCE, from epoch 1
    metrics = divergence_metrics(losses, losses, RULE)
    assert metrics["diverged"] is False  # nothing low to spike from: the divergence rule cannot see it
    assert metrics["broken_from_start"] is True
    assert metrics["first_loss"] == 8.01 and metrics["final_to_first"] == pytest.approx(8.0 / 8.01)


def test_a_run_that_only_rises_after_epoch_1_is_broken_from_start():
    losses = [0.7, 3.0, 5.0, 5.0]  # 5.0 < 10 x 0.7: the divergence rule says fine
    metrics = divergence_metrics(losses, losses, RULE)
    assert metrics["diverged"] is False and metrics["broken_from_start"] is True
    assert metrics["final_to_first"] == pytest.approx(5.0 / 0.7)


def test_a_non_finite_first_epoch_is_broken_from_start_even_alone():
    assert divergence_metrics([math.nan], [math.nan], RULE)["broken_from_start"] is True


def test_a_learning_run_is_not_broken_from_start_even_when_it_spikes_later():
    assert divergence_metrics([0.7, 0.6, 0.5], [0.7] * 3, RULE)["broken_from_start"] is False  # a 14% fall counts
    spiking = [0.7, 0.1, 0.01, 0.5, 8.0]
    metrics = divergence_metrics(spiking, spiking, RULE)
    assert metrics["diverged"] is True and metrics["broken_from_start"] is False


def test_one_finite_epoch_or_a_fall_within_noise_is_judged_by_the_margin():
    assert divergence_metrics([0.7], [0.7], RULE)["broken_from_start"] is False  # no second epoch: no evidence
    assert divergence_metrics([0.7, 0.69, 0.70], [0.7] * 3, RULE)["broken_from_start"] is True  # 1.4% < 2%
    assert divergence_metrics([0.7, 0.68, 0.70], [0.7] * 3, RULE)["broken_from_start"] is False  # 2.9% > 2%


def test_the_closing_sentence_says_what_happened():
    from spikelab.divergence import describe_run

    base = {
        "nan": False,
        "broken_from_start": False,
        "plateaued": False,
        "diverged": False,
        "final_loss": 0.00096,
        "min_loss": 0.0005,
        "min_epoch": 90,
    }
    assert describe_run(base) == "no spike; lowest loss 0.0005 at epoch 90, final loss 0.00096"
    spiked = {**base, "diverged": True, "divergence_epoch": 84, "jump_ratio": 104.2}
    assert describe_run(spiked) == "spiked at epoch 84 (jump 104x), recovered; final loss 0.00096"
    stayed = {**spiked, "plateaued": True, "plateau_start_epoch": 84, "plateau_epochs": 60, "plateau_level": 3.9}
    assert describe_run(stayed).startswith("spiked at epoch 84 (jump 104x) and stayed up: plateau from epoch 84")
    assert describe_run({**base, "nan": True, "divergence_epoch": 3, "final_loss": None}).startswith("blew up")
    assert describe_run({**base, "broken_from_start": True, "final_to_first": 1.0}).startswith("never learned")


def test_a_rise_of_exactly_the_ratio_or_exactly_min_rise_counts():
    # docs/metrics.md#rules: loss >= ratio x lowest AND loss - lowest >= min_rise; both boundaries
    # inclusive (binary-exact numbers, so no rounding decides it)
    assert divergence_epoch([0.25, 2.5], RULE) == 2  # exactly 10x
    assert divergence_epoch([0.25, 2.4999], RULE) is None
    rule = DivergenceParams(ratio=2.0, min_rise=0.5)
    assert divergence_epoch([0.25, 0.75], rule) == 2  # a rise of exactly min_rise (3x >= 2x)
    assert divergence_epoch([0.25, 0.7499], rule) is None


def test_the_train_stage_never_calls_a_run_that_stayed_up_recovered():
    # the plateau run of issue 37: a spike, then every later epoch flagged at ~30x its lowest loss
    from spikelab.divergence import describe_training
    from spikelab.params import PlateauParams

    losses = [0.7, 0.3, 0.1, 0.15, 4.7] + [4.68] * 40
    history = [{"epoch": e, "loss": loss} for e, loss in enumerate(losses, start=1)]
    metrics = divergence_metrics(losses, losses, RULE)
    plateau = PlateauParams(ratio=5.0, min_epochs=20)
    sentence = describe_training(metrics, history, RULE, plateau)
    assert "stayed up" in sentence and "recovered" not in sentence, sentence
    recovering = [0.7, 0.3, 0.1, 0.15, 4.7] + [0.05] * 40
    again = [{"epoch": e, "loss": loss} for e, loss in enumerate(recovering, start=1)]
    assert "recovered" in describe_training(divergence_metrics(recovering, recovering, RULE), again, RULE, plateau)
