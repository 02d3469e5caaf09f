"""Population members on disk and in a sweep: each member's folder, its params, the populations a
sweep's runs form, and which are finished. What the population engine's front end (study.population),
its replays, the report, team mode and the studies share.

A member's folder is study/populations/<prefix>/<run name>/ (the train and evaluate stages' outputs,
params.json; study.population's docstring).
"""

from __future__ import annotations

import json
from pathlib import Path

from spikelab.params import Params, read_yaml
from spikelab.plumbing.errors import UserError
from study.sweep import Cell, Run, expand, load_defaults, run_params

POPULATIONS = Path("study/populations")


class PopulationError(UserError, ValueError):
    """A study the population engine cannot run; the message names the cell and the fix."""


def member_dir(prefix: str, name: str, root: Path = POPULATIONS) -> Path:
    return root / prefix / name


def is_finished(folder: Path) -> bool:
    """evaluate.json is written last: a member with it has every output."""
    return (folder / "metrics" / "evaluate.json").is_file() and (folder / "params.json").is_file()


def cells_with_params(sweep: dict) -> list[tuple[Cell, list[Run], Params]]:
    """Each cell that has runs of its own, its runs, and its params (its first run's, train seed aside)."""
    cells, runs = expand(sweep, load_defaults())
    raw = read_yaml("params.yaml", "params")
    found = []
    for cell in cells:
        cell_runs = [run for run in runs if run.cell == cell.name]
        if cell_runs:
            found.append((cell, cell_runs, run_params(cell_runs[0], raw)))
    return found


def populations(runs: list[Run], size: int) -> list[list[Run]]:
    """The runs grouped by cell, in their order, in chunks of at most `size`."""
    by_cell: dict[str, list[Run]] = {}
    for run in runs:
        by_cell.setdefault(run.cell, []).append(run)
    return [cell_runs[i : i + size] for cell_runs in by_cell.values() for i in range(0, len(cell_runs), size)]


def committed_runs(path: Path) -> set[str]:
    """The runs a committed <prefix>_runs.csv holds as finished population members: a study spread
    over sittings (and machines) resumes from what is committed, not only from member folders."""
    import csv

    if not path.is_file():
        return set()
    with open(path, newline="") as handle:
        return {
            row["name"]
            for row in csv.DictReader(handle)
            if row.get("state") == "success" and row.get("engine") == "population"
        }


def population_of(prefix: str, run_name: str, root: Path) -> tuple[dict, list[str]]:
    """(the run's run.json facts, the names of its population's members in slot order)."""
    folder = member_dir(prefix, run_name, root)
    if not is_finished(folder):
        raise PopulationError(f"no finished population member {run_name!r} under {root / prefix}")
    facts = json.loads((folder / "metrics" / "run.json").read_text())
    slots: dict[int, str] = {}
    for other in (root / prefix).iterdir():
        other_facts = other / "metrics" / "run.json"
        if is_finished(other) and other_facts.is_file():
            found = json.loads(other_facts.read_text())
            if found.get("population") == facts["population"]:
                slots[found["slot"]] = other.name
    return facts, [slots.get(slot, run_name) for slot in range(facts["population_size"])]
