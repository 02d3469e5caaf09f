"""The study's machinery: sweep file -> -S overrides, exp show JSON -> run records -> the table."""

from __future__ import annotations

import csv
import gzip
import math
import os
import subprocess
from pathlib import Path

import pytest

from spikelab.params import flatten, params_from_dict
from spikelab.plumbing.errors import one_line
from study.dvc_calls import parse_exp_show, parse_queue_status, stuck_error
from study.report import aggregate, representative, run_record, write_report
from study.sweep import SweepError, expand, load_sweep
from study.tables import markdown_table

REPO_SWEEP = Path(__file__).resolve().parents[1] / "studies" / "sweep" / "sweep.yaml"

SWEEP = {
    "seeds": [0, 1],
    "cells": {
        "baseline": {},
        "eps-1e-8": {"optimizer.epsilon": 1.0e-8},
        "eps-1e-7": {"optimizer.epsilon": 1.0e-7},  # the tiny default: no runs of its own
        "sgd": {"optimizer.name": "sgd", "optimizer.learning_rate": 0.01},
        "clip": {"optimizer.clipnorm": 1.0, "optimizer.amsgrad": True},
    },
    "quick": {"cells": ["baseline", "sgd"], "seeds": [3]},
}


@pytest.fixture
def defaults(tiny_raw):
    return flatten(params_from_dict(tiny_raw))


def test_sweep_expands_to_named_runs_with_their_overrides(defaults):
    cells, runs = expand(SWEEP, defaults)
    assert [(cell.name, cell.same_as) for cell in cells] == [
        ("baseline", None),
        ("eps-1e-8", None),
        ("eps-1e-7", "baseline"),
        ("sgd", None),
        ("clip", None),
    ]
    assert [(run.name, run.dvc_args()) for run in runs] == [
        # seed-major: every cell's first seed before any cell's second
        ("sweep-baseline-s0", ["-S", "train.seed=0"]),
        ("sweep-eps-1e-8-s0", ["-S", "optimizer.epsilon=1e-08", "-S", "train.seed=0"]),
        ("sweep-sgd-s0", ["-S", "optimizer.name=sgd", "-S", "optimizer.learning_rate=0.01", "-S", "train.seed=0"]),
        ("sweep-clip-s0", ["-S", "optimizer.clipnorm=1.0", "-S", "optimizer.amsgrad=true", "-S", "train.seed=0"]),
        ("sweep-baseline-s1", ["-S", "train.seed=1"]),
        ("sweep-eps-1e-8-s1", ["-S", "optimizer.epsilon=1e-08", "-S", "train.seed=1"]),
        ("sweep-sgd-s1", ["-S", "optimizer.name=sgd", "-S", "optimizer.learning_rate=0.01", "-S", "train.seed=1"]),
        ("sweep-clip-s1", ["-S", "optimizer.clipnorm=1.0", "-S", "optimizer.amsgrad=true", "-S", "train.seed=1"]),
    ]


def test_quick_subset_has_its_own_names_and_seeds(defaults):
    cells, runs = expand(SWEEP, defaults, quick=True)
    assert [cell.name for cell in cells] == ["baseline", "sgd"]
    assert [run.name for run in runs] == ["quick-baseline-s3", "quick-sgd-s3"]
    assert runs[1].overrides == ("optimizer.name=sgd", "optimizer.learning_rate=0.01", "train.seed=3")


def test_a_data_seed_offset_gives_each_seed_its_own_dataset_shared_by_its_cells(defaults):
    _, runs = expand({**SWEEP, "data_seed_offset": 1000}, defaults)
    assert runs[0].overrides == ("train.seed=0", "data.seed=1000", "split.seed=1000")
    assert runs[-1].overrides[-3:] == ("train.seed=1", "data.seed=1001", "split.seed=1001")
    assert {run.overrides[-1] for run in runs if run.seed == 1} == {"split.seed=1001"}


