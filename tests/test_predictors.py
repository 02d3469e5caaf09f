"""The predictive check's definitions on hand-made curves: spike onsets, alarms, recall, precision, lead."""

import math

import pytest

from spikelab.params import DivergenceParams
from study.predictors import alarms, flagged_epochs, onsets, predictor_values, predictors, score

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
    # unflagged epochs 5..9 of run 1 are followed by the onset within 5: 5 of 39 unflagged epochs
    assert result["chance_precision"] == pytest.approx(5 / 39)
    assert score([([10], [2, 7], flags_1)], horizon=10)["median_lead"] == 8  # the earliest alarm in the window


def test_predictor_values_scale_by_their_thresholds():
    by_name = {name: value for name, _, value in predictors(beta_1=0.9)}
    history = [
        {"loss": 0.4, "learning_rate": 0.01, "lambda_grad": 100.0, "g2_over_v_rms": 0.5},
        {"loss": 1.0, "learning_rate": 0.01, "lambda_grad": 400.0},
    ]
    assert predictor_values(history, by_name["lambda_grad > 2/lr"]) == [0.5, 2.0]
    assert predictor_values(history, by_name["lambda_grad > 38/lr"]) == pytest.approx([1 / 38, 4 / 38])
    assert math.isnan(predictor_values(history, by_name["g2_over_v_rms > 1"])[1])  # not measured that epoch
    naive = predictor_values(history, by_name["naive: loss > 2 x lowest so far"])
    assert naive[1] == pytest.approx(2.5) and naive[0] == 0.0  # the first epoch has no lowest before it


def test_false_alarms_are_the_rule_firing_in_the_calm_cells_only():
    from study.predictors import false_alarm_rate

    def run(cell, diverged, state="success"):
        return {"cell": cell, "diverged": diverged, "state": state}

    records = [run("amsgrad", True), run("amsgrad", False), run("sgd", False), run("sgd", True, "failed")]
    records += [run("baseline", True)] * 5  # a spike where one is expected is no false alarm
    assert false_alarm_rate(records, ["amsgrad", "sgd"]) == "1/3 = 0.33 [0.06, 0.79]"
    assert false_alarm_rate(records, []) is None
