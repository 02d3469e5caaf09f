"""MLflow tracking: one store per project, reachable before training, never a cost to the training.

`training_run` is the whole life of a training's MLflow run (store, tags, params, orphan clean-up,
the FINISHED / KILLED / FAILED ending); `log_metrics_at` logs metrics at a step, for any stage.

MLflow is the second view (the DVC outputs are the record): once the run is open, a failing
store must not stall or stop the training. Every call during the run goes through
`TrainingRun.call`: a few retries with back-off (seconds in all, HTTP requests bounded by
BOUNDED_HTTP), then the run is *degraded*: nothing more is sent, the training goes on, and
the stage says in one line how to upload what is missing (`python -m tools.sync`).

The default store is sqlite:///<project root>/mlflow.db with artifacts in <project root>/mlruns,
which is what `mlflow ui` opens from the project root. DVC runs queued and temp experiments in
a copy of the repo under <root>/.dvc/tmp/exps/ that lacks git-ignored files; the project root is
found from that path so such runs still land in the one store. MLFLOW_TRACKING_URI overrides.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.entities.lifecycle_stage import LifecycleStage
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.tracking.context.registry import resolve_tags

from spikelab.metric_names import mlflow_key
from spikelab.params import flat_raw
from spikelab.plumbing.errors import (
    DiskFullError,
    TrackingError,
    UserError,
    disk_full_error,
    disk_full_in,
    one_line,
    one_line_shortened,
)
from spikelab.plumbing.files import project_root
from spikelab.plumbing.lifetime import stat_fields
from spikelab.plumbing.machine import cpu_model

SYNC_COMMAND = "python -m tools.sync"
# MLflow's own HTTP retries take minutes (7 retries, back-off factor 2) and a request may wait
# 120 s: during a training every request fails fast and TrainingRun.call does the retrying
BOUNDED_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "3"}
BACKOFF_S = (0.5, 1.0, 2.0)  # pauses between the attempts of one call: 3.5 s, plus at most 4 timeouts
ORPHAN_TAG = "spikelab.failed_reason"


def tracking_uri(root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"


def use_store(uri: str) -> None:
    """Point this process's MLflow at `uri`. mlflow.set_tracking_uri also writes MLFLOW_TRACKING_URI
    into the environment, which tracking_uri reads as the user's choice: a process that served one
    project would then send the next project's runs to the first store. The variable is put back."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds, with the URI in the message, when a tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as response:
            response.read()
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise TrackingError(
            f"MLflow tracking server at {uri} (MLFLOW_TRACKING_URI) is unreachable: {reason}. "
            "Start it, or unset MLFLOW_TRACKING_URI to use the project's sqlite store."
        ) from None


@contextlib.contextmanager
def _store_lock(root: Path):
    """Serialise store creation: parallel first runs otherwise race on sqlite's schema migration."""
    with open(root / ".mlflow.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def retry_locked(call, *args, attempts: int = 20, **kwargs):
    """Run an MLflow call, retrying while sqlite says "database is locked" (parallel workers)."""
    for attempt in range(attempts):
        try:
            return call(*args, **kwargs)
        except Exception as error:  # MlflowException wraps sqlalchemy's OperationalError
            if "locked" not in str(error) or attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


# MLflow's and alembic's INFO lines (store creation, schema migrations) are not the lab's news
for _name in ("mlflow", "alembic"):
    logging.getLogger(_name).setLevel(logging.WARNING)
# MLflow's sqlite store logs every failed statement with its traceback before raising it (a full
# disk: one per retry, dozens in all); the exception itself reaches the lab, which says it in one line
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)

# each open run keeps this much disk reserved (a file under .dvc/tmp), freed when the disk fills: a
# full disk leaves sqlite no room for the journal of the updates that end the run FAILED (a few
# 4 KB pages); with less room left at the start, the largest of the halves down to 16 KB that fits
RESERVE_BYTES = 256_000

