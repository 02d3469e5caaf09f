"""A study through the population engine: each cell's runs trained together, beside DVC.

    python -m study.population --sweep studies/evidence/sweep.yaml [--quick] [--size 20] [--rerun]
    make evidence ENGINE=population                         # the same, then the report and predictors

The sweep file, its cells, seeds and run names are the DVC path's (study/sweep.py expands them);
a cell's runs are trained as populations of at most --size members (study/population_engine.py), each
member exactly a single run's training. A run's overrides may set data.seed and split.seed too:
those members train on a dataset of their own in the same population.

How it meets DVC: beside it. A population is not a DVC experiment: one `dvc exp run` has one
params.yaml, one metrics/ folder and one MLflow run, and a member is a whole run. Each member
instead gets the train and evaluate stages' outputs, written by the stages' own functions, under
study/populations/<prefix>/<run name>/ (models/{best,last}.keras, models/snapshots/,
metrics/{train.json, history.csv, run.json, loss_curve.png, evaluate.json}, params.json; git-ignored,
like DVC's cache), and its own MLflow run, nested under a parent run for the population, with the
params, per-epoch metrics, summary and eval metrics, artifacts and checkpoints of a single run. The
report (`python -m study.report --engine population`) reads rows and histories from those folders;
rows say `engine: population`. The default `dvc repro` and the per-run study are unchanged.

A re-run skips the runs whose folder holds a finished member with the same params (the code is
not compared, unlike the DVC path: --rerun after a change to the training code). A population
stopped part-way (SIGTERM, Ctrl-C, SIGKILL, the machine going away) resumes: when every member of
it, as planned now, holds a snapshot and resume state of one epoch (written every
train.snapshot_every epochs) from a training with the same params, it continues from the last
such epoch, its members' MLflow runs reopened, and ends with the bytes an uninterrupted one writes.
A SIGKILL thus loses at most snapshot_every epochs of each unfinished member.

This module is the command; a member's folder and the populations a sweep forms are
study/population_members.py's, training one population and writing its members' outputs
study/population_training.py's, and the replays of a member study/population_replay.py's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from spikelab.params import Params, flatten, read_yaml
from spikelab.plumbing.errors import run_entry_point
from spikelab.plumbing.native_logs import quiet_native_startup
from study.population_members import (
    POPULATIONS,
    PopulationError,
    committed_runs,
    is_finished,
    member_dir,
    populations,
)
from study.population_replay import replay
from study.population_training import interrupt, train_population
from study.sweep import (
    SWEEP_FILE,
    Run,
    checked_params,
    expand,
    load_defaults,
    load_sweep,
    results_of,
    run_prefix,
    stop_after_spike,
)

DEFAULT_SIZE = 20  # members per population: the evidence study's seeds per cell
MAX_SIZE = 200  # a bound on one process's members, far above any study's seeds per cell


def _die_with_parent() -> None:
    """In a worker, before it runs: the kernel sends it SIGTERM when the parent dies, even by
    SIGKILL, so no worker trains on beside a re-run (Linux; elsewhere workers may outlive it)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    try:
        return study(argv)
    except KeyboardInterrupt as stop:
        reason = str(stop) or "an interrupt"
        if "--worker" in (argv if argv is not None else sys.argv[1:]):
            print(f"study: population worker stopped by {reason}", file=sys.stderr)
        else:
            print(
                f"study: stopped by {reason}; finished runs are kept, and each unfinished population "
                "resumes from its members' last snapshot (every train.snapshot_every epochs) when the "
                "same command runs again",
                file=sys.stderr,
            )
        return 130


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m study.population", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", type=Path, default=SWEEP_FILE)
    parser.add_argument("--quick", action="store_true", help="the sweep's quick subset")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="most members per population")
    parser.add_argument("--rerun", action="store_true", help="re-run members that already finished")
    parser.add_argument("--root", type=Path, default=POPULATIONS, help="where the members' folders go")
    parser.add_argument("--replay", metavar="RUN", help="replay this finished member (the sweep's replay cells)")
    parser.add_argument("--epoch", type=int, help="with --replay: resume at this snapshot epoch")
    parser.add_argument("--name", default="replay", help="with --replay: file name of the results")
    parser.add_argument(
        "--results",
        type=Path,
        help="the study's results folder (default: results/ beside the sweep): runs with a finished row in its "
        "<prefix>_runs.csv are skipped; replays write there",
    )
    parser.add_argument("--jobs", type=int, default=1, help="populations trained at once, each in a Python of its own")
    # a worker's populations, from the parent: run names joined by ',' within one, ';' between them
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.results = args.results or results_of(args.sweep)
    if not 1 <= args.size <= MAX_SIZE:
        raise PopulationError(
            f"--size {args.size}: give 1 to {MAX_SIZE} members per population (each member is a whole "
            "run's weights, optimizer state and dataset in one process; larger studies take several populations)"
        )
    if args.jobs < 1:
        raise PopulationError(f"--jobs {args.jobs}: give at least 1")
    return args


