"""The study's one door to DVC and git: queueing experiments, and reading them back.

Every `dvc` / `git` call of the study and every parse of their output is here, so a change of
DVC's output format is mended in one place. The numbers come from `dvc exp show --json`, whose
metrics stay grouped per file (dvc.api.exp_show flattens them into one table row whose column
names can collide across files); per-epoch curves come from each experiment's commit
(`git show <rev>:metrics/history.csv`: history.csv is `cache: false`, so it lives in git).
"""

from __future__ import annotations

import ast
import contextlib
import fcntl
import functools
import json
import os
import re
import subprocess
import time
import urllib.parse
from pathlib import Path

from spikelab.history import parse_history_csv
from spikelab.params import flat_raw
from spikelab.plumbing.errors import UserError

ACTIVE = ("Queued", "Running")
# one `dvc queue status` costs about 1 CPU-second (a Python start and DVC's imports): polled every
# 5 s it took a fifth of a core from the trainings on a 2-core machine
POLL_S = 15.0
# polls in a row with experiments pending and no live worker before the queue counts as dead:
# right after `dvc queue start` and between two tasks the worker count can read 0 for a moment
DEAD_AFTER_POLLS = 3
# dead queues revived before the study gives up: workers that die again and again (out of memory
# at every start) must end in one line, not a loop
MAX_REVIVALS = 3
LOST_REASON = "lost: its dvc queue worker died mid-run (the study marked it failed and went on)"
# `dvc exp queue-worker` runs each experiment as a `dvc exp exec-run` process and, when it ends, saves
# its result as an experiment (collect) and deletes its temporary copy (cleanup). A SIGKILLed worker
# leaves that process running on its own: its training finishes, and nothing saves it.
EXEC_RUN = ("exp", "exec-run")


# DVC's queue keeps its tasks as message files (kombu's filesystem transport). A command that reads
# them while another process writes one can read it empty and die with JSONDecodeError "Expecting
# value" (treeverse/dvc-task#73, celery/kombu#1551): seen in `dvc queue status` right after two
# `dvc exp run --queue`, failing a CI run. Commands that only read are retried on it; a queueing is
# not (a repeat could queue twice)
BROKER_RACE = "Expecting value"
READ_RETRIES = 4
RETRY_PAUSE_S = 0.5


def is_broker_race(result: subprocess.CompletedProcess) -> bool:
    return result.returncode != 0 and BROKER_RACE in result.stdout + result.stderr


