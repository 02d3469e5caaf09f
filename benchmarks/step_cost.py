"""What SpikeMonitor's per-step watch costs, at the lab's default network and at a larger one.

    python -m benchmarks.step_cost [--rounds 2] [--epochs 3] [--filters 8 32]

Per network (the lab's, params.yaml, with `filters` first-layer filters: 8 is the default, 32 has
16x its weights in the second convolution), two copies train side by side on the lab's data, taking
turns round by round: SpikeMonitor with the per-step watch (the default) and without it
(per_step=False); the cheap mode in both, so that the rest of the monitor is as small as it gets.
Printed: the CPU seconds inside the per-step watch as a share of each fit's CPU seconds (a ratio
within one process: the headline), its microseconds per step, and the CPU seconds per step of the
two copies' fits (their ratio includes what Keras spends on a batch hook at all: converting the
logs at every step; it moves with the machine's load). No spike happens in these few epochs, so
no probe is read at a step: what a spike adds is one probe pass and one snapshot.
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.step_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--filters", type=int, nargs="+", default=[8, 32])
    args = parser.parse_args(argv)

    import keras

    from spikelab.data import generate, split
    from spikelab.losses import make_loss
    from spikelab.model import build_model, resolve_data_format, to_model_input
    from spikelab.monitor import SpikeMonitor
    from spikelab.optimizers import make_optimizer
    from spikelab.params import load_params

    params = load_params()
    parts = split(*generate(params.data)[:2], params.split)
    data_format = resolve_data_format(params.model.data_format)
    x, y = to_model_input(parts["x_train"], data_format), parts["y_train"]
    for filters in args.filters:
        model_params = params.model.model_copy(update={"filters": filters})
        models = {}
        for per_step in (True, False):
            keras.utils.set_random_seed(0)
            models[per_step] = build_model(model_params, params.data.image_size, data_format)
            models[per_step].compile(make_optimizer(params.optimizer), make_loss(params.loss))
        fit_cpu = {True: 0.0, False: 0.0}
        inside, steps = 0.0, 0
        for _ in range(args.rounds):
            for per_step in (True, False):
                monitor = SpikeMonitor(x[:512], y[:512], cheap=True, per_step=per_step, report=False)
                started = time.process_time()
                models[per_step].fit(x, y, batch_size=32, epochs=args.epochs, callbacks=[monitor], verbose=0)
                fit_cpu[per_step] += time.process_time() - started
                if per_step:
                    inside += monitor.step_cpu_seconds
                    steps += len(monitor.step_losses)
        weights = models[True].count_params()
        print(
            f"lab network, {filters} filters ({weights:,} weights), {steps} steps watched: the per-step watch "
            f"{inside / fit_cpu[True]:.2%} of the fit's CPU ({1e6 * inside / steps:.0f} us a step); fit CPU per step "
            f"{1e3 * fit_cpu[True] / steps:.2f} ms with it, {1e3 * fit_cpu[False] / steps:.2f} ms without "
            f"(ratio {fit_cpu[True] / fit_cpu[False]:.3f})",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
