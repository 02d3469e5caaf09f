"""A project that moved or was renamed (issue 24, item 5): its MLflow store still names the old
folder; the lab says so in one line with the fix, and the fix works."""

from __future__ import annotations

import os
import shutil

import pytest
from mlflow.tracking import MlflowClient

from spikelab.plumbing.errors import TrackingError
from spikelab.tracking import prepare_experiment


def test_a_moved_store_is_refused_in_one_line_and_relocate_repairs_it(tmp_path, monkeypatch):
    from tools.relocate import main as relocate

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    old, new = tmp_path / "lab", tmp_path / "lab-renamed"
    old.mkdir()
    prepare_experiment("moved", old)
    shutil.move(old, new)
    with pytest.raises(TrackingError) as refused:
        prepare_experiment("moved", new)
    message = str(refused.value)
    assert "\n" not in message and str(old) in message and "make relocate" in message
    monkeypatch.chdir(new)
    assert relocate([]) == 0
    experiment_id = prepare_experiment("moved", new)
    location = MlflowClient(f"sqlite:///{new / 'mlflow.db'}").get_experiment(experiment_id).artifact_location
    assert location == (new / "mlruns" / "moved").as_uri()
    assert relocate([]) == 0  # again: nothing left to change


def test_one_process_serving_two_projects_sends_each_to_its_own_store(tmp_path, monkeypatch):
    """mlflow.set_tracking_uri writes MLFLOW_TRACKING_URI into the environment; read back as the
    user's choice, it sent the second project's experiment into the first project's store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    prepare_experiment("shared-name", first)
    experiment_id = prepare_experiment("shared-name", second)
    location = MlflowClient(f"sqlite:///{second / 'mlflow.db'}").get_experiment(experiment_id).artifact_location
    assert location == (second / "mlruns" / "shared-name").as_uri()
    assert "MLFLOW_TRACKING_URI" not in os.environ
