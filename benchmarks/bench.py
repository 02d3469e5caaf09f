"""How fast the lab trains, side by side with bare Keras and the seed's generator (issue 6).

One run, on the same data (params.yaml's generate + split, in memory), model and batch size:
  1. lab        spikelab.training.train as the train stage runs it: diagnostics on, an
                MlflowEpochLogger writing to a throw-away sqlite store, snapshots, progress line;
  2. bare       model.fit on in-memory float32 arrays, no callbacks of ours;
  3. generator  the seed's approach: a Python generator yielding numpy batches into fit;
  4. FLOP/s     achieved by the bare loop, from an analytic count of conv/dense FLOPs, against a
                float32 matmul peak (numpy and tf.matmul) measured in this run; at the default
                width (model.filters) and at the seed's width (64).
Every loop does the same work per epoch (one pass over the training set, one over the
validation set); samples/s = training images / wall seconds from one epoch's end to the next,
median over the timed epochs, warm-up epochs excluded. Loops run in interleaved rounds
(lab, bare, generator, lab, ...) so a load change on the machine hits all three alike.
Then `dvc repro` end to end and a no-op `dvc repro`, in a temporary copy of the repo.

Writes benchmarks/results.json. `--quick` runs a few batches and skips dvc (the smoke test).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.machine import machine  # noqa: E402
from benchmarks.results_file import update_results  # noqa: E402
from benchmarks.workspace import commit_fresh_repo, copy_tracked_files  # noqa: E402
from spikelab.callbacks import EpochClock  # noqa: E402
from spikelab.data import generate, split  # noqa: E402
from spikelab.epoch_logging import MlflowEpochLogger
from spikelab.model import resolve_data_format, to_model_input  # noqa: E402
from spikelab.params import load_params  # noqa: E402
from spikelab.tracking import prepare_experiment  # noqa: E402
from spikelab.training import compile_model, seed_everything, steps_per_call, train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SEED_FILTERS = 64


# ---------------------------------------------------------------- the three training loops


def lab_loop(params, arrays, data_format, epochs: int, workdir: Path) -> EpochClock:
    """(1) spikelab.training.train with its callbacks and an MLflow logger, as stages/train.py runs it."""
    params = params.model_copy(update={"train": params.train.model_copy(update={"epochs": epochs})})
    experiment_id = prepare_experiment(params.tracking.experiment, workdir)
    clock = EpochClock()
    with mlflow.start_run(experiment_id=experiment_id) as run, contextlib.redirect_stdout(io.StringIO()):
        train(params, arrays, data_format, workdir / "snapshots", [MlflowEpochLogger(run.info.run_id), clock])
    return clock


def fresh_model(params, image_size: int, data_format: str, steps_per_execution: int = 1) -> keras.Model:
    seed_everything(params.train.seed)
    return compile_model(params, image_size, data_format, steps_per_execution)


def bare_loop(params, arrays, data_format, epochs: int) -> EpochClock:
    """(2) model.fit on in-memory float32 arrays: Keras's own shuffling and batching."""
    # the best plain Keras loop: the lab's steps per call into TensorFlow (and its jit setting, through
    # compile_model), so the comparison is of the loops, not of a setting fit leaves at its default
    steps = math.ceil(len(arrays["x_train"]) / params.train.batch_size)
    model = fresh_model(params, arrays["x_train"].shape[-1], data_format, steps_per_call(steps))
    clock = EpochClock()
    model.fit(
        to_model_input(arrays["x_train"], data_format),
        arrays["y_train"],
        batch_size=params.train.batch_size,
        epochs=epochs,
        validation_data=(to_model_input(arrays["x_val"], data_format), arrays["y_val"]),
        validation_batch_size=params.train.batch_size,
        callbacks=[clock],
        verbose=0,
    )
    return clock


def numpy_batches(images: np.ndarray, labels: np.ndarray, batch_size: int, data_format: str, seed: int):
    """The seed's generator: forever, a fresh permutation per pass, float32 batches made in numpy."""
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(images))
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            yield to_model_input(images[chosen], data_format), labels[chosen]


