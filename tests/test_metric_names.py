"""MLflow keys are <section>/<the name in the DVC files> (issue 37, item 3): every per-epoch column
lands in a section of its own kind, the loss's section comes first in MLflow's order, and the
name after the section is the file's, so each key maps back to it."""

from __future__ import annotations

import json

from conftest import REPO
from spikelab.history import read_history_csv
from spikelab.metric_names import EPOCH_SECTIONS, LOSS, TRAINING, lab_name, mlflow_key
from spikelab.plumbing.timing import StageClock
from spikelab.tracking import evaluation_metrics, numeric_metrics, summary_metrics

# what Keras itself reports, and the learning rate HistoryRows adds: every other column is a diagnostic
KERAS_COLUMNS = {"loss", "val_loss", "accuracy", "val_accuracy", "learning_rate"}


def test_every_history_column_lands_in_its_section_under_its_own_name():
    columns = list(read_history_csv(REPO / "metrics/history.csv")[0])
    assert "epoch" in columns and len(columns) > 20  # the committed default run, with every diagnostic
    keys = {column: mlflow_key(column) for column in columns if column != "epoch"}
    sections = {key.partition("/")[0] for key in keys.values()}
    assert sections == {LOSS, TRAINING, *EPOCH_SECTIONS}, keys
    # a diagnostic added without a section would fall into the Keras logs' section
    assert {column for column, key in keys.items() if key.startswith((LOSS, TRAINING))} == KERAS_COLUMNS, keys
    assert keys["loss"] == "Loss/loss" and keys["val_loss"] == "Loss/val_loss"
    assert keys["lambda_max"] == "curvature/lambda_max" and keys["weight_norm_logits"] == "weights/weight_norm_logits"
    for column, key in keys.items():
        assert key.count("/") == 1 and key.endswith(f"/{column}"), key  # the chart is titled by the file's name
        assert lab_name(key) == column


def test_the_loss_section_comes_first_in_mlflows_order():
    # MLflow sorts sections with JavaScript's default sort (code points, as Python's), then puts
    # the keys without a section ("Model metrics") last
    sections = sorted({mlflow_key(name).partition("/")[0] for name in KERAS_COLUMNS} | set(EPOCH_SECTIONS))
    assert sections[:2] == [LOSS, TRAINING]
    once = [mlflow_key(name).partition("/")[0] for name in ("summary.x", "eval.best.x", "time.train.x")]
    assert sorted(sections + once)[0] == LOSS


def test_summaries_scores_and_timing_keep_the_files_names_after_their_section():
    train = json.loads((REPO / "metrics/train.json").read_text())
    evaluate = json.loads((REPO / "metrics/evaluate.json").read_text())
    summary = summary_metrics(train)
    assert summary["summary/diverged"] is train["diverged"] and summary["summary/jump_ratio"] == train["jump_ratio"]
    assert {lab_name(key) for key in summary} == {f"summary.{key}" for key, value in train.items() if value is not None}
    scores = evaluation_metrics(evaluate)
    assert scores["eval/last.accuracy"] == evaluate["last"]["accuracy"]
    assert {lab_name(key) for key in scores} == {
        f"eval.{model}.{key}" for model, values in evaluate.items() for key in values
    }
    clock = StageClock("train")
    clock.lap("startup")
    logged = {metric.key for metric in numeric_metrics(clock.metrics(first_epoch=0.5), 0)}
    assert {"time/train.startup", "time/train.first_epoch", "time/train.started_at"} <= logged


def test_a_key_that_has_a_section_or_is_none_of_the_labs_stays_as_it_is():
    assert mlflow_key("Loss/loss") == "Loss/loss" and mlflow_key("val/auc") == "val/auc"
    assert lab_name("val/auc") == "val/auc"  # a SpikeMonitor user's own key
    assert lab_name("loss") == "loss" and lab_name("summary.diverged") == "summary.diverged"  # a run logged before
    assert mlflow_key("val_auc") == "Training/val_auc"  # a user's compiled metric: with Keras's logs
    assert mlflow_key("output_loss") == "Loss/output_loss"  # a multi-output model's loss
