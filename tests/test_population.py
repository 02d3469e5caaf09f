"""The population engine: members start, train and log as single runs do, deterministically.

What a member's numbers depend on (docs/performance.md): its own params, seeds and data; not its
neighbours' seeds or values, and, where the convolutions take the product forms (the default
shapes and the tiny ones), not the population's size P or its slot. Tested here: neighbours swapped,
the member alone and at another slot of a larger population leave its history byte-identical; a
re-run is byte-identical; a member agrees with the single run of its seed to float tolerance.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import yaml

from conftest import TINY, lab_env, run
from spikelab.data import generate, split
from spikelab.divergence import divergence_epoch
from spikelab.history import write_history_csv
from spikelab.metric_names import mlflow_key
from spikelab.model import resolve_data_format
from spikelab.params import params_from_dict
from spikelab.training import compile_model, seed_everything, train
from study.population_engine import Member, Population, check_population, progress_line
from team.stack import alive, descendants

EPOCHS = 3


def tiny_params(seed: int, **sections):
    raw = copy.deepcopy(TINY)
    raw["train"].update(seed=seed, snapshot_every=0, epochs=EPOCHS)
    # every diagnostic at every epoch, so each is compared
    raw["diagnostics"].update(dead_zone_every=1, eigen_every=1)
    for section, values in sections.items():
        raw[section].update(values)
    return params_from_dict(raw)


@pytest.fixture(scope="module")
def arrays():
    params = tiny_params(0)
    solid, broken, _ = generate(params.data)
    return split(solid, broken, params.split)


@pytest.fixture(scope="module")
def data_format():
    return resolve_data_format("auto")


def population(seeds, arrays, data_format, **sections) -> Population:
    members = [Member(f"s{seed}", tiny_params(seed, **sections), arrays) for seed in seeds]
    return Population(members, data_format, [None] * len(members))


def history_bytes(history, tmp_path) -> bytes:
    path = tmp_path / "history.csv"
    write_history_csv(path, history)
    return path.read_bytes()


def assert_agrees(member: list[dict], single: list[dict], loss_rtol: float, other_rtol: float) -> None:
    assert [row["epoch"] for row in member] == [row["epoch"] for row in single]
    for ours, theirs in zip(member, single):
        assert set(ours) == set(theirs)
        for key, value in theirs.items():
            tolerance = loss_rtol if key in ("loss", "val_loss", "accuracy", "val_accuracy") else other_rtol
            if math.isnan(value):
                assert math.isnan(ours[key]), key
            else:
                assert ours[key] == pytest.approx(value, rel=tolerance, abs=1e-7), (ours["epoch"], key)


def test_members_start_from_the_single_runs_initial_weights(arrays, data_format):
    engine = population([4, 7], arrays, data_format)
    for slot, seed in enumerate([4, 7]):
        seed_everything(seed)
        single = compile_model(tiny_params(seed), arrays["x_train"].shape[-1], data_format)
        for ours, theirs in zip(engine.variables, single.trainable_variables):
            assert ours.path == theirs.path
            np.testing.assert_array_equal(ours.numpy()[slot], theirs.numpy())


@pytest.fixture(scope="module")
def trained(arrays, data_format):
    """seed 1 at slot 1 among {0, 2}, the same again, and among {3, 4}; alone (P = 1) and at slot 3
    of 5; the single run of seed 1."""
    return {
        "first": population([0, 1, 2], arrays, data_format).train(),
        "again": population([0, 1, 2], arrays, data_format).train(),
        "other_neighbours": population([3, 1, 4], arrays, data_format).train(),
        "alone": population([1], arrays, data_format).train(),
        "fifth": population([0, 2, 3, 4, 1], arrays, data_format).train(),
        "single": train(tiny_params(1), arrays, data_format, None),
    }


def test_a_rerun_is_byte_identical(trained, tmp_path):
    for first, again in zip(trained["first"].results, trained["again"].results):
        assert history_bytes(first.history, tmp_path) == history_bytes(again.history, tmp_path)


def test_a_member_does_not_depend_on_its_neighbours(trained, tmp_path):
    ours = history_bytes(trained["first"].results[1].history, tmp_path)
    assert ours == history_bytes(trained["other_neighbours"].results[1].history, tmp_path)
    # the neighbours themselves differ: the check above compares different populations
    assert trained["first"].results[0].history[-1]["loss"] != trained["other_neighbours"].results[0].history[-1]["loss"]


def test_a_member_does_not_depend_on_the_population_size_or_its_slot(trained, tmp_path):
    # the tiny model's shapes take the product forms (as the default's do): batched products
    # compute each member's matrices apart, whatever P is and wherever the member sits; alone, the
    # member trains beside its twin (TensorFlow computes a batch of one product another way)
    assert trained["first"].forms == {"conv1": "rows", "conv2": "dense"}
    ours = history_bytes(trained["first"].results[1].history, tmp_path)
    assert len(trained["alone"].results) == len(trained["alone"].final_states) == 1  # the twin is dropped
    assert ours == history_bytes(trained["alone"].results[0].history, tmp_path)
    assert ours == history_bytes(trained["fifth"].results[4].history, tmp_path)


def test_the_grouped_form_computes_the_product_forms_function(arrays, data_format):
    products = population([0, 1, 2], arrays, data_format)
    grouped = population([0, 1, 2], arrays, data_format)
    grouped.network.row_form = grouped.network.dense_form = False
    own = np.stack([arrays["x_train"][:8], arrays["x_train"][8:16], arrays["x_train"][16:24]], axis=-1)
    for images in (own, arrays["x_val"][:8, :, :, None]):  # a batch per member; one every member sees
        x = tf.constant(images.astype(np.float32) / 255.0)
        ours, theirs = products.network.logits(x).numpy(), grouped.network.logits(x).numpy()
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
        assert not np.array_equal(ours[0], ours[1])  # members differ: the comparison is not of one member


def test_a_member_agrees_with_the_single_run_of_its_seed(trained):
    # every key, diagnostics included; the losses agree far closer than the diagnostics (which
    # amplify last-bit differences of the weights: ratios, percentiles, power iteration)
    assert_agrees(trained["first"].results[1].history, trained["single"].history, 1e-5, 1e-2)
    assert trained["first"].results[1].history[0]["loss"] == pytest.approx(
        trained["single"].history[0]["loss"], rel=1e-6
    )


def test_the_best_state_and_final_states_use_the_single_runs_keys(trained):
    result = trained["first"]
    single = trained["single"]
    assert set(result.final_states[1]) == set(single.best_state)
    assert result.results[1].best_epoch == single.best_epoch


@pytest.mark.parametrize(
    "sections",
    [
        {"optimizer": {"clipnorm": 0.05}},  # binds: per member and per variable, as Keras clips
        pytest.param({"optimizer": {"amsgrad": True}}, marks=pytest.mark.slow),
        pytest.param({"optimizer": {"name": "sgd", "learning_rate": 0.01}}, marks=pytest.mark.slow),
        pytest.param({"loss": {"form": "keras3"}}, marks=pytest.mark.slow),
        pytest.param({"loss": {"name": "log_cosh"}}, marks=pytest.mark.slow),
        # the remedy atlas's new keys (studies/remedies): schedules, clips, smoothing, optimizers
        {"optimizer": {"schedule": "cosine"}, "train": {"epochs": 3}},
        {"optimizer": {"global_clipnorm": 0.05}},  # binds: per member, over all its variables
        pytest.param({"optimizer": {"schedule": "warmup", "warmup_epochs": 2}}, marks=pytest.mark.slow),
        pytest.param({"optimizer": {"schedule": "step", "step_every": 1, "step_factor": 0.5}}, marks=pytest.mark.slow),
        pytest.param({"optimizer": {"clipvalue": 0.001}}, marks=pytest.mark.slow),
        pytest.param({"loss": {"label_smoothing": 0.1}}, marks=pytest.mark.slow),
        pytest.param({"loss": {"label_smoothing": 0.1, "form": "keras3"}}, marks=pytest.mark.slow),
        pytest.param({"optimizer": {"name": "nadam"}}, marks=pytest.mark.slow),
        pytest.param({"optimizer": {"name": "lion", "learning_rate": 0.0003, "beta_2": 0.99}}, marks=pytest.mark.slow),
        pytest.param({"optimizer": {"name": "adamw", "weight_decay": 0.01}}, marks=pytest.mark.slow),
    ],
)
def test_cells_of_the_evidence_study_agree_with_single_runs(sections, arrays, data_format):
    result = population([0, 1], arrays, data_format, **sections).train()
    single = train(tiny_params(1, **sections), arrays, data_format, None)
    assert_agrees(result.results[1].history, single.history, 1e-5, 1e-2)


@pytest.mark.parametrize("clip", [{"clipnorm": 0.05}, {"global_clipnorm": 0.05}])
def test_clipping_is_per_member(arrays, data_format, clip):
    """A member's clipped step must not see its neighbour's gradient: seed 1 beside seed 0 or seed 3."""
    clip = {"optimizer": clip}
    beside_0 = population([0, 1], arrays, data_format, **clip).train().results[1].history
    beside_3 = population([3, 1], arrays, data_format, **clip).train().results[1].history
    assert [row["loss"] for row in beside_0] == [row["loss"] for row in beside_3]


def test_a_population_of_two_cells_or_with_the_guard_is_refused(arrays):
    members = [Member("a", tiny_params(0), arrays), Member("b", tiny_params(1, optimizer={"epsilon": 0.01}), arrays)]
    with pytest.raises(ValueError, match="b differs from a in optimizer.epsilon; a population is one cell"):
        check_population(members)
    guarded = [Member("a", tiny_params(0, guard={"enabled": True}), arrays)]
    with pytest.raises(ValueError, match="guard.enabled = true is not supported"):
        check_population(guarded)
    with pytest.raises(ValueError, match="member names repeat"):
        check_population([Member("a", tiny_params(0), arrays), Member("a", tiny_params(1), arrays)])


class Stop(KeyboardInterrupt):
    pass


@pytest.mark.parametrize("seeds", [[0, 1], [1]], ids=["P2", "alone"])
def test_a_stopped_population_resumes_to_the_bytes_of_an_uninterrupted_one(seeds, arrays, data_format, tmp_path):
    sections = {"train": {"epochs": 6, "snapshot_every": 2}}  # every diagnostic every epoch (tiny_params)

    def members():
        return [Member(f"s{seed}", tiny_params(seed, **sections), arrays) for seed in seeds]

    def folders(name):
        made = [tmp_path / name / f"s{seed}" for seed in seeds]
        for folder in made:
            folder.mkdir(parents=True)
        return made

    whole_dirs, stopped_dirs = folders("whole"), folders("stopped")
    whole = Population(members(), data_format, whole_dirs).train()

    def stop_in_epoch_5(index, epoch, logs):
        if epoch == 4:  # epoch 5 trained and logged, its snapshot not due: a stop loses it
            raise Stop

    with pytest.raises(Stop):
        Population(members(), data_format, stopped_dirs).train(stop_in_epoch_5)
    resumed = Population(members(), data_format, stopped_dirs, resume_epoch=4).train()
    assert resumed.results[0].history[0]["epoch"] == 1 and len(resumed.results[0].history) == 6
    for slot in range(len(seeds)):
        ours, theirs = resumed.results[slot], whole.results[slot]
        assert history_bytes(ours.history, tmp_path) == history_bytes(theirs.history, tmp_path)
        assert ours.best_epoch == theirs.best_epoch
        for key, value in theirs.best_state.items():
            np.testing.assert_array_equal(ours.best_state[key], value)
        for key, value in whole.final_states[slot].items():
            np.testing.assert_array_equal(resumed.final_states[slot][key], value)
        assert (stopped_dirs[slot] / "epoch_00006.npz").read_bytes() == (
            whole_dirs[slot] / "epoch_00006.npz"
        ).read_bytes()


def test_members_may_train_on_datasets_of_their_own(arrays, data_format):
    other_params = tiny_params(1, data={"seed": 5}, split={"seed": 6})
    solid, broken, _ = generate(other_params.data)
    other = split(solid, broken, other_params.split)
    members = [Member("own", other_params, other), Member("shared", tiny_params(1), arrays)]
    result = Population(members, data_format, [None, None]).train()
    single = train(other_params, other, data_format, None)
    assert_agrees(result.results[0].history, single.history, 1e-5, 1e-2)


TINY_SWEEP = {
    "prefix": "tiny",
    "seeds": [0, 1],
    "cells": {"baseline": {}, "eps-1e-2": {"optimizer.epsilon": 1.0e-2}},
    "replay": {"min_gap": 1, "cells": ["eps-1e-2"]},
}


@pytest.mark.slow
def test_a_study_through_populations_reports_rows_and_nests_mlflow_runs(lab_repo):
    (lab_repo / "study" / "tiny.yaml").write_text(yaml.safe_dump(TINY_SWEEP, sort_keys=False))
    made = run(["python", "-m", "study.population", "--sweep", "study/tiny.yaml", "--jobs", "2"], lab_repo)
    assert made.stdout.count("study: 2/2 runs done") == 2  # one population per worker
    again = run(["python", "-m", "study.population", "--sweep", "study/tiny.yaml"], lab_repo)
    assert "tiny-baseline-s0 already finished with these params, skipped" in again.stdout
    run(["python", "-m", "study.report", "--sweep", "study/tiny.yaml", "--engine", "population"], lab_repo)
    results = lab_repo / "study" / "results"
    with open(results / "tiny_runs.csv") as handle:
        rows = {row["name"]: row for row in csv.DictReader(handle)}
    assert sorted(rows) == ["tiny-baseline-s0", "tiny-baseline-s1", "tiny-eps-1e-2-s0", "tiny-eps-1e-2-s1"]
    assert {row["engine"] for row in rows.values()} == {"population"}
    assert {row["state"] for row in rows.values()} == {"success"}
    assert float(rows["tiny-baseline-s1"]["val_accuracy"]) > 0
    member = lab_repo / "study" / "populations" / "tiny" / "tiny-baseline-s1"
    facts = json.loads((member / "metrics" / "run.json").read_text())
    assert (facts["engine"], facts["population_size"], facts["slot"]) == ("population", 2, 1)
    assert facts["convolutions"] == {"conv1": "rows", "conv2": "dense"}
    snapshots = sorted(path.name for path in (member / "models" / "snapshots").iterdir())
    assert snapshots == [
        *(f"epoch_{epoch:05d}.npz" for epoch in (1, 2, 3)),
        "history.csv",
        *(f"resume_{epoch:05d}.npz" for epoch in (1, 2, 3)),
    ]

    from conftest import mlflow_runs

    runs = {r.info.run_name: r for r in mlflow_runs(lab_repo)}
    parent = runs["tiny-baseline-p0"]
    child = runs["tiny-baseline-s1"]
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.data.tags["spikelab.engine"] == "population"
    assert child.data.params["train.seed"] == "1" and child.data.params["optimizer.epsilon"] == "1e-07"
    assert child.info.status == "FINISHED"
    assert {mlflow_key("summary.diverged"), mlflow_key("eval.last.accuracy")} <= child.data.metrics.keys()
    assert child.data.metrics[mlflow_key("loss")] == pytest.approx(
        json.loads((member / "metrics" / "train.json").read_text())["final_loss"]
    )

    # replays of a member: the unchanged control, at the member's P and slot, repeats its losses exactly
    run(
        [
            "python",
            "-m",
            "study.population",
            "--sweep",
            "study/tiny.yaml",
            "--replay",
            "tiny-baseline-s1",
            "--epoch",
            "1",
        ],
        lab_repo,
    )
    with open(results / "replay.csv") as handle:
        replays = {row["intervention"]: row for row in csv.DictReader(handle)}
    assert list(replays) == ["original", "unchanged", "eps-1e-2"]
    assert float(replays["unchanged"]["max_loss_difference"]) == 0.0
    assert replays["unchanged"]["final_loss"] == replays["original"]["final_loss"]
    assert replays["eps-1e-2"]["final_loss"] != replays["original"]["final_loss"]


# TensorFlow's start-up lines as they read without TF_CPP_MIN_LOG_LEVEL (absl, cpu_feature_guard, the
# data-format probe's failed NCHW convolution)
NATIVE_NOISE = ("absl::InitializeLog", "cpu_feature_guard", "Local rendezvous", "NHWC", "oneDNN custom operations")


@pytest.mark.slow
def test_a_populations_console_is_as_quiet_as_the_stages(lab_repo):
    sweep = {"prefix": "quiet", "seeds": [0, 1], "cells": {"baseline": {}}}
    (lab_repo / "study" / "quiet.yaml").write_text(yaml.safe_dump(sweep, sort_keys=False))
    env = lab_env(lab_repo)
    env.pop("TF_CPP_MIN_LOG_LEVEL")  # as a user's shell has it
    command = ["python", "-m", "study.population", "--sweep", "study/quiet.yaml", "--size", "1"]
    made = subprocess.run(command, cwd=lab_repo, env=env, capture_output=True, text=True, check=False)
    assert made.returncode == 0, made.stderr
    assert made.stdout.count("study: population quiet-baseline-") == 2  # two populations, each quiet
    console = made.stdout + made.stderr
    assert not [line for line in console.splitlines() if any(noise in line for noise in NATIVE_NOISE)], console


def test_the_progress_lines_median_of_two_members_is_their_mean():
    line = progress_line(3, 150, np.array([0.2, 0.5], np.float32), 1.25, [])
    assert "2 members: loss median 0.35 " in line and "max 0.5 " in line, line
    assert "loss median 0.2 " in progress_line(3, 150, [0.5, 0.1, 0.2], 1.25, ["run-s1"])
    assert progress_line(3, 150, [0.1], 1.25, ["run-s1"]).endswith("<- spike: run-s1")


def test_stop_after_spike_ends_the_population_once_every_member_is_past_its_first_spike(arrays, data_format):
    # a rule that flags any 1% rise and a learning rate that makes rises: every member spikes early
    sections = {"divergence": {"ratio": 1.01, "min_rise": 0.0}, "optimizer": {"learning_rate": 0.3}}
    sections["train"] = {"epochs": 8, "snapshot_every": 0}
    full = population([0, 1], arrays, data_format, **sections).train()
    firsts = [
        divergence_epoch([row["loss"] for row in result.history], tiny_params(0, **sections).divergence)
        for result in full.results
    ]
    assert all(first is not None and first + 2 < 8 for first in firsts), firsts
    stopped = population([0, 1], arrays, data_format, **sections).train(stop_after_spike=2)
    end = max(firsts) + 2
    for early, whole in zip(stopped.results, full.results):
        assert len(early.history) == end
        assert early.history == whole.history[:end]


RESUME_SWEEP = {
    "prefix": "tiny",
    "seeds": [0, 1],
    "cells": {"baseline": {}, "eps-1e-2": {"optimizer.epsilon": 1.0e-2}},
}
TIMING_KEYS = {"train_seconds", "seconds_per_epoch", "mlflow_run_id", "epoch_seconds"}


def start_study(lab_repo, *extra):
    command = [sys.executable, "-m", "study.population", "--sweep", "study/tiny.yaml", *extra]
    return subprocess.Popen(
        command, cwd=lab_repo, env=lab_env(lab_repo), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def read_until(process, text: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    for line in process.stdout:
        if text in line:
            return
        assert time.monotonic() < deadline, f"no {text!r} in the study's output"
    raise AssertionError(f"the study ended before {text!r}")


def member_outputs(folder):
    """What a finished member wrote, timings and run ids aside; the models' weights."""
    import keras

    found = {name: (folder / "metrics" / name).read_bytes() for name in ("history.csv", "rules.json", "evaluate.json")}
    for name in ("train.json", "run.json"):
        facts = json.loads((folder / "metrics" / name).read_text())
        found[name] = {key: value for key, value in facts.items() if key not in TIMING_KEYS}
    for name in ("best", "last"):
        model = keras.saving.load_model(folder / "models" / f"{name}.keras", compile=False)
        found[name] = [weight.tolist() for weight in model.get_weights()]
    return found


