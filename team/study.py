"""A study spread over machines by Ray: each run a normal DVC experiment in its own clone.

    python -m team.study submit [--sweep studies/sweep/sweep.yaml] [--quick]   # make team-study, on the head
    python -m team.study collect [--sweep studies/sweep/sweep.yaml] [--quick]  # make team-collect, anywhere

submit: checks the tracking server and its credentials (MLFLOW_TRACKING_URI, _USERNAME, _PASSWORD)
and creates the lab's MLflow experiment there once; pushes the current commit to the git remote
(`--git-remote`, default `team`) and the DVC-tracked data to the DVC remote (`--dvc-remote`); then
submits one Ray task per cell x seed (RAY_ADDRESS, or --address). Each task, on whichever worker
Ray gives it, clones the git remote at that commit into a fresh folder, `dvc pull`s, runs
`dvc exp run -n <prefix>-<cell>-s<seed> -S ...` logging to the shared server, and
`dvc exp push origin` (the experiment's git ref to the git remote, its outputs to the DVC remote).
A run whose experiment is already on the git remote is not run again, so a re-submission or a
retry never doubles a row; a task whose worker dies is retried by Ray on another worker
(--retries); a run that fails leaves `refs/spikelab/failed/<name>` on the git remote, with the
error, so it is a row of the report, not a hole (a later success removes it).

collect: `dvc exp pull` of the study's experiments from the git remote (with their outputs), and
the usual report (results/<prefix>.* beside the sweep file), failed runs included.

--engine population (issue 39): one Ray task per population (a cell's seeds, at most --size), each
taking --cpus of a worker. The task clones the commit into a folder named after the population
(a retry on the same worker finds the members' snapshots there and resumes them), runs
`python -m study.population --worker <members>` (it dies with the worker), and pushes the members'
result files (metrics/, params.json; not the models, which stay in that folder) as a commit to
`refs/spikelab/populations/<population>` on the git remote. A population whose ref is there is not
run again; a failed one leaves `refs/spikelab/failed/<population>`. collect --engine population
unpacks those commits into study/populations/ and writes the report from them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from spikelab.plumbing.errors import UserError, run_entry_point
from study.report import run_record, with_provenance, write_report
from study.sweep import SWEEP_FILE, expand, load_defaults, load_sweep, results_of, run_prefix
from team.stack import RAY_LOOPBACK_ONLY

FAILED_REFS = "refs/spikelab/failed/"
POPULATION_REFS = "refs/spikelab/populations/"
MEMBER_FILES = ("metrics", "params.json", "population.json")  # what a population pushes of each member
DIE_WITH_WORKER = ["setpriv", "--pdeathsig", "TERM", "--"]  # util-linux: prctl(PR_SET_PDEATHSIG) then exec
EXPERIMENT_REFS = "refs/exps/"


class TeamError(UserError, RuntimeError):
    """Team mode cannot go on; the message names what and how to mend it."""


# ---- git and dvc, in a given repository ----------------------------------------------------------


def sh(args: list[str], cwd: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
        raise RuntimeError(f"{' '.join(args[:4])} ... exited {result.returncode}: {tail}")
    return result


def remote_refs(remote: str, prefix: str, cwd: Path) -> dict[str, str]:
    """{last path part of the ref: sha} for the refs under prefix on the remote."""
    out = sh(["git", "ls-remote", remote, f"{prefix}*"], cwd).stdout
    return {line.split("\t")[1].rsplit("/", 1)[-1]: line.split("\t")[0] for line in out.splitlines() if "\t" in line}


def experiments_on_remote(remote: str, cwd: Path) -> set[str]:
    # DVC keeps an experiment at refs/exps/<2 hex>/<38 hex of the baseline>/<name>
    return set(remote_refs(remote, EXPERIMENT_REFS, cwd))


# ---- the task: one run, on a worker ----------------------------------------------------------------


def run_one(spec: dict) -> dict:
    """Clone at the commit, pull, run the experiment, push it. Returns {name, state, host, seconds, error}."""
    started = time.monotonic()
    name = spec["name"]
    outcome = {"name": name, "host": f"{socket.gethostname()}:{os.getpid()}", "state": "success", "error": ""}
    root = Path(spec["work_root"]).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    clone = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root))
    env = dict(os.environ, **spec["env"])
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(clone)  # the clone's own spikelab, whatever is installed
    keep = False
    try:
        sh(["git", "clone", "--quiet", spec["git_remote"], str(clone)], root)
        if name in experiments_on_remote("origin", clone):
            outcome["state"] = "skipped"  # a retry after the push, or another submission's run
            return outcome
        sh(["git", "checkout", "--quiet", "--detach", spec["commit"]], clone)
        sh(["dvc", "remote", "add", "--local", "--force", "--default", "team", spec["dvc_remote"]], clone)
        sh(["dvc", "pull", "--quiet"], clone, env, check=False)  # what is missing is recomputed
        # the run dies with this worker (SIGTERM when it exits, however): a killed worker leaves no
        # orphaned training behind while Ray retries the run elsewhere
        run = sh([*DIE_WITH_WORKER, "dvc", "exp", "run", "-n", name, *spec["dvc_args"]], clone, env, check=False)
        if run.returncode != 0:
            # the clone stays: whatever the stages wrote (a finished training whose evaluation could
            # not reach the server) is there to recover, and the row says where
            keep = True
            error = [*(run.stderr or run.stdout).strip().splitlines()[-20:], f"(files kept in {clone})"]
            outcome.update(state="failed", error="\n".join(error))
            record_failure(clone, name, outcome["error"])
            return outcome
        incomplete = [line for line in run.stdout.splitlines() if "is incomplete" in line]
        outcome["error"] = "\n".join(incomplete)  # the tracking store failed mid-run: `make sync` mends it
        sh(["dvc", "exp", "push", "origin", name], clone, env)
        sh(["git", "push", "--quiet", "origin", f":{FAILED_REFS}{name}"], clone, check=False)
        return outcome
    finally:
        outcome["seconds"] = round(time.monotonic() - started, 1)
        if not keep:
            shutil.rmtree(clone, ignore_errors=True)


def run_population(spec: dict) -> dict:
    """One population on a worker: clone (or reuse the clone a killed try left), train, push its
    members' result files. Returns {name, state, host, seconds, error}."""
    started = time.monotonic()
    name = spec["name"]
    outcome = {"name": name, "host": f"{socket.gethostname()}:{os.getpid()}", "state": "success", "error": ""}
    root = Path(spec["work_root"]).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    clone = root / f"{spec['commit'][:12]}-{name}"  # stable: a retry here resumes the members' snapshots
    env = dict(os.environ, **spec["env"])
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(clone)
    try:
        if not (clone / ".git").is_dir():
            shutil.rmtree(clone, ignore_errors=True)
            sh(["git", "clone", "--quiet", spec["git_remote"], str(clone)], root)
        else:
            sh(["git", "fetch", "--quiet", "origin"], clone)
        if name in remote_refs("origin", POPULATION_REFS, clone):
            outcome["state"] = "skipped"  # a retry after the push, or another submission's population
            return outcome
        sh(["git", "checkout", "--quiet", "--detach", spec["commit"]], clone)
        command = [
            sys.executable,
            "-m",
            "study.population",
            "--sweep",
            spec["sweep"],
            "--worker",
            ",".join(spec["members"]),
        ]
        run = sh([*DIE_WITH_WORKER, *command, *(["--quick"] if spec["quick"] else [])], clone, env, check=False)
        if run.returncode != 0:
            said = [line for line in (run.stderr + run.stdout).strip().splitlines() if line.strip()][-20:]
            error = [f"exit {run.returncode}", *said, f"(files kept in {clone})"]
            outcome.update(state="failed", error="\n".join(error))
            record_failure(clone, name, outcome["error"])
            return outcome
        push_members(clone, name, [Path("study/populations") / spec["prefix"] / member for member in spec["members"]])
        sh(["git", "push", "--quiet", "origin", f":{FAILED_REFS}{name}"], clone, check=False)
        return outcome
    finally:
        outcome["seconds"] = round(time.monotonic() - started, 1)