def generator_loop(params, arrays, data_format, epochs: int) -> EpochClock:
    """(3) fit fed by Python generators, training and validation both, as in the seed."""
    model = fresh_model(params, arrays["x_train"].shape[-1], data_format)
    batch = params.train.batch_size
    clock = EpochClock()
    model.fit(
        numpy_batches(arrays["x_train"], arrays["y_train"], batch, data_format, params.train.seed),
        steps_per_epoch=math.ceil(len(arrays["x_train"]) / batch),
        epochs=epochs,
        validation_data=numpy_batches(arrays["x_val"], arrays["y_val"], batch, data_format, params.train.seed),
        validation_steps=math.ceil(len(arrays["x_val"]) / batch),
        callbacks=[clock],
        verbose=0,
    )
    return clock


# ---------------------------------------------------------------- FLOPs and the matmul peak


def forward_macs(model: keras.Model) -> dict[str, int]:
    """Multiply-accumulates per sample of each Conv2D and Dense layer (the rest is negligible)."""
    macs = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kernel = layer.kernel.shape  # (k, k, in_channels, filters)
            spatial = layer.output.shape[2:] if layer.data_format == "channels_first" else layer.output.shape[1:3]
            macs[layer.name] = int(np.prod(spatial)) * int(np.prod(kernel))
        elif isinstance(layer, keras.layers.Dense):
            macs[layer.name] = int(np.prod(layer.kernel.shape))
    return macs


def training_flops_per_sample(model: keras.Model) -> int:
    """Forward 2 * MACs; backward counted as 2x forward (the usual convention, see docs/performance.md)."""
    return 3 * 2 * sum(forward_macs(model).values())


def epoch_flops(model: keras.Model, n_train: int, n_val: int) -> int:
    """One epoch's work: forward + backward on the training set, forward on the validation set."""
    return n_train * training_flops_per_sample(model) + n_val * 2 * sum(forward_macs(model).values())


