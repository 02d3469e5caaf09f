"""Experiments that start where the user thinks they start (issue 24, item 1).

`dvc exp run -S` leaves its changes in params.yaml; `make exp`, the presets and `make compare`
must not inherit them: they start from, and compare against, the committed params.yaml.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import run
from spikelab.params import ParamsError, load_params
from spikelab.plumbing.errors import one_line


def committed_text(root: Path) -> str:
    return subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=root, capture_output=True, text=True).stdout


def leave_a_change_behind(root: Path, section: str, key: str, value) -> None:
    """What a finished `dvc exp run -S section.key=value` leaves in the workspace."""
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw[section][key] = value
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


@pytest.fixture
def exp_in(lab_repo, monkeypatch):
    """tools.exp.main run in the lab copy; DVC is not started: each call records its name, its
    `-S` arguments and the params.yaml text DVC would have started from."""
    import tools.exp

    monkeypatch.chdir(lab_repo)
    started = []

    def fake_run(name, dvc_args, queue=False):
        started.append({"name": name, "args": dvc_args, "params": (lab_repo / "params.yaml").read_text()})
        return 0

    monkeypatch.setattr(tools.exp, "run_experiment", fake_run)
    monkeypatch.setattr(
        tools.exp, "existing_experiment_names", lambda: {record["name"] for record in started}, raising=False
    )
    return started


def test_make_exp_starts_from_the_committed_params_not_an_earlier_experiments(lab_repo, exp_in, capsys):
    from tools.exp import main

    leave_a_change_behind(lab_repo, "optimizer", "epsilon", 0.001)
    left = (lab_repo / "params.yaml").read_text()
    assert main(["loss.name=log_cosh"]) == 0
    [started] = exp_in
    # in DVC's copy (--temp), the leftover reset to the committed value, then the change
    assert started["args"] == ["--temp", "-S", "optimizer.epsilon=1e-07", "-S", "loss.name=log_cosh"]
    assert started["name"] == "loss=log_cosh"
    said = capsys.readouterr().out
    assert "starting from the committed params.yaml" in said
    assert "optimizer.epsilon=0.001" in said  # what it did not start from
    assert (lab_repo / "params.yaml").read_text() == left  # the user's file is never touched


def test_a_workspace_file_that_resets_cannot_reach_is_put_back_and_saved(lab_repo, exp_in, capsys):
    from tools.exp import SAVED_WORKSPACE_PARAMS, main

    (lab_repo / "params.yaml").write_text((lab_repo / "params.yaml").read_text() + "extra:\n  key: 1\n")
    left = (lab_repo / "params.yaml").read_text()
    assert main(["train.seed=3"]) == 0
    [started] = exp_in
    assert started["params"] == committed_text(lab_repo)
    assert started["args"] == ["--temp", "-S", "train.seed=3"]
    assert (lab_repo / SAVED_WORKSPACE_PARAMS).read_text() == left  # nothing of the user's is lost
    assert "saved to" in capsys.readouterr().out


def test_make_exp_from_the_workspace_keeps_its_changes_and_says_which(lab_repo, exp_in, capsys):
    from tools.exp import main

    leave_a_change_behind(lab_repo, "optimizer", "epsilon", 0.001)
    left = (lab_repo / "params.yaml").read_text()
    assert main(["--from", "workspace", "loss.name=log_cosh"]) == 0
    assert exp_in[0]["params"] == left
    assert exp_in[0]["args"] == ["--temp", "-S", "loss.name=log_cosh"]
    said = capsys.readouterr().out
    assert "starting from the workspace's params.yaml" in said and "optimizer.epsilon=0.001" in said


def test_a_preset_is_a_file_of_changes_and_runs_twice_under_two_names(lab_repo, exp_in, capsys):
    from tools.exp import main, preset_changes

    (lab_repo / "configs" / "tiny-plateau.yaml").write_text("optimizer:\n  learning_rate: 0.01\ntrain:\n  epochs: 5\n")
    leave_a_change_behind(lab_repo, "loss", "name", "log_cosh")  # the trap: a preset run as log_cosh
    assert main(["--preset", "tiny-plateau"]) == 0
    assert main(["--preset", "tiny-plateau"]) == 0
    assert [record["name"] for record in exp_in] == ["tiny-plateau", "tiny-plateau-2"]
    reset = ["-S", "loss.name=binary_crossentropy"]
    assert exp_in[0]["args"] == ["--temp", *reset, "-S", "optimizer.learning_rate=0.01", "-S", "train.epochs=5"]
    assert "already has an experiment named 'tiny-plateau'" in capsys.readouterr().out
    # the repository's own presets are valid changes of the committed params.yaml
    for name in ("plateau", "seed-full-scale"):
        assert preset_changes(name)


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no preset 'missing'"),
        ("optimizer:\n  learning_rat: 0.01\n", "params.yaml has no key optimizer.learning_rat"),
        ("- 1\n", "a preset is a mapping"),
    ],
)
def test_a_bad_preset_is_refused_before_params_yaml_is_touched(lab_repo, exp_in, content, message):
    from tools.exp import ExpError, main

    if content is not None:
        (lab_repo / "configs" / "missing.yaml").write_text(content)
    leave_a_change_behind(lab_repo, "optimizer", "epsilon", 0.001)
    left = (lab_repo / "params.yaml").read_text()
    with pytest.raises(ExpError, match=message):
        main(["--preset", "missing"])
    assert (lab_repo / "params.yaml").read_text() == left and not exp_in


def test_a_bad_value_left_in_params_yaml_names_the_recovery(tiny_raw, tmp_path):
    tiny_raw["optimizer"]["epsilon"] = "abc"  # what `dvc exp run -S optimizer.epsilon=abc` leaves
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tiny_raw, sort_keys=False))
    with pytest.raises(ParamsError) as raised:
        load_params(path)
    message = one_line(raised.value)
    assert message.startswith("params.yaml: optimizer.epsilon = 'abc'")
    assert "git checkout params.yaml" in message


def test_a_failed_dvc_exp_run_says_how_to_get_back(lab_repo):
    result = run(["dvc", "exp", "run", "-S", "optimizer.epsilon=abc"], lab_repo, check=False)
    assert result.returncode != 0
    assert "git checkout params.yaml" in result.stdout + result.stderr


# ---- make compare: always against the committed baseline -----------------------------------------


def exp_show_payload(head: str, defaults: dict, experiment_params: dict, name: str = "logcosh") -> list[dict]:
    """`dvc exp show --json` as DVC 3 writes it: the workspace, then HEAD with one experiment."""

    def data(params: dict, final_loss: float) -> dict:
        nested: dict = {}
        for key, value in params.items():
            section, _, name = key.partition(".")
            nested.setdefault(section, {})[name] = value
        return {
            "timestamp": "2026-01-01T00:00:00",
            "params": {"params.yaml": {"data": nested}},
            "metrics": {
                "metrics/train.json": {"data": {"diverged": False, "final_loss": final_loss}},
                "metrics/evaluate.json": {"data": {"last": {"accuracy": 0.5}}},
            },
        }

    return [
        {"rev": "workspace", "data": data(experiment_params, 0.2), "experiments": None},
        {
            "rev": head,
            "name": "main",
            "data": data(defaults, 0.1),
            "experiments": [
                {"name": name, "revs": [{"rev": "abc", "name": name, "data": data(experiment_params, 0.2)}]}
            ],
        },
    ]


def fake_exp_show(monkeypatch, payload: list[dict]) -> None:
    import tools.compare

    monkeypatch.setattr(
        tools.compare, "dvc", lambda *args, **kwargs: subprocess.CompletedProcess(args, 0, json.dumps(payload), "")
    )


def head_of(root: Path) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()


def test_compare_has_the_committed_row_and_counts_changes_against_it(lab_repo, monkeypatch):
    from study.sweep import load_defaults
    from tools.compare import compare_rows

    monkeypatch.chdir(lab_repo)
    head, defaults = head_of(lab_repo), load_defaults()
    # an epsilon run left its change in params.yaml, then log_cosh ran on top of it
    inherited = {**defaults, "optimizer.epsilon": 0.001, "loss.name": "log_cosh"}
    leave_a_change_behind(lab_repo, "optimizer", "epsilon", 0.001)
    rows = [(row["name"], row["changed"]) for row in compare_rows(exp_show_payload(head, defaults, inherited), head)]
    assert rows == [("default, committed", "(none)"), ("logcosh", "optimizer.epsilon=0.001 loss.name=log_cosh")]


def log_a_run(root: Path, params: dict, machine: str, metrics: dict, name: str = "workspace") -> str:
    """A finished run in the copy's MLflow store, tagged as the train stage tags it; metrics by
    their names in the files (summary.jump_ratio), logged under their MLflow keys."""
    import socket

    from mlflow.entities import Param

    from conftest import store_client
    from spikelab.tracking import numeric_metrics, prepare_experiment

    experiment_id = prepare_experiment(params["tracking.experiment"], root)
    client = store_client(root)
    tags = {
        "spikelab.host": socket.gethostname(),
        "spikelab.machine": machine,
        "mlflow.source.git.commit": head_of(root),
    }
    run_id = client.create_run(experiment_id, tags=tags, run_name=name).info.run_id
    client.log_batch(
        run_id,
        metrics=numeric_metrics(metrics, 0),
        params=[Param(key, str(value)) for key, value in params.items()],
    )
    client.set_terminated(run_id, "FINISHED")
    return run_id


def test_compare_reads_experiments_against_your_own_default_run_in_100_columns(lab_repo, monkeypatch, capsys):
    """The first row is the default run made here by this code (issue 37, item 1), found in the MLflow
    store, so it survives a plain `dvc exp run -S` that replaced the workspace's outputs; the committed
    run is the labelled reference; the table fits 100 columns (item 2), `--all` shows every column."""
    import tools.compare
    from spikelab.params import flatten
    from spikelab.plumbing.machine import cpu_model

    monkeypatch.chdir(lab_repo)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    head, defaults = head_of(lab_repo), flatten(load_params(lab_repo / "params.yaml"))
    scores = {"summary.diverged": 1.0, "summary.divergence_epoch": 97.0, "summary.jump_ratio": 11.5}
    scores |= {"summary.plateaued": 0.0, "summary.final_loss": 0.0123, "eval.last.accuracy": 0.625}
    mine = log_a_run(lab_repo, defaults, cpu_model(), scores)
    elsewhere = log_a_run(lab_repo, defaults, "Another CPU", scores | {"summary.jump_ratio": 50.0})
    changed = log_a_run(lab_repo, defaults | {"optimizer.epsilon": 0.001}, cpu_model(), scores, "eps")
    many = {"optimizer.epsilon": 0.001, "loss.name": "log_cosh", "train.seed": 12, "optimizer.learning_rate": 0.0003}
    fake_exp_show(monkeypatch, exp_show_payload(head, defaults, defaults | many, "loss.name=log_cosh,seed=12,lr=3e-4"))
    assert tools.compare.main([]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert max(map(len, lines)) <= 100, out
    assert lines[2].split() == ["default,", "here", "(none)", "97", "11.5", "False", "0.0123", "0.625"]
    assert lines[3].split()[:3] == ["default,", "committed", "(none)"]
    text = " ".join(out.split())
    assert f"MLflow run {mine[:8]}" in text and cpu_model() in text and f"commit {head[:7]}" in text
    assert elsewhere[:8] not in text and changed[:8] not in text
    # every change is in the table, wrapped
    assert all(change.split("=")[0] in text for change in many)
    assert tools.compare.main(["--all"]) == 0
    wide = capsys.readouterr().out
    unwrapped = [f"{key}={value}" for key, value in many.items()]
    assert any(all(change in line for change in unwrapped) for line in wide.splitlines())
    assert "min loss" in wide.splitlines()[0]


@pytest.mark.slow
def test_your_default_run_stays_the_baseline_after_a_plain_dvc_exp_run(lab_repo):
    """`dvc repro` makes the default run here; a plain `dvc exp run -S` then replaces the workspace's
    outputs: `make compare` still shows the default run first, the experiment below it."""
    from spikelab.plumbing.machine import cpu_model

    run(["dvc", "repro"], lab_repo)
    default_run = json.loads((lab_repo / "metrics/run.json").read_text())["mlflow_run_id"]
    assert json.loads((lab_repo / "metrics/run.json").read_text())["machine"] == cpu_model()
    run(["dvc", "exp", "run", "-S", "optimizer.epsilon=0.001", "-n", "eps"], lab_repo)
    out = run([sys.executable, "-m", "tools.compare"], lab_repo).stdout
    lines = out.splitlines()
    assert max(map(len, lines)) <= 100, out
    assert lines[2].split()[:3] == ["default,", "here", "(none)"], out
    assert lines[3].split()[:2] == ["default,", "committed"], out
    # the workspace now holds the experiment's outputs
    assert [line.split()[:2] for line in lines[4:6]] == [
        ["workspace", "optimizer.epsilon=0.001"],
        ["eps", "optimizer.epsilon=0.001"],
    ], out
    assert f"MLflow run {default_run[:8]}" in " ".join(out.split()), out


def test_make_exp_refuses_a_resume_from_that_is_no_snapshot_before_dvc_runs(lab_repo, exp_in):
    """`make exp S="train.resume_from=/etc/passwd ..."` was refused as an invalid experiment name:
    the name, not the value, was blamed. The validate stage's file checks now run first."""
    from spikelab.plumbing.errors import InputError
    from tools.exp import main

    left = (lab_repo / "params.yaml").read_text()
    with pytest.raises(InputError, match="a checkpoint of this lab is a snapshot"):
        main(["train.resume_from=/etc/passwd", "train.resume_epoch=1"])
    assert (lab_repo / "params.yaml").read_text() == left and not exp_in


def test_a_resume_from_path_names_the_experiment_by_its_file():
    from tools.exp import check_ref_name, experiment_name

    name = experiment_name(["train.resume_from=models/snapshots/epoch_00010.npz", "train.resume_epoch=10"])
    assert name == "resume_from=epoch_00010.npz,resume_epoch=10"
    check_ref_name(name)  # a valid git ref name: DVC takes it


def test_a_plain_repro_run_is_named_default_or_by_what_differs_from_the_commit(lab_repo, monkeypatch):
    """MLflow's runs table showed 'workspace' for every plain `dvc repro`, whatever params it ran."""
    from spikelab.tracking import run_name

    monkeypatch.chdir(lab_repo)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    assert run_name() == "default"
    leave_a_change_behind(lab_repo, "optimizer", "epsilon", 0.001)
    assert run_name() == "workspace epsilon=0.001"
    monkeypatch.setenv("DVC_EXP_NAME", "epsilon=1e-3")
    assert run_name() == "epsilon=1e-3"
