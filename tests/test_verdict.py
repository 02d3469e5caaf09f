"""The spike doctor's verdicts on histories with known signals, its command, and its check on the study."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from conftest import REPO
from spikelab.history import read_history_csv, write_history_csv
from spikelab.verdict import describe, diagnose


def calm(epochs: int, loss: float = 0.01) -> list[dict]:
    """A run that learned: the loss falls to `loss`; Adam's v at its peak; a whole-set pass every 10."""
    rows = []
    for epoch in range(1, epochs + 1):
        row = {
            "epoch": epoch,
            "loss": max(loss, 1.0 / epoch**2),
            "v_sqrt_median": 0.01,
            "update_rms_over_lr": 1.0,
            "adam_ratio_max": 2.0,
            "g2_over_v_rms": 0.5,
        }
        if epoch % 10 == 0:
            row.update(
                dead_fraction=0.0, dead_loss_clipped=0.0, full_loss_clipped=row["loss"], full_loss_unclipped=0.02
            )
        rows.append(row)
    return rows


def test_adam_step_needs_the_decay_before_the_jump():
    history = calm(60)
    for row in history[30:49]:
        row["v_sqrt_median"] = 0.004  # v decays while the gradients are quiet
    history[49].update(loss=0.5, update_rms_over_lr=6.0)  # epoch 50: the step jumps, the loss with it
    (verdict,) = diagnose(history).verdicts
    assert (verdict.epoch, verdict.mechanism, verdict.stayed_up) == (50, "adam_step", False)
    assert verdict.numbers["adam_step.v_sqrt_median_over_peak"] == pytest.approx(0.4)
    assert verdict.numbers["adam_step.update_rms_over_lr_jump"] == pytest.approx(6.0)
    assert verdict.jump == pytest.approx(50.0)
    text = describe(diagnose(history))
    assert "spike at epoch 50: 50x the lowest loss before it, recovered: Adam's normalised step" in text
    assert "AMSGrad" in text and "1/20" in text and "16/20" in text

    for row in history[30:49]:
        row["v_sqrt_median"] = 0.01  # the same jump without the decay fits nothing
    assert [v.mechanism for v in diagnose(history).verdicts] == ["unexplained"]
    assert "none the lab's evidence supports" in describe(diagnose(history))


def test_dead_zone_needs_dead_samples_carrying_a_clipped_loss():
    history = calm(80)
    for row in history[49:]:
        row["loss"] = 2.0  # from epoch 50 the loss climbs and stays
    for epoch in (50, 60, 70, 80):
        history[epoch - 1].update(dead_fraction=0.12, dead_loss_clipped=1.9, full_loss_clipped=2.0)
    (verdict,) = diagnose(history).verdicts
    assert (verdict.mechanism, verdict.stayed_up) == ("dead_zone", True)
    assert verdict.numbers["dead_zone.dead_fraction"] == 0.12
    assert "unclipped cross-entropy" in describe(diagnose(history))
    assert diagnose(history, loss_clipped=False).verdicts[0].mechanism == "unexplained"  # the caller knows better

    for epoch in (50, 60, 70, 80):  # the loss trained on is the unclipped form: no clip, no dead zone
        history[epoch - 1]["full_loss_unclipped"] = 2.0
        history[epoch - 1]["full_loss_clipped"] = 5.0
    assert diagnose(history).verdicts[0].mechanism == "unexplained"


def test_a_run_that_never_learned_and_a_calm_one():
    never = [{"epoch": e, "loss": 8.0 + 0.01 * (e % 2)} for e in range(1, 30)]
    (verdict,) = diagnose(never).verdicts
    assert verdict.mechanism == "broken_from_start" and "lower the learning rate" in verdict.fix
    assert describe(diagnose(calm(30))) == "spike doctor: no spike in 30 epochs (the divergence rule never fired)"
    nan = calm(30)
    nan[20]["loss"] = math.nan
    assert [v.epoch for v in diagnose(nan).verdicts] == [21]


