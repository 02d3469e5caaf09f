"""Everything the train stage writes, atomically: models, history, metrics, run facts, the picture."""

from __future__ import annotations

from pathlib import Path

from spikelab import snapshots as training_state
from spikelab.divergence import train_metrics
from spikelab.figures import plot_run
from spikelab.history import write_history_csv
from spikelab.params import Params
from spikelab.plumbing.files import atomic_path, write_json
from spikelab.training import TrainResult

PICTURE = "loss_curve.png"


def output_files(models_dir: Path, metrics_dir: Path) -> tuple[list[Path], list[Path]]:
    """(the metric files, the model files) of a training that its MLflow run holds as artifacts."""
    return (
        [metrics_dir / "train.json", metrics_dir / "history.csv", metrics_dir / PICTURE],
        [models_dir / "last.keras", models_dir / "best.keras"],
    )


def save_models(result: TrainResult, paths: dict[str, Path]) -> None:
    """last.keras = the final state; best.keras = the lowest-val_loss state (if any epoch had one)."""
    with atomic_path(paths["last"]) as tmp:
        result.model.save(tmp)
    final_state = training_state.capture(result.model)
    training_state.restore(result.model, result.best_state or final_state)
    with atomic_path(paths["best"]) as tmp:
        result.model.save(tmp)
    training_state.restore(result.model, final_state)


def run_title(params: Params) -> str:
    optimizer, loss = params.optimizer, params.loss
    return f"{optimizer.name} lr={optimizer.learning_rate} eps={optimizer.epsilon} {loss.name}/{loss.form}"


def write_training_outputs(
    result: TrainResult, params: Params, models_dir: Path, metrics_dir: Path, run_facts: dict
) -> tuple[dict, list[Path], list[Path]]:
    """Writes models/, metrics/{train.json, history.csv, run.json, loss_curve.png}.

    Returns (train metrics, the metric files, the model files) for the tracking store.
    run_facts (the MLflow run id, timing) go to run.json, apart from the deterministic metrics.
    """
    (models_dir / "snapshots").mkdir(parents=True, exist_ok=True)  # a declared output, even when empty
    metrics = train_metrics(result.history, params.divergence, result.guard_epochs, result.best_epoch)
    files, model_files = output_files(models_dir, metrics_dir)
    save_models(result, dict(zip(("last", "best"), model_files)))
    write_history_csv(files[1], result.history)
    write_json(files[0], metrics)
    write_json(metrics_dir / "run.json", run_facts)
    adam = params.optimizer.name in ("adam", "adamw")
    plot_run(
        result.history,
        metrics["divergence_epoch"],
        files[2],
        title=run_title(params),
        epsilon=params.optimizer.epsilon if adam else None,
        beta_1=params.optimizer.beta_1 if adam else None,
    )
    return metrics, files, model_files
