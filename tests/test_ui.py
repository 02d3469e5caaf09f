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
from tools.ui import port_is_free


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


def test_make_ui_stops_a_server_that_does_not_answer_in_one_line(tmp_path, monkeypatch, tiny_raw, capsys):
    """The link is printed only once the server answers; a silent one fails in one line (issue 37)."""
    import yaml

    import tools.ui

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_raw))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    prepare_experiment(tiny_raw["tracking"]["experiment"], tmp_path)
    monkeypatch.setattr(
        tools.ui, "server_command", lambda uri, port: [sys.executable, "-c", "import time; time.sleep(60)"]
    )
    monkeypatch.setenv("SPIKELAB_UI_START_S", "2")
    started = time.monotonic()
    with pytest.raises(tools.ui.UiError, match="did not answer on 127.0.0.1:5998 within 2 s") as raised:
        tools.ui.main(["--port", "5998"])
    assert time.monotonic() - started < 30
    assert "\n" not in str(raised.value)
    out = capsys.readouterr().out
    assert out.startswith("ui: starting") and "http://" not in out
    monkeypatch.setenv("SPIKELAB_UI_START_S", "soon")
    with pytest.raises(tools.ui.UiError, match="SPIKELAB_UI_START_S='soon'"):
        tools.ui.main(["--port", "5998"])


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
        env=lab_env(lab_repo) | {"SPIKELAB_UI_START_S": "300"},  # a test machine busy with other tests
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        first = process.stdout.readline()
        assert first.startswith("ui: starting") and str(lab_repo / "mlflow.db") in first
        link = process.stdout.readline()
        while link and not link.startswith("ui:"):  # mlflow's own lines come between
            link = process.stdout.readline()
        assert f"http://127.0.0.1:{port}/#/experiments/1/runs?workflowType=machine_learning" in link
        # the link comes once the server answers
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=30) as answer:
            assert answer.status == 200
        url = f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/get-by-name?experiment_name=spikelab-test"
        with urllib.request.urlopen(url, timeout=60) as answer:  # first API call is slow on a busy machine
            assert b'"experiment_id": "1"' in answer.read().replace(b'":"', b'": "')
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    # the server runs in a session of its own: make ui's SIGTERM must take it down too
    deadline = time.monotonic() + 60
    while not port_is_free(port) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert port_is_free(port), f"mlflow ui still serves 127.0.0.1:{port} after make ui was stopped"