def test_every_row_names_its_data_and_says_when_its_code_revision_was_never_kept(defaults):
    """Issue 35, correction 3: rows made before run.json kept a revision or the seeds had them empty;
    the seeds the plan queued fill in, a missing revision reads `unrecorded`, recorded ones stay."""
    from study.report import UNRECORDED, with_provenance

    _, runs = expand({**SWEEP, "data_seed_offset": 1000}, defaults)
    old = {"name": runs[-1].name, "state": "success", "rev": None, "data_seed": None, "split_seed": None}
    kept = {"name": runs[0].name, "state": "success", "rev": "abc123", "data_seed": 7, "split_seed": 8}
    unfinished = {"name": runs[1].name, "state": "failed", "rev": None}
    filled = with_provenance([old, kept, unfinished], runs)
    assert (filled[0]["rev"], filled[0]["data_seed"], filled[0]["split_seed"]) == (UNRECORDED, 1001, 1001)
    assert (filled[1]["rev"], filled[1]["data_seed"], filled[1]["split_seed"]) == ("abc123", 7, 8)
    assert filled[2]["rev"] is None and filled[2]["data_seed"] == 1000  # no revision to miss: it never finished
    assert old["rev"] is None  # the caller's rows are not changed in place
    _, plain = expand(SWEEP, defaults)  # params.yaml's data of its day: not in the plan, stays empty
    assert with_provenance([{"name": plain[0].name, "state": "success", "rev": "r"}], plain)[0]["data_seed"] is None
    dvc = run_record(plain[0], {"state": "failed", "rev": "r", "params": {"data.seed": 3, "split.seed": 4}})
    assert (dvc["data_seed"], dvc["split_seed"]) == (3, 4)  # a DVC experiment's own params