def push_members(clone: Path, name: str, folders: list[Path]) -> None:
    """A commit of the members' result files (git-ignored in the clone: added to a private index)
    pushed to refs/spikelab/populations/<name>."""
    env = dict(os.environ, GIT_INDEX_FILE=str(clone / ".git" / f"spikelab-{name}.index"))
    env.update(GIT_AUTHOR_NAME="spikelab", GIT_AUTHOR_EMAIL="spikelab@localhost")
    env.update(GIT_COMMITTER_NAME="spikelab", GIT_COMMITTER_EMAIL="spikelab@localhost")
    paths = [str(folder / part) for folder in folders for part in MEMBER_FILES if (clone / folder / part).exists()]
    sh(["git", "read-tree", "--empty"], clone, env)
    sh(["git", "add", "--force", "--", *paths], clone, env)
    tree = sh(["git", "write-tree"], clone, env).stdout.strip()
    message = f"population {name}: {len(folders)} members' results"
    commit = sh(["git", "commit-tree", tree, "-p", "HEAD", "-m", message], clone, env).stdout.strip()
    sh(["git", "push", "--quiet", "--force", "origin", f"{commit}:{POPULATION_REFS}{name}"], clone)


def record_failure(clone: Path, name: str, error: str) -> None:
    """refs/spikelab/failed/<name> on the git remote: a commit of the baseline's tree whose message is the error."""
    env = dict(os.environ, GIT_AUTHOR_NAME="spikelab", GIT_AUTHOR_EMAIL="spikelab@localhost")
    env.update(GIT_COMMITTER_NAME="spikelab", GIT_COMMITTER_EMAIL="spikelab@localhost")
    tree = sh(["git", "rev-parse", "HEAD^{tree}"], clone).stdout.strip()
    commit = sh(
        ["git", "commit-tree", tree, "-p", "HEAD", "-m", f"{name} failed\n\n{error}"], clone, env
    ).stdout.strip()
    sh(["git", "push", "--quiet", "--force", "origin", f"{commit}:{FAILED_REFS}{name}"], clone)