def test_the_command_reads_a_history_file_and_says_what_it_lacks(tmp_path):
    path = tmp_path / "history.csv"
    history = calm(60)
    history[49]["loss"] = 0.5
    write_history_csv(path, history)
    result = subprocess.run(
        [sys.executable, "-m", "spikelab.diagnose", str(path), "--details"], capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    assert "spike at epoch 50" in result.stdout and "unexplained" in result.stdout
    assert "no majority_prediction_fraction" in result.stdout
    wrong = subprocess.run(
        [sys.executable, "-m", "spikelab.diagnose", "nope"], capture_output=True, text=True, cwd=REPO
    )
    assert wrong.returncode == 2 and "neither a history.csv file nor an MLflow run id" in wrong.stderr


def test_the_committed_default_run_is_adams_spike():
    verdicts = diagnose(read_history_csv(REPO / "metrics/history.csv")).verdicts
    assert verdicts[0].epoch == 99 and {v.mechanism for v in verdicts} == {"adam_step"}


def test_the_doctor_check_table_is_what_the_committed_study_gives(tmp_path):
    from studies.doctor import doctor_check

    doctor_check.main(["--results", str(tmp_path)])  # from the evidence study's committed rows
    committed = REPO / "studies/doctor/results/doctor_confusion.md"
    assert (tmp_path / "doctor_confusion.md").read_text() == committed.read_text()


def test_the_fixes_quote_the_committed_rows():
    """Every count the verdict's evidence quotes is the committed studies' (evidence, replication)."""
    from conftest import REPO
    from spikelab.verdict import FIXES
    from study.report import read_records

    def count(study: str, cell: str, key: str) -> str:
        runs = [r for r in read_records(REPO / f"studies/{study}/results/{study}_runs.csv") if r["cell"] == cell]
        return f"{sum(1 for r in runs if r[key] is True)}/{len(runs)}"

    def jump(study: str, cell: str) -> str:
        import csv

        with open(REPO / f"studies/{study}/results/{study}_jumps.csv", newline="") as handle:
            (row,) = [r for r in csv.DictReader(handle) if r["cell"] == cell]
        return f"{float(row['median_jump']):.3g}x"

    adam, dead = FIXES["adam_step"][0], FIXES["dead_zone"][0]
    for study, against in (("evidence", "against Adam's "), ("replication", "against ")):
        spiked = f"{count(study, 'amsgrad', 'diverged')} against {count(study, 'baseline', 'diverged')}"
        assert spiked in adam
        assert f"{jump(study, 'amsgrad')} {against}{jump(study, 'baseline')}" in adam
    kept_up = [count(s, "plateau-bce-keras3", "plateaued") for s in ("evidence", "replication")]
    assert (
        f"stayed up in {kept_up[0]} runs against the clipped loss's {count('evidence', 'plateau', 'plateaued')}" in dead
    )
    assert f"again {kept_up[1]} against {count('replication', 'plateau', 'plateaued')}" in dead
    eps = [count(s, "plateau-eps-1e-2", "plateaued") for s in ("evidence", "replication")]
    assert f"({eps[0]}, then {eps[1]} on fresh datasets)" in dead
    amsgrad = [count(s, "plateau-amsgrad", "plateaued") for s in ("evidence", "replication")]
    assert f"AMSGrad ({amsgrad[0]} stayed up, then {amsgrad[1]} again)" in dead


def test_the_command_reads_a_csvlogger_file_of_a_training_without_validation(tmp_path, capsys):
    """Keras's CSVLogger adds a val_<key> column of NA to every row when fit has no validation data;
    the command read only the lab's empty cells as 'not measured' and failed on the first NA."""
    import keras
    import numpy as np

    from spikelab.diagnose import main

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 4)).astype("float32"), rng.integers(0, 2, 64).astype("float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer="adam", loss="binary_crossentropy")
    path = tmp_path / "log.csv"
    model.fit(x, y, epochs=3, verbose=0, callbacks=[keras.callbacks.CSVLogger(str(path))])
    assert ",NA" in path.read_text()  # what the file holds: val_loss NA on every row
    assert main([str(path)]) == 0
    assert capsys.readouterr().out.strip()
