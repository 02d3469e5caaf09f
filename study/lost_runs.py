"""Runs lost with their queue worker, marked FAILED in MLflow: the study's business, not the stages'."""

from __future__ import annotations

import socket
from pathlib import Path

from mlflow.tracking import MlflowClient

from spikelab.tracking import mark_failed, process_gone, project_root, retry_locked, tracking_uri, use_store


def _runs_since(client: MlflowClient, experiments: list[str], name: str, since_ms: int) -> list:
    quoted = name.replace("'", "\\'")
    return retry_locked(
        client.search_runs,
        experiments,
        filter_string=f"tags.`dvc.exp_name` = '{quoted}' and attributes.start_time >= {since_ms}",
        max_results=100,
    )


def _client(root: Path | None) -> tuple[MlflowClient, list[str]]:
    use_store(tracking_uri(root or project_root()))
    client = MlflowClient()
    return client, [e.experiment_id for e in retry_locked(client.search_experiments)]


def fail_lost_runs(exp_names: list[str], reason: str, root: Path | None = None, since_ms: int = 0) -> dict[str, str]:
    """Mark FAILED (tagged `reason`) the runs of these DVC experiments started since `since_ms` that
    did not finish (RUNNING, or KILLED by a signal) and whose process on this host is gone;
    {experiment name: MLflow run id} of those marked."""
    client, experiments = _client(root)
    host = socket.gethostname()
    lost = {}
    for name in exp_names:
        for run in _runs_since(client, experiments, name, since_ms):
            if run.info.status in ("RUNNING", "KILLED") and process_gone(run.data.tags, host):
                mark_failed(client, run.info.run_id, reason)
                lost[name] = run.info.run_id
    return lost


def finished_trainings(exp_names: list[str], root: Path | None = None, since_ms: int = 0) -> dict[str, str]:
    """{experiment name: MLflow run id} of these DVC experiments' trainings since `since_ms` that
    FINISHED: the experiment was lost after its training (in rules, evaluate, or DVC's collect step)."""
    client, experiments = _client(root)
    return {
        name: run.info.run_id
        for name in exp_names
        for run in _runs_since(client, experiments, name, since_ms)
        if run.info.status == "FINISHED"
    }
