"""The predictive check's definitions on hand-made curves: spike onsets, alarms, recall, precision, lead."""

import math

import numpy as np
import pytest

from spikelab.params import DivergenceParams
from study.predictors import alarms, bootstrap, evaluate, flagged_epochs, onsets, predictor_values, predictors, score

RULE = DivergenceParams(ratio=10.0, min_rise=0.01)


def test_onsets_are_the_first_epochs_of_flagged_episodes():
    losses = [1.0, 0.5, 0.01, 0.2, 0.3, 0.01, 0.005, 0.2, math.nan]
    flags = flagged_epochs(losses, RULE)
    assert flags == [False, False, False, True, True, False, False, True, True]
    assert onsets(flags) == [4, 8]


def test_alarms_are_upward_crossings_outside_spikes_and_nan_keeps_the_state():
    values = [0.5, 1.5, 2.0, 0.5, math.nan, 1.2, 0.9, 3.0]
    flags = [False] * 7 + [True]
    assert alarms(values, flags) == [2, 6]  # epoch 8 crosses inside a flagged epoch: not a prediction
    assert alarms([0.5, math.nan, 1.5], [False] * 3) == [3]
    assert alarms([2.0, 2.0], [False, False]) == [1]  # above from the first epoch: one alarm


def test_recall_precision_lead_and_chance_on_a_known_case():
    # run 1: spike onset at 10, alarms at 7 (3 before: hit, lead 3) and 2 (8 before: outside K = 5)
    # run 2: no spike, one alarm at 4 (a false alarm)
    flags_1 = [False] * 9 + [True] + [False] * 10
    flags_2 = [False] * 20
    result = score([([10], [2, 7], flags_1), ([], [4], flags_2)], horizon=5)
    assert (result["spikes"], result["preceded"], result["recall"]) == (1, 1, 1.0)
    assert (result["alarms"], result["followed"]) == (3, 1)
    assert result["precision"] == pytest.approx(1 / 3)
    assert result["median_lead"] == 3
    # pooled: unflagged epochs 5..9 of run 1 are followed by the onset within 5: 5 of 39 unflagged epochs
    assert result["pooled_chance_precision"] == pytest.approx(5 / 39)
    # within each alarm's own run: run 1's two alarms 5/19 each, run 2's alarm 0 (its run never spikes)
    assert result["chance_precision"] == pytest.approx((2 * 5 / 19) / 3)
    assert result["lift"] == pytest.approx((1 / 3) / ((2 * 5 / 19) / 3))
    assert score([([10], [2, 7], flags_1)], horizon=10)["median_lead"] == 8  # the earliest alarm in the window


def test_first_spike_ignores_what_comes_after_the_first_onset():
    # onsets 10 and 16; alarms at 8 (before the first) and 14 (before the re-crossing)
    flags = [False] * 9 + [True] + [False] * 5 + [True] + [False] * 4
    every = score([([10, 16], [8, 14], flags)], horizon=5)
    first = score([([10, 16], [8, 14], flags)], horizon=5, first_only=True)
    assert (every["spikes"], every["preceded"], every["alarms"], every["followed"]) == (2, 2, 2, 2)
    assert (first["spikes"], first["preceded"], first["alarms"], first["followed"]) == (1, 1, 1, 1)
    # first spike: the eligible epochs are 1..9, of which 5..9 precede onset 10 within 5
    assert first["chance_precision"] == pytest.approx(5 / 9)


def test_the_bootstrap_resamples_runs_whole():
    flags = [False] * 9 + [True] + [False] * 10
    hit = score([([10], [7], flags)], horizon=5)["per_run"]
    miss = score([([], [4], [False] * 20)], horizon=5)["per_run"]
    # identical runs: every resample is the same run set, so the interval is a point
    same = bootstrap(np.concatenate([hit, hit, hit]), resamples=200)
    assert same["precision_ci"] == (1.0, 1.0)
    mixed = bootstrap(np.concatenate([hit, miss]), resamples=400)
    low, high = mixed["precision_ci"]
    assert low == 0.0 and high == 1.0  # a resample of two misses has precision 0, of two hits 1


def test_predictor_values_scale_by_their_thresholds():
    by_name = {name: value for name, _, value in predictors(beta_1=0.9)}
    history = [
        {"loss": 0.4, "learning_rate": 0.01, "lambda_grad": 100.0, "g2_over_v_rms": 0.5},
        {"loss": 1.0, "learning_rate": 0.01, "lambda_grad": 400.0},
    ]
    assert predictor_values(history, by_name["lambda_grad > 2/lr"]) == [0.5, 2.0]
    assert predictor_values(history, by_name["lambda_grad > 38/lr"]) == pytest.approx([1 / 38, 4 / 38])
    assert math.isnan(predictor_values(history, by_name["g2_over_v_rms > 1"])[1])  # not measured that epoch
    # the documented rule: loss > 2x its lowest so far, divided by its threshold like every other
    naive = predictor_values(history, by_name["naive: loss > 2x lowest so far"])
    assert naive[1] == pytest.approx(1.0 / 0.4 / 2) and naive[0] == 0.0  # the first epoch has no lowest before it
    assert (
        alarms(predictor_values([{"loss": 1.0}, {"loss": 1.8}], by_name["naive: loss > 2x lowest so far"]), [False] * 2)
        == []
    )
    assert predictor_values(history, by_name["naive: loss > 5x lowest so far"])[1] == pytest.approx(0.5)


def test_runs_that_never_measured_a_predictor_are_left_out_of_it():
    """The archive has every column for every run, NaN where unmeasured (SGD: no lambda_grad)."""
    rule = RULE
    adam = [
        {"loss": 1.0, "learning_rate": 0.01, "lambda_grad": 300.0},
        {"loss": 0.5, "learning_rate": 0.01, "lambda_grad": 10.0},
    ]
    sgd = [
        {"loss": 1.0, "learning_rate": 0.01, "lambda_grad": math.nan},
        {"loss": 0.5, "learning_rate": 0.01, "lambda_grad": math.nan},
    ]
    histories = {"adam": adam, "sgd": sgd}
    flags = {run: flagged_epochs([row["loss"] for row in h], rule) for run, h in histories.items()}
    runs = {row["predictor"]: row["runs"] for row in evaluate(histories, flags, beta_1=0.9)}
    assert runs["lambda_grad > 2/lr"] == 1
    assert runs["naive: loss > 2x lowest so far"] == 2


def test_false_alarms_are_the_rule_firing_in_the_calm_cells_only():
    from study.predictors import false_alarm_rate

    def run(cell, diverged, state="success"):
        return {"cell": cell, "diverged": diverged, "state": state}

    records = [run("amsgrad", True), run("amsgrad", False), run("sgd", False), run("sgd", True, "failed")]
    records += [run("baseline", True)] * 5  # a spike where one is expected is no false alarm
    assert false_alarm_rate(records, ["amsgrad", "sgd"]) == "1/3 = 0.33 [0.06, 0.79]"
    assert false_alarm_rate(records, []) is None
