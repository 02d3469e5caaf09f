"""The dead set followed image by image: entered, left, stayed, and the rates per interval."""

import numpy as np
import pytest

from studies.dead_dynamics.analysis import summarize, transitions


def test_transitions_count_every_image_between_accountings():
    epochs = [10, 20, 30]
    dead = np.array(
        [
            [True, True, False, False, False],
            [True, False, True, True, False],  # image 1 left, 2 and 3 entered
            [False, False, True, True, True],  # image 0 left, 4 entered
        ]
    )
    margin = np.array(
        [
            [20.0, 16.5, 1.0, -3.0, -5.0],
            [30.0, -2.0, 18.0, 17.0, 2.0],  # image 1 left to the right side (margin < 0)
            [5.0, -4.0, 18.0, 19.0, 17.0],  # image 0 left but stays wrong (margin > 0)
        ],
        dtype=np.float32,
    )
    label = np.array([1, 1, 0, 0, 1])
    first, second = transitions(epochs, dead, margin, label)
    assert (first["dead before"], first["entered"], first["left"], first["stayed"], first["dead after"]) == (
        2,
        2,
        1,
        1,
        3,
    )
    assert first["revival rate"] == pytest.approx(1 / 2) and first["entry rate"] == pytest.approx(2 / 3)
    assert first["left: now right"] == 1 and first["left: margin before (median)"] == pytest.approx(16.5)
    assert (second["entered"], second["left"], second["left: now right"]) == (1, 1, 0)
    totals = summarize("run", [first, second], [1.0] * 40)  # 2 of 5 dead: past 1% from the start
    assert (totals["entered"], totals["left"], totals["intervals where the dead set shrank"]) == (3, 2, 0)
    assert totals["left / entered"] == pytest.approx(2 / 3)


def test_the_revival_rate_is_pooled_by_the_dead_sets_size_with_an_interval():
    from studies.dead_dynamics.analysis import revival_by_size

    def interval(run, dead, left):
        return {"run": run, "dead before": dead, "left": left, "revival rate": left / dead if dead else None}

    rows = revival_by_size(
        [interval("a", 0, 0), interval("a", 4, 4), interval("b", 8, 6), interval("a", 100, 60), interval("b", 300, 150)]
    )
    small, tens, hundreds, most = rows
    assert (small["intervals"], small["runs"], small["dead images"], small["left"]) == (2, 2, 12, 10)
    assert small["revival rate (pooled)"] == pytest.approx(10 / 12)
    assert small["median of the intervals' rates"] == pytest.approx((1 + 0.75) / 2)
    assert tens["intervals"] == 0 and tens["revival rate (pooled)"] is None and tens["95% interval"] is None
    assert hundreds["revival rate (pooled)"] == pytest.approx(0.6) and hundreds["dead before"] == "100-299"
    assert most["dead before"] == "300 or more" and most["revival rate (pooled)"] == pytest.approx(0.5)
    low, high = (float(v) for v in most["95% interval"].strip("[]").split(", "))
    assert low < 0.5 < high and high - low < 0.12  # Wilson's, 150 of 300
