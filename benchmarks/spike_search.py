"""Search for a configuration whose training loss falls, then spikes: one line per run, rows to a CSV.

Each config is a list of `section.key=value` overrides of params.yaml (values parsed as YAML, like
`dvc exp run -S`); each config runs once per seed, in this process, one run at a time, with the
package's own data generator, split, training loop and divergence rule. Nothing touches DVC or
MLflow, and nothing is written outside benchmarks/runs/ (git-ignored).

Usage (from the repo root):

    .venv/bin/python benchmarks/spike_search.py \\
        --config "optimizer.learning_rate=0.01 train.batch_size=32 train.epochs=200" \\
        --config "optimizer.learning_rate=0.01 optimizer.beta_2=0.99" \\
        --seeds 0 1 2 3 4 [--seed-key data.seed] [--stop-after-spike 10] [--label NAME]

- --seeds are values for --seed-key (default train.seed; data.seed varies the images instead).
- --stop-after-spike K ends a run K epochs after the divergence rule first fires (saves time while
  exploring; leave it off to time a full run).
- Per run: benchmarks/runs/spike_search.csv gains a row; benchmarks/runs/histories/<run>.csv keeps
  the per-epoch history (loss, diagnostics) and <run>.log the training's progress lines.

Printed columns: spiked (the rule of params `divergence:`), divergence epoch, min loss and its
epoch, peak after the min and its epoch, peak/min, final loss, median s/epoch, epochs, wall s,
and the diagnostics just before and at the spike (saturated / saturated-wrong fractions of the
probe batch, max Adam ratio, median sqrt(v_hat), share of weights with sqrt(v_hat) < epsilon).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import datetime
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from ruamel.yaml import YAML  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from spikelab.data import generate, split  # noqa: E402
from spikelab.divergence import divergence_epoch, divergence_metrics  # noqa: E402
from spikelab.history import write_history_csv  # noqa: E402
from spikelab.model import resolve_data_format  # noqa: E402
from spikelab.params import params_from_dict, read_yaml  # noqa: E402
from spikelab.training import train  # noqa: E402

RUNS = REPO / "benchmarks" / "runs"
DIAGNOSTIC_KEYS = (
    "saturated_fraction",
    "saturated_wrong_fraction",
    "adam_ratio_max",
    "v_sqrt_median",
    "v_below_eps_fraction",
    "grad_norm",
    "accuracy",
)


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """params dict with `section.key=value` overrides applied (values parsed as YAML)."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        if section not in raw or name not in raw[section]:
            raise ValueError(f"override {item!r}: no key {key!r} in params.yaml")
        raw[section][name] = YAML(typ="safe", pure=True).load(value)  # YAML 1.2, as `dvc exp run -S` reads it
    return raw


class StopAfterSpike(keras.callbacks.Callback):
    """Stops training `after` epochs past the first epoch the divergence rule flags."""

    def __init__(self, rule, after: int, history: list[dict]):
        super().__init__()
        self.rule, self.after, self.history = rule, after, history

    def on_epoch_end(self, epoch, logs=None):
        losses = [row["loss"] for row in self.history]
        first = divergence_epoch(losses, self.rule)
        if first is not None and epoch + 1 >= first + self.after:
            self.model.stop_training = True


class SharedHistory(keras.callbacks.Callback):
    """The training's own history list is only returned at the end; keep a live copy of the losses."""

    def __init__(self, rows: list[dict]):
        super().__init__()
        self.rows = rows

    def on_epoch_end(self, epoch, logs=None):
        self.rows.append({"loss": float((logs or {}).get("loss", math.nan))})


def diagnostics_at(history: list[dict], epoch: int | None) -> dict:
    """The diagnostic keys of a 1-based epoch's row (NaN when the epoch is None or absent)."""
    row = history[epoch - 1] if epoch is not None and 1 <= epoch <= len(history) else {}
    return {key: row.get(key, math.nan) for key in DIAGNOSTIC_KEYS}


