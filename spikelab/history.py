"""metrics/history.csv, the per-epoch record of a run: its one writer and its one reader.

One row per epoch: epoch, the losses and accuracies, the learning rate, then every diagnostic
column in name order. Values that differ run to run (seconds) are never written, so the file
is identical for identical params.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path

from spikelab.plumbing.files import atomic_path

FIRST_COLUMNS = ("epoch", "loss", "val_loss", "accuracy", "val_accuracy", "learning_rate")
NOT_DETERMINISTIC = ("seconds",)


def history_columns(history: list[dict]) -> list[str]:
    seen = {key for row in history for key in row if key not in NOT_DETERMINISTIC}
    return [key for key in FIRST_COLUMNS if key in seen] + sorted(seen - set(FIRST_COLUMNS))


def write_history_csv(path: str | os.PathLike, history: list[dict]) -> None:
    columns = history_columns(history) or list(FIRST_COLUMNS)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            for row in history:
                writer.writerow({key: row.get(key, "") for key in columns})


# a column that epoch did not measure: the lab's files leave the cell empty, Keras's CSVLogger writes NA
NOT_MEASURED = ("", "NA")


def history_row(cells: dict[str, str], skip_empty: bool = False) -> dict:
    """One history.csv row's text cells as numbers: the epoch an int, the rest floats; a cell the
    epoch did not measure (empty, or CSVLogger's NA) is NaN, or left out of the row with skip_empty."""
    return {
        key: (int(value) if key == "epoch" else float(value)) if value not in NOT_MEASURED else math.nan
        for key, value in cells.items()
        if value not in NOT_MEASURED or not skip_empty
    }


def parse_history_csv(text: str, skip_empty: bool = False) -> list[dict]:
    """Rows of the text of a history.csv (see history_row)."""
    return [history_row(row, skip_empty) for row in csv.DictReader(io.StringIO(text))]


def read_history_csv(path: str | os.PathLike, skip_empty: bool = False) -> list[dict]:
    return parse_history_csv(Path(path).read_text(), skip_empty)
