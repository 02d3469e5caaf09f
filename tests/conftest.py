"""Shared fixtures: tiny params, and a throw-away copy of the repo (git + DVC) to run stages in.

Everything here is tiny and CPU-only: a handful of 32x32 images, a 2-filter model, a few epochs.
Each copy has its own sqlite MLflow store (the default one, at the copy's root).
"""

from __future__ import annotations

import copy
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from browser import chromium_binary
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from benchmarks.workspace import commit_fresh_repo, copy_tracked_files
from spikelab.params import ModelParams, read_yaml
from study.dvc_calls import is_broker_race

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

# The tiny test configuration: params.yaml with these keys changed, and nothing else. A new
# params key needs no edit here: it comes with params.yaml's default.
TINY_CHANGES = {
    "data": {"per_class": 96, "length_max": 20},
    "split": {"val_per_class": 32},
    "model": {"filters": 2},
    "optimizer": {"learning_rate": 0.001},
    "train": {"epochs": 3, "snapshot_every": 1},
    "diagnostics": {"probe_size": 32},
    "tracking": {"experiment": "spikelab-test"},
}


def with_changes(raw: dict, changes: dict) -> dict:
    """A copy of parsed params with {section: {key: value}} changes, each key checked to exist."""
    raw = copy.deepcopy(raw)
    for section, values in changes.items():
        for key, value in values.items():
            assert key in raw[section], f"no key {section}.{key} in params.yaml"
            raw[section][key] = value
    return raw


TINY = with_changes(read_yaml(REPO / "params.yaml", "params"), TINY_CHANGES)


@pytest.fixture
def tiny_raw() -> dict:
    """A fresh, mutable copy of the tiny params (as parsed YAML)."""
    return copy.deepcopy(TINY)


def lab_env(root: Path) -> dict:
    """Environment for stage/DVC subprocesses: the venv first on PATH, no outside MLflow server."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("MLFLOW_TRACKING_URI", None)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["PYTHONPATH"] = str(root)
    return env


def run(args: list[str], cwd: Path, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=lab_env(cwd), capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


def write_params(root: Path, raw: dict) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


@pytest.fixture(scope="module")
def chromium():
    """A test that drives the real browser (tests/browser.py) needs Chromium."""
    if chromium_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing on CI: .ci/run runs `make browser-setup` first")
        pytest.skip("Chromium is not installed (make browser-setup installs it from the OS packages)")


@pytest.fixture
def lab_repo(tmp_path: Path, tiny_raw: dict) -> Path:
    """A copy of the repo's tracked files with tiny params, as a fresh git repo with DVC, committed."""
    return make_lab(tmp_path / "lab", tiny_raw)


def make_lab(root: Path, raw: dict) -> Path:
    """What lab_repo does, for fixtures of a wider scope."""
    copy_tracked_files(REPO, root)
    write_params(root, raw)
    commit_fresh_repo(root, "tiny lab")
    return root


def wait_for_queue(root: Path, timeout_s: float = 900) -> str:
    """Poll `dvc queue status` until nothing is queued or running; returns the last status."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = run(["dvc", "queue", "status"], root, check=False)
        status = result.stdout + result.stderr
        # the queue's message files read mid-write (study.dvc_calls.is_broker_race): poll again
        if result.returncode != 0 and not is_broker_race(result):
            raise AssertionError(f"dvc queue status exited {result.returncode}:\n{status}")
        if result.returncode == 0 and "Queued" not in status and "Running" not in status:
            return status
        time.sleep(3)
    raise AssertionError(f"queue still busy after {timeout_s}s:\n{status}")


def stage_command(root: Path, name: str) -> list[str]:
    """The stage's command line as dvc.yaml writes it (its paths are written there only)."""
    stages = read_yaml(root / "dvc.yaml", "dvc")["stages"]
    return shlex.split(stages[name]["cmd"])


def tiny_model_params(**changes) -> ModelParams:
    """The tiny config's model section, with changes (e.g. filters=64)."""
    return ModelParams(**{**TINY["model"], **changes})


def store_client(root: Path) -> MlflowClient:
    """A client of the copy's own sqlite store."""
    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def mlflow_runs(root: Path) -> list:
    """Every run (deleted ones too) of the tiny config's experiment in the copy's own store; none
    when the store was never created."""
    if not (root / "mlflow.db").exists():
        return []
    client = store_client(root)
    experiment = client.get_experiment_by_name(TINY["tracking"]["experiment"])
    return [] if experiment is None else client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL)