def dvc(*args: str, check: bool = True, retries: int = 0) -> subprocess.CompletedProcess:
    """`dvc *args`, output captured; `retries` repeats of a command that met the broker race."""
    for attempt in range(retries + 1):
        result = subprocess.run(["dvc", *args], capture_output=True, text=True)
        if not is_broker_race(result) or attempt == retries:
            break
        time.sleep(RETRY_PAUSE_S * (attempt + 1))
    if check and result.returncode != 0:
        raise RuntimeError(f"dvc {' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
    return result


# ---- reading experiments ----------------------------------------------------------------------------


def parse_exp_show(payload: list[dict]) -> list[dict]:
    """`dvc exp show --json` -> [{name, rev, state, timestamp, baseline, metrics, params}], newest per name."""
    found: dict[str, dict] = {}
    for commit in payload:
        for experiment in commit.get("experiments") or []:
            revision = (experiment.get("revs") or [{}])[0]
            data = revision.get("data") or {}
            executor = experiment.get("executor") or {}
            state = executor.get("state") or "success"
            if revision.get("error"):
                state = "failed"
            params_file = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
            record = {
                "name": experiment.get("name") or revision.get("name"),
                "rev": revision.get("rev"),
                "state": state,
                "timestamp": data.get("timestamp") or "",
                "baseline": commit.get("rev"),
                "metrics": {
                    path: (value or {}).get("data") or {} for path, value in (data.get("metrics") or {}).items()
                },
                "params": flat_raw(params_file),
            }
            if record["name"] and record["timestamp"] >= found.get(record["name"], {}).get("timestamp", ""):
                found[record["name"]] = record
    return list(found.values())


def experiments_of(all_commits: bool = True) -> list[dict]:
    args = ["exp", "show", "--json"] + (["--all-commits"] if all_commits else [])
    return parse_exp_show(json.loads(dvc(*args, retries=READ_RETRIES).stdout or "[]"))


def experiments_by_name(all_commits: bool = True) -> dict[str, dict]:
    return {record["name"]: record for record in experiments_of(all_commits)}


# what an experiment's numbers depend on: the stages, the pipeline, the params, and the library
# modules the stages import (found from the code, not listed: editing a library module no stage
# imports keeps the runs). A run made on another commit with all of these
# unchanged is a run of the current commit too: a study goes on across commits that add results,
# docs or tools
PIPELINE_INPUTS = ("stages", "dvc.yaml", "params.yaml", "spikelab/__init__.py")


def _git_lines(*args: str) -> list[str]:
    result = subprocess.run(["git", *args], capture_output=True, text=True)
    return result.stdout.splitlines() if result.returncode == 0 else []


@functools.cache
def stage_imports(rev: str) -> frozenset[str]:
    """The library files (spikelab/*.py) the stages import at rev, directly or through each other."""
    sources = {
        path: "\n".join(_git_lines("show", f"{rev}:{path}"))
        for path in _git_lines("ls-tree", "-r", "--name-only", rev, "--", "stages", "spikelab")
        if path.endswith(".py")
    }
    found, todo = set(), [path for path in sources if path.startswith("stages/")]
    while todo:
        path = todo.pop()
        try:
            tree = ast.parse(sources[path])
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            for name in names:
                module = name.replace(".", "/") + ".py"
                if module.startswith("spikelab/") and module in sources and module not in found:
                    found.add(module)
                    todo.append(module)
    return frozenset(found)


def same_training_inputs(baseline: str) -> bool:
    """True when what the stages run at `baseline` equals what they run at HEAD."""
    paths = sorted({*PIPELINE_INPUTS, *stage_imports(baseline), *stage_imports("HEAD")})
    result = subprocess.run(["git", "diff", "--quiet", baseline, "HEAD", "--", *paths], capture_output=True)
    return result.returncode == 0


def reusable_successes() -> dict[str, str]:
    """{name: baseline} of succeeded experiments on any commit whose training inputs equal HEAD's."""
    return {
        record["name"]: record["baseline"]
        for record in experiments_of(all_commits=True)
        if record["state"] == "success" and record["baseline"] and same_training_inputs(record["baseline"])
    }


def history_text(rev: str, path: str = "metrics/history.csv") -> str:
    """The text of an experiment's history.csv, from its commit; "" when the commit lacks it."""
    result = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True)
    return result.stdout if result.returncode == 0 else ""


def history_of(rev: str, path: str = "metrics/history.csv") -> list[dict]:
    """An experiment's per-epoch rows, from its commit; [] when the commit lacks them."""
    return parse_history_csv(history_text(rev, path))


def read_output(rev: str, path: str) -> bytes:
    """A DVC-tracked output of an experiment (e.g. a snapshot), from the DVC cache."""
    import dvc.api

    with dvc.api.open(path, repo=".", rev=rev, mode="rb") as handle:
        return handle.read()


def is_valid_ref_name(ref: str) -> bool:
    return subprocess.run(["git", "check-ref-format", ref], capture_output=True).returncode == 0


# ---- running experiments ----------------------------------------------------------------------------


class QueueError(UserError):
    """The queue cannot finish: its workers are gone while experiments still wait on them."""