def test_the_replication_is_the_preregistered_design(defaults):
    """studies/replication/PREREGISTRATION.md: the 12 cells that carry a verdict, train seeds 20-39, data 1000 + seed."""
    sweep = load_sweep(REPO_SWEEP.parents[1] / "replication" / "sweep.yaml")
    cells, runs = expand(sweep, defaults)
    evidence, _ = expand(load_sweep(REPO_SWEEP.parents[1] / "evidence" / "sweep.yaml"), defaults)
    same = {cell.name: cell.overrides for cell in evidence if cell.name != "plateau-log-cosh"}
    assert {cell.name: cell.overrides for cell in cells} == same
    assert sorted({run.seed for run in runs}) == list(range(20, 40)) and len(runs) == 240
    assert all(f"data.seed={1000 + run.seed}" in run.overrides for run in runs)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s["cells"].update({"bad": {"optimizer.epsilom": 1.0}}), "unknown params key 'optimizer.epsilom'"),
        (lambda s: s["cells"].update({"Bad.Name": {}}), "cell name 'Bad.Name'"),
        (lambda s: s["cells"].update({"seeded": {"train.seed": 3}}), "seeds come from 'seeds'"),
        (lambda s: s.update(seeds=[]), "seeds must be a non-empty list"),
        (lambda s: s.update(quick={"cells": ["nope"], "seeds": [0]}), "quick.cells"),
        (lambda s: s.update(extra=1), "unknown keys"),
        (lambda s: s.update(compare_with={"sgd": "nope"}), "compare_with: unknown reference 'nope'"),
        (lambda s: s.update(compare_with={"sgd": "sgd"}), "'sgd' cannot be compared with itself"),
        (lambda s: s.update(compare_with=["sgd"]), "'compare_with' must be a mapping"),
        (lambda s: s.update(no_spike_expected=["nope"]), "no_spike_expected must list some of the cells"),
        (lambda s: s.update(data_seed_offset=0), "data_seed_offset must be an integer >= 1"),
        (
            lambda s: s.update(data_seed_offset=10, cells={"own": {"data.seed": 3}}),
            "cells.own sets data.seed; with data_seed_offset it comes from the seed",
        ),
    ],
)
def test_bad_sweep_files_are_rejected_naming_the_key(defaults, change, message):
    sweep = {**SWEEP, "cells": dict(SWEEP["cells"])}
    change(sweep)
    with pytest.raises(SweepError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        expand(sweep, defaults, quick="quick" in message)


def test_the_repo_sweep_covers_the_issue(defaults):
    """studies/sweep/sweep.yaml: eps {1e-8, 1e-7, 1e-3, 1e-2}, both BCE forms, log_cosh, SGD, AMSGrad, clipping, >= 5 seeds."""
    sweep = load_sweep(REPO_SWEEP)
    cells, runs = expand(sweep, defaults)
    overrides = [cell.overrides for cell in cells]
    for epsilon in (1e-8, 1e-7, 1e-3, 1e-2):
        assert {"optimizer.epsilon": epsilon} in overrides
    assert {"loss.name": "log_cosh"} in overrides
    assert {"loss.name": "binary_crossentropy", "loss.form": "keras3"} in overrides
    assert {"loss.name": "binary_crossentropy", "loss.form": "keras2_clipped"} in overrides
    assert any(o.get("optimizer.name") == "sgd" for o in overrides)
    assert {"optimizer.amsgrad": True} in overrides
    assert any(o.get("optimizer.clipnorm") for o in overrides)
    assert len(sweep["seeds"]) >= 5
    quick_cells, quick_runs = expand(sweep, defaults, quick=True)
    assert 4 <= len(quick_runs) <= 8  # 2-3 min each, 2 at a time: under 15 minutes
    assert set(sweep["replay"]["cells"]) <= {cell.name for cell in cells}


# ---- the report on fabricated experiments ----------------------------------------------------------


def _train(diverged, epoch, ratio, final, nan=False):
    return {
        "diverged": diverged,
        "divergence_epoch": epoch,
        "spike_ratio": ratio,
        "min_loss": 0.001,
        "jump_ratio": ratio if diverged else None,
        "final_loss": final,
        "nan": nan,
        "epochs_run": 40,
    }


def _experiment(name, rev, state="success", train=None, accuracy=0.9, error=None, timestamp="2026-01-01T00:00:00"):
    metrics = {}
    if train is not None:
        metrics["metrics/train.json"] = {"data": train}
        metrics["metrics/evaluate.json"] = {"data": {"last": {"accuracy": accuracy}, "best": {"accuracy": 0.99}}}
    return {
        "name": name,
        "executor": {"state": state},
        "revs": [
            {
                "rev": rev,
                "name": name,
                "error": error,
                "data": {
                    "rev": rev,
                    "timestamp": timestamp,
                    "metrics": metrics,
                    "params": {"params.yaml": {"data": {"train": {"seed": 0}}}},
                },
            }
        ],
    }


# what `dvc exp show --json` printed, in DVC 3.67's shape (one commit, its experiments)
EXP_SHOW = [
    {"rev": "workspace", "name": None, "experiments": None},
    {
        "rev": "c0ffee",
        "name": "main",
        "experiments": [
            _experiment("sweep-baseline-s0", "a0", train=_train(True, 30, 120.0, 8.0), accuracy=0.5),
            _experiment("sweep-baseline-s1", "a1", train=_train(True, 20, 80.0, None, nan=True), accuracy=0.5),
            _experiment("sweep-eps-1e-8-s0", "b0", train=_train(False, None, 2.0, 0.002), accuracy=0.97),
            # failed: DVC shows the metrics of the commit it started from; they must not count
            _experiment(
                "sweep-eps-1e-8-s1",
                "b1",
                state="failed",
                train=_train(True, 5, 999.0, 16.0),
                error={"msg": "Experiment run failed", "type": ""},
            ),
            _experiment("sweep-sgd-s0", "c0", train=_train(True, 4, 10.0, 0.69), accuracy=0.5),
            _experiment("sweep-sgd-s1", "c1", state="queued"),
            # an older run of the same name, from an earlier commit's sweep: the newer one wins
            _experiment("sweep-sgd-s0", "old", train=_train(False, None, 1.0, 0.1), timestamp="2025-01-01T00:00:00"),
        ],
    },
]


@pytest.fixture
def records(defaults):
    cells, runs = expand(SWEEP, defaults)
    experiments = {e["name"]: e for e in parse_exp_show(EXP_SHOW)}
    return cells, [run_record(run, experiments.get(run.name)) for run in runs]


def test_run_records_keep_failed_nan_queued_and_missing_runs(records):
    _, rows = records
    by_name = {row["name"]: row for row in rows}
    assert len(rows) == 8
    assert by_name["sweep-baseline-s1"]["state"] == "success" and by_name["sweep-baseline-s1"]["nan"] is True
    assert by_name["sweep-baseline-s1"]["final_loss"] is None
    failed = by_name["sweep-eps-1e-8-s1"]
    assert failed["state"] == "failed" and failed["diverged"] is None and failed["spike_ratio"] is None
    assert by_name["sweep-sgd-s0"]["rev"] == "c0" and by_name["sweep-sgd-s0"]["divergence_epoch"] == 4
    assert by_name["sweep-sgd-s1"]["state"] == "queued"
    assert by_name["sweep-clip-s0"]["state"] == "missing" and by_name["sweep-clip-s1"]["state"] == "missing"


def test_aggregate_makes_one_row_per_intervention(records):
    cells, rows = records
    table = {row["cell"]: row for row in aggregate(rows, cells)}
    assert list(table) == ["baseline", "eps-1e-8", "eps-1e-7 (= baseline)", "sgd", "clip"]
    baseline = table["baseline"]
    assert (baseline["n_runs"], baseline["n_failed"], baseline["n_diverged"], baseline["n_nan"]) == (2, 0, 2, 1)
    assert baseline["divergence_rate"] == 1.0
    assert baseline["median_spike_epoch"] == 25.0  # median of 30 and 20 (the NaN run's)
    assert baseline["median_spike_ratio"] == 100.0
    assert baseline["median_final_loss"] == 8.0  # the NaN run's null final loss is not a number to average
    assert baseline["median_val_accuracy"] == 0.5
    assert {k: v for k, v in table["eps-1e-7 (= baseline)"].items() if k not in ("cell", "overrides")} == {
        k: v for k, v in baseline.items() if k not in ("cell", "overrides")
    }
    eps = table["eps-1e-8"]
    assert (eps["n_runs"], eps["n_failed"], eps["divergence_rate"], eps["median_spike_epoch"]) == (1, 1, 0.0, None)
    assert eps["median_spike_ratio"] == 2.0  # not 999: the failed run's inherited metrics are ignored
    assert (table["sgd"]["n_runs"], table["sgd"]["n_failed"], table["sgd"]["median_spike_epoch"]) == (1, 1, 4.0)
    clip = table["clip"]
    assert (clip["n_runs"], clip["n_failed"], clip["divergence_rate"], clip["median_final_loss"]) == (0, 2, None, None)


def test_a_cell_is_tested_against_its_compare_with_reference(defaults):
    """A plateau intervention's rates are tested against the plateau configuration, not the baseline."""
    cells, runs = expand({**SWEEP, "compare_with": {"clip": "eps-1e-8"}}, defaults)
    done = {"state": "success", "nan": False, "plateaued": False}
    outcomes = {"baseline": [True] * 2, "eps-1e-8": [False] * 2, "sgd": [True, False], "clip": [False, False]}
    records = [
        {"cell": run.cell, "seed": run.seed, **done, "diverged": outcomes[run.cell][run.seed], "divergence_epoch": 9}
        for run in runs
    ]
    for record in records:
        record.update({key: None for key in ("jump_ratio", "spike_ratio", "final_loss", "val_accuracy")})
        record["final_dead_fraction"] = None
    table = {row["cell"]: row for row in aggregate(records, cells)}
    assert table["clip"]["reference"] == "eps-1e-8" and table["clip"]["divergence_p"] == 1.0  # 0/2 vs 0/2
    assert table["sgd"]["reference"] == "baseline" and table["sgd"]["divergence_p"] == 1.0  # 1/2 vs 2/2
    assert table["eps-1e-8"]["divergence_p"] == pytest.approx(1 / 3)  # 0/2 vs the baseline's 2/2
    assert table["baseline"]["reference"] is None and table["baseline"]["divergence_p"] is None


def test_markdown_and_csv_tables(records, tmp_path, monkeypatch):
    cells, rows = records
    monkeypatch.setattr(
        "study.report.history_of", lambda rev: [{"epoch": 1.0, "loss": 0.7}, {"epoch": 2.0, "loss": math.nan}]
    )
    write_report(rows, cells, "sweep", tmp_path)
    text = (tmp_path / "sweep.md").read_text()
    # rates as count/runs = rate [95% Wilson interval]; Fisher's p against the baseline (none on its own runs)
    assert (
        "| baseline | (params.yaml) | — | 2 | 0 | 2/2 = 1.00 [0.34, 1.00] | — | — | — | 1 | 25 | 100 | 100 | 8 | 0.5 |"
        in text
    )
    # Holm over the column's two tests (eps-1e-8: p 1/3, sgd: p 1): 2 x 1/3
    assert (
        "| eps-1e-8 | optimizer.epsilon=1e-08 | baseline | 1 | 1 | 0/1 = 0.00 [0.00, 0.79] | 0.333 | 0.667 |"
        " no detectable difference | 0 |" in text
    )
    assert "| eps-1e-7 (= baseline) | optimizer.epsilon=1e-07 | — | 2 | 0 | 2/2 = 1.00 [0.34, 1.00] | — |" in text
    assert (
        "| clip | optimizer.clipnorm=1.0 optimizer.amsgrad=true | baseline | 0 | 2 | — | — | — | — | 0 | — | — | — | — | — |"
        in text
    )
    assert "8 planned runs: 1 failed, 2 missing, 1 queued, 4 success" in text
    with open(tmp_path / "sweep.csv") as handle:
        table = list(csv.DictReader(handle))
    assert [row["cell"] for row in table][:3] == ["baseline", "eps-1e-8", "eps-1e-7 (= baseline)"]
    assert table[1]["n_failed"] == "1" and table[4]["divergence_rate"] == ""
    assert float(table[1]["divergence_rate_high"]) == pytest.approx(0.7935, abs=1e-4)
    assert float(table[1]["divergence_p"]) == pytest.approx(1 / 3)
    with open(tmp_path / "sweep_runs.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 8
    assert (tmp_path / "sweep.png").stat().st_size > 10_000
    with gzip.open(tmp_path / "sweep_histories.csv.gz", "rt") as handle:  # every finished run's curve, kept
        kept = list(csv.DictReader(handle))
    assert len(kept) == 2 * 4 and kept[0]["run"] and kept[0]["epoch"] == "1.0" and kept[0]["loss"] == "0.7"


def test_representative_is_the_median_run():
    runs = [{"seed": s, "state": "success", "spike_ratio": r} for s, r in ((0, 50.0), (1, 2.0), (2, 9.0))]
    runs.append({"seed": 3, "state": "failed", "spike_ratio": None})
    assert representative(runs)["seed"] == 2
    assert representative([{"seed": 0, "state": "failed", "spike_ratio": None}]) is None


def test_markdown_table_shows_missing_values_as_dashes():
    assert (
        markdown_table(
            [{"cell": "x", "n_runs": 0, "divergence_rate": None}],
            (("cell", "c"), ("n_runs", "n"), ("divergence_rate", "r")),
        )
        == "| c | n | r |\n|---|---|---|\n| x | 0 | — |\n"
    )


def test_a_sweep_file_prefix_names_its_runs_and_results(defaults):
    _, runs = expand({**SWEEP, "prefix": "plateau"}, defaults)
    assert runs[0].name == "plateau-baseline-s0"
    with pytest.raises(SweepError, match="prefix 'Bad.Prefix'"):
        expand({**SWEEP, "prefix": "Bad.Prefix"}, defaults)


def test_compare_row_shows_only_the_changed_params(defaults):
    from tools.compare import compare_row

    params = {**defaults, "optimizer.epsilon": 0.001, "train.seed": 0}
    train = {"diverged": True, "divergence_epoch": 84, "jump_ratio": 104.0, "plateaued": False, "final_loss": 0.001}
    row = compare_row("exp-1", params, train, {"last": {"accuracy": 0.3}}, defaults)
    assert row == {
        "name": "exp-1",
        "changed": "optimizer.epsilon=0.001",
        "diverged": True,
        "divergence_epoch": 84,
        "jump_ratio": 104.0,
        "plateaued": False,
        "final_loss": 0.001,
        **{key: None for key in ("min_epoch", "min_loss", "peak_loss", "plateau_start_epoch", "final_val_loss")},
        "spiked_at": 84,
        "val_accuracy": 0.3,
        "best_val_accuracy": None,
    }
    assert compare_row("ws", defaults, {}, {}, defaults)["changed"] == "(none)"


def test_a_report_is_recomputed_from_its_committed_files_alone(records, tmp_path, monkeypatch):
    """make report from the repository: _runs.csv and _histories.csv.gz give back the same records,
    histories, tables and figure, without DVC's experiments (issue 11)."""
    from study.report import read_histories, read_records

    cells, rows = records
    history = [{"epoch": 1, "loss": 0.7, "val_loss": 0.8}, {"epoch": 2, "loss": math.nan, "val_loss": 0.9}]
    monkeypatch.setattr("study.report.history_of", lambda rev: history)
    first = write_report(rows, cells, "sweep", tmp_path)
    table = (tmp_path / "sweep.md").read_text()

    again = read_records(tmp_path / "sweep_runs.csv")
    histories = read_histories(tmp_path / "sweep_histories.csv.gz")
    assert [{k: r[k] for k in again[0]} for r in rows] == again
    assert set(histories) == {r["name"] for r in rows if r["state"] == "success"}
    assert histories["sweep-baseline-s0"][0] == history[0] and math.isnan(histories["sweep-baseline-s0"][1]["loss"])
    (tmp_path / "sweep.md").unlink()
    monkeypatch.setattr("study.report.history_of", None)  # git is not asked again
    second = write_report(again, cells, "sweep", tmp_path, histories)
    assert (tmp_path / "sweep.md").read_text() == table
    assert [row["divergence_rate_text"] for row in second] == [row["divergence_rate_text"] for row in first]


# ---- dead queue workers (issue 15, item 4) ------------------------------------------------------------

DEAD_QUEUE = """Task     Name     Created    Status
a4e1aa6  longone  04:43 PM   Running
b5f2bb7  later    04:44 PM   Queued
c6a3cc8  done     04:40 PM   Success

Worker status: 0 active, 0 idle
"""


def test_queue_status_gives_states_and_live_workers():
    states, workers = parse_queue_status(DEAD_QUEUE)
    assert states == {"longone": "Running", "later": "Queued", "done": "Success"} and workers == 0
    assert parse_queue_status(DEAD_QUEUE.replace("0 active, 0 idle", "2 active, 1 idle"))[1] == 2
    assert parse_queue_status("Task  Name  Created  Status\n")[1] is None


def test_the_error_for_a_dead_queue_names_the_stuck_runs_and_the_repairs():
    states, _ = parse_queue_status(DEAD_QUEUE)
    message = one_line(stuck_error(["longone", "later"], states))
    assert "no worker is alive" in message and "longone Running, later Queued" in message
    assert "`dvc queue kill longone`" in message and "`dvc queue start -j N`" in message


def test_a_queue_whose_workers_keep_dying_ends_in_one_line_after_the_revivals(monkeypatch):
    """The wait never hangs: revived MAX_REVIVALS times and still no worker -> QueueError."""
    from study import dvc_calls

    revived, commands = [], []
    monkeypatch.setattr(dvc_calls, "experiments_of", lambda all_commits=True: [])
    monkeypatch.setattr(dvc_calls, "dvc", lambda *args, check=True: commands.append(args))
    monkeypatch.setattr(dvc_calls, "start_workers", lambda jobs: None)
    monkeypatch.setattr(dvc_calls, "queue_states", lambda: parse_queue_status(DEAD_QUEUE))
    monkeypatch.setattr(dvc_calls, "orphaned_trainings", lambda names: {})
    monkeypatch.setattr(dvc_calls, "revive_dead_queue", lambda pending, *args: revived.append(pending) or {})
    with pytest.raises(dvc_calls.QueueError, match="no worker is alive"):
        dvc_calls.queue_and_wait([("longone", []), ("later", [])], jobs=1, poll_s=0)
    assert len(revived) == dvc_calls.MAX_REVIVALS
    assert [args[:3] for args in commands] == [("exp", "run", "--queue")] * 2


def test_a_queue_that_lost_one_of_its_workers_gets_it_back(monkeypatch, capsys):
    """Two workers asked, one alive while runs wait: the missing one is started again, said in one line."""
    from study import dvc_calls

    one_alive = DEAD_QUEUE.replace("0 active, 0 idle", "1 active, 0 idle")
    finished = one_alive.replace("Running", "Success").replace("Queued", "Success")
    # one poll short is a worker still starting; DEAD_AFTER_POLLS in a row is a dead one
    polls = iter([parse_queue_status(one_alive)] * dvc_calls.DEAD_AFTER_POLLS + [parse_queue_status(finished)])
    started = []
    monkeypatch.setattr(dvc_calls, "experiments_of", lambda all_commits=True: [])
    monkeypatch.setattr(dvc_calls, "dvc", lambda *args, check=True: None)
    monkeypatch.setattr(dvc_calls, "start_workers", lambda jobs: started.append(jobs))
    monkeypatch.setattr(dvc_calls, "queue_states", lambda: next(polls))
    final = dvc_calls.queue_and_wait([("longone", []), ("later", [])], jobs=2, poll_s=0)
    assert final == {"longone": "success", "later": "success"}
    assert started == [2, 2]  # the first start, then the revival of the missing worker
    assert "1 of 2 queue workers alive; started the missing ones" in capsys.readouterr().out


FAKE_DVC = """#!/bin/sh
# fails the first $FAILS calls the way DVC does when it reads a queue message file mid-write
count=$(cat "$COUNTER" 2>/dev/null || echo 0); echo $((count + 1)) > "$COUNTER"
if [ "$count" -lt "$FAILS" ]; then echo "ERROR: unexpected error - $MESSAGE" >&2; exit 255; fi
echo "Worker status: 2 active, 0 idle"
"""


@pytest.fixture
def fake_dvc(tmp_path, monkeypatch):
    """A `dvc` first on PATH that fails $FAILS times with $MESSAGE, then prints a queue status."""
    script = tmp_path / "bin" / "dvc"
    script.parent.mkdir()
    script.write_text(FAKE_DVC)
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("COUNTER", str(tmp_path / "calls"))
    monkeypatch.setattr("study.dvc_calls.RETRY_PAUSE_S", 0.0)

    def calls() -> int:
        return int((tmp_path / "calls").read_text())

    return calls


def test_a_queue_status_that_meets_the_broker_race_is_read_again(fake_dvc, monkeypatch):
    from study import dvc_calls

    monkeypatch.setenv("FAILS", "2")
    monkeypatch.setenv("MESSAGE", "Expecting value: line 1 column 1 (char 0)")
    assert dvc_calls.queue_states() == ({}, 2)
    assert fake_dvc() == 3


def test_a_queue_status_failing_otherwise_or_for_good_is_not_hidden(fake_dvc, monkeypatch):
    from study import dvc_calls

    monkeypatch.setenv("FAILS", "99")
    monkeypatch.setenv("MESSAGE", "not a DVC repository")
    with pytest.raises(RuntimeError, match="not a DVC repository"):
        dvc_calls.queue_states()
    assert fake_dvc() == 1  # another error is not retried
    monkeypatch.setenv("MESSAGE", "Expecting value: line 1 column 1 (char 0)")
    with pytest.raises(RuntimeError, match="Expecting value"):
        dvc_calls.queue_states()
    assert fake_dvc() == 2 + dvc_calls.READ_RETRIES  # retried, then said


# ---- make exp: an experiment named after its changes (issue 14) ---------------------------------------


def test_an_experiment_is_named_after_its_changes():
    from tools.exp import experiment_name

    assert experiment_name(["optimizer.epsilon=1e-3", "train.seed=2"]) == "epsilon=1e-3,seed=2"
    # a `name` key is named by its section: short, and what was named stays said
    assert experiment_name(["loss.name=log_cosh", "optimizer.name=sgd"]) == "loss=log_cosh,optimizer=sgd"
    assert experiment_name(["loss.name=log_cosh", "train.seed=2"]) == "loss=log_cosh,seed=2"
    # two sections share a key: both keep their section
    assert experiment_name(["data.seed=1", "train.seed=2"]) == "data.seed=1,train.seed=2"


@pytest.mark.parametrize(
    "change, message",
    [
        ("optimizer.epsilon", "a change is section.key=value"),
        ("optimizer.epsilonn=1e-3", "params.yaml has no key optimizer.epsilonn"),
        ("train.epochs=-1", "train.epochs"),
        ("optimizer.learning_rate=[1", "not valid YAML"),
    ],
)
def test_a_bad_change_is_refused_in_one_line_before_dvc_runs(change, message):
    from spikelab.params import read_yaml
    from tools.exp import ExpError, checked_changes

    with pytest.raises((ExpError, ValueError)) as raised:
        checked_changes([change], read_yaml("params.yaml", "params"))
    assert message in one_line(raised.value)


def test_runs_from_before_the_plateau_rule_leave_the_stays_up_rate_unknown_not_zero():
    from study.report import summarize

    run = {"state": "success", "diverged": True, "nan": False, "divergence_epoch": 9, "jump_ratio": 20.0}
    run |= {"spike_ratio": 20.0, "final_loss": 0.1, "val_accuracy": 0.5, "final_dead_fraction": None}
    assert summarize([run | {"plateaued": None}])["plateau_rate"] is None
    assert summarize([run | {"plateaued": None}])["n_plateaued"] is None
    assert summarize([run | {"plateaued": False}])["plateau_rate"] == 0.0


def test_a_report_without_any_of_its_experiments_refuses_instead_of_overwriting_the_results(tmp_path, monkeypatch):
    from study import report

    monkeypatch.setattr(report, "experiments_by_name", lambda: {})
    with pytest.raises(report.UserError, match=r"none of the \d+ runs of studies/sweep/sweep.yaml is a DVC experiment"):
        report.main(["--results", str(tmp_path)])
    assert list(tmp_path.iterdir()) == []


def test_a_run_on_another_commit_counts_only_while_what_the_stages_run_is_unchanged(tmp_path, monkeypatch):
    import subprocess

    from study.dvc_calls import same_training_inputs, stage_imports

    def git(*args):
        return subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True, text=True).stdout.strip()

    def commit(files: dict, message: str) -> str:
        for path, text in files.items():
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / path).write_text(text)
        git("add", ".")
        git("commit", "-qm", message)
        stage_imports.cache_clear()  # HEAD moved
        return git("rev-parse", "HEAD")

    git("init", "-q")
    git("config", "user.email", "t@example.com")
    git("config", "user.name", "t")
    study_commit = commit(
        {
            "stages/train.py": "from spikelab.training import train\n",
            "spikelab/__init__.py": "",
            "spikelab/training.py": "from spikelab import model\n",  # reached through another module
            "spikelab/model.py": "A = 1\n",
            "spikelab/unused.py": "from spikelab import model\n",  # a module no stage imports
            "params.yaml": "a: 1\n",
        },
        "study commit",
    )
    monkeypatch.chdir(tmp_path)
    assert stage_imports("HEAD") == {"spikelab/training.py", "spikelab/model.py"}
    commit({"README.md": "results\n", "spikelab/unused.py": "B = 2\n"}, "results, and an unused module edited")
    assert same_training_inputs(study_commit)  # results and tools keep the runs
    commit({"spikelab/model.py": "A = 2\n"}, "a module the stages reach")
    assert not same_training_inputs(study_commit)
    git("reset", "-q", "--hard", "HEAD~1")
    stage_imports.cache_clear()
    commit({"params.yaml": "a: 2\n"}, "params")
    assert not same_training_inputs(study_commit)