@pytest.mark.slow
def test_a_stopped_study_resumes_where_its_snapshots_are_and_ends_as_an_uninterrupted_one(lab_repo):
    sweep = copy.deepcopy(RESUME_SWEEP)
    for overrides in sweep["cells"].values():
        overrides.update({"train.epochs": 8, "train.snapshot_every": 2})
    (lab_repo / "study" / "tiny.yaml").write_text(yaml.safe_dump(sweep, sort_keys=False))
    run(["python", "-m", "study.population", "--sweep", "study/tiny.yaml", "--root", "whole"], lab_repo)

    # SIGTERM in epoch 5 of the first population: one line, exit 130, its snapshots kept
    study = start_study(lab_repo)
    read_until(study, "epoch 5/8")
    study.send_signal(signal.SIGTERM)
    _, errors = study.communicate(timeout=120)
    assert study.returncode == 130, errors
    assert "Traceback" not in errors
    assert "study: stopped by signal SIGTERM; finished runs are kept" in errors
    members = lab_repo / "study" / "populations" / "tiny"
    assert (members / "tiny-baseline-s0" / "models" / "snapshots" / "resume_00004.npz").is_file()

    # SIGKILL of the parent with --jobs 2: no worker trains on without it
    study = start_study(lab_repo, "--jobs", "2")
    read_until(study, "resumes at epoch 4")
    workers = descendants(study.pid)
    assert workers
    study.kill()
    study.wait()
    # each worker ends its MLflow runs KILLED first: seconds on a quiet machine, more on a loaded one
    deadline = time.monotonic() + 240
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [Path(f"/proc/{pid}/cmdline").read_bytes()[:200] for pid in workers if alive(pid)]
    assert not left, f"a worker outlived its killed parent: {left}"

    resumed = run(["python", "-m", "study.population", "--sweep", "study/tiny.yaml"], lab_repo)
    assert "study: population tiny-baseline-p0 resumes at epoch" in resumed.stdout
    for name in ("tiny-baseline-s0", "tiny-baseline-s1", "tiny-eps-1e-2-s0", "tiny-eps-1e-2-s1"):
        assert member_outputs(members / name) == member_outputs(lab_repo / "whole" / "tiny" / name), name

    # the resumed member keeps its MLflow run, every epoch logged once, FINISHED
    from conftest import mlflow_runs, store_client

    facts = json.loads((members / "tiny-baseline-s1" / "metrics" / "run.json").read_text())
    started = json.loads((members / "tiny-baseline-s1" / "population.json").read_text())
    assert facts["mlflow_run_id"] == started["member"]
    runs = {r.info.run_id: r for r in mlflow_runs(lab_repo)}
    assert runs[started["member"]].info.status == "FINISHED"
    steps = [m.step for m in store_client(lab_repo).get_metric_history(started["member"], mlflow_key("loss"))]
    assert sorted(steps) == list(range(1, 9))


