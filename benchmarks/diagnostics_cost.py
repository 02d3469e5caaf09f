"""What the per-epoch diagnostics cost: training time with them on (at several probe sizes) vs off.

    .venv/bin/python -m benchmarks.diagnostics_cost [--epochs 20] [--rounds 2] [--probe-sizes 32 64]

Trains params.yaml's configuration in-process (no MLflow, no snapshots) for a few epochs per
setting, settings interleaved round by round so a change in machine load hits all alike, and
prints seconds per epoch in process CPU time (all threads; robust to other jobs on the machine)
and wall time, with the overhead relative to diagnostics off; and, measured directly, the CPU
time spent inside the Diagnostics callback as a share of the epoch (the load-proof figure: the
difference of two epoch times is within the noise on a busy machine). The first epoch of every
run (tracing) is not counted.
"""

from __future__ import annotations

import argparse
import statistics

from spikelab.callbacks import EpochClock
from spikelab.data import generate, split
from spikelab.model import resolve_data_format
from spikelab.params import load_params
from spikelab.training import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # 20 epochs, the first (tracing) not timed: the whole-set dead-zone pass and the eigenvalue
    # estimate run at epochs 10 and 20, as in the default run (every 10, the last, 150, among them).
    # one more epoch would add a dead-zone pass at the last epoch: 3 in 20 timed epochs instead of
    # the default run's 1 in 10, over-weighting it 1.5x
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--probe-sizes", type=int, nargs="+", default=[32])
    parser.add_argument(
        "--dead-zone-every",
        type=int,
        default=None,
        help="override diagnostics.dead_zone_every (0: only the last epoch)",
    )
    args = parser.parse_args()
    params = load_params()
    solid, broken, _ = generate(params.data)
    arrays = split(solid, broken, params.split)
    data_format = resolve_data_format(params.model.data_format)
    # (name, probe size or None: diagnostics off, curvature on): issue 11 asks for both costs
    settings = (
        [("off", None, False)]
        + [(f"probe {size}", size, True) for size in args.probe_sizes]
        + [(f"probe {args.probe_sizes[0]}, no curv.", args.probe_sizes[0], False)]
    )
    per_epoch = {name: {"cpu": [], "wall": []} for name, *_ in settings}
    for _ in range(args.rounds):
        for name, probe_size, curvature in settings:
            diagnostics = params.diagnostics.model_copy(
                update={
                    "enabled": probe_size is not None,
                    "curvature": curvature,
                    "probe_size": probe_size or params.diagnostics.probe_size,
                    "dead_zone_every": params.diagnostics.dead_zone_every
                    if args.dead_zone_every is None
                    else args.dead_zone_every,
                }
            )
            run_params = params.model_copy(
                update={
                    "diagnostics": diagnostics,
                    "train": params.train.model_copy(update={"epochs": args.epochs, "snapshot_every": 0}),
                }
            )
            clock = EpochClock()
            result = train(run_params, arrays, data_format, None, [clock])
            per_epoch[name]["cpu"] += clock.cpu_seconds[1:]
            per_epoch[name]["wall"] += clock.seconds[1:]
            # epoch 1 (tracing) left out; the dead-zone pass runs every few epochs, so the share is
            # total seconds in the diagnostics / total epoch seconds, not a median of epochs
            epoch_total = sum(clock.cpu_seconds[1:])
            for callback, seconds in result.diagnostics_cpu_seconds.items():
                spent = sum(seconds.get(epoch, 0.0) for epoch in range(2, args.epochs + 1))
                per_epoch[name].setdefault(callback, []).append((spent, epoch_total))
    base = {kind: statistics.median(per_epoch["off"][kind]) for kind in ("cpu", "wall")}
    print(
        f"{len(arrays['x_train'])} training images, batch {params.train.batch_size}, "
        f"{params.model.filters} filters; medians over {args.rounds} x {args.epochs - 1} epochs"
    )
    callbacks = sorted({key for setting in per_epoch.values() for key in setting if key not in ("cpu", "wall")})

    def share(name: str, callback: str) -> float:
        pairs = per_epoch[name].get(callback) or [(0.0, 1.0)]
        return sum(spent for spent, _ in pairs) / sum(total for _, total in pairs)

    # "in <callback>": CPU inside that callback / CPU of the epochs (the load-proof figure)
    header = "".join(f" {'in ' + callback:>20}" for callback in callbacks)
    print(
        f"{'diagnostics':<21} {'CPU s/epoch':>12} {'overhead':>9} {'wall s/epoch':>13} {'overhead':>9}{header} {'in all':>8}"
    )
    for name, *_ in settings:
        cpu, wall = (statistics.median(per_epoch[name][kind]) for kind in ("cpu", "wall"))
        shares = [share(name, callback) for callback in callbacks]
        print(
            f"{name:<21} {cpu:>12.3f} {cpu / base['cpu'] - 1:>9.1%} {wall:>13.3f} {wall / base['wall'] - 1:>9.1%}"
            + "".join(f" {value:>20.1%}" for value in shares)
            + f" {sum(shares):>8.1%}"
        )


if __name__ == "__main__":
    main()
