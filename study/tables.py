"""Every study's tables: numbers as people read them, markdown for the docs, CSV for re-use."""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

from spikelab.plumbing.files import atomic_path


def format_cell(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def markdown_table(rows: list[dict], columns) -> str:
    """columns: (key, title) pairs."""
    lines = ["| " + " | ".join(title for _, title in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(format_cell(row.get(key)) for key, _ in columns) + " |")
    return "\n".join(lines) + "\n"


def _write_rows(handle, rows: list[dict], columns) -> None:
    writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows({key: ("" if row.get(key) is None else row.get(key)) for key in columns} for row in rows)


def write_csv(path: Path, rows: list[dict], columns) -> None:
    """columns: the keys, in order; None is written as an empty cell."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            _write_rows(handle, rows, columns)


def write_csv_gz(path: Path, rows: list[dict], columns) -> None:
    """The same, gzipped, with no timestamp in the header, so identical rows give identical bytes."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as packed:
            with io.TextIOWrapper(packed, newline="") as handle:
                _write_rows(handle, rows, columns)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