def parse_queue_status(text: str) -> tuple[dict[str, str], int | None]:
    """`dvc queue status` -> ({experiment name: Queued | Running | Success | Failed}, active workers
    or None when the line is missing)."""
    states, workers = {}, None
    for line in text.splitlines():
        fields = line.split()
        # Task  Name  Created  Status: the name is the 2nd column, the status the last
        if len(fields) >= 4 and fields[-1] in (*ACTIVE, "Success", "Failed"):
            # a re-queued name also has its old Failed row: an active row wins
            if states.get(fields[1]) not in ACTIVE:
                states[fields[1]] = fields[-1]
        found = re.match(r"Worker status: (\d+) active", line.strip())
        if found:
            workers = int(found.group(1))
    return states, workers


def queue_states() -> tuple[dict[str, str], int | None]:
    return parse_queue_status(dvc("queue", "status", retries=READ_RETRIES).stdout)


def stuck_error(pending: list[str], states: dict[str, str]) -> QueueError:
    running = [name for name in pending if states.get(name) == "Running"]
    queued = [name for name in pending if states.get(name) == "Queued"]
    repairs = []
    if running:
        repairs.append(f"`dvc queue kill {' '.join(running)}` marks the Running ones failed (a re-run re-queues them)")
    if queued:
        repairs.append("`dvc queue start -j N` resumes the Queued ones")
    return QueueError(
        f"dvc queue: no worker is alive, but {len(pending)} experiments wait on one "
        f"({', '.join(f'{name} {states.get(name)}' for name in pending)}): the workers died (killed, out of "
        f"memory, machine restarted); {'; '.join(repairs)}"
    )


def orphaned_trainings(names: list[str]) -> dict[str, int]:
    """{name: pid} of these queue tasks whose `dvc exp exec-run` still runs though its worker is gone."""
    if not names:
        return {}
    from dvc.repo import Repo  # DVC's queue internals: only on this rare path

    found = {}
    with Repo(".") as repo:
        queue = repo.experiments.celery_queue
        for name, entry in queue.match_queue_entry_by_name(set(names), queue.iter_active()).items():
            info = queue.proc.get(entry.stash_rev) if entry else None
            if info and info.returncode is None and runs_exec_run(info.pid):
                found[name] = info.pid
    return found


def runs_exec_run(pid: int) -> bool:
    try:
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    return any(arguments[i : i + 2] == list(EXEC_RUN) for i in range(len(arguments)))


def recover_experiment(name: str) -> bool:
    """Save as a DVC experiment the result of a task whose worker died after (or while) its training
    ran on: what the worker's collect step would have done. False when there is no result to save
    (the training failed or was killed too)."""
    from dvc.repo import Repo
    from dvc.repo.experiments.executor.base import ExecutorInfo
    from dvc.repo.experiments.executor.local import TempDirExecutor
    from dvc.repo.experiments.queue.base import BaseStashQueue

    with Repo(".") as repo:
        queue = repo.experiments.celery_queue
        entry = queue.match_queue_entry_by_name({name}, queue.iter_active()).get(name)
        if entry is None:
            return False
        infofile = queue.get_infofile_path(entry.stash_rev)
        try:
            info = ExecutorInfo.load_json(infofile)
        except (OSError, ValueError, TypeError):
            return False
        if info.result is None or info.result.ref_info is None:
            return False
        executor = TempDirExecutor.from_info(info)
        BaseStashQueue.collect_executor(repo.experiments, executor, info.result)
        executor.cleanup(infofile)
    return True