def run_one(raw: dict, run_name: str, stop_after_spike: int | None) -> dict:
    started = time.perf_counter()
    params = params_from_dict(raw)
    solid, broken, _ = generate(params.data)
    arrays = split(solid, broken, params.split)
    data_format = resolve_data_format(params.model.data_format)
    live: list[dict] = []
    extra = [SharedHistory(live)]
    if stop_after_spike is not None:
        extra.append(StopAfterSpike(params.divergence, stop_after_spike, live))
    (RUNS / "histories").mkdir(parents=True, exist_ok=True)
    with open(RUNS / "histories" / f"{run_name}.log", "w") as log, contextlib.redirect_stdout(log):
        train_started = time.perf_counter()
        result = train(params, arrays, data_format, snapshot_dir=None, extra_callbacks=extra)
        train_seconds = time.perf_counter() - train_started
    history = result.history
    write_history_csv(RUNS / "histories" / f"{run_name}.csv", history)
    losses = [row["loss"] for row in history]
    metrics = divergence_metrics(losses, [row.get("val_loss", math.nan) for row in history], params.divergence)
    spike = metrics["divergence_epoch"]
    before = diagnostics_at(history, spike - 1 if spike else None)
    at = diagnostics_at(history, spike)
    return {
        "run": run_name,
        "diverged": metrics["diverged"],
        "divergence_epoch": spike,
        "min_loss": metrics["min_loss"],
        "min_epoch": metrics["min_epoch"],
        "peak_loss": metrics["peak_loss"],
        "peak_epoch": metrics["peak_epoch"],
        "spike_ratio": metrics["spike_ratio"],
        "final_loss": metrics["final_loss"],
        "epochs_run": metrics["epochs_run"],
        "seconds_per_epoch": train_seconds / max(1, len(history)),
        "train_seconds": train_seconds,
        "wall_seconds": time.perf_counter() - started,
        **{f"before_{key}": value for key, value in before.items()},
        **{f"at_{key}": value for key, value in at.items()},
    }


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3g}"
    return str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config",
        action="append",
        required=True,
        help="space-separated section.key=value overrides of params.yaml (repeat for more configs)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--seed-key", default="train.seed", help="the key --seeds sets (train.seed or data.seed)")
    parser.add_argument("--stop-after-spike", type=int, default=None)
    parser.add_argument("--label", default="", help="prefix of run names in the CSV")
    parser.add_argument("--params", default=str(REPO / "params.yaml"), help="the base params file")
    parser.add_argument("--csv", default=str(RUNS / "spike_search.csv"))
    args = parser.parse_args()

    base = read_yaml(args.params, "params")
    csv_path = Path(args.csv)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    for config_index, config in enumerate(args.config):
        overrides = config.split()
        for seed in args.seeds:
            # no snapshots: train() needs a snapshot_dir for them, and they are not what is measured
            raw = apply_overrides(base, overrides + [f"{args.seed_key}={seed}", "train.snapshot_every=0"])
            run_name = f"{args.label or 'run'}-{stamp}-c{config_index}-{args.seed_key}{seed}"
            row = {
                "date": stamp,
                "config": config,
                "seed_key": args.seed_key,
                "seed": seed,
                **run_one(raw, run_name, args.stop_after_spike),
            }
            print(
                f"[{config}] {args.seed_key}={seed}: spiked={row['diverged']} at {fmt(row['divergence_epoch'])}  "
                f"min {fmt(row['min_loss'])}@{row['min_epoch']}  peak {fmt(row['peak_loss'])}@{row['peak_epoch']}  "
                f"x{fmt(row['spike_ratio'])}  final {fmt(row['final_loss'])}  "
                f"{row['seconds_per_epoch']:.2f}s/ep x{row['epochs_run']}  wall {row['wall_seconds']:.0f}s  "
                f"| before: sat {fmt(row.get('before_saturated_fraction'))} "
                f"ratio {fmt(row.get('before_adam_ratio_max'))} vsqrt {fmt(row.get('before_v_sqrt_median'))} "
                f"v<eps {fmt(row.get('before_v_below_eps_fraction'))} "
                f"| at: sat {fmt(row.get('at_saturated_fraction'))} wrong {fmt(row.get('at_saturated_wrong_fraction'))} "
                f"ratio {fmt(row.get('at_adam_ratio_max'))}",
                flush=True,
            )
            new_file = not csv_path.exists()
            with open(csv_path, "a", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(row), extrasaction="ignore")
                if new_file:
                    writer.writeheader()
                writer.writerow(row)


if __name__ == "__main__":
    main()
