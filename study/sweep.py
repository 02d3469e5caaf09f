"""A study's sweep file -> named runs, each a list of `dvc exp run -S` overrides.

`expand()` is a pure function (tested); `main()` queues the runs as DVC experiments and runs them
with `dvc queue start -j N`, waiting until the queue is done, so every run is a normal DVC
experiment (and, through the train stage, a normal MLflow run).

    python -m study.sweep queue [--sweep FILE] [--quick] [--jobs 2] [--rerun]   # make study ENGINE=dvc
    python -m study.sweep list [--sweep FILE] [--quick]        # print the runs, queue nothing

A study is a folder, studies/<name>/ (studies/__init__.py): its sweep file is sweep.yaml there and
its results go to results/ beside it (results_of); FILE defaults to the first study's,
studies/sweep/sweep.yaml.

Run names are `<prefix>-<cell>-s<seed>` (prefix: the file's `prefix`, default `sweep`; `quick` for
the quick subset), so the report can find each
run's cell and seed again from `dvc exp show`. A re-run skips the names that already succeeded on
the current commit and re-queues failed ones (`dvc exp run -f`); --rerun re-queues everything.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ruamel.yaml import YAML

from spikelab.params import Params, ParamsError, flatten, load_params, params_from_dict, read_yaml
from spikelab.plumbing.errors import UserError, run_entry_point
from study.dvc_calls import queue_and_wait

STUDIES = Path("studies")  # a folder per study: sweep.yaml, results/, README.md (studies/__init__.py)
SWEEP_FILE = STUDIES / "sweep" / "sweep.yaml"  # the default: the first study, the quick sweep's
NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")  # DVC experiment names are git ref names: no dots
SWEEP_KEYS = {
    "seeds",
    "cells",
    "quick",
    "replay",
    "prefix",
    "compare_with",
    "no_spike_expected",
    "data_seed_offset",
    "stop_after_spike",
}


class SweepError(UserError, ValueError):
    """A bad sweep file; the message names the file and the key."""


class SweepFile(dict):
    """A sweep file's mapping (load_sweep), with the path it was read from: errors name that file."""

    def __init__(self, raw: dict, path: Path):
        super().__init__(raw)
        self.path = path


def _where(sweep: dict) -> str:
    """The file a sweep came from, for its errors (a mapping built in code says so)."""
    return str(getattr(sweep, "path", "the sweep (not read from a file)"))


@dataclass(frozen=True)
class Cell:
    name: str
    overrides: dict  # {"optimizer.epsilon": 0.001, ...}, applied on top of params.yaml
    same_as: str | None = None  # an earlier cell with the same effective params (no runs of its own)
    reference: str | None = None  # the cell its rates are tested against (None: the sweep's first cell)


@dataclass(frozen=True)
class Run:
    name: str  # the DVC experiment name
    cell: str
    seed: int
    overrides: tuple[str, ...]  # ("optimizer.epsilon=0.001", "train.seed=0")

    def dvc_args(self) -> list[str]:
        return [arg for override in self.overrides for arg in ("-S", override)]


