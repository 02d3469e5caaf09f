"""Issue 5: bad params, NaN loss, interruption, concurrent experiments, determinism, bad inputs,
an unreachable tracking server. Each case runs the real stage scripts (and DVC where it matters) in
a copy of one tiny baseline lab, against that copy's own sqlite MLflow store.
"""

import contextlib
import copy
import csv
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import TINY, lab_env, make_lab, mlflow_runs, run, stage_command, wait_for_queue, write_params
from spikelab.metric_names import lab_name, mlflow_key
from spikelab.params import read_yaml
from spikelab.plumbing.integrity import file_md5
from team.stack import free_port

# every test here runs the stages in a copy of the repo that ran `dvc repro` with a real MLflow store
pytestmark = pytest.mark.slow

EXPERIMENT = TINY["tracking"]["experiment"]
STAGE_FOLDERS = ("data", "models", "metrics")
# the train stage's outputs but its snapshots, which an interrupted run writes whole, epoch by epoch
OUTPUTS = (
    "metrics/train.json",
    "metrics/history.csv",
    "metrics/run.json",
    "metrics/evaluate.json",
    "metrics/loss_curve.png",
    "models/best.keras",
    "models/last.keras",
)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    """One tiny lab after `dvc repro`, committed (dvc.lock too), so experiments can queue from it."""
    root = make_lab(tmp_path_factory.mktemp("baseline") / "lab", copy.deepcopy(TINY))
    run(["dvc", "repro"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "baseline run"], root)
    return root


@pytest.fixture
def lab(baseline, tmp_path) -> Path:
    """A copy of the baseline with its data and outputs, but no MLflow store yet."""
    root = tmp_path / "lab"
    shutil.copytree(baseline, root, symlinks=True, ignore=shutil.ignore_patterns("mlflow.db", "mlruns", ".mlflow.lock"))
    return root


def stage_files(root: Path) -> dict[str, bytes]:
    """Every file the stages read or write, hidden temporary ones included, by relative path."""
    return {
        str(path.relative_to(root)): path.read_bytes()
        for folder in STAGE_FOLDERS
        for path in sorted((root / folder).rglob("*"))
        if path.is_file()
    }


def output_bytes(root: Path) -> dict[str, bytes]:
    return {name: (root / name).read_bytes() for name in OUTPUTS}


def temp_files(root: Path) -> list[Path]:
    """Leftovers of files.atomic_path (.<stem>.tmp<pid><suffix>)."""
    return [path for folder in STAGE_FOLDERS for path in (root / folder).rglob("*.tmp*")]


