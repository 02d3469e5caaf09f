"""What SpikeMonitor costs per epoch, on the three foreign networks (study/architectures.py).

    python -m benchmarks.monitor_cost [--rounds 3] [--epochs 10] [--arch lstm ...]

Per architecture, four copies of the same network train side by side, taking turns round by round:
without the monitor; with everything on (curvature included) under the default budget (10% of the
epochs' CPU: the curvature and the cadence pass give way when the monitor is over it); with
everything on and no budget (every measurement on its cadence); and in the cheap mode (no
curvature, no per-layer columns, the default budget). Each round is one `fit` of `--epochs` epochs continuing the
epoch count, so the whole-sample pass (every 10 epochs) and the eigenvalue (every 10) fall in each
round once, at its last epoch; the round's first epoch (tracing the monitor's graphs) is not timed.
Printed per architecture: the mean wall and CPU seconds per timed epoch; for each monitored setting
the CPU seconds spent inside the monitor as a share of its epochs' CPU seconds (the headline, as in
benchmarks/diagnostics_cost.py: it counts the monitor's own work only), and its epochs against the
plain ones. Taking turns in one sitting lets the machine's load
fall on every setting alike; on a shared machine the figures still move run to run.
"""

from __future__ import annotations

import argparse
import statistics
import time

SETTINGS = ("plain", "full", "unlimited", "cheap")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.monitor_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10, help="epochs per round (the first is not timed)")
    parser.add_argument("--arch", nargs="+", default=None)
    parser.add_argument("--samples", type=int, help="digits per epoch (default: the spiking configuration's)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.epochs < 2:
        raise SystemExit("error: --rounds >= 1 and --epochs >= 2 (the first epoch of a round is not timed)")

    import keras

    from spikelab.callbacks import EpochClock
    from spikelab.monitor import SpikeMonitor
    from study.architectures import ARCHITECTURES, CONFIGURATIONS, build, digits, inputs_for

    for name in args.arch or ARCHITECTURES:
        configuration = CONFIGURATIONS[name]
        samples = args.samples or configuration.samples
        images, labels = digits(samples)
        x = inputs_for(name, images)
        models = {}
        for setting in SETTINGS:
            keras.utils.set_random_seed(0)
            models[setting] = build(name)
            models[setting].compile(
                keras.optimizers.Adam(configuration.learning_rate), "sparse_categorical_crossentropy"
            )
        seconds = {setting: [] for setting in SETTINGS}
        cpu = {setting: [] for setting in SETTINGS}
        inside = {setting: [] for setting in SETTINGS}  # CPU seconds inside the monitor, per timed epoch
        curvature = dict.fromkeys(SETTINGS, 0)  # epochs whose curvature the budget skipped
        started = time.perf_counter()
        for round_index in range(args.rounds):
            for setting in SETTINGS:
                clock = EpochClock()
                options = {"cheap": setting == "cheap", "report": False}
                if setting == "unlimited":
                    options["budget"] = None
                callbacks = [] if setting == "plain" else [SpikeMonitor(x, labels, **options)]
                models[setting].fit(
                    x,
                    labels,
                    batch_size=configuration.batch_size,
                    initial_epoch=round_index * args.epochs,
                    epochs=(round_index + 1) * args.epochs,
                    callbacks=[*callbacks, clock],  # the clock last: the monitor's work counts in its epoch
                    verbose=0,
                )
                seconds[setting] += clock.seconds[1:]
                cpu[setting] += clock.cpu_seconds[1:]
                if callbacks:
                    spent = callbacks[0].cpu_seconds
                    inside[setting] += [spent[epoch] for epoch in sorted(spent)[1:]]
                    curvature[setting] += callbacks[0].curvature_skipped
        wall = {setting: statistics.mean(values) for setting, values in seconds.items()}
        cpus = {setting: statistics.mean(values) for setting, values in cpu.items()}
        print(
            f"{name}: {args.rounds} rounds x {args.epochs - 1} timed epochs per setting, {samples} samples, "
            f"batch {configuration.batch_size} ({time.perf_counter() - started:.0f} s in all)"
        )
        for setting in SETTINGS:
            overhead = (
                ""
                if setting == "plain"
                else f"  inside the monitor: {sum(inside[setting]) / sum(cpu[setting]):.1%} of the epochs' CPU;"
                f" against plain: wall {wall[setting] / wall['plain'] - 1:+.1%}, CPU {cpus[setting] / cpus['plain'] - 1:+.1%}"
                + (f"; curvature skipped at {curvature[setting]} epochs" if setting == "full" else "")
            )
            print(
                f"  {setting:6s} {wall[setting]:.3f} s/epoch wall, {cpus[setting]:.3f} s/epoch CPU{overhead}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
