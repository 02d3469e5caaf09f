"""End to end, in a throw-away copy of the repo: real git, real DVC, real MLflow (sqlite), real training."""

import csv
import json
import subprocess

import pytest

from conftest import lab_env, mlflow_runs, run, store_client, wait_for_queue
from spikelab.metric_names import mlflow_key

pytestmark = pytest.mark.slow

TRAIN_KEYS = {
    "final_loss",
    "min_loss",
    "min_epoch",
    "peak_loss",
    "peak_epoch",
    "spike_ratio",
    "diverged",
    "divergence_epoch",
    "nan",
    "epochs_run",
    "final_val_loss",
    "min_val_loss",
    "peak_val_loss",
    "val_spike_ratio",
    "guard_triggered",
    "guard_epoch",
    "best_epoch",
    "broken_from_start",
    "first_loss",
    "final_to_first",
    "final_dead_fraction",
    "final_dead_loss_share",
}


def test_repro_then_experiments_land_in_dvc_and_the_one_mlflow_store(lab_repo):
    root = lab_repo
    out = run(["dvc", "repro"], root).stdout
    assert "epoch 3/3" in out  # the per-epoch progress line

    metrics = json.loads((root / "metrics/train.json").read_text())
    assert TRAIN_KEYS <= metrics.keys()
    assert metrics["epochs_run"] == 3 and metrics["nan"] is False
    assert 0 < metrics["min_loss"] <= metrics["peak_loss"] and metrics["min_loss"] < 1.0
    rules = json.loads((root / "metrics/rules.json").read_text())
    assert rules.keys() == {"plateaued", "plateau_start_epoch", "plateau_epochs", "plateau_to_end", "plateau_level"}
    rows = list(csv.DictReader((root / "metrics/history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[-1]["loss"]) == pytest.approx(metrics["final_loss"])
    assert {"grad_norm", "adam_ratio_max", "saturated_fraction"} <= rows[0].keys()
    evaluation = json.loads((root / "metrics/evaluate.json").read_text())
    assert (
        evaluation["best"]["accuracy"] >= 0
        and sum(v for k, v in evaluation["last"].items() if k.startswith("true_")) == 64
    )
    for path in (
        "models/best.keras",
        "models/last.keras",
        "models/snapshots/epoch_00003.npz",
        "metrics/loss_curve.png",
        "dvc.lock",
    ):
        assert (root / path).stat().st_size > 0, path
    assert "data/lines.npz" in (root / "dvc.lock").read_text()

    client, runs = store_client(root), mlflow_runs(root)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    first = runs[0]
    assert first.data.params["optimizer.epsilon"] == "1e-07"
    assert first.info.run_name == "default"  # a plain `dvc repro` of the committed params; an experiment: its name
    # MLflow 3 opens the experiment on its runs table (model training), not the GenAI traces view
    experiment = client.get_experiment(first.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "spikelab" in experiment.tags["mlflow.note.content"]
    assert [m.step for m in client.get_metric_history(first.info.run_id, mlflow_key("loss"))] == [1, 2, 3]
    assert mlflow_key("eval.best.accuracy") in first.data.metrics and first.data.tags["diverged"] == "false"
    assert mlflow_key("summary.plateaued") in first.data.metrics  # the rules stage's, into train's run
    assert mlflow_key("time.evaluate.scoring") in first.data.metrics
    # every per-epoch column of history.csv, under its section (spikelab.metric_names)
    assert {mlflow_key(column) for column in rows[0] if column not in ("epoch", "learning_rate")} <= set(
        first.data.metrics
    )
    artifacts = {a.path for a in client.list_artifacts(first.info.run_id, "checkpoints")}
    assert artifacts == {"checkpoints/best.keras", "checkpoints/last.keras"}
    assert {a.path for a in client.list_artifacts(first.info.run_id)} >= {"loss_curve.png", "train.json", "history.csv"}

    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "baseline run"], root)
    out = run(["dvc", "exp", "run", "-n", "eps-1e-3", "-S", "optimizer.epsilon=0.001"], root).stdout
    assert "Stage 'generate' didn't change, skipping" in out and "Stage 'split' didn't change, skipping" in out
    assert "Running stage 'train'" in out
    assert "0.001" in run(["dvc", "params", "diff"], root).stdout
    assert "min_loss" in run(["dvc", "metrics", "diff"], root).stdout

    # a rule read off the finished curve re-judges it: no retraining
    out = run(["dvc", "exp", "run", "-n", "plateau-5", "-S", "plateau.min_epochs=5"], root).stdout
    assert "Stage 'train' didn't change, skipping" in out and "Running stage 'rules'" in out

    run(["dvc", "exp", "run", "--queue", "-n", "queued-seed-1", "-S", "train.seed=1"], root)
    run(["dvc", "queue", "start", "-j", "1"], root)
    wait_for_queue(root)
    shown = json.dumps(json.loads(run(["dvc", "exp", "show", "--json"], root).stdout))
    assert "eps-1e-3" in shown and "queued-seed-1" in shown

    runs = mlflow_runs(root)
    names = sorted(r.data.tags.get("dvc.exp_name", "") for r in runs)
    assert names == ["", "eps-1e-3", "queued-seed-1"]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert not list((root / ".dvc/tmp/exps").rglob("mlflow.db"))  # nothing went to a throw-away store


def test_a_copy_of_the_repo_runs_its_own_library_not_the_checkouts(lab_repo):
    """DVC runs queued experiments in copies of the repo; the editable install points at the checkout.
    Each stage must import spikelab from the copy it runs in, with nothing on PYTHONPATH."""
    marker = "spikelab imported from the copy"
    init = lab_repo / "spikelab" / "__init__.py"
    init.write_text(init.read_text() + f"\nprint({marker!r})\n")
    env = lab_env(lab_repo)
    env.pop("PYTHONPATH")
    result = subprocess.run(["dvc", "repro", "generate"], cwd=lab_repo, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert marker in result.stdout