def format_value(value) -> str:
    """A params value as `-S` wants it (DVC parses the right-hand side as YAML)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def changed_params(params: dict, defaults: dict) -> dict:
    """The params (flat keys) whose value, as `-S` would write it, differs from params.yaml's; keys
    params.yaml does not have are left out."""
    return {
        key: value
        for key, value in params.items()
        if key in defaults and format_value(value) != format_value(defaults[key])
    }


def _check_name(name, what: str, where: str) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise SweepError(f"{where}: {what} {name!r} must be lower-case letters, digits and '-' (a DVC experiment name)")
    return name


def _seeds(raw, key: str, where: str) -> list[int]:
    if (
        not isinstance(raw, list)
        or not raw
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in raw)
    ):
        raise SweepError(f"{where}: {key} must be a non-empty list of integers >= 0, got {raw!r}")
    if len(set(raw)) != len(raw):
        raise SweepError(f"{where}: {key} lists a seed twice: {raw!r}")
    return list(raw)


def calm_cells(sweep: dict, names: list[str]) -> list[str]:
    """`no_spike_expected: [cell, ...]`: cells where no one would call a rise a spike (AMSGrad's v cannot
    decay, SGD has no preconditioner): every firing of the divergence rule there is a false alarm."""
    calm = sweep.get("no_spike_expected") or []
    if not isinstance(calm, list) or any(name not in names for name in calm):
        raise SweepError(f"{_where(sweep)}: no_spike_expected must list some of the cells {names}, got {calm!r}")
    return list(calm)


def parse_cells(sweep: dict, defaults: dict) -> list[Cell]:
    """The cells in file order; a cell whose overrides leave params.yaml's values as they are is
    marked same_as the first cell with the same effective params (it would only repeat those runs)."""
    raw_cells = sweep.get("cells")
    if not isinstance(raw_cells, dict) or not raw_cells:
        raise SweepError(f"{_where(sweep)}: 'cells' must be a mapping of cell name -> {{params key: value}}")
    references = parse_references(sweep, list(raw_cells))
    cells, seen = [], {}
    for name, overrides in raw_cells.items():
        _check_name(name, "cell name", _where(sweep))
        overrides = overrides or {}
        if not isinstance(overrides, dict):
            raise SweepError(f"{_where(sweep)}: cells.{name} must be a mapping of params keys to values")
        for key in overrides:
            if key not in defaults:
                raise SweepError(f"{_where(sweep)}: cells.{name}: unknown params key {key!r}")
            if key == "train.seed":
                raise SweepError(f"{_where(sweep)}: cells.{name} sets train.seed; seeds come from 'seeds'")
        effective = tuple(
            sorted((key, format_value(value)) for key, value in changed_params(overrides, defaults).items())
        )
        cells.append(Cell(name, dict(overrides), seen.get(effective), references.get(name)))
        seen.setdefault(effective, name)
    return cells


def parse_references(sweep: dict, names: list[str]) -> dict[str, str]:
    """`compare_with: {cell: reference cell}`: a cell tested against another than the first (e.g. a
    plateau intervention against the plateau configuration, not against the default's baseline)."""
    references = sweep.get("compare_with") or {}
    if not isinstance(references, dict):
        raise SweepError(f"{_where(sweep)}: 'compare_with' must be a mapping of cell -> the cell it is compared with")
    for cell, reference in references.items():
        for role, name in (("cell", cell), ("reference", reference)):
            if name not in names:
                raise SweepError(f"{_where(sweep)}: compare_with: unknown {role} {name!r}; the cells are {names}")
        if cell == reference:
            raise SweepError(f"{_where(sweep)}: compare_with: {cell!r} cannot be compared with itself")
    return dict(references)


def expand(sweep: dict, defaults: dict, quick: bool = False) -> tuple[list[Cell], list[Run]]:
    """(cells, runs) of the full sweep, or of its `quick` subset. defaults: flat params.yaml."""
    unknown = set(sweep) - SWEEP_KEYS
    if unknown:
        raise SweepError(f"{_where(sweep)}: unknown keys {sorted(unknown)}; allowed: {sorted(SWEEP_KEYS)}")
    cells = parse_cells(sweep, defaults)
    calm_cells(sweep, [cell.name for cell in cells])
    seeds = _seeds(sweep.get("seeds"), "seeds", _where(sweep))
    prefix = _check_name(sweep.get("prefix", "sweep"), "prefix", _where(sweep))
    if quick:
        subset = sweep.get("quick") or {}
        names = subset.get("cells")
        known = [cell.name for cell in cells]
        if not isinstance(names, list) or not names or any(name not in known for name in names):
            raise SweepError(f"{_where(sweep)}: quick.cells must list some of the cells {known}, got {names!r}")
        cells = [cell for cell in cells if cell.name in names]
        seeds = _seeds(subset.get("seeds"), "quick.seeds", _where(sweep))
        prefix = "quick"
    per_seed = data_seeds(sweep, cells)
    # seed-major order: a sweep stopped part-way has covered every cell with its first seeds
    runs = [
        Run(
            f"{prefix}-{cell.name}-s{seed}",
            cell.name,
            seed,
            tuple(f"{key}={format_value(value)}" for key, value in cell.overrides.items())
            + (f"train.seed={seed}",)
            + per_seed(seed),
        )
        for seed in seeds
        for cell in cells
        if cell.same_as is None
    ]
    return cells, runs


def data_seeds(sweep: dict, cells: list[Cell]):
    """`data_seed_offset: N`: run seed s trains on its own dataset, data.seed = split.seed = N + s (every
    cell of seed s on the same one, so cells are compared on the same datasets). Without it every run
    uses params.yaml's data and split."""
    offset = sweep.get("data_seed_offset")
    if offset is None:
        return lambda seed: ()
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 1:
        raise SweepError(f"{_where(sweep)}: data_seed_offset must be an integer >= 1, got {offset!r}")
    for cell in cells:
        clash = {"data.seed", "split.seed"} & set(cell.overrides)
        if clash:
            raise SweepError(
                f"{_where(sweep)}: cells.{cell.name} sets {sorted(clash)[0]}; with data_seed_offset it comes from the seed"
            )
    return lambda seed: (f"data.seed={offset + seed}", f"split.seed={offset + seed}")


def stop_after_spike(sweep: dict) -> int | None:
    """`stop_after_spike: N` (population engine only): a population ends once every member has trained
    N epochs past its first spike; train.epochs stays the cap for runs that never spike."""
    value = sweep.get("stop_after_spike")
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise SweepError(f"{_where(sweep)}: stop_after_spike must be an integer >= 1 (epochs), got {value!r}")
    return value


def run_prefix(sweep: dict, quick: bool) -> str:
    """The name part runs and result files share: `quick`, or the file's `prefix` (default `sweep`)."""
    return "quick" if quick else sweep.get("prefix", "sweep")


def results_of(sweep_file: Path) -> Path:
    """A study's results folder: results/ beside its sweep file (studies/<name>/results). The one place
    the rule is written; every engine, report and study finds its results through it."""
    return sweep_file.parent / "results"


def study_results(name: str) -> Path:
    """studies/<name>/results, for a study's module that reads no sweep file (the doctor's, the leak's):
    results/ where the study's sweep file is or would be."""
    return results_of(STUDIES / name / "sweep.yaml")


def load_sweep(path: Path = SWEEP_FILE) -> dict:
    raw = read_yaml(path, "sweep")
    if not isinstance(raw, dict):
        raise SweepError(f"{path}: must be a mapping with 'seeds' and 'cells'")
    return SweepFile(raw, path)


def run_params(run: Run, raw: dict) -> Params:
    """params.yaml (raw, parsed) with the run's `-S` overrides, each value read as DVC reads it (YAML 1.2)."""
    raw = json.loads(json.dumps(raw))
    yaml = YAML(typ="safe", pure=True)
    for override in run.overrides:
        key, text = override.split("=", 1)
        section, name = key.split(".", 1)
        raw[section][name] = yaml.load(text)
    return params_from_dict(raw)


def checked_params(sweep_file: Path, runs: list[Run], raw: dict) -> dict[str, Params]:
    """Every run's params, validated as the train stage would, before anything is queued or trained:
    a bad cell value fails here in one line naming the sweep file and the cell, not in each of its
    queued runs. {run name: its params}."""
    found = {}
    for run in runs:
        try:
            found[run.name] = run_params(run, raw)
        except ParamsError as error:
            reason = str(error).removeprefix("params.yaml: ")
            raise SweepError(f"{sweep_file}: cells.{run.cell}: {reason}") from None
    return found


def load_defaults(path: Path = Path("params.yaml")) -> dict:
    """params.yaml flattened, validated: a bad params.yaml fails here, not in 45 queued runs."""
    return flatten(load_params(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("queue", "list"))
    parser.add_argument("--quick", action="store_true", help="the quick subset (under 15 min on 2 cores)")
    parser.add_argument("--jobs", type=int, default=2, help="queue workers (dvc queue start -j)")
    parser.add_argument("--rerun", action="store_true", help="re-run experiments that already succeeded")
    parser.add_argument("--sweep", type=Path, default=SWEEP_FILE)
    args = parser.parse_args(argv)
    sweep = load_sweep(args.sweep)
    cells, runs = expand(sweep, load_defaults(), quick=args.quick)
    checked_params(args.sweep, runs, read_yaml(Path("params.yaml"), "params"))
    if stop_after_spike(sweep) is not None and args.command == "queue":
        raise SweepError(
            f"{args.sweep}: stop_after_spike needs the population engine (a DVC run cannot see its neighbours): "
            f"python -m study.population --sweep {args.sweep}"
        )
    for cell in cells:
        if cell.same_as:
            print(f"study: cell {cell.name} = cell {cell.same_as} with this params.yaml; its runs are {cell.same_as}'s")
    if args.command == "list":
        for run in runs:
            print(run.name, " ".join(run.dvc_args()))
        return 0
    final = queue_and_wait([(run.name, run.dvc_args()) for run in runs], args.jobs, args.rerun)
    return 0 if all(state == "success" for state in final.values()) else 1


if __name__ == "__main__":
    run_entry_point(main)
