"""The counterfactual replay's core claim: resuming from a snapshot (weights AND optimizer state)
with nothing changed reproduces the original run's curve, epoch for epoch."""

from __future__ import annotations

import copy
import math
import re

import numpy as np
import pytest

from spikelab.data import generate, split
from spikelab.history import read_history_csv, write_history_csv
from spikelab.model import resolve_data_format
from spikelab.params import params_from_dict
from spikelab.plumbing.errors import InputError
from spikelab.snapshots import HISTORY, check_resume, load_resume, save_snapshot
from spikelab.training import train
from study.replay import continuation, pick_snapshot_epoch

COMPARED = ("loss", "val_loss", "accuracy", "val_accuracy", "grad_norm", "adam_ratio_max")


def same_rows(ours: list[dict], theirs: list[dict]) -> bool:
    """Row-for-row equality with NaN equal to NaN."""
    return [row.keys() for row in ours] == [row.keys() for row in theirs] and all(
        a[key] == b[key] or (math.isnan(a[key]) and math.isnan(b[key])) for a, b in zip(ours, theirs) for key in a
    )


@pytest.fixture
def tiny_arrays(tiny_raw):
    params = params_from_dict(tiny_raw)
    solid, broken, _ = generate(params.data)
    return split(solid, broken, params.split)


def test_unchanged_replay_reproduces_the_original_curve(tiny_raw, tiny_arrays, tmp_path):
    tiny_raw["train"].update(epochs=5, snapshot_every=1)
    data_format = resolve_data_format("auto")
    original = train(params_from_dict(tiny_raw), tiny_arrays, data_format, tmp_path / "snapshots")
    resume_epoch = 2
    replay_raw = copy.deepcopy(tiny_raw)
    replay_raw["train"].update(resume_from=str(tmp_path / "snapshots" / "epoch_00002.npz"), resume_epoch=resume_epoch)
    replayed = train(params_from_dict(replay_raw), tiny_arrays, data_format, tmp_path / "replay_snapshots")

    assert replayed.fresh_optimizer_variables == []  # Adam's m, v and step all came from the snapshot
    assert [row["epoch"] for row in replayed.history] == [1, 2, 3, 4, 5]
    # the rows before, whole (NaN where a column was not measured that epoch, e.g. lambda_max)
    assert same_rows(replayed.history[:resume_epoch], original.history[:resume_epoch])
    # rows 1..k come from the snapshot; k+1..N were trained again and must match the original
    for before, after in zip(original.history[resume_epoch:], replayed.history[resume_epoch:]):
        for key in COMPARED:
            assert after[key] == pytest.approx(before[key], rel=1e-6, abs=1e-9), (after["epoch"], key)
    # the loss moved between epochs 3 and 5, so matching rows is not matching a constant
    assert original.history[2]["loss"] != original.history[4]["loss"]
    original_weights = [w.numpy() for w in original.model.trainable_variables]
    for before, after in zip(original_weights, (w.numpy() for w in replayed.model.trainable_variables)):
        np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-7)


def test_a_changed_replay_departs_from_the_original(tiny_raw, tiny_arrays, tmp_path):
    """The same resume with epsilon raised must give a different curve (else the check above proves nothing)."""
    tiny_raw["train"].update(epochs=4, snapshot_every=2)
    data_format = resolve_data_format("auto")
    original = train(params_from_dict(tiny_raw), tiny_arrays, data_format, tmp_path / "snapshots")
    changed = copy.deepcopy(tiny_raw)
    changed["train"].update(resume_from=str(tmp_path / "snapshots" / "epoch_00002.npz"), resume_epoch=2)
    changed["optimizer"]["epsilon"] = 1.0
    replayed = train(params_from_dict(changed), tiny_arrays, data_format, None)
    assert replayed.history[3]["loss"] != pytest.approx(original.history[3]["loss"], rel=1e-6)


@pytest.mark.parametrize(
    ("divergence_epoch", "snapshot_every", "min_gap", "expected"),
    [
        (25, 10, 3, 20),
        (23, 10, 3, 20),
        (22, 10, 3, 10),
        (13, 10, 3, 10),
        (12, 10, 3, None),
        (7, 1, 3, 4),
        (40, 5, 1, 35),
    ],
)
def test_pick_snapshot_epoch(divergence_epoch, snapshot_every, min_gap, expected):
    if expected is None:
        with pytest.raises(ValueError, match="no snapshot"):
            pick_snapshot_epoch(divergence_epoch, snapshot_every, min_gap)
    else:
        assert pick_snapshot_epoch(divergence_epoch, snapshot_every, min_gap) == expected


