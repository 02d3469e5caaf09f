"""The study's sweep: study/sweep.yaml -> named runs, each a list of `dvc exp run -S` overrides.

`expand()` is a pure function (tested); `main()` queues the runs as DVC experiments and runs them
with `dvc queue start -j N`, waiting until the queue is done, so every run is a normal DVC
experiment (and, through the train stage, a normal MLflow run).

    python -m spikelab.study queue [--quick] [--jobs 2] [--rerun]   # make sweep / make quick-sweep
    python -m spikelab.study list [--quick]                           # print the runs, queue nothing

Run names are `<prefix>-<cell>-s<seed>` (prefix `sweep` or `quick`), so the report can find each
run's cell and seed again from `dvc exp show`. A re-run skips the names that already succeeded on
the current commit and re-queues failed ones (`dvc exp run -f`); --rerun re-queues everything.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

SWEEP_FILE = Path("study/sweep.yaml")
NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")  # DVC experiment names are git ref names: no dots
SWEEP_KEYS = {"seeds", "cells", "quick", "replay"}


class SweepError(ValueError):
    """A bad study/sweep.yaml; the message names the key."""


@dataclass(frozen=True)
class Cell:
    name: str
    overrides: dict  # {"optimizer.epsilon": 0.001, ...}, applied on top of params.yaml
    same_as: str | None = None  # an earlier cell with the same effective params (no runs of its own)


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


def _check_name(name, what: str) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise SweepError(f"study/sweep.yaml: {what} {name!r} must be lower-case letters, digits and '-' (a DVC experiment name)")
    return name


def _seeds(raw, key: str) -> list[int]:
    if not isinstance(raw, list) or not raw or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in raw):
        raise SweepError(f"study/sweep.yaml: {key} must be a non-empty list of integers >= 0, got {raw!r}")
    if len(set(raw)) != len(raw):
        raise SweepError(f"study/sweep.yaml: {key} lists a seed twice: {raw!r}")
    return list(raw)


def parse_cells(sweep: dict, defaults: dict) -> list[Cell]:
    """The cells in file order; a cell whose overrides leave params.yaml's values as they are is
    marked same_as the first cell with the same effective params (it would only repeat those runs)."""
    raw_cells = sweep.get("cells")
    if not isinstance(raw_cells, dict) or not raw_cells:
        raise SweepError("study/sweep.yaml: 'cells' must be a mapping of cell name -> {params key: value}")
    cells, seen = [], {}
    for name, overrides in raw_cells.items():
        _check_name(name, "cell name")
        overrides = overrides or {}
        if not isinstance(overrides, dict):
            raise SweepError(f"study/sweep.yaml: cells.{name} must be a mapping of params keys to values")
        for key in overrides:
            if key not in defaults:
                raise SweepError(f"study/sweep.yaml: cells.{name}: unknown params key {key!r}")
            if key == "train.seed":
                raise SweepError(f"study/sweep.yaml: cells.{name} sets train.seed; seeds come from 'seeds'")
        effective = tuple(sorted((key, format_value(value)) for key, value in overrides.items()
                                 if format_value(value) != format_value(defaults[key])))
        cells.append(Cell(name, dict(overrides), seen.get(effective)))
        seen.setdefault(effective, name)
    return cells


def expand(sweep: dict, defaults: dict, quick: bool = False) -> tuple[list[Cell], list[Run]]:
    """(cells, runs) of the full sweep, or of its `quick` subset. defaults: flat params.yaml."""
    unknown = set(sweep) - SWEEP_KEYS
    if unknown:
        raise SweepError(f"study/sweep.yaml: unknown keys {sorted(unknown)}; allowed: {sorted(SWEEP_KEYS)}")
    cells = parse_cells(sweep, defaults)
    seeds = _seeds(sweep.get("seeds"), "seeds")
    prefix = "sweep"
    if quick:
        subset = sweep.get("quick") or {}
        names = subset.get("cells")
        known = [cell.name for cell in cells]
        if not isinstance(names, list) or not names or any(name not in known for name in names):
            raise SweepError(f"study/sweep.yaml: quick.cells must list some of the cells {known}, got {names!r}")
        cells = [cell for cell in cells if cell.name in names]
        seeds = _seeds(subset.get("seeds"), "quick.seeds")
        prefix = "quick"
    # seed-major order: a sweep stopped part-way has covered every cell with its first seeds
    runs = [
        Run(f"{prefix}-{cell.name}-s{seed}", cell.name, seed,
            tuple(f"{key}={format_value(value)}" for key, value in cell.overrides.items()) + (f"train.seed={seed}",))
        for seed in seeds for cell in cells if cell.same_as is None
    ]
    return cells, runs


def load_sweep(path: Path = SWEEP_FILE) -> dict:
    if not path.exists():
        raise SweepError(f"{path}: not found (run from the project root)")
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise SweepError(f"{path}: must be a mapping with 'seeds' and 'cells'")
    return raw


def load_defaults(path: Path = Path("params.yaml")) -> dict:
    from spikelab.params import flatten, load_params  # validated, so a bad params.yaml fails here, not in 45 runs

    return flatten(load_params(path))


# ---- running: everything below talks to DVC --------------------------------------------------------


def dvc(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["dvc", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"dvc {' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
    return result


def queue_states() -> dict[str, str]:
    """{experiment name: Queued | Running | Success | Failed} from `dvc queue status`'s table."""
    states = {}
    for line in dvc("queue", "status").stdout.splitlines():
        fields = line.split()
        # Task  Name  Created  Status: the name is the 2nd column, the status the last
        if len(fields) >= 4 and fields[-1] in ("Queued", "Running", "Success", "Failed"):
            # a re-queued name also has its old Failed row: an active row wins
            if states.get(fields[1]) not in ("Queued", "Running"):
                states[fields[1]] = fields[-1]
    return states