# the runs table's columns: MLflow 3 shows none of a run's params, metrics or tags until chosen,
# and keeps the choice in the browser; a view shared through the UI is an experiment tag
# mlflow.sharedViewState.<key>, opened by a link with ?viewStateShareKey=<key> (tools/ui.py)
VIEW_KEY = "spikelab"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
RUNS_TABLE_COLUMNS = (
    *(f"params.`{key}`" for key in ("optimizer.epsilon", "loss.name", "loss.form")),
    "tags.`diverged`",
    *(
        f"metrics.`{mlflow_key(name)}`"
        for name in (
            "summary.divergence_epoch",
            "summary.jump_ratio",
            "summary.plateaued",
            "summary.final_loss",
            "eval.last.accuracy",
        )
    ),
)

# MLflow 3's UI shows an experiment without a kind as GenAI work (traces, evaluations); this kind
# opens it on its runs table. The note is the experiment's description on that page.
NOTE_START = "spikelab: "  # the lab's descriptions start so: an older one is replaced, the user's own kept
EXPERIMENT_TAGS = {
    "mlflow.experimentKind": "custom_model_development",
    "mlflow.note.content": (
        f"{NOTE_START}why does the training loss fall for a long time, then shoot up? One run per training "
        "(a DVC experiment, named after it; `workspace` for a plain `dvc repro`). Params are params.yaml's "
        "keys. Metrics are section/name, the name as the DVC files have it: per epoch (metrics/history.csv) "
        "Loss/ (loss, val_loss), Training/ (accuracy), adam/, curvature/, dead_zone/, weights/; once, summary/ "
        "(metrics/train.json: diverged, divergence_epoch, jump_ratio, final_loss; metrics/rules.json: "
        "plateaued), eval/ (metrics/evaluate.json: last.accuracy), time/ (each stage's phases). The summary.* "
        "tags hold train.json's values as the file writes them."
    ),
    VIEW_TAG: json.dumps({"selectedColumns": list(RUNS_TABLE_COLUMNS)}),
}


def stale_experiment_tags(tags: dict) -> dict:
    """The lab's experiment tags that `tags` lack (a store made before they existed) or hold as an
    older lab wrote them (its view; its description, not one the user wrote instead)."""
    return {
        key: value
        for key, value in EXPERIMENT_TAGS.items()
        if tags.get(key) is None
        or (
            tags[key] != value
            and (key == VIEW_TAG or (key == "mlflow.note.content" and tags[key].startswith(NOTE_START)))
        )
    }


RELOCATE_COMMAND = "make relocate"


def check_store_location(artifact_location: str, experiment: str, root: Path) -> None:
    """The project's store keeps absolute artifact folders: after the project moved (or was renamed,
    or copied), its runs would write into the old folder. Refused before training, in one line."""
    location = (
        Path(urllib.parse.urlparse(artifact_location).path) if "://" in artifact_location else Path(artifact_location)
    )
    if location.is_relative_to(root):
        return
    raise TrackingError(
        f"the MLflow store {root / 'mlflow.db'} keeps experiment '{experiment}' in {location}, outside this project: "
        f"it was made in {location.parent.parent} (the project moved, or was renamed or copied); "
        f"`{RELOCATE_COMMAND}` points the store at {root / 'mlruns'}"
    )


def prepare_experiment(experiment: str, root: Path) -> str:
    """Point MLflow at the store, create it and the experiment once; return the experiment id."""
    uri = tracking_uri(root)
    check_reachable(uri)
    use_store(uri)
    is_local_sqlite = uri.startswith("sqlite:///")
    lock = _store_lock(root) if is_local_sqlite else contextlib.nullcontext()
    with lock:
        client = MlflowClient()
        found = retry_locked(client.get_experiment_by_name, experiment)
        if found is not None:
            if found.lifecycle_stage == LifecycleStage.DELETED:
                # MLflow would refuse the run deep inside start_run, with a traceback
                raise TrackingError(
                    f"MLflow experiment '{experiment}' (tracking.experiment) is deleted in {uri}: restore it with "
                    f"`mlflow experiments restore --experiment-id {found.experiment_id}`, remove it for good with "
                    "`mlflow gc`, or choose another tracking.experiment"
                )
            if is_local_sqlite:
                check_store_location(found.artifact_location, experiment, root)
            for key, value in stale_experiment_tags(found.tags).items():
                retry_locked(client.set_experiment_tag, found.experiment_id, key, value)
            return found.experiment_id
        # absolute artifact folder: a relative one would resolve inside DVC's throw-away copy
        location = (root / "mlruns" / experiment).as_uri() if is_local_sqlite else None
        return retry_locked(client.create_experiment, experiment, artifact_location=location, tags=EXPERIMENT_TAGS)