def stage(root: Path, name: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        stage_command(root, name), cwd=root, env=lab_env(root) | env, capture_output=True, text=True, timeout=300
    )


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2 and one `error:` line, the last one, holding every fragment; no stack trace."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.rstrip("\n").splitlines()[-1] == lines[0]  # the message itself is one line
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def start_stage(root: Path, name: str, stderr_path: Path, **env) -> tuple[subprocess.Popen, queue.Queue]:
    """Start a stage; its stdout lines arrive on the queue (None at the end), so waits can time out."""
    with stderr_path.open("w") as stderr:  # a file, not a pipe: nobody has to drain it
        process = subprocess.Popen(
            stage_command(root, name),
            cwd=root,
            env=lab_env(root) | env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    lines: queue.Queue = queue.Queue()

    def pump():
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return process, lines


def wait_for_line(lines: queue.Queue, prefix: str, timeout_s: float = 180) -> list[str]:
    seen = []
    deadline = time.monotonic() + timeout_s
    while (line := lines.get(timeout=max(0.1, deadline - time.monotonic()))) is not None:
        seen.append(line)
        if line.startswith(prefix):
            return seen
    raise AssertionError(f"the stage ended before printing {prefix!r}:\n{''.join(seen)}")


def with_value(section: str, key: str, value):
    def change(raw):
        raw[section][key] = value

    return change


BAD_PARAMS = {
    # id: (change to the tiny params, fragments the one error line must hold: key, value, allowed)
    "unknown_key": (with_value("train", "epoch", 5), ("'train.epoch'", "allowed keys in 'train'", "epochs")),
    "unknown_section": (lambda raw: raw.update(trian={"epochs": 5}), ("'trian'", "allowed sections", "train")),
    "unknown_optimizer": (
        with_value("optimizer", "name", "adamx"),
        ("optimizer.name = 'adamx'", "adam, adamw, sgd, rmsprop"),
    ),
    "unknown_loss": (
        with_value("loss", "name", "mse"),
        ("loss.name = 'mse'", "binary_crossentropy, categorical_crossentropy, log_cosh"),
    ),
    "epsilon_zero": (with_value("optimizer", "epsilon", 0), ("optimizer.epsilon = 0.0", "allowed: a number > 0")),
    "negative_learning_rate": (
        with_value("optimizer", "learning_rate", -0.001),
        ("optimizer.learning_rate = -0.001", "allowed: a number > 0"),
    ),
    "zero_epochs": (with_value("train", "epochs", 0), ("train.epochs = 0", "allowed: an integer >= 1")),
    "zero_batch_size": (with_value("train", "batch_size", 0), ("train.batch_size = 0", "allowed: an integer >= 1")),
    "val_per_class_beyond_data": (
        with_value("split", "val_per_class", 200),
        ("split.val_per_class = 200", "fewer than data.per_class = 96"),
    ),
    "string_for_number": (
        with_value("optimizer", "learning_rate", "0.001"),
        ("optimizer.learning_rate = '0.001'", "a number"),
    ),
}


@pytest.mark.parametrize("kind", BAD_PARAMS)
def test_bad_params_fail_in_one_line_before_any_work(lab, kind):
    change, fragments = BAD_PARAMS[kind]
    raw = copy.deepcopy(TINY)
    change(raw)
    write_params(lab, raw)
    before = stage_files(lab)

    result = stage(lab, "train")

    assert_user_error(result, "params.yaml", *fragments)
    assert result.stdout == ""  # not even the data-format line: nothing was read, built or trained
    assert stage_files(lab) == before
    assert not (lab / "mlflow.db").exists()  # no store touched, so no orphan run


def test_nan_loss_stops_training_and_keeps_the_experiment_row(lab):
    # 1e20 overflows the weights in the first step on any loss form; DVC writes it as `1e+20`
    result = run(
        ["dvc", "exp", "run", "-n", "blowup", "-S", "optimizer.name=sgd", "-S", "optimizer.learning_rate=1e20"], lab
    )
    assert "epoch 1/3" in result.stdout and "epoch 2/3" not in result.stdout  # stopped at the first non-finite loss

    metrics = json.loads((lab / "metrics/train.json").read_text())
    assert metrics["nan"] is True and metrics["diverged"] is True
    assert metrics["epochs_run"] == 1 and metrics["divergence_epoch"] == 1 and metrics["final_loss"] is None
    rows = list(csv.DictReader((lab / "metrics/history.csv").open()))
    assert [row["epoch"] for row in rows] == ["1"] and rows[0]["loss"] == "nan"
    assert (lab / "metrics/loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((lab / "metrics/evaluate.json").read_text())["last"]["loss"] is None

    [mlflow_run] = mlflow_runs(lab)
    assert mlflow_run.info.status == "FINISHED"
    assert mlflow_run.data.tags["diverged"] == "true" and mlflow_run.data.tags["dvc.exp_name"] == "blowup"

    shown = json.loads(run(["dvc", "exp", "show", "--json"], lab).stdout)
    experiments = {exp["name"]: exp for row in shown for exp in row.get("experiments") or []}
    row_metrics = experiments["blowup"]["revs"][0]["data"]["metrics"]["metrics/train.json"]["data"]
    assert row_metrics["diverged"] is True and row_metrics["epochs_run"] == 1


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_training_leaves_no_partial_outputs_and_a_killed_run(lab, tmp_path, signum):
    before = output_bytes(lab)
    raw = copy.deepcopy(TINY)
    raw["train"]["epochs"] = 5000  # minutes of training: the signal always lands mid-run
    write_params(lab, raw)
    stderr = tmp_path / "stderr.txt"
    process, lines = start_stage(lab, "train", stderr)
    try:
        wait_for_line(lines, "epoch 1/")
        process.send_signal(signum)
        returncode = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert returncode == 130, stderr.read_text()
    assert f"train: interrupted (signal {signum.name})" in stderr.read_text()
    assert output_bytes(lab) == before and temp_files(lab) == []
    assert [r.info.status for r in mlflow_runs(lab)] == ["KILLED"]

    write_params(lab, TINY)
    run(["dvc", "repro"], lab)
    assert "up to date" in run(["dvc", "status"], lab).stdout
    assert sorted(r.info.status for r in mlflow_runs(lab)) in (["FINISHED", "KILLED"], ["KILLED"])


def test_same_params_give_identical_metrics_and_history(lab):
    first = {name: (lab / name).read_bytes() for name in ("metrics/train.json", "metrics/history.csv")}
    run(stage_command(lab, "train"), lab)
    assert [r.info.status for r in mlflow_runs(lab)] == ["FINISHED"]  # it really trained again
    assert {name: (lab / name).read_bytes() for name in first} == first


def delete(path: Path) -> None:
    path.unlink()


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.unlink()  # a new file: never write through a link into the DVC cache
    path.write_bytes(data[: len(data) // 2])


def corrupt(path: Path) -> None:
    """Flip bytes inside the first member's deflate stream: zlib fails, not the zip directory."""
    data = bytearray(path.read_bytes())
    data[100:132] = bytes(byte ^ 0xFF for byte in data[100:132])
    path.unlink()
    path.write_bytes(bytes(data))


BAD_INPUTS = {
    # id: (stage, damaged file, damage, the stage to re-run)
    "split_npz_deleted": ("train", "data/split.npz", delete, "split"),
    "split_npz_truncated": ("train", "data/split.npz", truncate, "split"),
    "lines_npz_truncated": ("split", "data/lines.npz", truncate, "generate"),
    "lines_npz_corrupt": ("split", "data/lines.npz", corrupt, "generate"),
    "best_model_truncated": ("evaluate", "models/best.keras", truncate, "train"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_missing_or_truncated_input_names_the_file_and_the_stage_to_rerun(lab, case):
    stage_name, damaged, damage, producer = BAD_INPUTS[case]
    damage(lab / damaged)
    before = stage_files(lab)

    result = stage(lab, stage_name)

    assert_user_error(result, damaged, f"dvc repro {producer}")
    assert stage_files(lab) == before and not (lab / "mlflow.db").exists()


@pytest.mark.parametrize("server", ["closed_port", "silent_listener"])
def test_unreachable_tracking_server_fails_in_seconds_before_training(lab, tmp_path, server):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    if server == "closed_port":
        listener.close()  # nothing listens there now: connections are refused
    else:
        listener.listen()  # connections are accepted by the kernel, but nothing ever answers
    uri = f"http://127.0.0.1:{port}"
    before = stage_files(lab)
    stderr = tmp_path / "stderr.txt"
    process, lines = start_stage(lab, "train", stderr, MLFLOW_TRACKING_URI=uri, PYTHONUNBUFFERED="1")
    try:
        seen = wait_for_line(lines, "train: data format")  # printed just before the store is checked
        checked_from = time.monotonic()
        returncode = process.wait(timeout=120)
        seconds = time.monotonic() - checked_from
    finally:
        listener.close()
        if process.poll() is None:
            process.kill()
            process.wait()

    result = subprocess.CompletedProcess(process.args, returncode, "", stderr.read_text())
    assert_user_error(result, uri, "unreachable", "MLFLOW_TRACKING_URI")
    assert seconds < 20  # the health check gives up after 5 s; MLflow's own retries would take minutes
    assert not any(line.startswith("epoch") for line in seen + list(iter(lines.get, None)))
    assert stage_files(lab) == before and not (lab / "mlflow.db").exists()


def test_six_queued_experiments_on_two_workers_all_land_in_dvc_and_one_mlflow_store(lab):
    names = [f"seed-{seed}" for seed in range(1, 7)]
    for seed, name in enumerate(names, start=1):
        run(["dvc", "exp", "run", "--queue", "-n", name, "-S", f"train.seed={seed}"], lab)
    try:
        # no store yet: the first two runs also race to create it
        run(["dvc", "queue", "start", "-j", "2"], lab)
        status = wait_for_queue(lab)
    finally:
        run(["dvc", "queue", "stop", "--kill"], lab, check=False)
    assert status.count("Success") == 6, status

    shown = json.loads(run(["dvc", "exp", "show", "--json"], lab).stdout)
    experiments = {exp["name"]: exp for row in shown for exp in row.get("experiments") or []}
    assert set(names) <= experiments.keys()
    seeds = {experiments[name]["revs"][0]["data"]["params"]["params.yaml"]["data"]["train"]["seed"] for name in names}
    assert seeds == {1, 2, 3, 4, 5, 6}

    runs = mlflow_runs(lab)  # the copy's root store, although each ran under .dvc/tmp/exps/
    assert sorted(r.data.tags.get("dvc.exp_name") for r in runs) == names
    assert all(r.info.status == "FINISHED" and mlflow_key("eval.best.accuracy") in r.data.metrics for r in runs)


# ---- issue 15: MLflow failing mid-training, orphan runs, a stage outliving its parent ----------------


def start_mlflow_server(store: Path, port: int) -> subprocess.Popen:
    """A real `mlflow server` on 127.0.0.1 (sqlite backend and artifacts in `store`), once it answers."""
    store.mkdir(parents=True, exist_ok=True)
    with (store / "server.log").open("a") as log:
        server = subprocess.Popen(
            ["mlflow", "server", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}"]
            + ["--artifacts-destination", str(store / "artifacts"), "--host", "127.0.0.1", "--port", str(port)]
            + ["--workers", "1"],
            cwd=store,
            env=lab_env(store),
            stdout=log,
            stderr=log,
            start_new_session=True,  # its own process group: the test kills the server and its workers
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return server
        except OSError:
            time.sleep(0.5)
    kill_group(server)
    raise AssertionError(f"mlflow server did not start:\n{(store / 'server.log').read_text()}")


def kill_group(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_until(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found := condition():
            return found
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def sync(root: Path, uri: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tools.sync"],
        cwd=root,
        env=lab_env(root) | {"MLFLOW_TRACKING_URI": uri},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_mlflow_server_dying_mid_training_costs_nothing_and_sync_completes_the_run(lab, tmp_path):
    epochs = 200
    raw = copy.deepcopy(TINY)
    raw["train"].update(epochs=epochs, snapshot_every=100)
    write_params(lab, raw)
    store = tmp_path / "store"
    uri = f"http://127.0.0.1:{free_port()}"
    server = start_mlflow_server(store, int(uri.rsplit(":", 1)[1]))
    client = MlflowClient(tracking_uri=uri)
    stderr = tmp_path / "stderr.txt"
    process, lines = start_stage(lab, "train", stderr, MLFLOW_TRACKING_URI=uri, PYTHONUNBUFFERED="1")
    try:
        seen = wait_for_line(lines, "epoch 1/")

        def logged_run():  # the epoch logger has flushed at least once (it does every 5 s)
            experiment = client.get_experiment_by_name(EXPERIMENT)
            runs = client.search_runs([experiment.experiment_id]) if experiment else []
            return runs[0] if runs and mlflow_key("loss") in runs[0].data.metrics else None

        run_id = wait_until(logged_run, 120, "the first metrics on the server").info.run_id
        logged_before = len(client.get_metric_history(run_id, mlflow_key("loss")))
        kill_group(server)
        killed_at = time.monotonic()
        seen += list(iter(lambda: lines.get(timeout=300), None))
        returncode = process.wait(timeout=60)
        seconds = time.monotonic() - killed_at
    finally:
        kill_group(server)
        if process.poll() is None:
            process.kill()
            process.wait()

    assert returncode == 0, stderr.read_text()
    assert 0 < logged_before < epochs  # the server died mid-run, after some epochs were logged
    # one bounded stall (seconds), not MLflow's own retries (minutes per request, every epoch)
    assert seconds < 120, seconds
    incomplete = [line for line in seen if "incomplete" in line]
    assert len(incomplete) == 1 and f"MLflow run {run_id} is incomplete" in incomplete[0], "".join(seen)
    assert "`python -m tools.sync`" in incomplete[0]
    assert sum(line.startswith("epoch ") for line in seen) == epochs  # the training went on to the end
    for name in OUTPUTS[:3] + OUTPUTS[4:]:  # evaluate.json is the next stage's
        assert (lab / name).stat().st_size > 0, name
    assert json.loads((lab / "metrics/run.json").read_text())["mlflow_run_id"] == run_id

    server = start_mlflow_server(store, int(uri.rsplit(":", 1)[1]))
    try:
        first = sync(lab, uri)
        assert first.returncode == 0, first.stderr
        run_after = client.get_run(run_id)
        histories = {
            key: client.get_metric_history(run_id, key) for key in map(mlflow_key, ("loss", "val_loss", "grad_norm"))
        }
        artifacts = {a.path for a in client.list_artifacts(run_id)} | {
            a.path for a in client.list_artifacts(run_id, "checkpoints")
        }
        second = sync(lab, uri)
        assert second.returncode == 0, second.stderr
        again = {key: client.get_metric_history(run_id, key) for key in histories}
    finally:
        kill_group(server)

    assert run_after.info.status == "FINISHED"
    for key, history in histories.items():
        assert sorted(m.step for m in history) == list(range(1, epochs + 1)), key  # every epoch, once
    assert run_after.data.metrics[mlflow_key("summary.epochs_run")] == epochs and run_after.data.tags["diverged"] in (
        "true",
        "false",
    )
    assert artifacts >= {
        "train.json",
        "history.csv",
        "loss_curve.png",
        "checkpoints/best.keras",
        "checkpoints/last.keras",
    }
    assert f"run {run_id}: 0 metric values and 0 files uploaded" in second.stdout
    assert {key: len(history) for key, history in again.items()} == {key: epochs for key in histories}
    # metrics/evaluate.json is still the baseline's (3 epochs): it scored other models, so none of it
    # joins this run, and the line says why
    logged = sorted(map(lab_name, run_after.data.metrics))
    assert not [name for name in logged if name.startswith("eval.")], logged
    assert "metrics/evaluate.json left out: it scored other models (`dvc repro evaluate`" in first.stdout


def long_training(root: Path) -> None:
    raw = copy.deepcopy(TINY)
    raw["train"]["epochs"] = 5000  # minutes of training: the kill always lands mid-run
    write_params(root, raw)


def test_a_run_whose_process_was_killed_is_marked_failed_by_the_next_training(lab, tmp_path):
    long_training(lab)
    process, lines = start_stage(lab, "train", tmp_path / "stderr.txt")
    try:
        wait_for_line(lines, "epoch 1/")
    finally:
        process.kill()  # SIGKILL: nothing in the stage can end its MLflow run
        process.wait()
    [orphan] = mlflow_runs(lab)
    assert orphan.info.status == "RUNNING" and orphan.data.tags["spikelab.pid"] == str(process.pid)

    write_params(lab, TINY)
    result = stage(lab, "train")

    assert result.returncode == 0, result.stderr
    assert f"marked run {orphan.info.run_id} FAILED" in result.stderr
    runs = {r.info.run_id: r for r in mlflow_runs(lab)}
    assert runs[orphan.info.run_id].info.status == "FAILED"
    assert runs[orphan.info.run_id].data.tags["spikelab.failed_reason"].startswith(f"orphan: its process {process.pid}")
    assert sorted(r.info.status for r in runs.values()) == ["FAILED", "FINISHED"]


def process_gone(pid: int) -> bool:
    """No such process, or a zombie nobody reaped (it has exited all the same)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def forking_shell(folder: Path) -> Path:
    """A $SHELL whose `-c` forks the command instead of exec-ing it (as some /bin/sh builds do): DVC
    starts stages through $SHELL, so the stage's parent is then a shell that outlives DVC."""
    shell = folder / "forking-shell"
    shell.write_text(
        '#!/bin/bash\n# $1 is -c, $2 the command; the `exit` after it forbids the exec\neval "$2"\nexit $?\n'
    )
    shell.chmod(0o755)
    return shell


@pytest.mark.parametrize("launch", ["exec_shell", "forking_shell"])
def test_sigterm_to_dvc_repro_stops_the_train_stage_it_started(lab, tmp_path, launch):
    long_training(lab)
    env = lab_env(lab) | {"SHELL": "/bin/sh" if launch == "exec_shell" else str(forking_shell(tmp_path))}
    with (tmp_path / "stderr.txt").open("w") as stderr:
        dvc = subprocess.Popen(
            ["dvc", "repro", "train"], cwd=lab, env=env, text=True, stdout=subprocess.PIPE, stderr=stderr
        )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in dvc.stdout] + [lines.put(None)], daemon=True).start()
    train_pid = None
    try:
        wait_for_line(lines, "epoch 1/")
        [running] = mlflow_runs(lab)
        train_pid = int(running.data.tags["spikelab.pid"])
        if launch == "forking_shell":  # the case under test: a shell between DVC and the stage
            assert Path(f"/proc/{parent_of(train_pid)}/cmdline").read_bytes().startswith(b"/bin/bash")
        dvc.send_signal(signal.SIGTERM)
        dvc.wait(timeout=30)
        stopped = wait_until(lambda: process_gone(train_pid), 60, "the train stage to exit")
    finally:
        if dvc.poll() is None:
            dvc.kill()
        if train_pid is not None and not process_gone(train_pid):
            os.kill(train_pid, signal.SIGKILL)

    assert stopped
    [run_record] = mlflow_runs(lab)
    assert run_record.info.status == "KILLED"
    # DVC deleted train's outputs before it ran the stage; the stopped stage wrote none back
    assert [name for name in OUTPUTS if (lab / name).exists()] == ["metrics/evaluate.json"]
    assert temp_files(lab) == []


RESUMES = {
    # id: (train.resume_from, train.resume_epoch, what the one line says)
    "not_a_snapshot": ("data/split.npz", 1, "not a snapshot: it holds no 'epoch'"),
    "other_epoch": ("models/snapshots/epoch_00002.npz", 1, "holds epoch 2, not train.resume_epoch = 1"),
}


@pytest.mark.parametrize("case", RESUMES)
def test_a_resume_from_that_is_not_the_named_snapshot_fails_in_one_line_before_training(lab, case):
    path, epoch, message = RESUMES[case]
    raw = copy.deepcopy(TINY)
    raw["train"].update(resume_from=path, resume_epoch=epoch)
    write_params(lab, raw)
    before = stage_files(lab)

    result = stage(lab, "train")

    assert_user_error(result, f"train.resume_from = {path}", message)
    assert result.stdout == ""  # refused before TensorFlow loads, let alone trains
    assert stage_files(lab) == before and not (lab / "mlflow.db").exists()


def test_a_resume_from_linking_outside_the_project_fails_in_one_line_before_training(lab, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    for name in ("epoch_00002.npz", "history.csv"):
        shutil.copy(lab / "models" / "snapshots" / name, outside / name)
    (lab / "models" / "resume.npz").symlink_to(outside / "epoch_00002.npz")
    raw = copy.deepcopy(TINY)
    raw["train"].update(resume_from="models/resume.npz", resume_epoch=2)
    write_params(lab, raw)

    result = stage(lab, "train")

    line = assert_user_error(result, "train.resume_from = models/resume.npz", f"resolves to {outside}")
    assert "outside the project" in line
    assert result.stdout == "" and not (lab / "mlflow.db").exists()  # before TensorFlow, before MLflow


def test_a_snapshot_with_the_right_epoch_but_other_weights_fails_in_one_line_before_the_run_opens(lab):
    raw = copy.deepcopy(TINY)
    raw["model"]["filters"] = TINY["model"]["filters"] + 1  # the baseline's snapshots have the tiny model's
    raw["train"].update(resume_from="models/snapshots/epoch_00002.npz", resume_epoch=2)
    write_params(lab, raw)
    before = stage_files(lab)

    result = stage(lab, "train")

    line = assert_user_error(result, "train.resume_from = models/snapshots/epoch_00002.npz")
    assert "its weights do not fit the model params.yaml builds" in line and "conv1/kernel" in line
    assert stage_files(lab) == before and mlflow_runs(lab) == []  # no MLflow run was opened


def dvc_repro(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["dvc", "repro", *args], cwd=root, env=lab_env(root), capture_output=True, text=True)


BAD_FOR_REPRO = {
    # id: (change to the tiny params, None for an empty params.yaml; fragment of the one error line)
    "bad_value": (with_value("train", "epochs", 0), "train.epochs = 0"),
    "unknown_section": (lambda raw: raw.update(junk={"x": 1}), "unknown section 'junk'"),
    "empty_file": (None, "params.yaml: the file must be a mapping of sections"),
    # issue 38: passed the check, then DVC deleted the outputs and the stage failed or trained on garbage
    "learning_rate_inf_in_float32": (with_value("optimizer", "learning_rate", 1e39), "it is inf in float32"),
    "beta_2_one_in_float32": (with_value("optimizer", "beta_2", 0.99999999999), "it is 1.0 in float32"),
    "image_size_40000": (with_value("data", "image_size", 40000), "allowed: at most this machine's memory"),
    "filters_100000": (with_value("model", "filters", 100000), "model.filters = 100000"),
    "resume_from_etc_passwd": (
        lambda raw: raw["train"].update(resume_from="/etc/passwd", resume_epoch=1),
        "train.resume_from = /etc/passwd: not a snapshot (.npz) file",
    ),
}


@pytest.mark.parametrize("case", BAD_FOR_REPRO)
def test_bad_params_stop_dvc_repro_before_it_deletes_any_output(lab, case):
    change, fragment = BAD_FOR_REPRO[case]
    raw = copy.deepcopy(TINY)
    if change is None:
        (lab / "params.yaml").write_text("")
    else:
        change(raw)
        write_params(lab, raw)
    before = stage_files(lab)

    result = dvc_repro(lab)

    assert result.returncode != 0, result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0] and "Traceback" not in result.stderr, result.stderr
    assert "validate" in result.stdout + result.stderr
    # every output of every stage still there, byte for byte: DVC stopped at the check (its own
    # output, a constant line, is the one DVC deleted before running it)
    before.pop("data/params.checked")
    assert stage_files(lab) == before
    assert not (lab / "mlflow.db").exists()


def test_a_stage_run_alone_with_bad_params_says_how_to_restore_what_dvc_deleted(lab):
    before = stage_files(lab)
    raw = copy.deepcopy(TINY)
    raw["train"]["epochs"] = 0
    write_params(lab, raw)

    result = dvc_repro(lab, "-s", "-f", "train")  # -s: the validate stage does not run

    assert result.returncode != 0
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "train.epochs = 0" in line and "DVC deleted the train stage's outputs before it ran" in line
    assert not (lab / "models" / "best.keras").exists()  # what the line is about
    restore = line.split("): ", 1)[1].removesuffix(" restores the last committed ones")
    commands = [part.strip("`") for part in restore.split(" and ")]
    assert commands[0] == "dvc checkout --force train" and commands[1].startswith("git checkout HEAD -- ")
    write_params(lab, copy.deepcopy(TINY))  # the user fixes the params first
    for command in commands:
        run(command.split(), lab)
    assert stage_files(lab) == before  # everything back, byte for byte


def test_after_an_uncommitted_run_the_restore_line_gives_back_one_run_the_committed_one(lab):
    """The last run (dvc.lock, its models in DVC's cache) was never committed, and its `cache: false`
    metrics existed only in the workspace: after DVC deletes them, the line's commands bring back
    the committed run whole, not that run's models beside the commit's metrics."""
    committed = stage_files(lab)
    raw = copy.deepcopy(TINY)
    raw["train"]["seed"] = 1
    write_params(lab, raw)
    run(["dvc", "repro", "train"], lab)  # another run, not committed
    assert stage_files(lab)["models/best.keras"] != committed["models/best.keras"]
    raw["train"]["epochs"] = 0
    write_params(lab, raw)

    result = dvc_repro(lab, "-s", "-f", "train")

    [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "were never committed, so that run cannot be restored" in line, line
    commands = re.findall(r"`([^`]+)`", line.split("cannot be restored: ", 1)[1])
    assert commands[0].startswith("git checkout HEAD -- dvc.lock ") and commands[1] == "dvc checkout --force train"
    write_params(lab, copy.deepcopy(TINY))  # the user fixes the params first
    for command in commands[:2]:
        run(command.split(), lab)
    assert stage_files(lab) == committed  # one run, the committed one, byte for byte


@contextlib.contextmanager
def full_disk(folder: Path, size: str):
    """A real small file system (tmpfs) mounted on folder, unmounted after; the test is skipped
    where mounting is refused (not root, or a container without the right)."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"mount -t tmpfs refused: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], capture_output=True)


def test_a_disk_full_at_a_snapshot_is_one_line_naming_the_path_and_the_space_and_fails_the_run(lab):
    raw = copy.deepcopy(TINY)
    raw["train"].update(epochs=5, snapshot_every=1)
    write_params(lab, raw)
    with full_disk(lab / "models" / "snapshots", "64k") as folder:  # room for one tiny snapshot (37 KB), not two
        result = stage(lab, "train")
        written = (folder / "epoch_00001.npz").stat().st_size
    line = assert_user_error(result, "models/snapshots/epoch_00002.npz: no space left on its device")
    assert "(the snapshot of epoch 2): it needs about " in line and "KB free there" in line, line
    needed_kb = float(line.split("it needs about ", 1)[1].split(" KB", 1)[0])
    assert written / 1000 <= needed_kb < 1.2 * written / 1000  # what the snapshot before it took
    [failed] = mlflow_runs(lab)
    assert failed.info.status == "FAILED"
    assert failed.data.tags["spikelab.failed_reason"] == line.removeprefix("error: ")


def fill(folder: Path) -> None:
    """Take every free byte of folder's file system (the big part at once, then the crumbs)."""
    filler = folder / "filler"
    subprocess.run(["fallocate", "-l", str(shutil.disk_usage(folder).free), str(filler)], capture_output=True)
    descriptor = os.open(filler, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        for size in (65536, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(descriptor, b"\0" * size)
    finally:
        os.close(descriptor)


def test_a_project_whose_disk_fills_mid_training_stops_at_once_in_one_line_and_fails_the_run(lab, tmp_path):
    """The whole project on one file system that fills while training runs (no snapshots: MLflow's
    database is the first write to fail, as on a real disk): the one `error:` line is all stderr
    holds, the training stops at the next flush of its epoch metrics, and the run ends FAILED."""
    raw = copy.deepcopy(TINY)
    # far more epochs than a quiet machine trains in a flush interval (5 s at ~0.2 s an epoch)
    raw["train"].update(epochs=1000, snapshot_every=0)
    with full_disk(tmp_path / "disk", "64m") as disk:
        root = disk / "lab"
        shutil.copytree(
            lab, root, symlinks=True, ignore=shutil.ignore_patterns(".git", "study", "studies", "docs", "tests")
        )
        write_params(root, raw)
        process, lines = start_stage(root, "train", tmp_path / "stderr.txt")
        wait_for_line(lines, "epoch 3/")
        fill(disk)
        filled = time.monotonic()
        assert shutil.disk_usage(disk).free < 4096
        process.wait(timeout=600)
        stopped_after_s = time.monotonic() - filled
        stdout = [line for line in iter(lines.get, None)]
        stderr = (tmp_path / "stderr.txt").read_text()
        (disk / "filler").unlink()  # room for MLflow's client to open the store
        runs = mlflow_runs(root)
    assert process.returncode == 2, stderr
    [line] = stderr.splitlines()  # the error line is the only thing said: no tracebacks, no MLflow logs
    assert line.startswith(
        f"error: {root / 'mlflow.db'}: no space left on its device (the MLflow store, at log epoch metrics; the training stopped)"
    ), line
    epochs = [row for row in stdout if row.startswith("epoch ")]
    # stopped at the next flush (5 s) of its epoch metrics after the disk filled, not at its end: a
    # bound in seconds, since how many epochs fit in a flush is the machine's speed
    assert len(epochs) < 990 and stopped_after_s < 60, (epochs[-1], stopped_after_s)
    [failed] = runs
    assert failed.info.status == "FAILED"
    assert failed.data.tags["spikelab.failed_reason"] == line.removeprefix("error: ")


def test_a_full_artifact_store_leaves_a_finished_run_that_is_never_called_an_orphan_and_sync_says_why(lab):
    with full_disk(lab / "mlruns", "16k"):  # the store's artifact folder: too small for the picture
        first = stage(lab, "train")
        assert first.returncode == 0, first.stderr
        assert "is incomplete" in first.stdout and "No space left on device" in first.stdout
        [run_1] = mlflow_runs(lab)
        assert run_1.info.status == "FINISHED"  # the store itself still worked: the end is recorded
        second = stage(lab, "train")  # the next training: its orphan sweep must leave run 1 alone
        assert second.returncode == 0, second.stderr
        assert f"marked run {run_1.info.run_id} FAILED" not in second.stderr
        statuses = {run.info.run_id: run.info.status for run in mlflow_runs(lab)}
        assert statuses[run_1.info.run_id] == "FINISHED" and len(statuses) == 2

        synced = sync(lab, f"sqlite:///{lab / 'mlflow.db'}")  # still full
    line = assert_user_error(synced, f"{lab / 'mlruns'}: no space left on its device", "it needs about")
    assert "free there" in line


def test_a_finished_run_whose_end_the_store_never_recorded_is_not_called_an_orphan(lab):
    """The store failed for good after the outputs were written: the run is RUNNING, its process gone.
    The next training marks it FINISHED (its training did finish), not FAILED."""
    first = stage(lab, "train")
    assert first.returncode == 0, first.stderr
    [run_1] = mlflow_runs(lab)
    client = MlflowClient(tracking_uri=f"sqlite:///{lab / 'mlflow.db'}")
    client.update_run(run_1.info.run_id, status="RUNNING")  # as if the end had never reached the store
    marker = lab / ".dvc" / "tmp" / "spikelab-finished" / run_1.info.run_id
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()  # what the training leaves when the end is not recorded

    second = stage(lab, "train")

    assert second.returncode == 0, second.stderr
    assert f"run {run_1.info.run_id} finished but its end was never recorded; marked FINISHED" in second.stderr
    assert client.get_run(run_1.info.run_id).info.status == "FINISHED" and not marker.exists()


def test_a_deleted_mlflow_experiment_fails_in_one_line_before_training(lab):
    client = MlflowClient(tracking_uri=f"sqlite:///{lab / 'mlflow.db'}")
    experiment_id = client.create_experiment(EXPERIMENT)
    client.delete_experiment(experiment_id)  # soft: in MLflow's trash, its name still taken
    before = stage_files(lab)

    result = stage(lab, "train")

    assert_user_error(result, f"MLflow experiment '{EXPERIMENT}'", "is deleted", f"--experiment-id {experiment_id}")
    assert not any(line.startswith("epoch") for line in result.stdout.splitlines())
    assert stage_files(lab) == before and mlflow_runs(lab) == []


def test_evaluate_against_a_store_without_trains_run_fails_in_one_line(lab):
    run_id = json.loads((lab / "metrics/run.json").read_text())["mlflow_run_id"]
    before = stage_files(lab)

    result = stage(lab, "evaluate")  # this copy's store is new: train's run is in the baseline's

    assert_user_error(result, f"MLflow run {run_id}", "is not in", "MLFLOW_TRACKING_URI")
    assert stage_files(lab) == before


def test_sync_into_a_store_without_the_run_creates_one_run_and_reuses_it(lab):
    old_id = json.loads((lab / "metrics/run.json").read_text())["mlflow_run_id"]  # in the baseline's store
    uri = f"sqlite:///{lab / 'mlflow.db'}"  # this copy's own store, new

    first, second = sync(lab, uri), sync(lab, uri)

    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    [created] = mlflow_runs(lab)
    assert created.info.run_id != old_id and created.data.tags["study.synced_from"] == old_id
    assert created.info.status == "FINISHED" and created.data.params["train.epochs"] == "3"
    assert f"sync: run {created.info.run_id} (a new run for {old_id})" in second.stdout
    assert "0 metric values and 0 files uploaded" in second.stdout
    history = MlflowClient(tracking_uri=uri).get_metric_history(created.info.run_id, mlflow_key("loss"))
    assert sorted(m.step for m in history) == [1, 2, 3]
    assert created.data.metrics[mlflow_key("eval.best.accuracy")] >= 0  # evaluate.json's scores too


def test_a_corrupt_dvc_cache_object_is_named_with_the_repair_that_works(lab):
    md5 = read_yaml(lab / "dvc.lock", "dvc.lock")["stages"]["split"]["outs"][0]["md5"]
    cache_object = Path(".dvc/cache/files/md5") / md5[:2] / md5[2:]
    rot_in_place(lab / cache_object)  # bit rot: DVC trusts the object and copies it back
    (lab / "data/split.npz").unlink()
    run(["dvc", "checkout", "data/split.npz"], lab)
    assert "up to date" in run(["dvc", "status"], lab).stdout  # DVC sees nothing wrong

    line = assert_user_error(stage(lab, "train"), "data/split.npz", str(cache_object), "is corrupt")
    repair = line.split(": rm ", 1)[1]
    assert repair == f"{cache_object} && dvc repro -f split"
    verify = run([sys.executable, "-m", "spikelab.plumbing.integrity"], lab, check=False)
    assert verify.returncode == 1 and f"data/split.npz (split): the DVC cache object {cache_object}" in verify.stdout

    run(["dvc", "repro", "-f", "split"], lab)  # re-running alone: DVC copies the corrupt object back
    assert file_md5(lab / "data/split.npz") != md5
    run(["bash", "-c", f"rm {repair}"], lab)  # the repair the line names
    assert file_md5(lab / "data/split.npz") == md5 == file_md5(lab / cache_object)
    assert run([sys.executable, "-m", "spikelab.plumbing.integrity"], lab).stdout.endswith(", 0 damaged copies\n")


def rot_in_place(path: Path) -> None:
    """Flip bytes of a read-only file in place, keeping its mtime: what a failing disk does."""
    stat = path.stat()
    path.chmod(0o644)
    with path.open("r+b") as handle:
        handle.seek(100)
        handle.write(bytes(byte ^ 0xFF for byte in path.read_bytes()[100:132]))
    path.chmod(stat.st_mode)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def queue_worker_above(pid: int) -> list[int]:
    """The processes from `pid` up to its `dvc queue` worker (`dvc exp exec-run` and, where $SHELL
    forks, a shell between them)."""
    chain = [pid]
    while b"queue-worker" not in Path(f"/proc/{chain[-1]}/cmdline").read_bytes():
        chain.append(parent_of(chain[-1]))
        assert chain[-1] > 1 and len(chain) < 6, f"no queue worker above process {pid}: {chain}"
    return chain


def test_a_training_that_outlives_its_sigkilled_queue_worker_is_saved_as_an_experiment(lab, tmp_path):
    """Only the worker dies: its `dvc exp exec-run` trains on alone. The study waits for it and saves
    its result as the experiment the worker would have saved; nothing is counted as a success that
    is not one."""
    waiter_code = (
        "import json\n"
        "from spikelab.plumbing.errors import run_entry_point\n"
        "from study.dvc_calls import queue_and_wait\n"
        "runs = [('orphan', ['-S', 'train.epochs=60']), ('other', ['-S', 'train.epochs=2'])]\n"
        "run_entry_point(lambda: print('final', json.dumps(queue_and_wait(runs, 2, poll_s=1.0))))\n"
    )
    MlflowClient(tracking_uri=f"sqlite:///{lab / 'mlflow.db'}").search_experiments()
    stdout, stderr = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with stderr.open("w") as errors, stdout.open("w") as output:
        waiter = subprocess.Popen(
            [sys.executable, "-c", waiter_code], cwd=lab, env=lab_env(lab), stdout=output, stderr=errors
        )
    chain = []
    try:

        def orphan_run():
            return [r for r in mlflow_runs(lab) if r.data.tags.get("dvc.exp_name") == "orphan"]

        orphan = wait_until(orphan_run, 240, "the orphan's training to start")[0]
        chain = queue_worker_above(int(orphan.data.tags["spikelab.pid"]))
        os.kill(chain[-1], signal.SIGKILL)  # the worker alone; its training goes on
        returncode = waiter.wait(timeout=400)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()
        for pid in chain:
            if not process_gone(pid):
                os.kill(pid, signal.SIGKILL)
        run(["dvc", "queue", "stop", "--kill"], lab, check=False)

    printed = stdout.read_text()
    assert returncode == 0, stderr.read_text()
    # "goes on alone" is said when a poll sees the worker dead while the training still runs; on a
    # loaded machine the training may finish first, and then only the recovery is said
    assert "study: orphan recovered: its dvc queue worker died mid-run, its training finished" in printed
    assert "2 experiments in" in printed and "; 0 failed" in printed
    assert json.loads(printed.split("final ", 1)[1]) == {"orphan": "success", "other": "success"}
    runs = {r.data.tags["dvc.exp_name"]: r for r in mlflow_runs(lab)}
    assert runs["orphan"].info.status == "FINISHED"
    shown = json.loads(run(["dvc", "exp", "show", "--json"], lab).stdout)
    names = {e.get("name"): e for commit in shown for e in commit.get("experiments") or []}
    assert {"orphan", "other"} <= names.keys()  # the orphan is a DVC experiment, with its metrics
    orphan_metrics = names["orphan"]["revs"][0]["data"]["metrics"]["metrics/train.json"]["data"]
    assert orphan_metrics["epochs_run"] == 60


def test_queue_and_wait_revives_a_queue_whose_worker_died_and_fails_the_lost_run(lab, tmp_path):
    waiter_code = (
        "import json\n"
        "from spikelab.plumbing.errors import run_entry_point\n"
        "from study.dvc_calls import queue_and_wait\n"
        "runs = [('doomed', ['-S', 'train.epochs=5000']), ('survivor', ['-S', 'train.epochs=2'])]\n"
        "run_entry_point(lambda: print('final', json.dumps(queue_and_wait(runs, 1, poll_s=1.0))))\n"
    )
    # the store exists before the worker trains: polling it must not race its schema creation
    MlflowClient(tracking_uri=f"sqlite:///{lab / 'mlflow.db'}").search_experiments()
    stdout, stderr = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with stderr.open("w") as errors, stdout.open("w") as output:
        waiter = subprocess.Popen(
            [sys.executable, "-c", waiter_code], cwd=lab, env=lab_env(lab), stdout=output, stderr=errors
        )
    killed = []
    try:
        doomed = wait_until(lambda: mlflow_runs(lab), 240, "the queued training to start")[0]
        assert doomed.data.tags["dvc.exp_name"] == "doomed"
        # the training, `dvc exp exec-run`, the queue worker: the worker is killed with its task
        killed = queue_worker_above(int(doomed.data.tags["spikelab.pid"]))
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        returncode = waiter.wait(timeout=300)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()
        for pid in killed:
            if not process_gone(pid):
                os.kill(pid, signal.SIGKILL)
        run(["dvc", "queue", "stop", "--kill"], lab, check=False)

    printed = stdout.read_text()
    assert returncode == 0, stderr.read_text()
    assert (
        f"study: doomed lost: its dvc queue worker died mid-run and its training left no result; "
        f"MLflow run {doomed.info.run_id} marked FAILED" in printed
    )
    assert "study: no dvc queue worker was alive; started 1 again" in printed
    assert f"1 failed: doomed (lost with its worker; MLflow run {doomed.info.run_id})" in printed
    assert json.loads(printed.split("final ", 1)[1]) == {"doomed": "failed", "survivor": "success"}
    runs = {r.data.tags["dvc.exp_name"]: r for r in mlflow_runs(lab)}
    assert runs["doomed"].info.status == "FAILED"
    assert runs["doomed"].data.tags["spikelab.failed_reason"].startswith("lost: its dvc queue worker died")
    assert runs["survivor"].info.status == "FINISHED"
    shown = json.loads(run(["dvc", "exp", "show", "--json"], lab).stdout)
    names = {e.get("name"): e for commit in shown for e in commit.get("experiments") or []}
    assert "survivor" in names  # the run after the lost one became a DVC experiment