def revive_dead_queue(
    pending: list[str], states: dict[str, str], jobs: int, since_ms: int = 0
) -> dict[str, str | None]:
    """No worker is alive while `pending` experiments wait: the Running ones lost their worker (and
    their training has ended: the caller waits for orphaned ones first).

    Each is saved as a DVC experiment when its training left a result (recovered), else marked
    failed in the queue and in MLflow; workers are restarted for the Queued ones. Returns {lost
    name: MLflow run id, or None when the run opened none since since_ms}; recovered names are not
    in it, and the queue says Success for them.
    """
    from study.lost_runs import fail_lost_runs, finished_trainings  # MLflow: only on this rare path

    running = [name for name in pending if states.get(name) == "Running"]
    recovered = [name for name in running if recover_experiment(name)]
    lost = [name for name in running if name not in recovered]
    if running:
        # the task has no process left: `dvc queue kill` marks it done (Success with a saved result,
        # Failed without one)
        dvc("queue", "kill", *running, check=False)
    for name in recovered:
        print(
            f"study: {name} recovered: its dvc queue worker died mid-run, its training finished on its own; "
            "saved as a DVC experiment",
            flush=True,
        )
    run_ids: dict[str, str | None] = {}
    if lost:
        run_ids = {name: None for name in lost} | fail_lost_runs(lost, LOST_REASON, since_ms=since_ms)
        # killed after its training (in rules or evaluate): MLflow holds a FINISHED training run
        trained = finished_trainings([name for name, run_id in run_ids.items() if run_id is None], since_ms=since_ms)
        run_ids |= trained
        for name, run_id in run_ids.items():
            if name in trained:
                what = (
                    f"its training finished (MLflow run {run_id} FINISHED), the stages after it did not, "
                    "so no DVC experiment was saved"
                )
            else:
                where = f"MLflow run {run_id} marked FAILED" if run_id else "no MLflow run of it was left unfinished"
                what = f"its training left no result; {where}"
            print(f"study: {name} lost: its dvc queue worker died mid-run and {what}", flush=True)
    if any(states.get(name) == "Queued" for name in pending):
        start_workers(jobs)
        print(f"study: no dvc queue worker was alive; started {jobs} again", flush=True)
    return run_ids


def absolute_path_variable(path: str) -> str:
    """PATH with its relative entries made absolute: the workers run each experiment in a temporary
    copy of the repo, where `.venv/bin` would not exist, and the stages' `python` would silently be
    another one (seen: 80 runs failed in minutes with "No module named 'ruamel'")."""
    return os.pathsep.join(os.path.abspath(entry) if entry else entry for entry in path.split(os.pathsep))


