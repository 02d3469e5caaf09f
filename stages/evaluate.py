"""Stage evaluate: <models>/{best,last}.keras on the validation set -> <evaluate.json>, and into train's MLflow run.

python -m stages.evaluate data/split.npz models metrics/run.json metrics/evaluate.json
"""

import json
import sys
from pathlib import Path

from spikelab.params import load_params
from spikelab.plumbing.errors import run_entry_point
from spikelab.plumbing.files import read_npz, write_json
from spikelab.plumbing.lean_imports import without_sklearn
from spikelab.plumbing.native_logs import quiet_native_startup
from spikelab.plumbing.timing import StageClock


def main() -> None:
    split_path, models_dir, run_file, output = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    clock = StageClock("evaluate")
    params = load_params()
    arrays = read_npz(split_path, ("x_val", "y_val"), produced_by="split")
    with quiet_native_startup(), without_sklearn():  # TensorFlow's import and first op print noise
        from spikelab.evaluation import load_model, score
        from spikelab.losses import make_loss
        from spikelab.tracking import check_run, evaluation_metrics, log_metrics_at

        models = {name: load_model(models_dir / f"{name}.keras") for name in ("best", "last")}
    run_id = json.loads(run_file.read_text())["mlflow_run_id"]  # the scores join train's run in MLflow
    check_run(params.tracking.experiment, run_id)  # before the work: a wrong store is one line, not a traceback
    clock.lap("startup")
    loss_fn = make_loss(params.loss)
    results = {
        name: score(model, loss_fn, arrays["x_val"], arrays["y_val"], params.train.batch_size)
        for name, model in models.items()
    }
    clock.lap("scoring")
    write_json(output, results)
    best, last = results["best"], results["last"]
    print(
        f"evaluate: validation accuracy {last['accuracy']:.3f} for the last model, {best['accuracy']:.3f} for the "
        f"best (lowest val_loss) one -> {output}"
    )
    log_metrics_at(run_id, evaluation_metrics(results), 0)
    clock.lap("outputs")
    log_metrics_at(run_id, clock.metrics(), 0)


if __name__ == "__main__":
    run_entry_point(main, stage="evaluate")
