"""Study throughput, before and after, in one sitting: the working copy's code against an older
commit's, taking turns (issue 12: ">= 2x the figure measured before the change, same day").

    python -m benchmarks.study_ab --baseline-rev 3a31d71 [--rounds 2] [--runs 4] [--jobs 2]

This machine's speed drifts within an hour (docs/performance.md): two benchmarks an hour apart
compare the machine as much as the code. Here the two codes take turns, after-before in odd
rounds and before-after in even ones (a steady drift then weighs on both alike), each round with
its own seeds, the same for both codes. Each code runs in its own fresh copy of the repo
(`study_throughput.prepare_workspace`: the data made once, experiments only train and evaluate),
and each copy's own code queues, waits and trains: an older commit polls the queue as it did.

Writes `study_ab` into benchmarks/results.json: every turn's runs per hour and epochs per run,
each round's ratio and the ratio of the medians. Run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import subprocess
import tempfile
from pathlib import Path

from benchmarks.machine import machine
from benchmarks.results_file import update_results
from benchmarks.study_throughput import REPO, breakdown, prepare_workspace, run_study, stage_seconds

CODES = ("after", "before")


def resolve_commit(rev: str) -> str:
    """The full hash of `rev`, or one line saying it is no commit of this repository."""
    result = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], cwd=REPO, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise SystemExit(f"study_ab: --baseline-rev {rev!r} is not a commit of this repository")
    return result.stdout.strip()


def turn_order(round_index: int) -> tuple[str, ...]:
    """after-before, then before-after: a drift that goes one way all sitting weighs on both."""
    return CODES if round_index % 2 == 0 else CODES[::-1]


def run_turn(root: Path, code: str, round_index: int, runs: int, jobs: int, extra: list[str]) -> dict:
    """One code's study of `runs` experiments; its figures."""
    # the same seeds for both codes in a round, other seeds in the next
    names_seeds = [(f"ab-{code}-r{round_index}-s{seed}", 100 * (round_index + 1) + seed) for seed in range(runs)]
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    wall = run_study(root, names_seeds, jobs, extra)
    rows = stage_seconds(root, [name for name, _ in names_seeds])
    phases = breakdown(rows, wall, jobs)
    return {
        "code": code,
        "round": round_index + 1,
        "started": started,
        "wall_s": wall,
        "runs_per_hour": runs / wall * 3600,
        "in_queue_runs_per_hour": phases["in_queue_runs_per_hour"],
        "epochs_s_per_run": phases["train.first_epoch"] + phases["train.other_epochs"],
        "breakdown": phases,
        "per_run": rows,  # a stall in one run hides in the medians, not here
    }


def summarise(turns: list[dict]) -> dict:
    """Medians per code, after / before of the medians, and each round's after / before."""
    medians = {
        code: {
            key: statistics.median(turn[key] for turn in turns if turn["code"] == code)
            for key in ("runs_per_hour", "in_queue_runs_per_hour", "epochs_s_per_run")
        }
        for code in CODES
    }
    by_round: dict[int, dict[str, float]] = {}
    for turn in turns:
        by_round.setdefault(turn["round"], {})[turn["code"]] = turn["runs_per_hour"]
    return {
        "medians": medians,
        "ratio_of_medians": medians["after"]["runs_per_hour"] / medians["before"]["runs_per_hour"],
        "in_queue_ratio_of_medians": (
            medians["after"]["in_queue_runs_per_hour"] / medians["before"]["in_queue_runs_per_hour"]
        ),
        "ratio_by_round": [pair["after"] / pair["before"] for _, pair in sorted(by_round.items())],
    }


def print_turn(turn: dict) -> None:
    print(
        f"study_ab: round {turn['round']}, {turn['code']}: {turn['runs_per_hour']:.1f} runs/hour "
        f"({turn['in_queue_runs_per_hour']:.1f} first start to last end), epochs {turn['epochs_s_per_run']:.1f} s a run",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-rev", required=True, help="the 'before' code: a commit of this repository")
    parser.add_argument("--rounds", type=int, default=2, help="turns per code (each round: one study of each)")
    parser.add_argument("--runs", type=int, default=4, help="experiments per study")
    parser.add_argument("--jobs", type=int, default=2, help="queue workers (dvc queue start -j)")
    parser.add_argument("--epochs", type=int, default=None, help="train.epochs (default: each copy's params.yaml)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results.json")
    parser.add_argument("--note", default="", help="stored with the figures (e.g. the machine's load)")
    args = parser.parse_args()
    for name in ("rounds", "runs", "jobs", "epochs"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be at least 1, got {value}")
    baseline = resolve_commit(args.baseline_rev)
    extra = [] if args.epochs is None else ["-S", f"train.epochs={args.epochs}"]
    turns = []
    with tempfile.TemporaryDirectory(prefix="spikelab-study-ab-") as tmp:
        roots = {"after": Path(tmp) / "after", "before": Path(tmp) / "before"}
        prepare_workspace(roots["after"])
        prepare_workspace(roots["before"], rev=baseline)
        for round_index in range(args.rounds):
            for code in turn_order(round_index):
                print(f"study_ab: round {round_index + 1}, {code}: {args.runs} runs, -j {args.jobs} ...", flush=True)
                turns.append(run_turn(roots[code], code, round_index, args.runs, args.jobs, extra))
                print_turn(turns[-1])
    summary = summarise(turns)
    print(
        f"study_ab: after / before = {summary['ratio_of_medians']:.2f} (medians "
        f"{summary['medians']['after']['runs_per_hour']:.1f} / {summary['medians']['before']['runs_per_hour']:.1f} "
        f"runs/hour); by round {', '.join(f'{r:.2f}' for r in summary['ratio_by_round'])}"
    )
    study_ab = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "note": args.note,
        "baseline_rev": baseline,
        "jobs": args.jobs,
        "runs": args.runs,
        "epochs": args.epochs,
        "turns": turns,
        **summary,
    }
    update_results(args.out, {"study_ab": study_ab})
    print(f"study_ab: -> {args.out}")


if __name__ == "__main__":
    main()