def start_workers(jobs: int) -> None:
    """`dvc queue start`: its workers are daemons that inherit the parent's pipes, so a captured
    output would not close until the queue is empty (no progress lines meanwhile): no pipes here."""
    env = {**os.environ, "PATH": absolute_path_variable(os.environ.get("PATH", ""))}
    result = subprocess.run(
        ["dvc", "queue", "start", "-j", str(jobs)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    if result.returncode != 0:
        raise RuntimeError(f"dvc queue start -j {jobs} exited {result.returncode} (see `dvc queue status`)")


def queue_and_wait(
    runs: list[tuple[str, list[str]]], jobs: int, rerun: bool = False, poll_s: float = POLL_S
) -> dict[str, str]:
    """Queue (name, dvc -S args) pairs, start `jobs` workers, wait; returns each name's final state.

    A name that already succeeded on the current commit, or on a commit whose training code and
    params equal HEAD's, is skipped (unless rerun); one that exists in another state is re-queued
    with -f. When no worker is alive while experiments wait, a training that outlived its worker is
    waited for and then saved as an experiment, and the queue is revived (`revive_dead_queue`): a
    run lost with its worker and its training ends failed, with its MLflow run id, and the rest go on. Raises QueueError (one line: which experiments, and the dvc
    command that unsticks them) when the workers keep dying.
    """
    existing = {record["name"]: record["state"] for record in experiments_of(all_commits=False)}
    elsewhere = {} if rerun else reusable_successes()
    queued = []
    for name, args in runs:
        state = existing.get(name)
        if state == "success" and not rerun:
            print(f"study: {name} already succeeded on this commit, skipped (--rerun re-runs it)")
            continue
        if state is None and name in elsewhere:
            print(f"study: {name} succeeded on {elsewhere[name][:7]}, same training code and params, skipped")
            existing[name] = "success"
            continue
        force = ["-f"] if state is not None else []
        dvc("exp", "run", "--queue", *force, "-n", name, *args)
        queued.append(name)
        print(f"study: queued {name}: {' '.join(args)}", flush=True)
    if not queued:
        return {name: existing.get(name, "missing") for name, _ in runs}
    start_workers(jobs)
    started, since_ms = time.monotonic(), int(time.time() * 1000) - 1000
    workerless, short, revivals, lost, orphans = 0, 0, 0, {}, {}
    while True:
        states, workers = queue_states()
        pending = [name for name in queued if states.get(name) in ACTIVE]
        # without a live worker, `dvc queue status` says Running for ever: this loop would never end
        workerless = workerless + 1 if pending and workers == 0 else 0
        if workerless >= DEAD_AFTER_POLLS:
            # a training whose worker died goes on alone: wait for it, then save what it made
            running = [name for name in pending if states.get(name) == "Running"]
            alive = orphaned_trainings(running)
            for name in alive.keys() - orphans.keys():
                print(
                    f"study: {name}: its dvc queue worker died; its training goes on alone (pid {alive[name]}), "
                    "the study saves it when it ends",
                    flush=True,
                )
            orphans |= alive
            settle = [name for name in pending if name not in alive]
            if settle:
                if revivals == MAX_REVIVALS:
                    raise stuck_error(settle, states)
                lost |= revive_dead_queue(settle, states, jobs, since_ms)
                revivals += 1
            workerless = 0
            continue
        # one of two workers can die alone (DVC's file-based broker: a JSONDecodeError on a message
        # file read empty): the study then runs at half speed with nothing said. `dvc queue start` spawns only the missing ones; after DEAD_AFTER_POLLS polls
        # in a row, since a worker just started may not be registered yet
        waiting = any(states.get(name) == "Queued" for name in pending)
        short = short + 1 if workers and workers < jobs and waiting else 0
        if short >= DEAD_AFTER_POLLS:
            start_workers(jobs)
            print(f"study: {workers} of {jobs} queue workers alive; started the missing ones", flush=True)
            short = 0
        print(
            f"study: {len(queued) - len(pending)}/{len(queued)} done, {len(pending)} queued or running "
            f"({(time.monotonic() - started) / 60:.1f} min)",
            flush=True,
        )
        if not pending:
            break
        time.sleep(poll_s)
    # a lost run is failed whatever the queue says of it
    final = {name: "failed" if name in lost else states.get(name, "missing").lower() for name in queued}
    failed = [
        f"{name} (lost with its worker; MLflow run {lost[name] or 'none'})" if name in lost else name
        for name, state in final.items()
        if state != "success"
    ]
    print(
        f"study: {len(queued)} experiments in {(time.monotonic() - started) / 60:.1f} min; "
        f"{len(failed)} failed{': ' + ', '.join(failed) if failed else ''} (see `dvc queue logs <name>`)"
    )
    return final


@contextlib.contextmanager
def experiment_lock(name: str):
    """Hold the experiment name for this process: a second `dvc exp run -n <name>` started meanwhile
    ran to exit 0 as well, but DVC kept one experiment of the two (MLflow had both runs)."""
    folder = Path(".dvc") / "tmp" / "spikelab-exp"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (urllib.parse.quote(name, safe="") + ".lock")
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise UserError(
                f"experiment {name} is running already (process {holder}): DVC would keep one of the two; "
                "wait for it, or name this one otherwise"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_experiment(name: str, dvc_args: list[str], queue: bool = False) -> int:
    """One named `dvc exp run` in the foreground, its output to the terminal; its exit code. The
    name is held while DVC runs it (experiment_lock)."""
    command = ["dvc", "exp", "run", "-n", name, *(["--queue"] if queue else []), *dvc_args]
    with experiment_lock(name):
        print(f"exp: {' '.join(command)}", flush=True)
        return subprocess.run(command).returncode
