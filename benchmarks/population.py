"""The population engine against single runs: seconds per run-epoch, scaling with P, memory, peak.

    python -m benchmarks.population [--sizes 1 5 10 20 40] [--epochs 4] [--rounds 2]

Each measurement is a Python of its own (so its peak memory is its own) training the default
params (params.yaml, diagnostics on) for --epochs epochs: the single run (training.train, the train
stage's loop) or a population of P members (seeds 0..P-1). The first epoch traces and is left out;
the rest give wall and CPU seconds per run-epoch (a population's epoch divided by P). Both engines
take turns in one sitting (round r: single, P=1, single, P=5, ...), since the machine is shared
and loaded: only ratios measured this way compare. The float32 matmul peak (numpy and tf.matmul,
2048x2048) is measured between rounds; each population's FLOP/s is the single model's epoch work
(benchmarks.bench.epoch_flops) x P over its epoch seconds.

`runs_per_hour` of an engine here is 3600 / (150 epochs x seconds per run-epoch): the epochs only,
without the per-run start-up, DVC and MLflow costs that the per-run queue pays once per run and a
population once per population (issue 12 measured the epochs at about 77% of a queued run at -j 2).
Writes population_* keys to benchmarks/results.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path("benchmarks/results.json")
DEFAULT_EPOCHS = 150  # a default run's length, for runs per hour


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.population", description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", default="run", choices=("run", "child"))
    parser.add_argument("args", nargs="*")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 5, 10, 20, 40])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.mode == "child":
        engine, size, epochs = args.args[0], int(args.args[1]), int(args.args[2])
        print(json.dumps(child(engine, size, epochs)))
        return 0
    from benchmarks.bench import matmul_peak
    from benchmarks.machine import machine

    started = datetime.datetime.now(datetime.UTC)
    singles, populations, peaks = [], {size: [] for size in args.sizes}, []
    for round_index in range(args.rounds):
        peaks.append(max(matmul_peak(2048, 5)[0].values()))
        for size in args.sizes:
            singles.append(measure("single", 1, args.epochs))
            populations[size].append(measure("population", size, args.epochs))
            print(
                f"round {round_index + 1}: single {singles[-1]['wall_per_run_epoch']:.3f} s/run-epoch; "
                f"P={size} {populations[size][-1]['wall_per_run_epoch']:.3f} s/run-epoch, "
                f"{populations[size][-1]['peak_rss_mb']:.0f} MB",
                flush=True,
            )
    peak = max(peaks)
    single_wall = statistics.median(m["wall_per_run_epoch"] for m in singles)
    single_cpu = statistics.median(m["cpu_per_run_epoch"] for m in singles)
    scaling = {}
    for size, found in populations.items():
        wall = statistics.median(m["wall_per_run_epoch"] for m in found)
        cpu = statistics.median(m["cpu_per_run_epoch"] for m in found)
        scaling[str(size)] = {
            "wall_s_per_run_epoch": wall,
            "cpu_s_per_run_epoch": cpu,
            "speedup_wall": single_wall / wall,
            "speedup_cpu": single_cpu / cpu,
            "peak_rss_mb": max(m["peak_rss_mb"] for m in found),
            "fraction_of_peak": found[0]["flops_per_run_epoch"] / wall / peak,
        }
    best = max(scaling, key=lambda size: scaling[size]["speedup_wall"])
    figures = {
        "population": {
            "date": started.strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(),
            "note": (
                "epochs only (first epoch, which traces, left out), default params with diagnostics, both engines "
                "taking turns in one sitting on a shared, loaded machine; runs/hour = 3600 / (150 x s per run-epoch), "
                "without per-run start-up, DVC and MLflow costs"
            ),
            "epochs_measured": args.epochs,
            "rounds": args.rounds,
            "single_wall_s_per_run_epoch": single_wall,
            "single_cpu_s_per_run_epoch": single_cpu,
            "single_fraction_of_peak": singles[0]["flops_per_run_epoch"] / single_wall / peak,
            "matmul_peak_flop_per_s": peak,
            "by_size": scaling,
            "best_size": int(best),
        },
        "population_runs_per_hour": 3600 / (DEFAULT_EPOCHS * scaling[best]["wall_s_per_run_epoch"]),
        "per_run_runs_per_hour": 3600 / (DEFAULT_EPOCHS * single_wall),
        "population_speedup": scaling[best]["speedup_wall"],
    }
    from benchmarks.results_file import update_results

    update_results(args.output, figures)
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
