"""The population engine against single runs: seconds per run-epoch, scaling with P, memory, peak.

    python -m benchmarks.population scaling [--sizes 1 5 10 20 40] [--epochs 4] [--rounds 2]
    python -m benchmarks.population study [--runs 8] [--size 4] [--jobs 2] [--epochs 30] [--rounds 2]

Each measurement is a Python of its own (so its peak memory is its own) training the default
params (params.yaml, diagnostics on) for --epochs epochs: the single run (training.train, the train
stage's loop) or a population of P members (seeds 0..P-1). The first epoch traces and is left out;
the rest give wall and CPU seconds per run-epoch (a population's epoch divided by P). Both engines
take turns in one sitting (round r: single, P=1, single, P=5, ...), since the machine is shared
and loaded: only ratios measured this way compare. The float32 matmul peak (numpy and tf.matmul,
2048x2048) is measured between rounds; each population's FLOP/s is the single model's epoch work
(benchmarks.bench.epoch_flops) x P over its epoch seconds.

`study` measures whole studies instead: the per-run DVC queue at -j 2 and study.population on the
same runs, taking turns (see study()); it writes population_runs_per_hour, per_run_runs_per_hour
and population_speedup (the median of the rounds' ratios), `scaling` writes population_scaling,
both into benchmarks/results.json with the date and the machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path("benchmarks/results.json")


def child(engine: str, size: int, epochs: int) -> dict:
    """One measurement, in this process: {wall_per_run_epoch, cpu_per_run_epoch, peak_rss_mb, flops_per_run_epoch}."""
    from spikelab.data import generate, split
    from spikelab.model import resolve_data_format
    from spikelab.params import load_params

    data_format = resolve_data_format("auto")
    base = load_params()
    params = base.model_copy(update={"train": base.train.model_copy(update={"epochs": epochs, "snapshot_every": 0})})
    solid, broken, _ = generate(params.data)
    arrays = split(solid, broken, params.split)
    from benchmarks.bench import epoch_flops
    from spikelab.training import compile_model

    work = epoch_flops(
        compile_model(params, arrays["x_train"].shape[-1], data_format), len(arrays["x_train"]), len(arrays["x_val"])
    )
    started_cpu = time.process_time()
    if engine == "single":
        from spikelab.callbacks import EpochClock
        from spikelab.training import train

        clock = EpochClock()
        train(params, arrays, data_format, None, [clock])
        wall, cpu = clock.seconds[1:], clock.cpu_seconds[1:]
        size = 1
    else:
        from study.population_engine import Member, Population

        members = [
            Member(
                f"s{seed}", params.model_copy(update={"train": params.train.model_copy(update={"seed": seed})}), arrays
            )
            for seed in range(size)
        ]
        population = Population(members, data_format, [None] * size)
        cpu_marks = []

        def mark(index, epoch, logs):
            if index == 0:
                cpu_marks.append(time.process_time())

        result = population.train(mark)
        wall = [seconds / size for seconds in result.epoch_seconds[1:]]
        cpu = [(b - a) / size for a, b in zip(cpu_marks, cpu_marks[1:])]
    return {
        "engine": engine,
        "size": size,
        "wall_per_run_epoch": statistics.median(wall),
        "cpu_per_run_epoch": statistics.median(cpu),
        "flops_per_run_epoch": work,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cpu_total": time.process_time() - started_cpu,
    }


def measure(engine: str, size: int, epochs: int) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.population", "child", engine, str(size), str(epochs)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{engine} P={size} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def scaling(sizes: list[int], epochs: int, rounds: int) -> dict:
    """Seconds per run-epoch of the single run and of populations of each size, taking turns."""
    from benchmarks.bench import matmul_peak

    singles, populations, peaks, cpu_peaks = [], {size: [] for size in sizes}, [], []
    load = os.getloadavg()
    for round_index in range(rounds):
        by_library, per_cpu_s = matmul_peak(2048, 5)
        peaks.append(max(by_library.values()))
        cpu_peaks.append(per_cpu_s)
        for size in sizes:
            singles.append(measure("single", 1, epochs))
            populations[size].append(measure("population", size, epochs))
            print(
                f"round {round_index + 1}: single {singles[-1]['wall_per_run_epoch']:.3f} s "
                f"({singles[-1]['cpu_per_run_epoch']:.3f} CPU s) per run-epoch; P={size} "
                f"{populations[size][-1]['wall_per_run_epoch']:.3f} s ({populations[size][-1]['cpu_per_run_epoch']:.3f} "
                f"CPU s), {populations[size][-1]['peak_rss_mb']:.0f} MB",
                flush=True,
            )
    peak, cpu_peak = max(peaks), max(cpu_peaks)
    single_wall = statistics.median(m["wall_per_run_epoch"] for m in singles)
    single_cpu = statistics.median(m["cpu_per_run_epoch"] for m in singles)
    by_size = {}
    for size, found in populations.items():
        wall = statistics.median(m["wall_per_run_epoch"] for m in found)
        cpu = statistics.median(m["cpu_per_run_epoch"] for m in found)
        by_size[str(size)] = {
            "wall_s_per_run_epoch": wall,
            "cpu_s_per_run_epoch": cpu,
            "speedup_wall": single_wall / wall,
            "speedup_cpu": single_cpu / cpu,
            "peak_rss_mb": max(m["peak_rss_mb"] for m in found),
            "fraction_of_peak": found[0]["flops_per_run_epoch"] / wall / peak,
            "fraction_of_peak_per_cpu_s": found[0]["flops_per_run_epoch"] / cpu / cpu_peak,
        }
    return {
        "note": (
            "epochs only (the first, which traces, left out), default params with diagnostics; single run vs "
            "population taking turns in one sitting: on a shared machine CPU seconds are the fairer measure "
            "(wall seconds follow the scheduler's share); fraction_of_peak_per_cpu_s: FLOPs per CPU second "
            "against the matmul's FLOPs per CPU second (one core's peak)"
        ),
        "load_average_at_start": load,
        "epochs_measured": epochs - 1,
        "rounds": rounds,
        "single_wall_s_per_run_epoch": single_wall,
        "single_cpu_s_per_run_epoch": single_cpu,
        "single_peak_rss_mb": max(m["peak_rss_mb"] for m in singles),
        "single_fraction_of_peak": singles[0]["flops_per_run_epoch"] / single_wall / peak,
        "single_fraction_of_peak_per_cpu_s": singles[0]["flops_per_run_epoch"] / single_cpu / cpu_peak,
        "flops_per_run_epoch": singles[0]["flops_per_run_epoch"],
        "matmul_peak_flop_per_s": peak,
        "matmul_peak_flop_per_cpu_s": cpu_peak,
        "by_size": by_size,
    }


def study(runs: int, epochs: int, rounds: int, size: int, jobs: int) -> dict:
    """Runs per hour of a study of `runs` default-params runs of `epochs` epochs: the per-run DVC
    queue at -j 2 against study.population, each in the same fresh copy of the repo, taking turns
    (the order flips every round), the same seeds for both engines in a round. The wall is each
    engine's whole study: queueing or start-up, training, evaluation, outputs, MLflow."""
    import tempfile

    import yaml

    from benchmarks.study_throughput import copy_environment, prepare_workspace, run_study

    turns, load = [], os.getloadavg()  # whether the machine was quiet, for whoever reads the figures
    with tempfile.TemporaryDirectory(prefix="population-study-") as folder:
        root = Path(folder) / "lab"
        prepare_workspace(root)
        for round_index in range(rounds):
            seeds = list(range(round_index * runs, (round_index + 1) * runs))
            order = ("dvc", "population") if round_index % 2 == 0 else ("population", "dvc")
            for engine in order:
                if engine == "dvc":
                    names = [(f"dvc-r{round_index}-s{seed}", seed) for seed in seeds]
                    wall = run_study(root, names, 2, ["-S", f"train.epochs={epochs}"])
                else:
                    sweep = Path(folder) / f"pop-r{round_index}.yaml"
                    cells = {"default": {"train.epochs": epochs}}
                    sweep.write_text(yaml.safe_dump({"prefix": f"pop-r{round_index}", "seeds": seeds, "cells": cells}))
                    started = time.perf_counter()
                    subprocess.run(
                        [
                            sys.executable,
                            "-m",
                            "study.population",
                            "--sweep",
                            str(sweep),
                            "--size",
                            str(size),
                            "--jobs",
                            str(jobs),
                        ],
                        cwd=root,
                        env=copy_environment(root),
                        check=True,
                        capture_output=True,
                    )
                    wall = time.perf_counter() - started
                turns.append(
                    {"round": round_index + 1, "engine": engine, "wall_s": wall, "runs_per_hour": runs / wall * 3600}
                )
                print(
                    f"round {round_index + 1}: {engine} {runs} runs in {wall:.0f} s ({turns[-1]['runs_per_hour']:.1f} runs/hour)",
                    flush=True,
                )
    by_engine = {
        engine: statistics.median(t["runs_per_hour"] for t in turns if t["engine"] == engine)
        for engine in ("dvc", "population")
    }
    ratios = [
        next(t for t in turns if t["round"] == r and t["engine"] == "population")["runs_per_hour"]
        / next(t for t in turns if t["round"] == r and t["engine"] == "dvc")["runs_per_hour"]
        for r in range(1, rounds + 1)
    ]
    return {
        "note": (
            f"{runs} default-params runs of {epochs} epochs per turn, DVC queue -j 2 vs study.population "
            f"(--size {size} --jobs {jobs}), taking turns in one fresh copy of the repo"
        ),
        "load_average_at_start": load,
        "runs": runs,
        "epochs": epochs,
        "turns": turns,
        "per_run_runs_per_hour": by_engine["dvc"],
        "population_runs_per_hour": by_engine["population"],
        "ratios": ratios,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.population", description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", default="scaling", choices=("scaling", "study", "child"))
    parser.add_argument("args", nargs="*")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 5, 10, 20, 40])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--runs", type=int, default=8, help="study mode: runs per engine per round")
    parser.add_argument("--size", type=int, default=4, help="study mode: members per population")
    parser.add_argument("--jobs", type=int, default=2, help="study mode: populations at once (the queue runs -j 2)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.mode == "child":
        engine, size, epochs = args.args[0], int(args.args[1]), int(args.args[2])
        print(json.dumps(child(engine, size, epochs)))
        return 0
    from benchmarks.machine import machine
    from benchmarks.results_file import update_results

    dated = {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine()}
    if args.mode == "scaling":
        figures = {"population_scaling": dated | scaling(args.sizes, args.epochs, args.rounds)}
    else:
        found = study(args.runs, args.epochs, args.rounds, args.size, args.jobs)
        figures = {
            "population_study": dated | found,
            "population_runs_per_hour": found["population_runs_per_hour"],
            "per_run_runs_per_hour": found["per_run_runs_per_hour"],
            "population_speedup": statistics.median(found["ratios"]),
            "population_date": dated["date"],
            "population_machine": dated["machine"],
        }
    update_results(args.output, figures)
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