def summary(error: str) -> str:
    """One line of a task's error: the lab's own one-line error where there is one (DVC's lines
    around it only say which stage failed), and where the files were kept."""
    lines = error.strip().splitlines()
    ours = [line for line in lines if line.startswith("error:")]
    kept = [line for line in lines if line.startswith("(files kept in ")]
    said = [line for line in lines if line not in kept]
    return " ".join((ours or said)[-1:] + kept)


# ---- submit (on the head) ----------------------------------------------------------------------------


def check_tracking_server() -> str:
    """The lab's experiment on the shared server, created once here (parallel first runs would race)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith(("http://", "https://")):
        raise TeamError(
            "team study: MLFLOW_TRACKING_URI must name the team's tracking server (http://...); "
            "`python -m team.stack env` prints the settings of the local stack"
        )
    from mlflow.exceptions import MlflowException

    from spikelab.params import load_params
    from spikelab.tracking import prepare_experiment

    try:
        return prepare_experiment(load_params().tracking.experiment, Path.cwd())
    except MlflowException as error:
        first = str(error).strip().splitlines()[0][:200]
        raise TeamError(
            f"team study: the tracking server at {uri} refused us ({first}); check MLFLOW_TRACKING_USERNAME "
            "and MLFLOW_TRACKING_PASSWORD"
        ) from None


def clean_commit(cwd: Path) -> str:
    if sh(["git", "status", "--porcelain", "--untracked-files=no"], cwd).stdout.strip():
        raise TeamError("team study: the working tree has uncommitted changes; commit them (workers run a commit)")
    return sh(["git", "rev-parse", "HEAD"], cwd).stdout.strip()


def remote_url(kind: str, name: str, cwd: Path) -> str:
    if kind == "git":
        result = sh(["git", "remote", "get-url", name], cwd, check=False)
    else:
        result = sh(["dvc", "config", f"remote.{name}.url"], cwd, check=False)
    url = result.stdout.strip()
    if result.returncode != 0 or not url:
        raise TeamError(f"team study: no {kind} remote named {name!r} (`python -m team.stack up` adds `team`)")
    return url


def submit(args) -> int:
    cwd = Path.cwd()
    sweep = load_sweep(args.sweep)
    cells, runs = expand(sweep, load_defaults(), quick=args.quick)
    commit = clean_commit(cwd)
    git_remote, dvc_remote = remote_url("git", args.git_remote, cwd), remote_url("dvc", args.dvc_remote, cwd)
    check_tracking_server()
    sh(["git", "push", "--quiet", args.git_remote, f"{commit}:refs/heads/spikelab-study-{commit[:12]}"], cwd)
    sh(["dvc", "push", "--quiet", "-r", args.dvc_remote], cwd, check=False)  # data the workers then need not make
    done = experiments_on_remote(args.git_remote, cwd)
    todo = [run for run in runs if run.name not in done]
    for run in runs:
        if run.name in done:
            print(f"team study: {run.name} is already on the git remote, not run again")
    if not todo and args.engine == "dvc":
        print("team study: nothing to run")
        return 0
    address = args.address or os.environ.get("RAY_ADDRESS") or "auto"
    if address.startswith(("127.", "localhost")):
        os.environ.update(RAY_LOOPBACK_ONLY)  # before Ray reads it: this driver stays on 127.0.0.1 too
    import ray
    from ray.exceptions import AuthenticationError

    try:
        ray.init(address=address, log_to_driver=False)
    except (ConnectionError, AuthenticationError) as error:
        # a head that wants a token refuses a driver without it as a bare "Failed to connect"
        raise TeamError(
            f"team study: cannot connect to the Ray head at {address} ({str(error).splitlines()[0]}); "
            "the stack's head takes only its token: RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH "
            "(`python -m team.stack env` prints them)"
        ) from error
    tracking = {
        key: os.environ[key]
        for key in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
        if key in os.environ
    }
    if args.engine == "population":
        return submit_populations(args, ray, sweep, runs, commit, git_remote, tracking)
    task = ray.remote(run_one).options(num_cpus=1, max_retries=args.retries, retry_exceptions=False)
    pending = {
        task.remote(
            {
                "name": run.name,
                "commit": commit,
                "git_remote": git_remote,
                "dvc_remote": dvc_remote,
                "dvc_args": run.dvc_args(),
                "work_root": args.work_root,
                "env": tracking,
            }
        ): run.name
        for run in todo
    }
    print(f"team study: {len(pending)} runs submitted to Ray at commit {commit[:12]}", flush=True)
    started, outcomes = time.monotonic(), []
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        name = pending.pop(ready[0])
        try:
            outcome = ray.get(ready[0])
        except Exception as error:  # the task died more often than Ray retries it
            outcome = {"name": name, "state": "failed", "error": str(error).splitlines()[0], "host": "?", "seconds": 0}
        outcomes.append(outcome)
        print(
            f"team study: {name} {outcome['state']} on {outcome['host']} in {outcome['seconds']} s "
            f"({len(outcomes)}/{len(todo)}, {(time.monotonic() - started) / 60:.1f} min)"
            + (f": {summary(outcome['error'])}" if outcome["error"] else ""),
            flush=True,
        )
    failed = [o["name"] for o in outcomes if o["state"] == "failed"]
    print(f"team study: {len(outcomes)} runs, {len(failed)} failed{': ' + ', '.join(failed) if failed else ''}")
    return 1 if failed else 0


def submit_populations(args, ray, sweep: dict, runs: list, commit: str, git_remote: str, tracking: dict) -> int:
    """One Ray task per population, --cpus each; a population already on the remote is not run again."""
    from study.population_members import populations

    prefix = run_prefix(sweep, args.quick)
    done = remote_refs(args.git_remote, POPULATION_REFS, Path.cwd())
    groups = {f"{prefix}-{group[0].cell}-p{group[0].seed}": group for group in populations(runs, args.size)}
    for name in groups.keys() & done.keys():
        print(f"team study: population {name} is already on the git remote, not run again")
    todo = {name: group for name, group in groups.items() if name not in done}
    if not todo:
        print("team study: nothing to run")
        return 0
    task = ray.remote(run_population).options(num_cpus=args.cpus, max_retries=args.retries, retry_exceptions=False)
    pending = {
        task.remote(
            {
                "name": name,
                "members": [run.name for run in group],
                "prefix": prefix,
                "sweep": str(args.sweep),
                "quick": args.quick,
                "commit": commit,
                "git_remote": git_remote,
                "work_root": args.work_root,
                "env": tracking,
            }
        ): name
        for name, group in todo.items()
    }
    print(
        f"team study: {len(pending)} populations submitted to Ray at commit {commit[:12]}, {args.cpus} CPUs each",
        flush=True,
    )
    started, outcomes = time.monotonic(), []
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        name = pending.pop(ready[0])
        try:
            outcome = ray.get(ready[0])
        except Exception as error:  # the task died more often than Ray retries it
            outcome = {"name": name, "state": "failed", "error": str(error).splitlines()[0], "host": "?", "seconds": 0}
        outcomes.append(outcome)
        print(
            f"team study: population {name} ({len(todo[name])} runs) {outcome['state']} on {outcome['host']} in "
            f"{outcome['seconds']} s ({len(outcomes)}/{len(todo)}, {(time.monotonic() - started) / 60:.1f} min)"
            + (f": {summary(outcome['error'])}" if outcome["error"] else ""),
            flush=True,
        )
    failed = [o["name"] for o in outcomes if o["state"] == "failed"]
    print(f"team study: {len(outcomes)} populations, {len(failed)} failed{': ' + ', '.join(failed) if failed else ''}")
    return 1 if failed else 0


# ---- collect (anywhere) ------------------------------------------------------------------------------


def collect_populations(args, sweep: dict, cells: list, runs: list) -> int:
    """The populations' result commits unpacked into study/populations/ (git-ignored: no index is
    touched), then the report from those folders; a failed population's runs are failed rows."""
    import io
    import tarfile

    from study.population_members import POPULATIONS, member_dir
    from study.report import population_record

    cwd = Path.cwd()
    prefix = run_prefix(sweep, args.quick)
    refs = remote_refs(args.git_remote, POPULATION_REFS, cwd)
    failures = set(remote_refs(args.git_remote, FAILED_REFS, cwd))
    mine = {name: sha for name, sha in refs.items() if name.startswith(f"{prefix}-")}
    if mine:
        sh(["git", "fetch", "--quiet", args.git_remote, *(f"{POPULATION_REFS}{name}" for name in mine)], cwd)
    for name, sha in mine.items():
        archive = subprocess.run(["git", "archive", sha, str(POPULATIONS / prefix)], cwd=cwd, capture_output=True)
        if archive.returncode != 0:
            raise TeamError(f"team study: cannot read population {name} ({sha[:12]}) from the git remote")
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(cwd, filter="data")
    from study.population_members import populations

    population_of = {
        run.name: f"{prefix}-{group[0].cell}-p{group[0].seed}"
        for group in populations(runs, args.size)
        for run in group
    }
    failed = {name for name in failures if name in population_of.values() and name not in mine}
    print(f"team study: unpacked {len(mine)} populations; {len(failed)} failed on the workers")
    records = []
    for run in runs:
        record = population_record(run, member_dir(prefix, run.name))
        if record["state"] == "missing" and population_of[run.name] in failed:
            record["state"] = "failed"
        records.append(record)
    from spikelab.history import read_history_csv

    histories = {
        r["name"]: read_history_csv(member_dir(prefix, r["name"]) / "metrics" / "history.csv")
        for r in records
        if r["state"] == "success"
    }
    from study.report import write_histories

    results = results_of(args.sweep)
    results.mkdir(parents=True, exist_ok=True)
    write_histories(results / f"{prefix}_histories.csv.gz", histories)
    write_report(with_provenance(records, runs), cells, prefix, results, histories)
    return 0


