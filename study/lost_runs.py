"""Runs lost with their queue worker, marked FAILED in MLflow: the study's business, not the stages'."""

from __future__ import annotations

import socket
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from spikelab.tracking import mark_failed, process_gone, project_root, retry_locked, tracking_uri


def fail_lost_runs(exp_names: list[str], reason: str, root: Path | None = None, since_ms: int = 0) -> dict[str, str]:
    """Mark FAILED (tagged `reason`) the runs of these DVC experiments started since `since_ms` that
    did not finish (RUNNING, or KILLED by a signal) and whose process on this host is gone;
    {experiment name: MLflow run id} of those marked."""
    mlflow.set_tracking_uri(tracking_uri(root or project_root()))
    client, host = MlflowClient(), socket.gethostname()
    experiments = [e.experiment_id for e in retry_locked(client.search_experiments)]
    lost = {}
    for name in exp_names:
        quoted = name.replace("'", "\\'")
        found = retry_locked(
            client.search_runs,
            experiments,
            filter_string=f"tags.`dvc.exp_name` = '{quoted}' and attributes.start_time >= {since_ms}",
            max_results=100,
        )
        for run in found:
            if run.info.status in ("RUNNING", "KILLED") and process_gone(run.data.tags, host):
                mark_failed(client, run.info.run_id, reason)
                lost[name] = run.info.run_id
    return lost
