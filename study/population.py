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
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from ruamel.yaml import YAML

from spikelab.params import Params, flatten, params_from_dict, read_yaml
from spikelab.plumbing.errors import UserError, run_entry_point
from spikelab.plumbing.native_logs import quiet_native_startup
from study.sweep import (
    SWEEP_FILE,
    Cell,
    Run,
    expand,
    load_defaults,
    load_sweep,
    results_of,
    run_prefix,
    stop_after_spike,
)

POPULATIONS = Path("study/populations")
DEFAULT_SIZE = 20  # members per population: the evidence study's seeds per cell
MAX_SIZE = 200  # a bound on one process's members, far above any study's seeds per cell


class PopulationError(UserError, ValueError):
    """A study the population engine cannot run; the message names the cell and the fix."""


def member_dir(prefix: str, name: str, root: Path = POPULATIONS) -> Path:
    return root / prefix / name


def is_finished(folder: Path) -> bool:
    """evaluate.json is written last: a member with it has every output."""
    return (folder / "metrics" / "evaluate.json").is_file() and (folder / "params.json").is_file()


def run_params(run: Run, raw: dict) -> Params:
    """params.yaml (raw, parsed) with the run's `-S` overrides, each value read as DVC reads it (YAML 1.2)."""
    raw = json.loads(json.dumps(raw))
    yaml = YAML(typ="safe", pure=True)
    for override in run.overrides:
        key, text = override.split("=", 1)
        section, name = key.split(".", 1)
        raw[section][name] = yaml.load(text)
    return params_from_dict(raw)


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


def dataset(params: Params, cache: dict) -> dict[str, np.ndarray]:
    """The split stage's arrays for these data and split params, made once per distinct dataset."""
    from spikelab.data import generate, split

    key = (params.data.model_dump_json(), params.split.model_dump_json())
    if key not in cache:
        solid, broken, _ = generate(params.data)
        cache[key] = split(solid, broken, params.split)
    return cache[key]