def collect(args) -> int:
    cwd = Path.cwd()
    sweep = load_sweep(args.sweep)
    cells, runs = expand(sweep, load_defaults(), quick=args.quick)
    if args.engine == "population":
        return collect_populations(args, sweep, cells, runs)
    names = {run.name for run in runs}
    remote_url("git", args.git_remote, cwd)
    on_remote = sorted(names & experiments_on_remote(args.git_remote, cwd))
    failures = {name: sha for name, sha in remote_refs(args.git_remote, FAILED_REFS, cwd).items() if name in names}
    if on_remote:
        sh(["dvc", "exp", "pull", "--force", "-r", args.dvc_remote, args.git_remote, *on_remote], cwd)
    print(f"team study: pulled {len(on_remote)} experiments; {len(failures)} runs failed on the workers")
    from study.dvc_calls import experiments_by_name

    experiments = experiments_by_name()
    records = []
    for run in runs:
        experiment = experiments.get(run.name)
        if experiment is None and run.name in failures:
            experiment = {"state": "failed", "rev": failures[run.name]}
        records.append(run_record(run, experiment))
    write_report(with_provenance(records, runs), cells, run_prefix(sweep, args.quick), results_of(args.sweep))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m team.study", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("submit", "collect"))
    parser.add_argument("--sweep", type=Path, default=SWEEP_FILE)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--git-remote", default="team")
    parser.add_argument("--dvc-remote", default="team")
    parser.add_argument("--address", default=None, help="the Ray head (default: RAY_ADDRESS)")
    parser.add_argument("--retries", type=int, default=3, help="Ray retries of a task whose worker died")
    parser.add_argument("--work-root", default="~/.cache/spikelab/team", help="where workers make their clones")
    parser.add_argument(
        "--engine",
        choices=("dvc", "population"),
        default="dvc",
        help="dvc: a Ray task per run (a DVC experiment); population: a Ray task per population",
    )
    parser.add_argument("--size", type=int, default=20, help="population: most members per population")
    parser.add_argument("--cpus", type=int, default=2, help="population: a task's CPUs (a worker's, on one machine)")
    args = parser.parse_args(argv)
    return submit(args) if args.command == "submit" else collect(args)


if __name__ == "__main__":
    run_entry_point(main)
