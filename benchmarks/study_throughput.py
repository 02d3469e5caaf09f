"""Study throughput: runs per hour of `dvc queue start -j N` on the default params, and where each
run's seconds go (issue 12).

    python -m benchmarks.study_throughput [--runs 6] [--jobs 1 2] [--epochs N] [--out results.json]

In a fresh copy of the repo (tracked files, `git init`, data generated and split once, as in a
study, where every experiment only trains and evaluates), for each worker count: queue `--runs`
default-params experiments (distinct seeds), start the workers, wait until the queue is empty.
Runs per hour = runs / wall seconds x 3600, the wall from the first `dvc exp run --queue` to the
wait seeing the last experiment done (the study's own `queue_and_wait`, run by the copy's code).

The split of a run comes from the stages' own clocks (`spikelab/plumbing/timing.py`, MLflow metrics
`time/<stage>.<phase>`): train start-up (imports, checks, data, MLflow run opened), the first epoch
(tracing), the other epochs, outputs; evaluate start-up and scoring. What is left of a worker's
time per run (wall x workers / runs, minus both stages) is DVC's: copying the repo into its temp
folder, checking out, running the stage commands, committing the experiment.

Writes `study_runs_per_hour` (and the breakdown) into benchmarks/results.json, beside `make bench`'s
figures. Time it on a quiet machine: a second workload on 2 cores halves the figure.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.machine import machine
from benchmarks.results_file import update_results
from benchmarks.workspace import commit_fresh_repo, copy_files_at, copy_tracked_files

REPO = Path(__file__).resolve().parents[1]
# the per-run phases, in the order a run goes through them: (label, stage, metric phase)
PHASES = (
    ("train: start-up (imports, checks, data, MLflow run)", "train", "startup"),
    ("train: first epoch (tracing)", "train", "first_epoch"),
    ("train: other epochs", "train", "other_epochs"),
    ("train: outputs (files, MLflow)", "train", "outputs"),
    ("evaluate: start-up (imports, models)", "evaluate", "startup"),
    ("evaluate: scoring + outputs", "evaluate", "scoring_outputs"),
)


def copy_environment(root: Path) -> dict[str, str]:
    """The environment for a command in the copy at `root`, running the copy's own code: an older
    commit's stages run as `python stages/x.py`, which imports spikelab from the checkout the
    editable install points to unless the copy comes first on the path."""
    return {**os.environ, "PYTHONPATH": str(root)}


def run(args: list[str], cwd: Path) -> str:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=copy_environment(cwd))
    if result.returncode != 0:
        raise SystemExit(f"study_throughput: {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def prepare_workspace(root: Path, rev: str | None = None) -> None:
    """A fresh repo of the working copy's tracked files (or of commit `rev`'s), data made once."""
    if rev is None:
        copy_tracked_files(REPO, root)
    else:
        copy_files_at(REPO, rev, root)
    commit_fresh_repo(root, "study throughput benchmark")
    run(["dvc", "repro", "split"], root)  # the data, once: experiments only train and evaluate
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "data"], root)


# The copy's own study code queues and waits (an older commit's polls the queue its own way), in a
# Python started in the copy; it leaves the wall seconds and each run's final state in a JSON file.
DRIVER = """
import json, sys, time
from study.dvc_calls import queue_and_wait
runs, jobs, report = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
started = time.perf_counter()
final = queue_and_wait([tuple(run) for run in runs], jobs)
with open(report, "w") as file:
    json.dump({"wall_s": time.perf_counter() - started, "final": final}, file)
"""


def run_study(root: Path, names_seeds: list[tuple[str, int]], jobs: int, extra: list[str]) -> float:
    """Queue the runs, start `jobs` workers, wait (the copy's own queue_and_wait); wall seconds."""
    runs = [(name, ["-S", f"train.seed={seed}", *extra]) for name, seed in names_seeds]
    report = root.with_name(f"{root.name}-study.json")  # outside the repo: a queued run takes untracked files along
    report.unlink(missing_ok=True)
    # no pipes: the queue's workers are daemons that would hold them open (study.dvc_calls.start_workers)
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(runs), str(jobs), str(report)],
        cwd=root,
        env=copy_environment(root),
    )
    if result.returncode != 0 or not report.exists():
        raise SystemExit(f"study_throughput: the study in {root} exited {result.returncode}")
    outcome = json.loads(report.read_text())
    failed = [name for name, state in outcome["final"].items() if state != "success"]
    if failed:
        raise SystemExit(f"study_throughput: experiments failed: {failed} (see `dvc queue logs <name>` in {root})")
    return outcome["wall_s"]