def test_queue_workers_get_an_absolute_path(tmp_path, monkeypatch):
    """The workers run in a temporary copy of the repo: a relative PATH entry would lose the venv."""
    from study import dvc_calls

    monkeypatch.chdir(tmp_path)
    seen = {}
    monkeypatch.setenv("PATH", f".venv/bin{os.pathsep}/usr/bin")
    monkeypatch.setattr(
        dvc_calls.subprocess, "run", lambda cmd, **kw: seen.update(kw) or subprocess.CompletedProcess(cmd, 0)
    )
    dvc_calls.start_workers(2)
    assert seen["env"]["PATH"] == f"{tmp_path}/.venv/bin{os.pathsep}/usr/bin"


def test_kaplan_meier_panels_follow_compare_with():
    """One survival panel per reference: the plateau cells apart from the default's, coloured by intervention."""
    from study.figures import comparison_groups, group_colour

    rows = [
        {"cell": "baseline", "reference": None},
        {"cell": "amsgrad", "reference": "baseline"},
        {"cell": "plateau", "reference": "baseline"},
        {"cell": "plateau-amsgrad", "reference": "plateau"},
    ]
    groups = comparison_groups(rows)
    assert groups == {"baseline": ["baseline", "amsgrad"], "plateau": ["plateau", "plateau-amsgrad"]}
    assert group_colour("plateau-amsgrad", "plateau", "baseline") == group_colour("amsgrad", "baseline", "baseline")
    assert group_colour("plateau", "plateau", "baseline") == group_colour("baseline", "baseline", "baseline")
    assert comparison_groups([{**row, "reference": None} for row in rows]) == {"baseline": [r["cell"] for r in rows]}


