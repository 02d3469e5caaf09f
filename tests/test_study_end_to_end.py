"""End to end in a throw-away repo: a tiny sweep queued as DVC experiments, the report, a replay.

5 tiny queued experiments, 2 at a time: about 2 minutes on 2 idle cores."""

from __future__ import annotations

import csv

import pytest
import yaml

from conftest import run

TINY_SWEEP = {
    "seeds": [0],
    "cells": {
        "baseline": {},
        "eps-1e-2": {"optimizer.epsilon": 1.0e-2},
        # fails in seconds at its validate stage (no such snapshot: only the run's own copy can tell,
        # so the sweep's check of every run's params lets it through): a failed row, not a dropped one
        "broken": {"train.resume_from": "models/snapshots/epoch_00001.npz", "train.resume_epoch": 1},
    },
    "quick": {"cells": ["baseline"], "seeds": [0]},
    "replay": {"min_gap": 1, "cells": ["eps-1e-2"]},
}


@pytest.mark.slow
def test_sweep_report_and_replay_in_a_lab_copy(lab_repo, tiny_raw):
    sweep = lab_repo / "studies" / "tiny" / "sweep.yaml"  # a study folder: its results go beside it
    sweep.parent.mkdir()
    sweep.write_text(yaml.safe_dump(TINY_SWEEP, sort_keys=False))
    run(["dvc", "repro", "split"], lab_repo)  # data cached once, so each experiment only trains and evaluates
    run(["git", "add", "-A"], lab_repo)
    run(["git", "commit", "-qm", "tiny sweep"], lab_repo)

    queued = run(["python", "-m", "study.sweep", "queue", "--sweep", "studies/tiny/sweep.yaml"], lab_repo, check=False)
    assert queued.returncode == 1, queued.stdout + queued.stderr  # one run failed, on purpose
    assert "1 failed: sweep-broken-s0" in queued.stdout

    run(["python", "-m", "study.report", "--sweep", "studies/tiny/sweep.yaml"], lab_repo)
    results = lab_repo / "studies" / "tiny" / "results"
    with open(results / "sweep.csv") as handle:
        table = {row["cell"]: row for row in csv.DictReader(handle)}
    assert (table["baseline"]["n_runs"], table["baseline"]["n_failed"]) == ("1", "0")
    assert (table["eps-1e-2"]["n_runs"], table["eps-1e-2"]["n_failed"]) == ("1", "0")
    assert (table["broken"]["n_runs"], table["broken"]["n_failed"]) == ("0", "1")
    assert table["baseline"]["divergence_rate"] == "0.0"
    assert float(table["baseline"]["median_val_accuracy"]) > 0
    assert (results / "sweep.png").stat().st_size > 10_000

    # resume the baseline run from its epoch-1 snapshot, unchanged and with epsilon 1e-2
    run(
        [
            "python",
            "-m",
            "study.replay",
            "--sweep",
            "studies/tiny/sweep.yaml",
            "--exp",
            "sweep-baseline-s0",
            "--epoch",
            "1",
        ],
        lab_repo,
    )
    with open(results / "replay.csv") as handle:
        replays = {row["intervention"]: row for row in csv.DictReader(handle)}
    assert list(replays) == ["original", "unchanged", "eps-1e-2"]
    assert replays["unchanged"]["state"] == "success" and replays["eps-1e-2"]["state"] == "success"
    assert float(replays["unchanged"]["max_loss_difference"]) < 1e-5
    assert float(replays["unchanged"]["final_loss"]) == pytest.approx(
        float(replays["original"]["final_loss"]), rel=1e-5
    )
    assert float(replays["eps-1e-2"]["final_loss"]) != pytest.approx(float(replays["original"]["final_loss"]), rel=1e-5)
    assert "replay-sweep-baseline-s0-e1-unchanged" in run(["dvc", "exp", "list", "--name-only"], lab_repo).stdout

    # one ad-hoc experiment named after its change: the legend of `dvc plots diff` says what differs
    made = run(["python", "-m", "tools.exp", "optimizer.epsilon=1e-3", "train.seed=3"], lab_repo)
    assert "exp: dvc exp run -n epsilon=1e-3,seed=3 --temp -S optimizer.epsilon=1e-3 -S train.seed=3" in made.stdout
    plots = run(["dvc", "plots", "diff", "--json", "epsilon=1e-3,seed=3", "sweep-baseline-s0"], lab_repo).stdout
    assert '"rev": "epsilon=1e-3,seed=3"' in plots.replace("'", '"')
