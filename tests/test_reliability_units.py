"""The small reliability cases of issue 23 that need no pipeline run: each input is refused in one
line that names it, before any work (the pipeline-level cases are in tests/test_reliability.py)."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, TINY
from spikelab.params import params_from_dict
from spikelab.plumbing.errors import InputError, ParamsError, UserError, removed_outputs_hint
from spikelab.snapshots import check_resume_in_project, save_snapshot


def refused(raw: dict) -> str:
    with pytest.raises(ParamsError) as raised:
        params_from_dict(raw)
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_a_key_with_a_trailing_space_is_named_as_written_not_as_missing():
    raw = copy.deepcopy(TINY)
    raw["train"]["epochs "] = raw["train"].pop("epochs")
    message = refused(raw)
    assert "'train.epochs '" in message and "spaces around its name" in message and "write 'train.epochs'" in message
    assert "missing" not in message


def test_a_misspelt_key_is_named_rather_than_the_key_it_replaced():
    raw = copy.deepcopy(TINY)
    raw["train"]["epoch"] = raw["train"].pop("epochs")
    assert refused(raw).startswith("params.yaml: unknown key 'train.epoch'; allowed keys in 'train': epochs")


def test_an_experiment_name_too_long_for_a_file_name_is_refused_up_front():
    raw = copy.deepcopy(TINY)
    raw["tracking"]["experiment"] = "x" * 300  # its artifact folder under mlruns/ could not be made
    assert "at most 255 bytes" in refused(raw)
    raw["tracking"]["experiment"] = "é" * 128  # 256 bytes in UTF-8: the limit is the file system's
    assert "at most 255 bytes" in refused(raw)
    raw["tracking"]["experiment"] = "x" * 255
    assert params_from_dict(raw).tracking.experiment == "x" * 255


def snapshot(folder: Path, epoch: int = 2) -> Path:
    path = folder / f"epoch_{epoch:05d}.npz"
    folder.mkdir(parents=True, exist_ok=True)
    save_snapshot(
        path,
        {"weight/conv1/kernel": np.zeros((3, 3, 1, 2), "float32")},
        epoch,
        [{"epoch": e, "loss": 1.0} for e in range(1, epoch + 1)],
    )
    return path


def test_a_resume_from_symlink_to_a_snapshot_outside_the_project_is_refused(tmp_path, monkeypatch):
    project, outside = tmp_path / "project", tmp_path / "elsewhere"
    inside = snapshot(project / "models" / "snapshots")
    (project / "models" / "link.npz").symlink_to(snapshot(outside))
    monkeypatch.chdir(project)
    check_resume_in_project("models/snapshots/epoch_00002.npz")  # inside: accepted
    check_resume_in_project(str(inside.resolve()))  # an absolute path inside too
    with pytest.raises(InputError) as raised:
        check_resume_in_project("models/link.npz")
    message = str(raised.value)
    assert "train.resume_from = models/link.npz" in message and str(outside.resolve()) in message
    assert "outside the project" in message


def test_a_queued_run_may_resume_from_a_snapshot_of_its_project(tmp_path, monkeypatch):
    """A queued experiment runs in <project>/.dvc/tmp/exps/<copy>: the project is still <project>."""
    project = tmp_path / "project"
    kept = snapshot(project / "study" / "replays" / "base-e2")
    copy_dir = project / ".dvc" / "tmp" / "exps" / "tmp123"
    copy_dir.mkdir(parents=True)
    monkeypatch.chdir(copy_dir)
    check_resume_in_project(str(kept))


def test_the_error_of_a_stage_whose_outputs_dvc_deleted_says_how_to_restore_them(tmp_path, monkeypatch):
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    monkeypatch.chdir(tmp_path)
    hint = removed_outputs_hint("train")
    assert "DVC deleted the train stage's outputs before it ran (models/best.keras" in hint
    assert "`dvc checkout --force train` and `git checkout HEAD -- metrics/run.json metrics/history.csv" in hint
    assert hint.endswith("restores the last committed ones")
    for name in ("data/lines.npz",):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert removed_outputs_hint("generate") == ""  # nothing missing: nothing to say


def committed_lab_files(folder: Path, committed: dict[str, bytes], locked: dict[str, bytes]) -> None:
    """dvc.yaml and the uncached train outputs committed with `committed`'s bytes, then a dvc.lock
    recording `locked`'s (the run DVC last recorded), left uncommitted; the outputs deleted, as DVC
    deletes them before it runs the stage."""
    import hashlib
    import subprocess

    import yaml

    def write_lock(files: dict[str, bytes]) -> None:
        outs = [{"path": name, "md5": hashlib.md5(data).hexdigest()} for name, data in files.items()]
        (folder / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {"train": {"outs": outs}}}))

    shutil.copy(REPO / "dvc.yaml", folder / "dvc.yaml")
    for name, data in committed.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    write_lock(committed)
    subprocess.run(["git", "init", "-q"], cwd=folder, check=True)
    subprocess.run(["git", "add", "-A"], cwd=folder, check=True)
    git_user = ["-c", "user.name=lab", "-c", "user.email=lab@localhost"]
    subprocess.run(["git", *git_user, "commit", "-qm", "run 1"], cwd=folder, check=True)
    write_lock(locked)
    for name in committed:
        (folder / name).unlink()


UNCACHED = ("metrics/run.json", "metrics/history.csv", "metrics/loss_curve.png", "metrics/train.json")


def test_the_restore_line_after_a_committed_run_brings_back_that_run(tmp_path, monkeypatch):
    files = {name: f"run 1 {name}".encode() for name in UNCACHED}
    committed_lab_files(tmp_path, files, files)
    monkeypatch.chdir(tmp_path)
    hint = removed_outputs_hint("train")
    assert f"`dvc checkout --force train` and `git checkout HEAD -- {' '.join(UNCACHED)}`" in hint
    assert hint.endswith("restores the last committed ones")


def test_the_restore_line_after_an_uncommitted_run_restores_the_committed_one_whole(tmp_path, monkeypatch):
    """The last run (dvc.lock) was never committed: its uncached metrics exist nowhere. Restoring its
    models with the commit's metrics would mix two runs: the line restores the commit's run whole."""
    run_1 = {name: f"run 1 {name}".encode() for name in UNCACHED}
    committed_lab_files(tmp_path, run_1, {name: f"run 2 {name}".encode() for name in UNCACHED})
    monkeypatch.chdir(tmp_path)
    hint = removed_outputs_hint("train")
    assert "were never committed, so that run cannot be restored" in hint
    assert f"`git checkout HEAD -- dvc.lock {' '.join(UNCACHED)}` and `dvc checkout --force train`" in hint
    assert "`dvc repro train` runs it again" in hint and "restores the last committed ones" not in hint


def test_a_store_failure_line_is_cut_between_words(monkeypatch):
    from spikelab import tracking

    monkeypatch.setattr(tracking, "BACKOFF_S", ())
    words = [f"word{index:03d}" for index in range(100)]  # 800 characters, no word a prefix of another

    def failing():
        raise RuntimeError(" ".join(words))

    run = tracking.TrainingRun("run-id")
    assert run.call("log epoch metrics", failing) is False
    shown = run.failure.removeprefix("log epoch metrics: ")
    assert shown.endswith(" ...") and len(shown) <= 304
    assert all(word in words for word in shown.removesuffix(" ...").split())


def test_a_finished_run_whose_process_lives_is_left_to_record_its_own_end(tmp_path, monkeypatch):
    """A population beside this one has written its members' finished markers and is about to
    record their ends: the orphan sweep must not mark them, nor say their end was never recorded."""
    import os
    import socket

    import mlflow

    from spikelab import tracking

    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = mlflow.create_experiment("orphans")
    client = mlflow.MlflowClient()
    alive = {
        "spikelab.host": socket.gethostname(),
        "spikelab.pid": str(os.getpid()),
        "spikelab.pid_start": tracking.process_start(os.getpid()),
    }
    gone = alive | {"spikelab.pid_start": "0"}  # the pid now names another process
    live_run = client.create_run(experiment_id, tags=alive).info.run_id
    dead_run = client.create_run(experiment_id, tags=gone).info.run_id
    for run_id in (live_run, dead_run):
        tracking.finished_marker(run_id).parent.mkdir(parents=True, exist_ok=True)
        tracking.finished_marker(run_id).touch()

    assert tracking.fail_orphans(experiment_id) == []
    assert client.get_run(live_run).info.status == "RUNNING" and tracking.finished_marker(live_run).exists()
    assert client.get_run(dead_run).info.status == "FINISHED" and not tracking.finished_marker(dead_run).exists()


def test_the_same_experiment_started_twice_at_once_is_refused_in_one_line(tmp_path, monkeypatch):
    """Two `make exp` of one name at once both exited 0, and DVC kept one experiment of the two."""
    from study import dvc_calls

    monkeypatch.chdir(tmp_path)
    started = []
    monkeypatch.setattr(dvc_calls.subprocess, "run", lambda command: started.append(command) or FakeDone(0))
    with dvc_calls.experiment_lock("twice"):  # the first one, still running
        with pytest.raises(UserError) as raised:
            dvc_calls.run_experiment("twice", ["-S", "train.seed=1"])
    message = str(raised.value)
    assert message.startswith("experiment twice is running already (process ") and "\n" not in message
    assert started == []  # DVC never ran the second
    assert dvc_calls.run_experiment("twice", []) == 0 and len(started) == 1  # once the first ended
    assert dvc_calls.run_experiment("other/name", []) == 0  # a ref name with a slash is one lock file


class FakeDone:
    def __init__(self, returncode: int):
        self.returncode = returncode


def test_a_run_lost_after_its_training_finished_names_its_finished_mlflow_run(tmp_path, monkeypatch, capsys):
    """A queue worker killed during rules or evaluate: the training's MLflow run is FINISHED; the
    line said "its training left no result ... no MLflow run", and the summary "MLflow run none"."""
    import mlflow

    from study import dvc_calls

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    experiment_id = client.create_experiment("lost")
    trained = client.create_run(experiment_id, tags={"dvc.exp_name": "late"}).info.run_id
    client.set_terminated(trained, "FINISHED")
    monkeypatch.setattr(dvc_calls, "recover_experiment", lambda name: False)  # no result to save
    monkeypatch.setattr(dvc_calls, "dvc", lambda *args, **kwargs: FakeDone(0))

    lost = dvc_calls.revive_dead_queue(["late"], {"late": "Running"}, jobs=1)

    out = capsys.readouterr().out
    assert lost == {"late": trained}
    assert (
        f"study: late lost: its dvc queue worker died mid-run and its training finished (MLflow run {trained} FINISHED)"
        in out
    )
    assert "left no result" not in out
    assert client.get_run(trained).info.status == "FINISHED"  # not marked FAILED: its training did finish


def test_a_resumed_run_the_store_lost_continues_in_a_new_run_with_one_line(tmp_path, monkeypatch, capsys):
    """A population resumed beside a copied or rebuilt store: its members' runs are not there.
    Training must go on in new runs, not stop on MLflow's 'Run with id=... not found'."""
    import mlflow

    from spikelab import tracking

    monkeypatch.chdir(tmp_path)
    with tracking.training_run("resumed", {"a": 1}, name="first") as first:
        kept = first.run_id
    with tracking.training_run("resumed", {"a": 1}, name="again", reopen=kept) as again:
        assert again.run_id == kept
    lost = "0" * 32
    with tracking.training_run("resumed", {"a": 1}, name="lost", reopen=lost) as fresh:
        assert fresh.run_id not in (lost, kept)
    assert f"MLflow run {lost} is gone from the store" in capsys.readouterr().err
    run = mlflow.MlflowClient().get_run(fresh.run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"a": "1"}
