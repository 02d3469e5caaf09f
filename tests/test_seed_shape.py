"""The seed's shape rule (studies/seed_shape/analysis.py), on the examples its docstring describes."""

from __future__ import annotations

import math

from studies.seed_shape.analysis import shape_of

FALL = [1.0, 0.5, 0.2, 0.1, 0.1]  # lowest 0.1 before any jump


def test_a_sudden_jump_that_stays_up_is_the_shape():
    shape = shape_of(FALL + [2.0] * 21)
    # epoch 6 is the first at 10x the lowest (0.1); epoch 5 was within 2x of it: a climb of 1 epoch;
    # 20 epochs follow, all >= 5 x 0.1
    assert (shape.jump_epoch, shape.climb_epochs, shape.epochs_after) == (6, 1, 20)
    assert shape.sudden and shape.stays_up and shape.seed_shape


def test_a_climb_over_four_epochs_is_not_sudden():
    # the last epoch within 2x of 0.1 is epoch 6 (0.15); 10x comes at epoch 10: 4 epochs later
    shape = shape_of(FALL + [0.15, 0.25, 0.4, 0.6, 1.2] + [2.0] * 30)
    assert (shape.jump_epoch, shape.climb_epochs) == (10, 4)
    assert not shape.sudden and shape.stays_up and not shape.seed_shape


def test_a_spike_that_recovers_or_ends_too_soon_does_not_stay_up():
    recovers = shape_of(FALL + [2.0] * 5 + [0.3] + [2.0] * 20)
    assert recovers.sudden and not recovers.stays_up
    short = shape_of(FALL + [2.0] * 20)  # 19 epochs after the jump
    assert short.epochs_after == 19 and not short.stays_up


def test_a_non_finite_loss_counts_as_up_and_no_jump_is_no_shape():
    assert shape_of(FALL + [math.nan] * 25).seed_shape
    flat = shape_of(FALL + [0.12] * 30)
    assert flat.jump_epoch is None and not flat.seed_shape


def test_three_epochs_from_near_the_minimum_is_still_sudden():
    # near (0.15 <= 2 x 0.1) at epoch 6, 10x at epoch 9: 3 epochs, the rule's limit
    shape = shape_of(FALL + [0.15, 0.5, 0.9] + [2.0] * 25)
    assert (shape.jump_epoch, shape.climb_epochs) == (9, 3)
    assert shape.sudden


def test_a_study_still_under_way_is_left_out_of_the_search_until_its_runs_are_in(tmp_path):
    """The search reads every committed study; one whose runs are still training (missing or
    stopped rows) would change its counts with every cell that lands."""
    import shutil

    from studies.seed_shape.analysis import cell_rows
    from study.sweep import STUDIES

    sweep = STUDIES / "seed_shape" / "sweep.yaml"
    source = STUDIES / "seed_shape" / "results"
    shutil.copy(source / "seed-shape_histories.csv.gz", tmp_path)
    runs = (source / "seed-shape_runs.csv").read_text()
    (tmp_path / "seed-shape_runs.csv").write_text(runs)
    finished = cell_rows("seed-shape", sweep, tmp_path)
    assert finished and sum(row["runs"] for row in finished) == 5
    header, first, *rest = runs.splitlines(keepends=True)
    (tmp_path / "seed-shape_runs.csv").write_text(header + first.replace(",success,", ",stopped,", 1) + "".join(rest))
    assert cell_rows("seed-shape", sweep, tmp_path) == []
