"""Quiet by default: optional loggers silent when absent, the verdict in at most five short lines,
every number behind --details (the command) or monitor.details / monitor.diagnosis."""

from __future__ import annotations

import sys

import keras
import numpy as np

from conftest import REPO
from spikelab import diagnose as diagnose_command
from spikelab.history import read_history_csv
from spikelab.monitor import SpikeMonitor
from spikelab.verdict import LEVEL_WINDOW, diagnose, summary


def test_a_user_without_dvclive_hears_nothing_of_it_and_gets_five_lines_at_most(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "dvclive", None)  # import dvclive raises ImportError
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    monitor = SpikeMonitor(x, y)
    model.fit(x, y, batch_size=16, epochs=2, callbacks=[monitor], verbose=0)
    captured = capsys.readouterr()
    assert "DVCLive" not in captured.out + captured.err and monitor.skipped == []
    assert captured.out.strip() == "spike doctor: no spike in 2 epochs"
    assert monitor.details.startswith("spike doctor: no spike in 2 epochs")


def test_the_committed_default_runs_verdict_fits_in_five_short_lines(capsys):
    history = read_history_csv(REPO / "metrics/history.csv")
    text = summary(diagnose(history, window=LEVEL_WINDOW))
    lines = text.splitlines()
    assert len(lines) <= 5 and max(len(line) for line in lines) <= 140, text
    assert lines[0].startswith("spike doctor: ") and "epoch 99" in lines[0]
    assert lines[1] == "  cause: Adam's normalised step after its second moment v decayed"
    assert "v at 0.59 of its peak" in lines[2] and "amsgrad=True" in lines[3] and "moderate" in lines[4]
    assert "Holm" not in text  # the evidence in full is the details'
    assert diagnose_command.main([str(REPO / "metrics/history.csv")]) == 0
    assert capsys.readouterr().out.strip() == summary(diagnose(history, window=LEVEL_WINDOW), "--details")
    assert diagnose_command.main([str(REPO / "metrics/history.csv"), "--details"]) == 0
    details = capsys.readouterr().out
    assert "Holm p" in details and "adam_step.v_sqrt_median_over_peak" in details


def test_several_mechanisms_name_the_main_one_and_count_the_others():
    history = [{"epoch": e, "loss": max(0.01, 1 / e**2), "v_sqrt_median": 0.01} for e in range(1, 81)]
    for row in history[30:49]:
        row["v_sqrt_median"] = 0.004
    history[49].update(loss=0.5, update_rms_over_lr=6.0)  # Adam's step
    history[69].update(loss=0.5)  # v back at... still decayed, but no jump: unexplained
    for row in history[50:]:
        row["v_sqrt_median"] = 0.01
    lines = summary(diagnose(history, window=LEVEL_WINDOW)).splitlines()
    assert len(lines) == 5 and "2 spikes" in lines[0] and "(at 50, 70)" in lines[0]
