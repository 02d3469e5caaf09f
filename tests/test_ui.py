"""`make ui` (tools/ui.py) and what the MLflow UI shows of a run's summary (issue 24, item 3)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import lab_env
from spikelab.tracking import prepare_experiment, summary_tags


def test_the_summary_is_tagged_with_its_values_as_train_json_writes_them():
    tags = summary_tags({"diverged": True, "divergence_epoch": 99, "min_loss": 0.005248395726, "plateau_level": None})
    assert tags == {
        "summary.diverged": "true",
        "summary.divergence_epoch": "99",
        "summary.min_loss": "0.0052484",
        "summary.plateau_level": "none",
    }


def test_make_ui_without_a_store_says_how_to_make_one(tmp_path, monkeypatch, tiny_raw):
    import yaml

    from tools.ui import UiError, main

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_raw))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(UiError, match="make repro"):
        main(["--port", "5999"])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_make_ui_serves_the_project_store_and_prints_the_training_view_link(lab_repo, tiny_raw):
    prepare_experiment(tiny_raw["tracking"]["experiment"], lab_repo)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tools.ui", "--port", str(port)],
        cwd=lab_repo,
        env=lab_env(lab_repo),
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        first = process.stdout.readline()
        assert f"http://127.0.0.1:{port}/#/experiments/1/runs?workflowType=machine_learning" in first
        assert str(lab_repo / "mlflow.db") in first
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                    assert answer.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "mlflow ui did not answer in 120 s"
                time.sleep(1)
        url = f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/get-by-name?experiment_name=spikelab-test"
        with urllib.request.urlopen(url, timeout=10) as answer:
            assert b'"experiment_id": "1"' in answer.read().replace(b'":"', b'": "')
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
