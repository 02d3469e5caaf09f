"""`make ui` (tools/ui.py) and what the MLflow UI shows of a run: its summary (issue 24, item 3), its
metrics in sections and the runs table's columns (issue 37, item 3)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from browser import Browser

from conftest import REPO, lab_env
from spikelab.history import read_history_csv
from spikelab.metric_names import EPOCH_SECTIONS, LOSS, ONCE_SECTIONS, TRAINING
from spikelab.tracking import (
    EXPERIMENT_TAGS,
    NOTE_START,
    RUNS_TABLE_COLUMNS,
    VIEW_KEY,
    VIEW_TAG,
    evaluation_metrics,
    log_metrics_at,
    prepare_experiment,
    stale_experiment_tags,
    summary_metrics,
    summary_tags,
    training_run,
)
from tools.ui import port_is_free

KIND = "mlflow.experimentKind"


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


@contextlib.contextmanager
def make_ui(root: Path):
    """`make ui` on the copy's store, stopped as a terminal's Ctrl-C would: yields (port, the lines it
    printed up to its link), the link last."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tools.ui", "--port", str(port)],
        cwd=root,
        env=lab_env(root) | {"SPIKELAB_UI_START_S": "300"},  # a test machine busy with other tests
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        lines = [process.stdout.readline()]
        while lines[-1] and not (len(lines) > 1 and lines[-1].startswith("ui:")):  # mlflow's own lines come between
            lines.append(process.stdout.readline())
        yield port, [line for line in lines if line.startswith("ui:")]
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


@pytest.mark.slow
def test_make_ui_serves_the_project_store_and_prints_the_training_view_link(lab_repo, tiny_raw):
    prepare_experiment(tiny_raw["tracking"]["experiment"], lab_repo)
    with make_ui(lab_repo) as (port, (first, link)):
        assert first.startswith("ui: starting") and str(lab_repo / "mlflow.db") in first
        view = f"workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"
        assert f"http://127.0.0.1:{port}/#/experiments/1/runs?{view}" in link
        # the link comes once the server answers
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=30) as answer:
            assert answer.status == 200
        url = f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/get-by-name?experiment_name=spikelab-test"
        with urllib.request.urlopen(url, timeout=60) as answer:  # first API call is slow on a busy machine
            assert b'"experiment_id": "1"' in answer.read().replace(b'":"', b'": "')
    # the server runs in a session of its own: make ui's SIGTERM must take it down too
    deadline = time.monotonic() + 60
    while not port_is_free(port) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert port_is_free(port), f"mlflow ui still serves 127.0.0.1:{port} after make ui was stopped"


def test_the_labs_view_and_description_are_kept_current_and_a_users_own_description_kept():
    current = EXPERIMENT_TAGS
    older = {key: f"{NOTE_START}an older description" if "note" in key else "{}" for key in current}
    assert stale_experiment_tags(older) == {key: value for key, value in current.items() if key != KIND}
    assert stale_experiment_tags({}) == current  # a store made before the tags existed
    users = current | {"mlflow.note.content": "my own notes", KIND: "genai_development"}
    assert stale_experiment_tags(users) == {}
    assert json.loads(current[VIEW_TAG])["selectedColumns"] == list(RUNS_TABLE_COLUMNS)
    assert "metrics.`summary/jump_ratio`" in RUNS_TABLE_COLUMNS and "tags.`diverged`" in RUNS_TABLE_COLUMNS


def log_the_committed_run(root: Path) -> str:
    """The committed default run's files (metrics/) logged into the copy's store by the stages' own
    logging: the epoch logger, the summary, the rules' and evaluation's metrics, the timing."""
    from spikelab.epoch_logging import MlflowEpochLogger
    from spikelab.params import flatten, load_params
    from spikelab.plumbing.timing import StageClock

    files = {
        name: json.loads((REPO / "metrics" / f"{name}.json").read_text()) for name in ("train", "rules", "evaluate")
    }
    params = load_params(root / "params.yaml")
    with training_run(params.tracking.experiment, flatten(params), name="default") as run:
        logger = MlflowEpochLogger(run.run_id, run=run)
        for row in read_history_csv(REPO / "metrics/history.csv"):
            # what Keras hands the callback: the row without its epoch and learning rate
            logger.on_epoch_end(
                int(row["epoch"]) - 1, {k: v for k, v in row.items() if k not in ("epoch", "learning_rate")}
            )
        logger.on_train_end()
        run.log_results(files["train"], [], [])
        for metrics in (summary_metrics(files["rules"]), evaluation_metrics(files["evaluate"])):
            log_metrics_at(run.run_id, metrics, 0)
        log_metrics_at(run.run_id, StageClock("train").metrics(), 0)
    return run.run_id