def train_population(
    name: str,
    names: list[str],
    member_params: list[Params],
    folders: list[Path],
    cache: dict,
    stop_after_spike: int | None = None,
) -> float:
    """Train one population, write every member's outputs and MLflow run; returns the training seconds."""
    from spikelab import snapshots as training_state
    from spikelab.divergence import rule_metrics
    from spikelab.evaluation import load_model, score
    from spikelab.losses import make_loss
    from spikelab.model import resolve_data_format
    from spikelab.outputs import write_training_outputs
    from spikelab.plumbing.files import write_json
    from spikelab.tracking import evaluation_metrics, git_commit, log_metrics_at, summary_metrics, training_run
    from study.population_engine import Member, Population, cell_params

    with quiet_native_startup():  # TensorFlow's first op (a test convolution) prints noise, as in the stages
        data_format = resolve_data_format(member_params[0].model.data_format)
    members = [Member(run_name, params, dataset(params, cache)) for run_name, params in zip(names, member_params)]
    snapshot_dirs = [folder / "models" / "snapshots" for folder in folders]
    resume = resumable(name, names, member_params, folders)
    if resume is None:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
            (folder / "models" / "snapshots").mkdir(parents=True)
            (folder / "metrics").mkdir()
        population = Population(members, data_format, snapshot_dirs)
        logged = [0] * len(members)
    else:
        epoch, runs = resume
        print(f"study: population {name} resumes at epoch {epoch} from its members' snapshots", flush=True)
        population = Population(members, data_format, snapshot_dirs, resume_epoch=epoch)
        logged = [logged_epochs(run["member"]) for run in runs]
    experiment = member_params[0].tracking.experiment
    engine_tags = {"spikelab.engine": "population", "spikelab.population": name}
    commit = git_commit(Path.cwd())
    with contextlib.ExitStack() as stack:
        parent = stack.enter_context(
            training_run(
                experiment,
                cell_params(member_params[0]),
                name=name,
                tags=engine_tags,
                reopen=resume[1][0]["parent"] if resume else None,
            )
        )
        runs_open = [
            stack.enter_context(
                training_run(
                    experiment,
                    flatten(member.params) | {"model.data_format_used": data_format},
                    name=member.name,
                    tags=engine_tags | {"mlflow.parentRunId": parent.run_id},
                    reopen=resume[1][index]["member"] if resume else None,
                )
            )
            for index, member in enumerate(members)
        ]
        # written again on a resume too: a run the store had lost continues in a new one, named here
        if resume is None or any(
            (opened.run_id, parent.run_id) != (found["member"], found["parent"])
            for opened, found in zip(runs_open, resume[1])
        ):
            for folder, params, run in zip(folders, member_params, runs_open):
                write_json(
                    folder / RESUME_FILE,
                    {
                        "population": name,
                        "members": names,
                        "params": flatten(params),
                        "parent": parent.run_id,
                        "member": run.run_id,
                    },
                )
        loggers = [run.epoch_logger() for run in runs_open]
        for index, history in enumerate(population.histories[: len(members)]):
            for row in history[logged[index] :]:  # epochs the snapshot holds that the store lost
                logs = {key: value for key, value in row.items() if key not in ("epoch", "learning_rate")}
                loggers[index].on_epoch_end(row["epoch"] - 1, logs)
            logged[index] = max(logged[index], len(history))

        def on_epoch(index: int, epoch: int, logs: dict) -> None:
            if epoch + 1 > logged[index]:  # a resumed run's store already holds the epochs it logged
                loggers[index].on_epoch_end(epoch, logs)

        result = population.train(on_epoch, stop_after_spike=stop_after_spike)
        for logger in loggers:
            logger.on_train_end()
        for index, (member, folder, run) in enumerate(zip(members, folders, runs_open)):
            trained = result.results[index]
            training_state.restore(result.template, result.final_states[index])
            epochs_trained = max(1, len(trained.history) - (member.params.train.resume_epoch or 0))
            run_facts = {
                "mlflow_run_id": run.run_id,
                "data_format": data_format,
                # the population's seconds shared out: what this run cost
                "train_seconds": result.seconds / len(members),
                "seconds_per_epoch": result.seconds / len(members) / epochs_trained,
                "engine": "population",
                "population": name,
                "population_size": len(members),
                "slot": index,
                "convolutions": result.forms,
                "git_commit": commit,
            }
            metrics, metric_files, model_files = write_training_outputs(
                replace(trained, model=result.template),
                member.params,
                folder / "models",
                folder / "metrics",
                run_facts,
            )
            run.log_results(metrics, metric_files, model_files)
            # the rules stage's work, on the member's finished history
            rules = rule_metrics(trained.history, member.params.divergence, member.params.plateau)
            write_json(folder / "metrics" / "rules.json", rules)
            run.call("log rules", log_metrics_at, run.run_id, summary_metrics(rules), 0)
            loss_fn = make_loss(member.params.loss)
            scores = {
                model_name: score(
                    load_model(folder / "models" / f"{model_name}.keras"),
                    loss_fn,
                    member.arrays["x_val"],
                    member.arrays["y_val"],
                    member.params.train.batch_size,
                )
                for model_name in ("best", "last")
            }
            run.call("log eval metrics", log_metrics_at, run.run_id, evaluation_metrics(scores), 0)
            write_json(folder / "params.json", flatten(member.params))
            write_json(folder / "metrics" / "evaluate.json", scores)  # last: marks the member finished
        parent.call("log cell summary", log_metrics_at, parent.run_id, {"population_size": len(members)}, 0)
    return result.seconds


RESUME_FILE = "population.json"  # the member's population, params and MLflow runs, written at its start


def resumable(name: str, names: list[str], member_params: list[Params], folders: list[Path]):
    """(epoch, each member's population.json) when every member of this population, as it is now
    planned, holds a snapshot and resume state of one common epoch from an unfinished training of
    the same params; else None (the population starts from scratch)."""
    from study.population_engine import has_resume_state

    found = []
    for folder, params in zip(folders, member_params):
        path = folder / RESUME_FILE
        try:
            facts = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        same = facts.get("population") == name and facts.get("members") == names
        if not same or facts.get("params") != json.loads(json.dumps(flatten(params))):
            return None
        found.append(facts)
    every = min((params.train.snapshot_every for params in member_params), default=0)
    if not every:
        return None
    last = max(params.train.epochs for params in member_params)
    epochs = [
        epoch
        for epoch in range(every, last + 1, every)
        if all(has_resume_state(folder / "models" / "snapshots", epoch) for folder in folders)
    ]
    return (epochs[-1], found) if epochs else None


