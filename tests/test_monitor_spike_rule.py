"""The doctor's spike rule: a rise above a robust level of the recent past, not above one outlying low."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spikelab import diagnose as diagnose_command
from spikelab.history import write_history_csv
from spikelab.verdict import DEFAULT_DIVERGENCE, LEVEL_WINDOW, RobustSpikeWatch, describe, diagnose, onsets


def noisy(epochs: int = 60, level: float = 0.2, seed: int = 0) -> list[float]:
    """A healthy noisy run: the loss around `level`, +-15% (log-normal)."""
    return list(level * np.exp(np.random.default_rng(seed).normal(0, 0.15, epochs)))


def dip_case() -> list[float]:
    """The issue's RMSprop run: epoch 25 dipped once to 0.0029, epoch 26 is the usual 0.198."""
    losses = noisy()
    losses[24], losses[25] = 0.0029, 0.198
    return losses


def test_one_dip_does_not_make_the_next_ordinary_epoch_a_spike(tmp_path, capsys):
    losses = dip_case()
    # the lab's rule ("x the lowest loss so far") calls epoch 26 a 68x spike that never ends
    ((epoch, lowest),) = onsets(losses, DEFAULT_DIVERGENCE, window=None)
    assert (epoch, lowest) == (26, 0.0029) and losses[25] / lowest == pytest.approx(68.3, abs=0.1)
    assert onsets(losses, DEFAULT_DIVERGENCE) == []  # the doctor's rule: nothing
    history = [{"epoch": e, "loss": loss} for e, loss in enumerate(losses, start=1)]
    write_history_csv(tmp_path / "history.csv", history)
    assert diagnose_command.main([str(tmp_path / "history.csv")]) == 0
    assert "no spike in 60 epochs" in capsys.readouterr().out
    assert diagnose_command.main([str(tmp_path / "history.csv"), "--lab-rule"]) == 0
    assert "1 spike in 60 epochs (at 26)" in capsys.readouterr().out  # the lab's rule still fires there


def test_dips_apart_do_not_either_but_two_in_a_window_set_the_level():
    losses = noisy()
    losses[14], losses[19], losses[24] = 0.0029, 0.003, 0.0031  # one in every 5 epochs
    assert onsets(losses, DEFAULT_DIVERGENCE) == []
    losses[23] = 0.0031  # two of the last 5: the run's level has changed, and a return to 0.2 is a rise
    assert [epoch for epoch, _ in onsets(losses, DEFAULT_DIVERGENCE)] == [26]


def test_a_real_spike_is_found_at_its_onset_with_its_size():
    losses = noisy()
    losses[39:43] = [3.0, 5.0, 2.0, 0.9]  # epoch 40: 15x the usual level, back by epoch 44
    ((epoch, level),) = onsets(losses, DEFAULT_DIVERGENCE)
    assert epoch == 40 and 0.1 < level < 0.2  # the lowest so far of the second lowest of the last 5
    (verdict,) = diagnose([{"epoch": e, "loss": v} for e, v in enumerate(losses, 1)], window=LEVEL_WINDOW).verdicts
    assert verdict.epoch == 40 and verdict.jump == pytest.approx(5.0 / level)


def test_a_loss_hovering_at_the_threshold_is_one_episode_and_a_plateau_stays_flagged():
    watch = RobustSpikeWatch(DEFAULT_DIVERGENCE)
    for loss in [0.1] * 5:
        assert not watch.observe(loss)
    # 10x, 9x, 11x, 8x: the lab's rule starts an episode at each crossing; here one, while >= 3.2x
    assert [watch.observe(loss) for loss in (1.0, 0.9, 1.1, 0.8, 0.5, 0.2)] == [True] * 5 + [False]
    assert watch.observe(math.nan)  # a non-finite loss is always flagged
    lab = [epoch for epoch, _ in onsets([0.1] * 5 + [1.0, 0.9, 1.1, 0.8], DEFAULT_DIVERGENCE, window=None)]
    assert lab == [6, 8]


def test_the_verdict_names_the_level_it_measured_from():
    losses = noisy()
    losses[39:41] = [3.0, 0.2]
    text = describe(diagnose([{"epoch": e, "loss": v} for e, v in enumerate(losses, 1)], window=LEVEL_WINDOW))
    assert "spike at epoch 40" in text