# the run page: its metric sections in order, the titles of the charts it drew, the sections folded
SECTIONS = """Array.from(document.querySelectorAll('[data-testid=experiment-view-compare-runs-section-header]'))
  .map(header => header.innerText.split('\\n')[0].trim())"""
CHARTS = """Array.from(document.querySelectorAll('[data-testid=experiment-view-compare-runs-card]'))
  .map(card => card.innerText.split('\\n')[0].trim())"""
FOLD_ALL_BUT_THE_FIRST = """Array.from(document.querySelectorAll('[data-testid=experiment-view-compare-runs-section-header]'))
  .slice(1).forEach(header => header.closest('[aria-expanded]').click())"""
# MLflow 3.17 opens its assistant beside every page of a fresh browser profile: closed, the table
# has the room to draw every column, and the pictures show the page
CLOSE_ASSISTANT = """(() => {
  const close = Array.from(document.querySelectorAll('button[aria-label=Close]'))
    .find(button => (button.parentElement.parentElement.innerText || '').includes('MLflow Assistant'));
  if (close) close.click();
  return Boolean(close);
})()"""
# the runs table's column headers: their ids are the view's column keys
COLUMN_IDS = "Array.from(document.querySelectorAll('[role=columnheader][col-id]')).map(h => h.getAttribute('col-id'))"


@pytest.mark.slow
def test_the_run_page_opens_on_the_loss_and_the_runs_table_on_the_summary(lab_repo, chromium, monkeypatch, tmp_path):
    """Issue 37, item 3, in the real UI: the run's charts in sections (the name before "/"), the
    loss's first; the link `make ui` prints opens the runs table with the lab's columns. Leaves
    runs-table-columns.png and run-page-sections.png in tmp_path (docs/img has copies)."""
    monkeypatch.chdir(lab_repo)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_id = log_the_committed_run(lab_repo)
    jump_ratio = json.loads((REPO / "metrics/train.json").read_text())["jump_ratio"]
    with make_ui(lab_repo) as (port, (_, link)):
        # wide: the table draws only the columns in the window
        with Browser(loopback_allowed=True, width=1800, height=600) as browser:
            browser.open(link.split()[-1], settle_s=2, timeout_s=120)
            assert browser.wait_until(f"document.body.innerText.includes('{jump_ratio}')", timeout_s=120)
            browser.evaluate(CLOSE_ASSISTANT)
            columns = list(RUNS_TABLE_COLUMNS)
            assert browser.wait_until(f"{json.dumps(columns)}.every(id => {COLUMN_IDS}.includes(id))", timeout_s=30), (
                browser.evaluate(COLUMN_IDS)
            )
            browser.screenshot(tmp_path / "runs-table-columns.png", full_page=False)
        with Browser(loopback_allowed=True, width=1280, height=1300) as browser:
            page = f"http://127.0.0.1:{port}/#/experiments/1/runs/{run_id}/model-metrics?workflowType=machine_learning"
            browser.open(page, settle_s=2, timeout_s=120)
            assert browser.wait_until(f"{CHARTS}.length >= 2 && {SECTIONS}.length >= 9", timeout_s=120)
            sections, charts = browser.evaluate(SECTIONS), browser.evaluate(CHARTS)
            # MLflow's order: sections by code point, then the keys without one ("Model metrics", none here)
            assert sections == [LOSS, TRAINING, *sorted({*EPOCH_SECTIONS, *ONCE_SECTIONS}), "Model metrics"], sections
            assert charts[:2] == ["loss", "val_loss"], charts  # each chart titled by its history.csv name
            browser.evaluate(CLOSE_ASSISTANT)
            browser.evaluate(FOLD_ALL_BUT_THE_FIRST)  # the picture: the loss, and every section's name below it
            # the charts are drawn again at the width the closed assistant left
            time.sleep(1)
            assert browser.wait_until("document.querySelectorAll('.js-plotly-plot').length >= 2", timeout_s=60)
            time.sleep(1)
            browser.screenshot(tmp_path / "run-page-sections.png", full_page=False)