def test_stop_after_spike_is_checked_and_refused_by_the_dvc_path(tmp_path):
    from study.sweep import SweepError, main, stop_after_spike

    assert stop_after_spike({"stop_after_spike": 40}) == 40
    assert stop_after_spike({}) is None
    for bad in (0, -3, 2.5, True, "40"):
        with pytest.raises(SweepError, match="stop_after_spike must be an integer >= 1"):
            stop_after_spike({"stop_after_spike": bad})
    sweep = tmp_path / "onsets.yaml"
    sweep.write_text("seeds: [0]\nstop_after_spike: 40\ncells:\n  baseline: {}\n")
    with pytest.raises(SweepError, match="needs the population engine"):
        main(["queue", "--sweep", str(sweep)])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("seeds: [0]\ncells:\n  baseline: {optimizer.epsilom: 1.0}\n", "cells.baseline: unknown params key"),
        ("seeds: []\ncells:\n  baseline: {}\n", "seeds must be a non-empty list"),
        ("prefix: Bad\nseeds: [0]\ncells:\n  baseline: {}\n", "prefix 'Bad'"),
        ("seeds: [0]\ncells: [baseline]\n", "'cells' must be a mapping of cell name -> {params key: value}"),
    ],
)
def test_a_bad_sweep_file_is_named_in_its_error_wherever_it_is(tmp_path, defaults, text, message):
    """Not the default sweep's path: the file actually read (a study's own sweep.yaml, a test's)."""
    path = tmp_path / "studies" / "elsewhere" / "sweep.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    with pytest.raises(SweepError) as raised:
        expand(load_sweep(path), defaults)
    assert str(raised.value).startswith(f"{path}: {message}")