def test_continuation_judges_only_the_epochs_after_the_resume(tiny_raw):
    rule = params_from_dict(tiny_raw).divergence  # ratio 10, min_rise 0.01
    plateau = params_from_dict(tiny_raw).plateau  # ratio 5 for 20 epochs: a 2-epoch stay is no plateau
    # before the resume the loss was BCE-sized; after it a log_cosh-sized curve spikes at epoch 6
    history = [{"epoch": e, "loss": v} for e, v in enumerate([0.7, 0.5, 0.3, 0.002, 0.001, 0.05, 0.04], start=1)]
    summary = continuation(history, resume_epoch=3, rule=rule, plateau=plateau)
    assert summary == {
        "recovered": None,  # no bar given
        "plateaued": False,
        "spiked": True,
        "spike_epoch": 6,
        "ratio": pytest.approx(50.0),
        "final_loss": 0.04,
        "min_loss": 0.001,
        "nan": False,
    }
    calm = continuation(history[:5], resume_epoch=3, rule=rule, plateau=plateau)
    assert calm["spiked"] is False and calm["spike_epoch"] is None and calm["ratio"] is None
    broken = continuation(history[:4] + [{"epoch": 5, "loss": math.nan}], resume_epoch=3, rule=rule, plateau=plateau)
    assert broken["spiked"] is True and broken["spike_epoch"] == 5 and broken["nan"] is True


def test_recovery_is_judged_against_the_originals_level_before_its_spike(tiny_raw):
    from study.replay import recovery_bar

    rule, plateau = params_from_dict(tiny_raw).divergence, params_from_dict(tiny_raw).plateau  # plateau ratio 5
    original = [{"epoch": e, "loss": v} for e, v in enumerate([0.7, 0.1, 0.02, 1.5, 1.6, 1.6], start=1)]
    bar = recovery_bar(original, spike_epoch=4, plateau=plateau)
    assert bar == pytest.approx(5 * 0.02)
    # resumed at epoch 5, from inside the plateau: one run comes down, one stays up
    down = original[:5] + [{"epoch": 6, "loss": 0.05}]
    assert continuation(down, 5, rule, plateau, bar)["recovered"] is True
    assert continuation(original, 5, rule, plateau, bar)["recovered"] is False


def test_snapshots_hold_state_only_and_the_history_once_beside_them(tiny_raw, tiny_arrays, tmp_path):
    tiny_raw["train"].update(epochs=6, snapshot_every=1)
    result = train(params_from_dict(tiny_raw), tiny_arrays, resolve_data_format("auto"), tmp_path / "snapshots")
    sizes = {(tmp_path / "snapshots" / f"epoch_{epoch:05d}.npz").stat().st_size for epoch in range(1, 7)}
    assert len(sizes) == 1  # epoch 6's snapshot is no bigger than epoch 1's: no history inside
    with np.load(tmp_path / "snapshots" / "epoch_00006.npz") as archive:
        assert "history" not in archive.files and int(archive["epoch"]) == 6
    assert same_rows(read_history_csv(tmp_path / "snapshots" / HISTORY, skip_empty=True), result.history)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "no such snapshot file"),
        ("not_npz", "not a snapshot (.npz) file"),
        ("no_epoch", "holds no 'epoch'"),
        ("other_epoch", "holds epoch 2, not train.resume_epoch = 1"),
        ("no_history", "no history.csv beside it"),
        ("short_history", "lacks rows for epochs 1..2"),
    ],
)
def test_a_resume_from_that_is_not_the_named_snapshot_is_refused(tmp_path, case, message):
    folder = tmp_path / "snapshots"
    snapshot = folder / "epoch_00002.npz"
    save_snapshot(snapshot, {"weight/w": np.zeros(2)}, 2, [{"epoch": 1, "loss": 0.7}, {"epoch": 2, "loss": 0.6}])
    epoch = 2
    if case == "missing":
        snapshot = folder / "epoch_00003.npz"
    elif case == "not_npz":
        snapshot = folder / HISTORY
    elif case == "no_epoch":
        np.savez(folder / "other.npz", x=np.zeros(1))
        snapshot = folder / "other.npz"
    elif case == "other_epoch":
        epoch = 1
    elif case == "no_history":
        (folder / HISTORY).unlink()
    elif case == "short_history":
        write_history_csv(folder / HISTORY, [{"epoch": 1, "loss": 0.7}])
    with pytest.raises(InputError, match=re.escape(message)):
        check_resume(snapshot, epoch)
    if case == "other_epoch":  # and the same snapshot under its own epoch is fine, rows 1..2 included
        assert load_resume(snapshot, 2)[1] == [{"epoch": 1, "loss": 0.7}, {"epoch": 2, "loss": 0.6}]