def logged_epochs(run_id: str) -> int:
    """The last epoch whose loss the MLflow run holds (0: none, or the store cannot say)."""
    from mlflow.tracking import MlflowClient

    try:
        return max((metric.step for metric in MlflowClient().get_metric_history(run_id, "loss")), default=0)
    except Exception:  # noqa: BLE001 -- a store that cannot answer: log every epoch again
        return 0


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


def unflatten(flat: dict) -> dict:
    raw: dict = {}
    for key, value in flat.items():
        section, name = key.split(".", 1)
        raw.setdefault(section, {})[name] = value
    return raw


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


def replay(args, sweep: dict, prefix: str) -> int:
    """Counterfactual replays of one population member, each variant a population of the original's
    size with the member at its slot: every original member resumed from its snapshot at the same
    epoch (a slot whose member has no such snapshot gets a copy of the replayed member's: a member's
    numbers do not depend on its neighbours). Same P, same slot: the unchanged control reproduces the
    original's losses bit for bit. Writes <results>/<name>.{md,csv,png} as study.replay does."""
    from spikelab.history import read_history_csv
    from spikelab.params import DivergenceParams, PlateauParams
    from study.replay import continuation, max_difference, pick_snapshot_epoch, recovery_bar, write_replay

    cells = {cell.name: cell.overrides for cell in expand(sweep, load_defaults())[0]}
    settings = sweep.get("replay") or {}
    unknown = [name for name in settings.get("cells", []) if name not in cells]
    if unknown or "min_gap" not in settings:
        raise PopulationError(f"{args.sweep}: replay needs min_gap and cells from {sorted(cells)}; unknown: {unknown}")
    facts, slot_names = population_of(prefix, args.replay, args.root)
    target = member_dir(prefix, args.replay, args.root)
    original = read_history_csv(target / "metrics" / "history.csv")
    train = json.loads((target / "metrics" / "train.json").read_text())
    flat = json.loads((target / "params.json").read_text())
    epoch = args.epoch
    if epoch is None:
        if train.get("divergence_epoch") is None:
            raise PopulationError(f"{args.replay} did not diverge; pass --epoch to replay anyway")
        epoch = pick_snapshot_epoch(train["divergence_epoch"], flat["train.snapshot_every"], settings["min_gap"])
    snapshot_name = f"epoch_{epoch:05d}.npz"

    def snapshot_of(name: str) -> Path:
        path = member_dir(prefix, name, args.root) / "models" / "snapshots" / snapshot_name
        return path if path.is_file() else target / "models" / "snapshots" / snapshot_name

    if not snapshot_of(args.replay).is_file():
        raise PopulationError(f"{args.replay} has no snapshot at epoch {epoch} ({snapshot_name})")
    variants = {"unchanged": {}, **{name: cells[name] for name in settings.get("cells", [])}}
    cache: dict = {}
    curves, rows = {"original": original}, []
    rule = DivergenceParams(ratio=flat["divergence.ratio"], min_rise=flat["divergence.min_rise"])
    plateau = PlateauParams(ratio=flat["plateau.ratio"], min_epochs=flat["plateau.min_epochs"])
    bar = recovery_bar(original, train.get("divergence_epoch"), plateau)
    rows.append(
        {
            "intervention": "original",
            "overrides": "",
            "state": "success",
            **continuation(original, epoch, rule, plateau, bar),
            "final_dead_fraction": train.get("final_dead_fraction"),
            "val_accuracy": None,
        }
    )
    replays_root = args.root / f"{prefix}-replay"
    for variant, overrides in variants.items():
        names, member_params, folders = [], [], []
        for slot, name in enumerate(slot_names):
            source = member_dir(prefix, name, args.root)
            member_flat = (
                json.loads((source / "params.json").read_text()) if (source / "params.json").is_file() else flat
            )
            member_flat = member_flat | dict(overrides)
            member_flat |= {"train.resume_from": str(snapshot_of(name).resolve()), "train.resume_epoch": epoch}
            lane = (
                f"{name}-e{epoch}-{variant}" if name != args.replay or slot == facts["slot"] else f"{name}-lane{slot}"
            )
            names.append(lane)
            member_params.append(params_from_dict(unflatten(member_flat)))
            folders.append(replays_root / lane)
        population = f"replay-{args.replay}-e{epoch}-{variant}"
        print(f"replay: population {population}: {len(names)} members resumed at epoch {epoch}", flush=True)
        train_population(population, names, member_params, folders, cache)
        replayed = folders[facts["slot"]]
        history = read_history_csv(replayed / "metrics" / "history.csv")
        curves[variant] = history
        replay_train = json.loads((replayed / "metrics" / "train.json").read_text())
        scores = json.loads((replayed / "metrics" / "evaluate.json").read_text())
        row = {
            "intervention": variant,
            "state": "success",
            "overrides": " ".join(f"{k}={v}" for k, v in overrides.items()),
            **continuation(history, epoch, rule, plateau, bar),
            "final_dead_fraction": replay_train.get("final_dead_fraction"),
            "val_accuracy": scores["last"]["accuracy"],
        }
        if variant == "unchanged":
            row["max_loss_difference"] = max_difference(history, original, epoch)
        rows.append(row)
    write_replay(rows, curves, epoch, f"population member {args.replay}", args.results, args.name)
    print((args.results / f"{args.name}.md").read_text())
    return 0