def test_a_population_member_stopped_with_snapshots_is_stopped_not_failed(tmp_path):
    """The atlas's report called 40 members 'failed' that a SIGTERM had stopped with their snapshots
    kept: the same command resumes them."""
    from study.report import population_record
    from study.sweep import Run

    run = Run("s-cell-s0", "cell", 0, ("train.seed=0",))
    assert population_record(run, tmp_path / "never")["state"] == "missing"
    folder = tmp_path / "member"
    (folder / "models" / "snapshots").mkdir(parents=True)
    assert population_record(run, folder)["state"] == "failed"  # nothing to resume from
    (folder / "models" / "snapshots" / "resume_00010.npz").write_bytes(b"")
    assert population_record(run, folder)["state"] == "stopped"


def test_no_two_cells_of_one_panel_share_a_colour_even_when_their_names_hash_alike():
    from study.figures import cell_colours, colour_of, comparison_groups

    assert colour_of("plateau") == colour_of("plateau-amsgrad")  # both spares, one hash: the agreement figure
    cells = ["baseline", "amsgrad", "plateau", "plateau-amsgrad", "plateau-eps-1e-2"]
    colours = cell_colours(comparison_groups([{"cell": cell} for cell in cells]), "baseline")
    assert len(set(colours.values())) == len(cells)
    assert colours["plateau"] == colour_of("plateau") and colours["amsgrad"] == colour_of("amsgrad")
