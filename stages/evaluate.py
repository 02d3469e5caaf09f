"""Stage evaluate: models/best.keras and models/last.keras -> metrics/evaluate.json (and the MLflow run)."""
import json
import time
from pathlib import Path

import keras
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from spikelab.cli import run_stage
from spikelab.evaluation import score
from spikelab.files import InputError, read_npz, write_json
from spikelab.losses import make_loss
from spikelab.params import load_params
from spikelab.tracking import prepare_experiment, project_root, retry_locked

MODELS = {"best": Path("models/best.keras"), "last": Path("models/last.keras")}
OUTPUT = "metrics/evaluate.json"


def load_model(path: Path) -> keras.Model:
    if not path.exists():
        raise InputError(f"{path}: missing; re-run the 'train' stage: dvc repro train")
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as error:  # Keras raises ValueError, OSError or zip errors for a damaged file
        raise InputError(f"{path}: unreadable ({error}); re-run the 'train' stage: dvc repro train") from None


def main() -> None:
    params = load_params()
    arrays = read_npz("data/split.npz", ("x_val", "y_val"), produced_by="split")
    models = {name: load_model(path) for name, path in MODELS.items()}
    loss_fn = make_loss(params.loss)
    results = {name: score(model, loss_fn, arrays["x_val"], arrays["y_val"], params.train.batch_size)
               for name, model in models.items()}
    write_json(OUTPUT, results)
    print("evaluate: " + json.dumps({name: {"loss": r["loss"], "accuracy": r["accuracy"]} for name, r in results.items()}))
    run_file = Path("metrics/run.json")
    if run_file.exists():  # add the scores to the training run, so MLflow shows them together
        prepare_experiment(params.tracking.experiment, project_root())
        run_id = json.loads(run_file.read_text())["mlflow_run_id"]
        scores = [Metric(f"eval.{name}.{key}", float(value), int(time.time() * 1000), 0)
                  for name, r in results.items() for key, value in r.items() if value is not None]
        retry_locked(MlflowClient().log_batch, run_id, metrics=scores)


if __name__ == "__main__":
    run_stage(main)
