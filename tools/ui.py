"""`make ui`: `mlflow ui` on the project's store, on loopback, and the link that opens its runs table.

    python -m tools.ui [--port 5000]

MLflow 3's UI starts in its GenAI view unless the URL says `?workflowType=machine_learning`, and
`mlflow ui` started from another folder opens an empty store of its own. This starts it on the
store the stages write to (spikelab.tracking: <project root>/mlflow.db, or MLFLOW_TRACKING_URI's
server, which needs no UI started) and prints the one link to open.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from spikelab.params import read_yaml
from spikelab.plumbing.errors import UserError, run_entry_point

LOOPBACK = "127.0.0.1"
TRAINING_VIEW = "?workflowType=machine_learning"


class UiError(UserError, ValueError):
    """The store or the port cannot be used; the message says what to do."""


def runs_url(base: str, experiment_id: str | None) -> str:
    """The runs table of the experiment in the training view (the experiments list without an id)."""
    path = f"#/experiments/{experiment_id}/runs" if experiment_id else "#/experiments"
    return f"{base.rstrip('/')}/{path}{TRAINING_VIEW}"


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
    print(f"ui: MLflow UI on the store {store}; open {runs_url(f'http://{LOOPBACK}:{args.port}', found)}", flush=True)
    if found is None:
        print(
            f"ui: the store has no experiment {name!r} (tracking.experiment) yet: the link opens the list", flush=True
        )
    print("ui: Ctrl-C stops it", flush=True)
    mlflow = str(Path(sys.executable).parent / "mlflow")
    command = [mlflow, "ui", "--backend-store-uri", uri, "--host", LOOPBACK, "--port", str(args.port)]
    os.execv(mlflow, command)


if __name__ == "__main__":
    run_entry_point(main)
