"""`make ui`: `mlflow ui` on the project's store, on loopback, and the link that opens its runs table.

    python -m tools.ui [--port 5000]

MLflow 3's UI starts in its GenAI view unless the URL says `?workflowType=machine_learning`, shows
no metric column in the runs table unless the URL names a view (`viewStateShareKey`, the lab's
columns: spikelab.tracking.RUNS_TABLE_COLUMNS), and `mlflow ui` started from another folder opens an
empty store of its own. This starts it on the store the stages write to (spikelab.tracking:
<project root>/mlflow.db, or MLFLOW_TRACKING_URI's server, which needs no UI started), says it is
starting, and prints the one link to open once the server answers; a server that does not answer
within START_TIMEOUT_S (SPIKELAB_UI_START_S overrides it, for a slow machine) is stopped, in one
line.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from spikelab.params import read_yaml
from spikelab.plumbing.errors import UserError, run_entry_point

LOOPBACK = "127.0.0.1"
TRAINING_VIEW = "?workflowType=machine_learning"
# `mlflow ui` answered in seconds on a quiet machine and about 2 minutes after its start on a loaded one
START_TIMEOUT_S = 60.0
START_TIMEOUT_VARIABLE = "SPIKELAB_UI_START_S"


class UiError(UserError, ValueError):
    """The store or the port cannot be used; the message says what to do."""


def runs_url(base: str, experiment_id: str | None) -> str:
    """The runs table of the experiment in the training view, with the lab's columns (the
    experiments list without an id)."""
    from spikelab.tracking import VIEW_KEY

    if experiment_id is None:
        return f"{base.rstrip('/')}/#/experiments{TRAINING_VIEW}"
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs{TRAINING_VIEW}&viewStateShareKey={VIEW_KEY}"


def experiment_id(uri: str, name: str) -> str | None:
    from mlflow.tracking import MlflowClient

    found = MlflowClient(tracking_uri=uri).get_experiment_by_name(name)
    return found.experiment_id if found else None


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.ui", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=5000, help="the UI's port on 127.0.0.1")
    args = parser.parse_args(argv)
    root = Path.cwd()
    name = read_yaml(root / "params.yaml", "params")["tracking"]["experiment"]
    server = os.environ.get("MLFLOW_TRACKING_URI", "")
    if server.startswith(("http://", "https://")):
        print(f"ui: the runs are on the tracking server {server}: {runs_url(server, experiment_id(server, name))}")
        return 0
    store = root / "mlflow.db"
    if not store.exists():
        raise UiError(
            f"no MLflow store at {store}: `make repro` (or any `make exp`) creates it; run make ui from the project root"
        )
    if not port_is_free(args.port):
        raise UiError(f"port {args.port} on {LOOPBACK} is in use (another mlflow ui?): make ui PORT={args.port + 1}")
    uri = f"sqlite:///{store}"
    found = experiment_id(uri, name)
    timeout_s = start_timeout_s()
    print(f"ui: starting MLflow's UI on the store {store} (up to {timeout_s:.0f} s) ...", flush=True)
    process = subprocess.Popen(server_command(uri, args.port), start_new_session=True)
    # the server is in a session of its own (Ctrl-C must not reach its workers first); a SIGTERM or
    # a closed terminal would end this process without its `finally` and leave the server running
    before = {stop: signal.signal(stop, stop_by_interrupt) for stop in (signal.SIGTERM, signal.SIGHUP)}
    try:
        wait_until_answered(process, args.port, timeout_s)
        print(f"ui: open {runs_url(f'http://{LOOPBACK}:{args.port}', found)}", flush=True)
        if found is None:
            print(f"ui: the store has no experiment {name!r} (tracking.experiment) yet: the link opens the list")
        print("ui: Ctrl-C stops it", flush=True)
        return process.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait()
        for stop, handler in before.items():
            signal.signal(stop, handler)


def stop_by_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def start_timeout_s() -> float:
    text = os.environ.get(START_TIMEOUT_VARIABLE, str(START_TIMEOUT_S))
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise UiError(f"{START_TIMEOUT_VARIABLE}={text!r}: give the seconds to wait for the UI, e.g. 300")
    return value


def server_command(uri: str, port: int) -> list[str]:
    mlflow = str(Path(sys.executable).parent / "mlflow")
    return [mlflow, "ui", "--backend-store-uri", uri, "--host", LOOPBACK, "--port", str(port)]


def wait_until_answered(server: subprocess.Popen, port: int, timeout_s: float) -> None:
    """Poll the server's /health until it answers; UiError when it exits or stays silent past timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        if server.poll() is not None:
            raise UiError(
                f"mlflow ui exited ({server.returncode}) before it answered on port {port}; its lines are above"
            )
        try:
            with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise UiError(
                f"mlflow ui did not answer on {LOOPBACK}:{port} within {timeout_s:.0f} s; stopped it "
                f"(a loaded machine: {START_TIMEOUT_VARIABLE}=300 make ui)"
            )
        time.sleep(0.5)


if __name__ == "__main__":
    run_entry_point(main)