def test_a_study_resumes_from_its_committed_rows_where_no_member_folder_is_left(tmp_path):
    """Another machine's sitting: the committed rows and histories stand in for the members' folders."""
    from study.population_members import committed_runs
    from study.report import PROVENANCE, RUN_COLUMNS, read_records, with_committed, write_histories
    from study.tables import write_csv

    done = {key: None for key in (*RUN_COLUMNS, *PROVENANCE)} | {
        "name": "tiny-baseline-s0",
        "cell": "baseline",
        "seed": 0,
        "state": "success",
        "diverged": False,
        "min_loss": 0.01,
        "rev": "abc123",
        "engine": "population",
        "data_seed": 1000,
        "split_seed": 1000,
        "convolutions": "conv1=rows conv2=dense",
    }
    queued = done | {"name": "tiny-baseline-s1", "seed": 1, "state": "missing"}
    dvc_run = done | {"name": "tiny-baseline-s2", "seed": 2, "engine": "dvc"}
    write_csv(tmp_path / "tiny_runs.csv", [done, queued, dvc_run], [*RUN_COLUMNS, *PROVENANCE])
    history = [{"epoch": 1, "loss": 0.5, "val_loss": 0.6}, {"epoch": 2, "loss": 0.01, "val_loss": 0.4}]
    write_histories(tmp_path / "tiny_histories.csv.gz", {"tiny-baseline-s0": history})

    # the engine skips only the finished population row
    assert committed_runs(tmp_path / "tiny_runs.csv") == {"tiny-baseline-s0"}
    assert committed_runs(tmp_path / "absent_runs.csv") == set()
    # the report takes its record (provenance included) and history
    records = [{"name": name, "state": "missing"} for name in ("tiny-baseline-s0", "tiny-baseline-s1")]
    histories: dict = {}
    assert with_committed(records, histories, tmp_path, "tiny") == 1
    assert records[0] == read_records(tmp_path / "tiny_runs.csv")[0]
    assert (records[0]["rev"], records[0]["data_seed"], records[0]["convolutions"]) == (
        "abc123",
        1000,
        "conv1=rows conv2=dense",
    )
    assert records[1]["state"] == "missing"
    assert [row["loss"] for row in histories["tiny-baseline-s0"]] == [0.5, 0.01]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowed interrupt
def test_a_stop_whose_interrupt_was_swallowed_still_stops_at_the_next_epoch_end(monkeypatch):
    """SIGTERM's KeyboardInterrupt landed inside JAX's garbage-collection callback once ("Exception
    ignored in: <function _xla_gc_callback ...>"): Python drops it there, and training went on."""
    import gc

    from study import population_training

    monkeypatch.setattr(population_training, "STOP_REQUESTED", [])

    class RaisesWhenCollected:
        def __del__(self):  # where Python swallows an exception, as in a gc callback
            population_training.interrupt(signal.SIGTERM, None)

    RaisesWhenCollected()
    gc.collect()
    with pytest.raises(KeyboardInterrupt, match="signal SIGTERM"):
        population_training.raise_if_stop_requested()
