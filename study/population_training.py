"""One population trained end to end (study/population_engine.py does the training): its members'
datasets, its resume from a stopped training, and each member's outputs and MLflow run, as the train,
rules and evaluate stages write a single run's."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
from dataclasses import replace
from pathlib import Path

import numpy as np

from spikelab.params import Params, flatten
from spikelab.plumbing.machine import cpu_model
from spikelab.plumbing.native_logs import quiet_native_startup

# the signal that asked this process to stop, kept: the KeyboardInterrupt the handler raises is
# swallowed when it lands inside a garbage-collection callback or a __del__ (JAX's
# _xla_gc_callback: "Exception ignored in ..."), and the training would go on
STOP_REQUESTED: list[str] = []


def interrupt(signum, frame):
    """SIGTERM as Ctrl-C: every open MLflow run (the population's and its members') ends KILLED."""
    STOP_REQUESTED.append(signal.Signals(signum).name)
    raise KeyboardInterrupt(f"signal {STOP_REQUESTED[-1]}")


def raise_if_stop_requested() -> None:
    """At each member's epoch end: a stop whose KeyboardInterrupt was swallowed stops here."""
    if STOP_REQUESTED:
        raise KeyboardInterrupt(f"signal {STOP_REQUESTED[0]}")


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
    from spikelab.epoch_logging import MlflowEpochLogger
    from spikelab.model import resolve_data_format
    from spikelab.plumbing.files import write_json
    from spikelab.tracking import git_commit, log_metrics_at, training_run
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
        loggers = [MlflowEpochLogger(run.run_id, run=run) for run in runs_open]
        for index, history in enumerate(population.histories[: len(members)]):
            for row in history[logged[index] :]:  # epochs the snapshot holds that the store lost
                logs = {key: value for key, value in row.items() if key not in ("epoch", "learning_rate")}
                loggers[index].on_epoch_end(row["epoch"] - 1, logs)
            logged[index] = max(logged[index], len(history))

        def on_epoch(index: int, epoch: int, logs: dict) -> None:
            raise_if_stop_requested()
            if epoch + 1 > logged[index]:  # a resumed run's store already holds the epochs it logged
                loggers[index].on_epoch_end(epoch, logs)

        result = population.train(on_epoch, stop_after_spike=stop_after_spike)
        for logger in loggers:
            logger.on_train_end()
        for slot, (member, folder, run) in enumerate(zip(members, folders, runs_open)):
            finish_member(
                member,
                folder,
                run,
                result,
                slot,
                population=name,
                size=len(members),
                data_format=data_format,
                commit=commit,
            )
        parent.call("log cell summary", log_metrics_at, parent.run_id, {"summary.population_size": len(members)}, 0)
    return result.seconds


def finish_member(
    member, folder: Path, run, result, slot: int, *, population: str, size: int, data_format: str, commit: str
) -> None:
    """The trained member at `slot` of `result`: its outputs, as the train, rules and evaluate stages
    write a single run's, and its MLflow run's results; evaluate.json last (it marks the member finished)."""
    from spikelab import snapshots as training_state
    from spikelab.divergence import rule_metrics
    from spikelab.evaluation import load_model, score
    from spikelab.losses import make_loss
    from spikelab.outputs import write_training_outputs
    from spikelab.plumbing.files import write_json
    from spikelab.tracking import evaluation_metrics, log_metrics_at, summary_metrics

    trained = result.results[slot]
    training_state.restore(result.template, result.final_states[slot])
    epochs_trained = max(1, len(trained.history) - (member.params.train.resume_epoch or 0))
    run_facts = {
        "mlflow_run_id": run.run_id,
        "data_format": data_format,
        # the population's seconds shared out: what this run cost
        "train_seconds": result.seconds / size,
        "seconds_per_epoch": result.seconds / size / epochs_trained,
        "engine": "population",
        "population": population,
        "population_size": size,
        "slot": slot,
        "convolutions": result.forms,
        "git_commit": commit,
        "machine": cpu_model(),
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

    from spikelab.metric_names import mlflow_key

    try:
        return max((metric.step for metric in MlflowClient().get_metric_history(run_id, mlflow_key("loss"))), default=0)
    except Exception:  # noqa: BLE001 -- a store that cannot answer: log every epoch again
        return 0