def existing_states() -> dict[str, str]:
    """{experiment name: state} for the experiments of the current commit (`dvc exp show`)."""
    from spikelab.report import experiments_of  # the report owns the parsing of `dvc exp show --json`

    return {record["name"]: record["state"] for record in experiments_of(all_commits=False)}


def queue_and_wait(runs: list[tuple[str, list[str]]], jobs: int, rerun: bool = False, poll_s: float = 5.0) -> dict[str, str]:
    """Queue (name, dvc -S args) pairs, start `jobs` workers, wait; returns each name's final state."""
    existing = existing_states()
    queued = []
    for name, args in runs:
        state = existing.get(name)
        if state == "success" and not rerun:
            print(f"study: {name} already succeeded on this commit, skipped (--rerun re-runs it)")
            continue
        force = ["-f"] if state is not None else []
        dvc("exp", "run", "--queue", *force, "-n", name, *args)
        queued.append(name)
        print(f"study: queued {name}: {' '.join(args)}", flush=True)
    if not queued:
        return {name: existing.get(name, "missing") for name, _ in runs}
    dvc("queue", "start", "-j", str(jobs))
    started = time.monotonic()
    while True:
        states = queue_states()
        pending = [name for name in queued if states.get(name) in ("Queued", "Running")]
        done = len(queued) - len(pending)
        print(f"study: {done}/{len(queued)} done, {len(pending)} queued or running "
              f"({(time.monotonic() - started) / 60:.1f} min)", flush=True)
        if not pending:
            break
        time.sleep(poll_s)
    final = {name: states.get(name, "missing").lower() for name in queued}
    failed = [name for name, state in final.items() if state != "success"]
    print(f"study: {len(queued)} experiments in {(time.monotonic() - started) / 60:.1f} min; "
          f"{len(failed)} failed{': ' + ', '.join(failed) if failed else ''} (see `dvc queue logs <name>`)")
    return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spikelab.study", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("queue", "list"))
    parser.add_argument("--quick", action="store_true", help="the quick subset (under 15 min on 2 cores)")
    parser.add_argument("--jobs", type=int, default=2, help="queue workers (dvc queue start -j)")
    parser.add_argument("--rerun", action="store_true", help="re-run experiments that already succeeded")
    parser.add_argument("--sweep", type=Path, default=SWEEP_FILE)
    args = parser.parse_args(argv)
    try:
        cells, runs = expand(load_sweep(args.sweep), load_defaults(), quick=args.quick)
    except ValueError as error:  # SweepError, ParamsError
        print(f"error: {error}", file=sys.stderr)
        return 2
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
    sys.exit(main())