def study(argv: list[str] | None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt)
    with quiet_native_startup():  # TensorFlow's import prints noise: kept off the console, as in the stages
        from study import population_engine  # noqa: F401
    sweep = load_sweep(args.sweep)
    prefix = run_prefix(sweep, args.quick)
    if args.replay:
        return replay(args, sweep, prefix)
    cells, runs = expand(sweep, load_defaults(), quick=args.quick)
    raw = read_yaml("params.yaml", "params")
    params = checked_params(args.sweep, runs, raw)  # every run's params checked before any work
    plan = plan_populations(args, runs, params, prefix)
    if args.worker is not None:  # the populations the parent gave this worker, as it grouped them
        by_name = {run.name: run for run in runs}
        plan = [[by_name[name] for name in group.split(",")] for group in args.worker.split(";")]
    elif args.jobs > 1 and len(plan) > 1:
        return run_workers(argv if argv is not None else sys.argv[1:], plan, min(args.jobs, len(plan)))
    train_plan(plan, params, prefix, args.root, stop_after_spike(sweep))
    return 0


def needs_training(run: Run, params: dict, prefix: str, root: Path) -> bool:
    """A member not finished, or finished with other params than the sweep's now."""
    folder = member_dir(prefix, run.name, root)
    if not is_finished(folder):
        return True
    return json.loads((folder / "params.json").read_text()) != json.loads(json.dumps(flatten(params)))


def plan_populations(args: argparse.Namespace, runs: list[Run], params: dict, prefix: str) -> list[list[Run]]:
    """The populations still to train, each checked to share one population's arithmetic; what is
    skipped (a committed row, a member finished with these params) is said one line each."""
    from study.population_engine import check_population

    committed = set() if args.rerun else committed_runs(args.results / f"{prefix}_runs.csv")
    plan = []
    for group in populations(runs, args.size):
        todo = [
            run
            for run in group
            if args.rerun or (run.name not in committed and needs_training(run, params[run.name], prefix, args.root))
        ]
        for run in group:
            if run.name in committed and not is_finished(member_dir(prefix, run.name, args.root)):
                print(
                    f"study: {run.name} is a finished row of {args.results / prefix}_runs.csv, skipped (--rerun re-runs it)"
                )
            elif run not in todo:
                print(f"study: {run.name} already finished with these params, skipped (--rerun re-runs it)")
        if todo:
            try:
                check_population_params([params[run.name] for run in todo], todo, check_population)
            except ValueError as error:
                raise PopulationError(str(error)) from None
            plan.append(todo)
    return plan


def train_plan(plan: list[list[Run]], params: dict, prefix: str, root: Path, stop_after: int | None) -> None:
    """Each population of the plan in turn, in this process, with a progress line after each."""
    started, done = time.monotonic(), 0
    total = sum(len(group) for group in plan)
    cache: dict = {}
    for group in plan:
        name = f"{prefix}-{group[0].cell}-p{group[0].seed}"
        print(f"study: population {name}: {len(group)} runs ({', '.join(run.name for run in group)})", flush=True)
        folders = [member_dir(prefix, run.name, root) for run in group]
        names = [run.name for run in group]
        seconds = train_population(name, names, [params[run.name] for run in group], folders, cache, stop_after)
        done += len(group)
        elapsed = time.monotonic() - started
        print(
            f"study: {done}/{total} runs done ({elapsed / 60:.1f} min; this population trained in {seconds:.0f} s, "
            f"{3600 * done / elapsed:.0f} runs/hour so far)",
            flush=True,
        )


def run_workers(argv: list[str], plan: list[list[Run]], jobs: int) -> int:
    """The plan's populations from one shared queue, each in a Python of its own, at most `jobs` at
    a time (like `dvc queue start -j N`: the machine shared by N trainings); the next population
    starts as soon as one ends, so no worker idles while another has a queue left. A population's
    bytes do not depend on the process it trains in. Returns the worst exit code."""
    queue, running, worst = list(plan), [], 0

    def start(group: list[Run]) -> subprocess.Popen:
        command = [sys.executable, "-m", "study.population", *argv, "--worker", ",".join(run.name for run in group)]
        return subprocess.Popen(command, preexec_fn=_die_with_parent)

    try:
        while queue or running:
            while queue and len(running) < jobs:
                running.append(start(queue.pop(0)))
            time.sleep(0.5)
            for worker in [w for w in running if w.poll() is not None]:
                running.remove(worker)
                worst = max(worst, worker.returncode)
        return worst
    except KeyboardInterrupt:
        for worker in running:  # each ends its MLflow runs KILLED (its own SIGTERM handler)
            with contextlib.suppress(ProcessLookupError):
                worker.terminate()
        for worker in running:
            worker.wait()
        raise


def check_population_params(member_params: list[Params], runs: list[Run], check) -> None:
    """The engine's own check on params alone (datasets come later): one line naming the runs."""
    from study.population_engine import Member

    empty = {key: np.zeros((0,)) for key in ("x_train", "y_train", "x_val", "y_val")}
    check([Member(run.name, params, empty) for run, params in zip(runs, member_params)])


if __name__ == "__main__":
    run_entry_point(main)