def stage_seconds(root: Path, names: list[str]) -> list[dict[str, float]]:
    """Each run's phase seconds, from its MLflow run's time/ metrics."""
    from mlflow.tracking import MlflowClient

    from spikelab.metric_names import lab_name

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    rows = []
    for run_record in client.search_runs(experiments, max_results=1000):
        if run_record.data.tags.get("dvc.exp_name") not in names:
            continue
        m = {lab_name(key): value for key, value in run_record.data.metrics.items()}  # time.<stage>.<phase>
        rows.append(
            {
                "train.startup": m["time.train.startup"],
                "train.first_epoch": m["time.train.first_epoch"],
                "train.other_epochs": m["time.train.training"] - m["time.train.first_epoch"],
                "train.outputs": m["time.train.outputs"],
                "evaluate.startup": m["time.evaluate.startup"],
                "evaluate.scoring_outputs": m["time.evaluate.scoring"] + m["time.evaluate.outputs"],
                "train.total": m["time.train.ended_at"] - m["time.train.started_at"],
                "evaluate.total": m["time.evaluate.ended_at"] - m["time.evaluate.started_at"],
                "dvc.between_stages": m["time.evaluate.started_at"] - m["time.train.ended_at"],
                "train.started_at": m["time.train.started_at"],
                "evaluate.ended_at": m["time.evaluate.ended_at"],
            }
        )
    return rows


def breakdown(rows: list[dict], wall_s: float, jobs: int) -> dict[str, float]:
    """Median seconds per phase; DVC's share = a worker's seconds per run minus both stages.

    The wall also holds what happens once per study, not per run: queueing the runs (one `dvc exp
    run --queue` each, one after the other, before any worker starts) and the wait noticing the
    end (it polls every 15 s). Over a 4-run benchmark that is several percent; over a study of
    hundreds, nothing. `in_queue_*` leave it out: from the first training's start to the last
    evaluation's end.
    """
    clocks = {"train.started_at", "evaluate.ended_at"}
    medians = {key: statistics.median(row[key] for row in rows) for key in rows[0] if key not in clocks}
    per_run = wall_s * jobs / len(rows)
    medians["worker_seconds_per_run"] = per_run
    medians["dvc.rest"] = per_run - medians["train.total"] - medians["evaluate.total"]
    span = max(row["evaluate.ended_at"] for row in rows) - min(row["train.started_at"] for row in rows)
    medians["queueing_and_wait_s"] = wall_s - span
    medians["in_queue_worker_seconds_per_run"] = span * jobs / len(rows)
    medians["in_queue_runs_per_hour"] = len(rows) / span * 3600
    return medians


def print_table(results: dict[int, dict]) -> None:
    jobs = sorted(results)
    print(f"\n{'seconds per run (median)':<52}" + "".join(f"{f'-j {j}':>10}" for j in jobs))
    lines = [(label, f"{stage}.{phase}") for label, stage, phase in PHASES] + [
        ("DVC between train and evaluate", "dvc.between_stages"),
        ("DVC, the rest (temp copy, checkout, commit; by difference)", "dvc.rest"),
        ("a worker's seconds per run (wall x workers / runs)", "worker_seconds_per_run"),
        ("once per study: queueing, the wait's last poll (s)", "queueing_and_wait_s"),
        ("a worker's seconds per run, first start to last end", "in_queue_worker_seconds_per_run"),
        ("runs per hour, first training start to last end", "in_queue_runs_per_hour"),
    ]
    for label, key in lines:
        print(f"{label:<52}" + "".join(f"{results[j]['breakdown'][key]:>10.1f}" for j in jobs))
    print(f"{'runs per hour':<52}" + "".join(f"{results[j]['runs_per_hour']:>10.1f}" for j in jobs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=6, help="experiments per worker count")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2], help="worker counts to measure")
    parser.add_argument("--epochs", type=int, default=None, help="train.epochs (default: params.yaml's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more -S changes (repeatable)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results.json")
    parser.add_argument("--note", default="", help="stored with the figures (e.g. the machine's load)")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="spikelab-study-bench-") as tmp:
        root = Path(tmp) / "lab"
        prepare_workspace(root)
        changes = args.set + ([] if args.epochs is None else [f"train.epochs={args.epochs}"])
        extra = [arg for change in changes for arg in ("-S", change)]
        for index, jobs in enumerate(args.jobs):
            names_seeds = [(f"bench-j{jobs}-s{seed}", 1000 * (index + 1) + seed) for seed in range(args.runs)]
            print(f"study_throughput: {args.runs} runs with {jobs} worker(s) ...", flush=True)
            wall = run_study(root, names_seeds, jobs, extra)
            rows = stage_seconds(root, [name for name, _ in names_seeds])
            results[jobs] = {
                "wall_s": wall,
                "runs_per_hour": args.runs / wall * 3600,
                "breakdown": breakdown(rows, wall, jobs),
            }
    print_table(results)
    best = max(results)
    study = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "note": args.note,
        "runs": args.runs,
        "epochs": args.epochs,
        "changes": args.set,
        "by_jobs": {str(jobs): result for jobs, result in results.items()},
    }
    update_results(args.out, {"study": study, "study_runs_per_hour": results[best]["runs_per_hour"]})
    print(f"study_throughput: {results[best]['runs_per_hour']:.1f} runs per hour with {best} workers -> {args.out}")


if __name__ == "__main__":
    main()