def git_commit(root: Path) -> str:
    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def run_name() -> str:
    """The DVC experiment's name. For a plain `dvc repro`: `default` when params.yaml is the
    committed one, else `workspace` and what differs from it (`workspace epsilon=0.001`): the
    runs table shows names, and a bare 'workspace' said nothing of what ran."""
    if os.environ.get("DVC_EXP_NAME"):
        return os.environ["DVC_EXP_NAME"]
    changed = params_changed_from_head()
    if changed is None:
        return "workspace"
    if not changed:
        return "default"
    shown = ",".join(f"{key.rpartition('.')[2]}={value}" for key, value in changed.items())
    return f"workspace {shown[:MAX_NAME_CHANGES]}{'...' if len(shown) > MAX_NAME_CHANGES else ''}"


MAX_NAME_CHANGES = 120  # characters of changes in a run name (MLflow's table shows fewer)


def params_changed_from_head(path: Path = Path("params.yaml")) -> dict | None:
    """{section.key: value} where params.yaml differs from git HEAD's; None when either cannot be read."""
    from ruamel.yaml import YAML

    result = subprocess.run(["git", "show", f"HEAD:{path}"], capture_output=True, text=True)
    try:
        committed, current = (YAML(typ="safe").load(text) for text in (result.stdout, path.read_text()))
    except Exception:  # noqa: BLE001 -- a name is cosmetic: never stop a training for it
        return None
    if result.returncode != 0 or not isinstance(committed, dict) or not isinstance(current, dict):
        return None

    old, new = flat_raw(committed), flat_raw(current)
    return {key: new.get(key) for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key)}


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot, or None when no such process exists: with
    the pid it names one process, even after the pid is reused."""
    fields = stat_fields(pid)
    return None if fields is None else fields[19]


def run_tags(root: Path) -> dict[str, str]:
    tags = {
        "mlflow.source.git.commit": git_commit(Path.cwd()),
        "spikelab.project_root": str(root),
        # who runs it: a later training on this host marks the run FAILED if this process is gone
        "spikelab.host": socket.gethostname(),
        # the CPU model: `make compare` takes a baseline only from runs made on this one
        "spikelab.machine": cpu_model(),
        "spikelab.pid": str(os.getpid()),
        "spikelab.pid_start": process_start(os.getpid()) or "unknown",
    }
    for variable in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        if os.environ.get(variable):
            tags[f"dvc.{variable[4:].lower()}"] = os.environ[variable]
    return tags


def fail_orphans(experiment_id: str) -> list[str]:
    """Mark FAILED (tagged why) the RUNNING runs of the experiment whose process on this host is gone
    (killed with -9, the machine's OOM killer): they would otherwise read as running forever."""
    client, host = MlflowClient(), socket.gethostname()
    found = retry_locked(
        client.search_runs, [experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000
    )
    failed = []
    finished = finished_run_ids()
    for run in found:
        if run.info.run_id in finished:
            if not process_gone(run.data.tags, host):
                # its process lives (a population beside this one, between its training and its end):
                # it records the end itself
                continue
            # its training finished and wrote its outputs, and its process is gone: the store failed
            # to record the end
            retry_locked(client.set_terminated, run.info.run_id, "FINISHED")
            finished_marker(run.info.run_id).unlink(missing_ok=True)
            print(
                f"train: run {run.info.run_id} finished but its end was never recorded; marked FINISHED "
                f"(`{SYNC_COMMAND}` uploads what it lacks)",
                file=sys.stderr,
            )
            continue
        if process_gone(run.data.tags, host):
            pid = run.data.tags["spikelab.pid"]
            reason = f"orphan: its process {pid} on {host} no longer exists (found by process {os.getpid()})"
            mark_failed(client, run.info.run_id, reason)
            failed.append(run.info.run_id)
    return failed


def finished_marker(run_id: str) -> Path:
    """An empty file saying the run's training finished and wrote its outputs, kept until the store
    records the end: outside DVC's outputs, which `dvc repro` deletes before the next training."""
    return project_root() / ".dvc" / "tmp" / "spikelab-finished" / run_id


def finished_run_ids() -> set[str]:
    folder = finished_marker("none").parent
    return {path.name for path in folder.iterdir()} if folder.is_dir() else set()


def process_gone(tags: dict, host: str) -> bool:
    """Whether the run's training process, on this host, no longer exists (False for another
    machine's run, or one without a process to check)."""
    if tags.get("spikelab.host") != host or not tags.get("spikelab.pid", "").isdigit():
        return False
    started = process_start(int(tags["spikelab.pid"]))
    # a pid that now names another process does not count as its process
    return started is None or tags.get("spikelab.pid_start") not in (started, "unknown")


def mark_failed(client: MlflowClient, run_id: str, reason: str) -> None:
    retry_locked(client.set_tag, run_id, ORPHAN_TAG, reason)
    retry_locked(client.set_terminated, run_id, "FAILED")


def log_metric_list(run_id: str, metrics: list[Metric]) -> None:
    for start in range(0, len(metrics), 1000):  # MLflow's log_batch limit
        retry_locked(MlflowClient().log_batch, run_id, metrics=metrics[start : start + 1000])


def _is_number(value) -> bool:
    return isinstance(value, (int, float))  # a bool counts as 0/1 (diverged: 1)


def numeric_metrics(metrics: dict, step: int) -> list[Metric]:
    """The numeric values of `metrics` at `step`, under their MLflow keys (spikelab.metric_names);
    NaN and inf are kept as they are (they show a blow-up)."""
    stamp = int(time.time() * 1000)
    return [Metric(mlflow_key(key), float(value), stamp, step) for key, value in metrics.items() if _is_number(value)]


def log_metrics_at(run_id: str, metrics: dict, step: int) -> None:
    log_metric_list(run_id, numeric_metrics(metrics, step))


def summary_metrics(metrics: dict) -> dict:
    """metrics/train.json or rules.json as the run's summary/<key> metrics (step 0; bools as 0/1, nulls left out)."""
    return {mlflow_key(f"summary.{key}"): value for key, value in metrics.items() if value is not None}


def summary_tags(metrics: dict) -> dict:
    """metrics/train.json as the run's summary.<key> tags, as the file writes them (true, 99, none):
    a metric logged once is drawn by the UI as one bar labelled with two decimals (a flag or a loss
    of 0.005 reads 0.00), a tag shows its value in the runs table and on the run's page."""

    def shown(value) -> str:
        if value is None or isinstance(value, bool):
            return str(value).lower() if value is not None else "none"
        return f"{value:.6g}" if isinstance(value, float) else str(value)

    return {f"summary.{key}": shown(value) for key, value in metrics.items()}


def evaluation_metrics(results: dict) -> dict:
    """metrics/evaluate.json as the run's eval/<model>.<key> metrics."""
    return {
        mlflow_key(f"eval.{name}.{key}"): value for name, scores in results.items() for key, value in scores.items()
    }


class TrainingRun:
    """The open MLflow run of a training: its per-epoch logger, what it records at the end, and
    whether the store failed along the way (`failure`; then the run is incomplete)."""

    def __init__(self, run_id: str, name: str = ""):
        self.run_id = run_id
        self.name = name  # the runs table's name, as the run was created with it
        self.failure: str | None = None
        self.training = True  # a full disk stops the training; once it wrote its outputs, it degrades the run

    def reserve(self) -> None:
        """Keep RESERVE_BYTES (or less) of the project's disk for the run's end."""
        path, size = reserve_file(self.run_id), RESERVE_BYTES
        while size >= 16_000:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "wb") as handle:
                    os.posix_fallocate(handle.fileno(), 0, size)
                return
            except OSError:
                path.unlink(missing_ok=True)
                size //= 2

    def release(self) -> None:
        reserve_file(self.run_id).unlink(missing_ok=True)

    def call(self, what: str, function, *args, **kwargs) -> bool:
        """Run one MLflow call with bounded, backed-off retries. After a failure the run is degraded
        and every later call is skipped: one stall of seconds, not one per epoch. Raises only when
        the store found its disk full and the project's disk is full too (the same disk, usually):
        the training could write none of its outputs, so it stops at once (DiskFullError)."""
        if self.failure is not None:
            return False
        for pause in (*BACKOFF_S, None):
            try:
                function(*args, **kwargs)
                return True
            except Exception as error:  # any failure of the store: HTTP, sqlite, disk
                failure = f"{what}: {one_line_shortened(error, 300)}"
                if self.training and disk_full_in(error) is not None and project_disk_full():
                    self.failure = failure
                    full = store_full_error(f"at {what}; the training stopped")  # the room before the release
                    self.release()  # room for the run's end
                    raise full from None
                if pause is None:
                    self.failure = failure
                    print(f"train: MLflow failed ({self.failure}); training goes on without it", file=sys.stderr)
                    return False
                time.sleep(pause)
        return False

    def log_results(self, metrics: dict, metric_files: list[Path], model_files: list[Path]) -> None:
        """summary/<key> metrics (for searches and comparisons) and summary.<key> tags (the values,
        readable in the UI), the files as artifacts, a `diverged` tag; first, the mark that the
        training finished (an empty file: it fits where a full disk fits nothing else)."""
        self.training = False
        try:
            finished_marker(self.run_id).parent.mkdir(parents=True, exist_ok=True)
            finished_marker(self.run_id).touch()
        except OSError:
            pass
        client = MlflowClient()
        self.call("log summary metrics", log_metrics_at, self.run_id, summary_metrics(metrics), 0)
        tags = [RunTag(key, value) for key, value in summary_tags(metrics).items()]
        self.call("tag the summary", retry_locked, client.log_batch, self.run_id, tags=tags)
        for path in metric_files:
            self.call(f"log {path.name}", retry_locked, client.log_artifact, self.run_id, str(path))
        for path in model_files:
            self.call(f"log {path.name}", retry_locked, client.log_artifact, self.run_id, str(path), "checkpoints")
        self.call(
            "tag diverged", retry_locked, client.set_tag, self.run_id, "diverged", str(metrics["diverged"]).lower()
        )

    def end(self, status: str, reason: str | None = None) -> None:
        """End the run `status`, tagged with the reason of a failure (ORPHAN_TAG) if there is one.
        The disk the run reserved is freed first: on a full disk it is the room this update needs."""
        self.release()
        self.training = False  # nothing left to stop: the end never raises
        client = MlflowClient()
        if self.failure is None:
            if reason is not None:
                self.call("tag the failure", retry_locked, client.set_tag, self.run_id, ORPHAN_TAG, reason)
            ended = self.call(f"end the run {status}", retry_locked, client.set_terminated, self.run_id, status)
        else:
            # degraded: the end is still tried, once (a full artifact folder leaves the store itself
            # working); a run left RUNNING would be taken for an orphan by the next training
            try:
                if reason is not None:
                    client.set_tag(self.run_id, ORPHAN_TAG, reason)
                client.set_terminated(self.run_id, status)
                ended = True
            except Exception:  # the store is down or full: the incomplete line says how to finish it
                ended = False
        if ended:
            finished_marker(self.run_id).unlink(missing_ok=True)

    def incomplete_line(self) -> str | None:
        """The one line a degraded run prints: which run, why, and the command that completes it."""
        if self.failure is None:
            return None
        return (
            f"train: MLflow run {self.run_id} is incomplete ({self.failure}); the outputs are complete and "
            f"recorded by DVC; upload the missing data with `{SYNC_COMMAND}` (or `make sync`) once MLflow is back"
        )


def reserve_file(run_id: str) -> Path:
    return project_root() / ".dvc" / "tmp" / "spikelab-reserve" / run_id


def project_disk_full() -> bool:
    """Whether the project's disk has less room than a run reserves (it cannot hold the outputs)."""
    return shutil.disk_usage(project_root()).free < RESERVE_BYTES


def store_full_error(what: str) -> DiskFullError:
    """The one line for a store that found the project's disk full."""
    root = project_root()
    uri = tracking_uri(root)
    where = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else root
    return disk_full_error(where, RESERVE_BYTES, f"(the MLflow store, {what})")


@contextlib.contextmanager
def opening_the_run():
    """A full disk met while the run opens (the store's tables, the run's row) is one line."""
    try:
        yield
    except UserError:
        raise
    except Exception as error:
        if disk_full_in(error) is None:
            raise
        raise store_full_error("while opening the run") from None


@contextlib.contextmanager
def bounded_http():
    """MLflow's HTTP requests fail fast in the block (see BOUNDED_HTTP); the environment is restored after."""
    saved = {name: os.environ.get(name) for name in BOUNDED_HTTP}
    os.environ.update(BOUNDED_HTTP)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def log_params(client: MlflowClient, run_id: str, params: dict) -> None:
    items = [Param(key, str(value)) for key, value in params.items()]
    for start in range(0, len(items), 100):  # MLflow's log_batch limit for params
        retry_locked(client.log_batch, run_id, params=items[start : start + 100])


def run_exists(client: MlflowClient, run_id: str) -> bool:
    """Whether the store still holds the run (a store copied without it, or the run deleted, answers no)."""
    from mlflow.exceptions import MlflowException

    try:
        return retry_locked(client.get_run, run_id).info.lifecycle_stage != "deleted"
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise


@contextlib.contextmanager
def training_run(
    experiment: str, params: dict, name: str | None = None, tags: dict | None = None, reopen: str | None = None
):
    """Open the run (named after the DVC experiment, or `name`; tagged, `tags` added; params logged)
    after failing the experiment's orphans; end it FINISHED when the block completes, KILLED on an
    interrupt (SIGINT/SIGTERM arrive as KeyboardInterrupt), else FAILED. A population's member runs
    pass the cell's run as their parent (tag mlflow.parentRunId): `mlflow ui` nests them under it.
    reopen=<run id>: continue that run instead (a stopped population resumed): RUNNING again, this
    process's tags, the reason it was marked failed removed.

    Opening the run may fail (TrackingError, before any training; DiskFullError on a full disk);
    once it is open, no MLflow failure raises but a full disk of the project's (DiskFullError: the
    training stops): the run degrades instead (TrainingRun.call).
    """
    root = project_root()
    with opening_the_run():
        experiment_id = prepare_experiment(experiment, root)
        client = MlflowClient()
        for run_id in fail_orphans(experiment_id):
            print(f"train: marked run {run_id} FAILED: its process no longer exists", file=sys.stderr)
        if reopen is not None and not run_exists(client, reopen):
            print(
                f"train: MLflow run {reopen} is gone from the store; the resumed training logs to a new run",
                file=sys.stderr,
            )
            reopen = None
        if reopen is None:
            created = retry_locked(
                client.create_run,
                experiment_id,
                tags=resolve_tags(run_tags(root) | (tags or {})),
                run_name=name or run_name(),
            )
            run = TrainingRun(created.info.run_id, created.info.run_name)
        else:
            retry_locked(client.update_run, reopen, status="RUNNING")
            for key, value in (run_tags(root) | (tags or {})).items():
                retry_locked(client.set_tag, reopen, key, value)
            found = retry_locked(client.get_run, reopen)
            if ORPHAN_TAG in found.data.tags:
                retry_locked(client.delete_tag, reopen, ORPHAN_TAG)
            run = TrainingRun(reopen, found.info.run_name)
    run.reserve()
    status, reason = "FAILED", None
    with bounded_http():
        try:
            run.call("log params", log_params, client, run.run_id, params)
            yield run
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        except UserError as error:  # e.g. a full disk: the run says why it failed
            reason = one_line(error)
            raise
        finally:
            run.end(status, reason)


def check_run(experiment: str, run_id: str) -> None:
    """Point MLflow at the store and check it holds run_id (evaluate's scores join train's run):
    a run train logged to another store is one TrackingError, before any work."""
    root = project_root()
    prepare_experiment(experiment, root)
    try:
        retry_locked(MlflowClient().get_run, run_id)
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise TrackingError(
            f"MLflow run {run_id} (metrics/run.json) is not in {tracking_uri(root)}: train logged it to another "
            "store; use train's MLFLOW_TRACKING_URI, or re-run train with this one"
        ) from None
