"""benchmarks/results.json, shared by every benchmark: each writes its own keys and keeps the rest."""

from __future__ import annotations

import json
from pathlib import Path


def update_results(path: Path, figures: dict) -> dict:
    """Write `figures` into the JSON file at `path`, keeping every key they do not name (other
    benchmarks' figures, dated records); returns the file's whole content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(path.read_text()) if path.exists() else {}
    merged = previous | figures
    path.write_text(json.dumps(merged, indent=2) + "\n")
    return merged