def matmul_peak(size: int, repeats: int) -> tuple[dict[str, float], float]:
    """Best float32 matmul FLOP/s of numpy and of tf.matmul (square operands), and the best FLOPs per CPU-second."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    ta, tb = tf.constant(a), tf.constant(b)
    flops = 2.0 * size**3
    best = {"numpy": math.inf, "tensorflow": math.inf}
    best_cpu = math.inf
    products = {"numpy": lambda: a @ b, "tensorflow": lambda: tf.linalg.matmul(ta, tb).numpy()}
    for _ in range(repeats):  # interleaved, best of each: the least disturbed run
        for name, product in products.items():
            started, cpu_started = time.perf_counter(), time.process_time()
            product()
            best[name] = min(best[name], time.perf_counter() - started)
            best_cpu = min(best_cpu, time.process_time() - cpu_started)
    return {name: flops / seconds for name, seconds in best.items()}, flops / best_cpu


def width_flops(params, arrays, data_format, filters: int, n_train: int, n_val: int, epochs: int, warmup: int) -> dict:
    """Achieved FLOP/s of a bare fit at a given width on n_train / n_val images."""
    params = params.model_copy(update={"model": params.model.model_copy(update={"filters": filters})})
    subset = {
        "x_train": arrays["x_train"][:n_train],
        "y_train": arrays["y_train"][:n_train],
        "x_val": arrays["x_val"][:n_val],
        "y_val": arrays["y_val"][:n_val],
    }
    clock = bare_loop(params, subset, data_format, warmup + epochs)
    return flops_summary(
        params,
        arrays["x_train"].shape[-1],
        data_format,
        n_train,
        n_val,
        float(np.median(clock.seconds[warmup:])),
        float(np.median(clock.cpu_seconds[warmup:])),
    )


def flops_summary(
    params, image_size: int, data_format: str, n_train: int, n_val: int, seconds: float, cpu_seconds: float
) -> dict:
    model = compile_model(params, image_size, data_format)
    work = epoch_flops(model, n_train, n_val)
    return {
        "filters": params.model.filters,
        "train_flops_per_sample": training_flops_per_sample(model),
        "flop_per_s": work / seconds,
        "flop_per_cpu_s": work / cpu_seconds,
    }


# ---------------------------------------------------------------- dvc repro in a copy of the repo


def timed_repro(root: Path, env: dict) -> float:
    started = time.perf_counter()
    result = subprocess.run(["dvc", "repro"], cwd=root, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"dvc repro failed in {root}:\n{result.stdout}\n{result.stderr}")
    return seconds


def repro_times(workdir: Path) -> dict:
    root = workdir / "repo"
    copy_tracked_files(REPO, root)
    commit_fresh_repo(root, "bench")
    # PYTHONPATH: the copy's own code, not the checkout the editable install points to
    env = dict(
        os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", PYTHONPATH=str(root)
    )
    env.pop("MLFLOW_TRACKING_URI", None)  # the copy's own store, never a shared one
    return {"repro_s": timed_repro(root, env), "repro_noop_s": timed_repro(root, env)}


# ---------------------------------------------------------------- the run


def quick_params(params):
    """A few batches: 2 training batches of 256 and 1 validation batch, per loop."""
    return params.model_copy(
        update={
            "data": params.data.model_copy(update={"per_class": 300}),
            "split": params.split.model_copy(update={"val_per_class": 44}),  # 512 train, 88 validation images
            "train": params.train.model_copy(update={"snapshot_every": 1}),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few batches, no dvc repro: a smoke test")
    parser.add_argument("--epochs", type=int, default=12, help="timed epochs per loop and round")
    parser.add_argument("--warmup", type=int, default=3, help="epochs per loop run before timing starts")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the three loops")
    parser.add_argument("--note", default="", help="a note stored in results.json (e.g. the machine's load)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results.json")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.warmup, args.rounds = 2, 1, 1

    params = load_params(REPO / "params.yaml")
    if args.quick:
        params = quick_params(params)
    solid, broken, _ = generate(params.data)
    arrays = split(solid, broken, params.split)
    data_format = resolve_data_format(params.model.data_format)
    n_train, n_val = len(arrays["x_train"]), len(arrays["x_val"])
    print(
        f"bench: {n_train} training + {n_val} validation images, batch {params.train.batch_size}, "
        f"{params.model.filters} filters, {data_format}; {args.rounds} round(s) of {args.warmup} warm-up + "
        f"{args.epochs} timed epochs per loop",
        flush=True,
    )

    intervals = {name: [] for name in ("lab", "lab_no_diagnostics", "bare", "generator")}
    cpu_intervals = {name: [] for name in intervals}
    with tempfile.TemporaryDirectory(prefix="spikelab-bench-") as tmp:
        workdir = Path(tmp)
        os.environ.pop("MLFLOW_TRACKING_URI", None)  # the throw-away store under workdir
        epochs = args.warmup + args.epochs
        without_diagnostics = params.model_copy(
            update={"diagnostics": params.diagnostics.model_copy(update={"enabled": False})}
        )
        runners = {
            "lab": lambda: lab_loop(params, arrays, data_format, epochs, workdir),
            # the same loop without the per-epoch diagnostics (work the lab asks for, not loop overhead)
            "lab_no_diagnostics": lambda: lab_loop(without_diagnostics, arrays, data_format, epochs, workdir),
            "bare": lambda: bare_loop(params, arrays, data_format, epochs),
            "generator": lambda: generator_loop(params, arrays, data_format, epochs),
        }
        for round_index in range(args.rounds):
            for name, runner in runners.items():
                # seconds[i] is epoch i + 1 (the first includes tracing): drop the warm-up ones
                clock = runner()
                timed = clock.seconds[args.warmup :]
                intervals[name] += timed
                cpu_intervals[name] += clock.cpu_seconds[args.warmup :]
                print(
                    f"  round {round_index + 1} {name:18s} {n_train / np.median(timed):9.0f} samples/s "
                    f"({n_train / np.median(clock.cpu_seconds[args.warmup :]):.0f} per CPU-second)",
                    flush=True,
                )

        peak, peak_per_cpu_s = matmul_peak(512 if args.quick else 2048, 3 if args.quick else 10)
        # the seed's width costs ~18x the default's per image: a subset, fewer epochs; and the same
        # with XLA (train.jit_compile: the pooling as a block max), the lever for this width
        jit_params = params.model_copy(update={"train": params.train.model_copy(update={"jit_compile": True})})
        seed_width, seed_width_jit = (
            width_flops(
                width_params,
                arrays,
                data_format,
                SEED_FILTERS,
                n_train=min(n_train, 2 * params.train.batch_size if args.quick else 2048),
                n_val=min(n_val, 512),
                epochs=2 if args.quick else 4,
                warmup=1,
            )
            for width_params in (params, jit_params)
        )
        repro = {"repro_s": None, "repro_noop_s": None} if args.quick else repro_times(workdir)

    rate = {name: n_train / float(np.median(values)) for name, values in intervals.items()}
    cpu_rate = {name: n_train / float(np.median(values)) for name, values in cpu_intervals.items()}
    peak_flops = max(peak.values())
    default = flops_summary(
        params,
        arrays["x_train"].shape[-1],
        data_format,
        n_train,
        n_val,
        n_train / rate["bare"],
        n_train / cpu_rate["bare"],
    )
    widths = (default, seed_width)
    results = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "note": args.note,
        "quick": args.quick,
        "setup": {
            "train_images": n_train,
            "val_images": n_val,
            "batch_size": params.train.batch_size,
            "filters": params.model.filters,
            "kernel_size": params.model.kernel_size,
            "data_format": data_format,
            "timed_epochs": args.epochs * args.rounds,
            "warmup_epochs": args.warmup,
        },
        "samples_per_s": rate,
        "train_vs_bare": rate["lab"] / rate["bare"],
        "train_no_diagnostics_vs_bare": rate["lab_no_diagnostics"] / rate["bare"],
        "train_vs_generator": rate["lab"] / rate["generator"],
        "matmul_peak_flop_per_s": peak,
        "flop_per_s": {f"filters_{w['filters']}": w["flop_per_s"] for w in widths},
        "train_flops_per_sample": {f"filters_{w['filters']}": w["train_flops_per_sample"] for w in widths},
        "fraction_of_peak": default["flop_per_s"] / peak_flops,
        "fraction_of_peak_seed_width": seed_width["flop_per_s"] / peak_flops,
        "fraction_of_peak_seed_width_jit": seed_width_jit["flop_per_s"] / peak_flops,
        # the same ratios from process CPU seconds: far less inflated by other work on the machine,
        # but blind to how well a loop spreads over the cores
        "cpu_seconds_view": {
            "samples_per_cpu_s": cpu_rate,
            "train_vs_bare": cpu_rate["lab"] / cpu_rate["bare"],
            "train_no_diagnostics_vs_bare": cpu_rate["lab_no_diagnostics"] / cpu_rate["bare"],
            "train_vs_generator": cpu_rate["lab"] / cpu_rate["generator"],
            "matmul_peak_flop_per_cpu_s": peak_per_cpu_s,
            "fraction_of_peak": default["flop_per_cpu_s"] / peak_per_cpu_s,
            "fraction_of_peak_seed_width": seed_width["flop_per_cpu_s"] / peak_per_cpu_s,
            "fraction_of_peak_seed_width_jit": seed_width_jit["flop_per_cpu_s"] / peak_per_cpu_s,
        },
        **repro,
    }
    results = update_results(args.out, results)
    print(table(results))
    print(f"bench: wrote {args.out}")


def table(r: dict) -> str:
    s = r["samples_per_s"]
    f = r["flop_per_s"]
    default, seed = (f"filters_{r['setup']['filters']}", f"filters_{SEED_FILTERS}")
    peak = max(r["matmul_peak_flop_per_s"].values())
    seconds = lambda value: "skipped" if value is None else f"{value:.1f} s"  # noqa: E731
    rows = [
        ("(1) lab loop (train stage)", f"{s['lab']:.0f} samples/s"),
        ("(2) bare model.fit, arrays", f"{s['bare']:.0f} samples/s"),
        ("(3) seed's Python generator", f"{s['generator']:.0f} samples/s"),
        ("(1)/(2) lab vs bare", f"{r['train_vs_bare']:.3f}"),
        ("(1)/(2) lab without diagnostics vs bare", f"{r['train_no_diagnostics_vs_bare']:.3f}"),
        ("(1)/(3) lab vs generator", f"{r['train_vs_generator']:.2f}"),
        (
            "float32 matmul peak",
            f"{peak / 1e9:.1f} GFLOP/s (numpy {r['matmul_peak_flop_per_s']['numpy'] / 1e9:.1f}, "
            f"tf {r['matmul_peak_flop_per_s']['tensorflow'] / 1e9:.1f})",
        ),
        (
            f"(4) {r['setup']['filters']} filters, bare fit",
            f"{f[default] / 1e9:.1f} GFLOP/s = {r['fraction_of_peak']:.1%} of peak",
        ),
        (
            f"(4) {SEED_FILTERS} filters (seed), bare fit",
            f"{f[seed] / 1e9:.1f} GFLOP/s = {r['fraction_of_peak_seed_width']:.1%} of peak",
        ),
        (
            f"(4) {SEED_FILTERS} filters (seed), bare fit, XLA",
            f"{r['fraction_of_peak_seed_width_jit']:.1%} of peak",
        ),
        ("dvc repro, default params", seconds(r["repro_s"])),
        ("dvc repro, no-op", seconds(r["repro_noop_s"])),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


if __name__ == "__main__":
    main()
