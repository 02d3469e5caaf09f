"""What the train stage writes: history CSV, metrics JSON, best/last models (all atomically)."""
from __future__ import annotations

import csv
import math
from pathlib import Path

from spikelab import state as training_state
from spikelab.divergence import divergence_metrics
from spikelab.files import atomic_path
from spikelab.params import Params
from spikelab.training import TrainResult

# seconds per epoch are kept out of the history: the history must be identical run to run
FIRST_COLUMNS = ("epoch", "loss", "val_loss", "accuracy", "val_accuracy", "learning_rate")
NOT_DETERMINISTIC = ("seconds",)


def history_columns(history: list[dict]) -> list[str]:
    seen = {key for row in history for key in row if key not in NOT_DETERMINISTIC}
    return [key for key in FIRST_COLUMNS if key in seen] + sorted(seen - set(FIRST_COLUMNS))


def write_history_csv(path: str | Path, history: list[dict]) -> None:
    columns = history_columns(history) or list(FIRST_COLUMNS)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            for row in history:
                writer.writerow({key: row.get(key, "") for key in columns})


def train_metrics(result: TrainResult, params: Params) -> dict:
    losses = [row.get("loss", math.nan) for row in result.history]
    val_losses = [row.get("val_loss", math.nan) for row in result.history]
    metrics = divergence_metrics(losses, val_losses, params.divergence)
    metrics.update(
        guard_triggered=bool(result.guard_epochs),
        guard_epoch=result.guard_epochs[0] if result.guard_epochs else None,
        best_epoch=result.best_epoch,
    )
    return metrics


def save_models(result: TrainResult, models_dir: Path) -> dict[str, Path]:
    """last.keras = the final state; best.keras = the lowest-val_loss state (if any epoch had one)."""
    paths = {"last": models_dir / "last.keras", "best": models_dir / "best.keras"}
    with atomic_path(paths["last"]) as tmp:
        result.model.save(tmp)
    final_state = training_state.capture(result.model)
    training_state.restore(result.model, result.best_state or final_state)
    with atomic_path(paths["best"]) as tmp:
        result.model.save(tmp)
    training_state.restore(result.model, final_state)
    return paths