def _interrupt(signum, frame):
    # SIGTERM as Ctrl-C: every open MLflow run (the population's and its members') ends KILLED
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


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


def study(argv: list[str] | None) -> int:
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
    signal.signal(signal.SIGTERM, _interrupt)
    if not 1 <= args.size <= MAX_SIZE:
        raise PopulationError(
            f"--size {args.size}: give 1 to {MAX_SIZE} members per population (each member is a whole "
            "run's weights, optimizer state and dataset in one process; larger studies take several populations)"
        )
    if args.jobs < 1:
        raise PopulationError(f"--jobs {args.jobs}: give at least 1")
    with quiet_native_startup():  # TensorFlow's import prints noise: kept off the console, as in the stages
        from study import population_engine  # noqa: F401
    sweep = load_sweep(args.sweep)
    prefix = run_prefix(sweep, args.quick)
    if args.replay:
        return replay(args, sweep, prefix)
    cells, runs = expand(sweep, load_defaults(), quick=args.quick)
    stop_after = stop_after_spike(sweep)
    raw = read_yaml("params.yaml", "params")
    params = {run.name: run_params(run, raw) for run in runs}  # every run's params checked before any work
    from study.population_engine import check_population

    committed = set() if args.rerun else committed_runs(args.results / f"{prefix}_runs.csv")
    plan = []
    for group in populations(runs, args.size):
        todo = [
            run
            for run in group
            if args.rerun
            or (
                run.name not in committed
                and (
                    not is_finished(member_dir(prefix, run.name, args.root))
                    or json.loads((member_dir(prefix, run.name, args.root) / "params.json").read_text())
                    != json.loads(json.dumps(flatten(params[run.name])))
                )
            )
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
    if args.worker is not None:  # the populations the parent gave this worker, as it grouped them
        by_name = {run.name: run for run in runs}
        plan = [[by_name[name] for name in group.split(",")] for group in args.worker.split(";")]
    elif args.jobs > 1 and len(plan) > 1:
        return run_workers(argv if argv is not None else sys.argv[1:], plan, min(args.jobs, len(plan)))
    started, done = time.monotonic(), 0
    total = sum(len(group) for group in plan)
    cache: dict = {}
    for group in plan:
        name = f"{prefix}-{group[0].cell}-p{group[0].seed}"
        print(f"study: population {name}: {len(group)} runs ({', '.join(run.name for run in group)})", flush=True)
        folders = [member_dir(prefix, run.name, args.root) for run in group]
        names = [run.name for run in group]
        seconds = train_population(name, names, [params[run.name] for run in group], folders, cache, stop_after)
        done += len(group)
        elapsed = time.monotonic() - started
        print(
            f"study: {done}/{total} runs done ({elapsed / 60:.1f} min; this population trained in {seconds:.0f} s, "
            f"{3600 * done / elapsed:.0f} runs/hour so far)",
            flush=True,
        )
    return 0


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
