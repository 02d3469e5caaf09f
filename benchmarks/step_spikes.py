"""Per-step runs with spikes inside an epoch: the lab's default run in epochs 16x as long.

    python -m benchmarks.step_spikes generate [--seeds 0 1 2] [--epochs 9]

The lab's network, data, loss and Adam exactly as params.yaml has them (lr 3e-3, batch 32), but each
Keras epoch is 16 passes over the 2,048 training images (1,024 steps, shuffled by fit), so the
spike the default run has near its 100th epoch of 64 steps (~6,000 steps) starts and often ends
inside one long epoch: a run with few long epochs, as a fine-tuning user has. 9 epochs are 9,216
steps (144 of the lab's epochs); ~12 minutes a seed on 2 loaded cores. The first attempt, the
network on 16x distinct images at lr 1e-2, never learned (epochs 1-2 at 0.708 and 0.726, chance
0.69): no spike to find.

`--arch lstm`: study/architectures.py's LSTM at the configuration that spiked in 5/5 seeds
(Adam lr 0.01, beta_2 0.95, 512 digits, batch 16: 32 steps an epoch of its own), its 512 digits 16
times over in each Keras epoch (512 steps); 8 epochs are 4,096 steps (128 epochs of its own).

Each step's own loss is what SpikeMonitor reads: recovered from Keras's running mean (BatchLosses in
spikelab/monitor.py). Written to benchmarks/step_spike_runs.csv.gz (run, kind 'step' or 'epoch',
index, loss); benchmarks/detectors.py compares the detectors on them.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import sys
import time
from pathlib import Path

RUNS = Path(__file__).resolve().parent / "step_spike_runs.csv.gz"
REPEAT = 16  # passes over the training set in one Keras epoch
# steps in one epoch of each network's own training set (the truth is read on those epochs)
NATIVE_EPOCH = {"lab": 64, "lstm": 32}


def read_runs(path: Path = RUNS) -> dict[str, dict[str, list[float]]]:
    """{run: {'step': losses, 'epoch': losses}} from the committed file."""
    runs: dict[str, dict[str, list[float]]] = {}
    if path.exists():
        with gzip.open(path, "rt", newline="") as handle:
            for row in csv.DictReader(handle):
                runs.setdefault(row["run"], {"step": [], "epoch": []})[row["kind"]].append(float(row["loss"]))
    return runs


def write_runs(runs: dict[str, dict[str, list[float]]], path: Path = RUNS) -> None:
    with gzip.open(path, "wt", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["run", "kind", "index", "loss"])
        for run, kinds in runs.items():
            for kind, losses in kinds.items():
                writer.writerows((run, kind, i, f"{loss:.7g}") for i, loss in enumerate(losses, start=1))


def training_set(params):
    """The lab's training images REPEAT times over (one long epoch), as model inputs."""
    import numpy as np

    from spikelab.data import generate, split
    from spikelab.model import resolve_data_format, to_model_input

    solid, broken, _ = generate(params.data)
    parts = split(solid, broken, params.split)
    data_format = resolve_data_format(params.model.data_format)
    x = to_model_input(parts["x_train"], data_format).astype(np.float32)
    return np.concatenate([x] * REPEAT), np.concatenate([parts["y_train"]] * REPEAT), data_format


def native_epoch(run: str) -> int:
    return NATIVE_EPOCH[run.split("-")[0]]


def lstm_set():
    """study/architectures.py's LSTM at its spiking configuration's 512 digits, REPEAT times over."""
    import numpy as np

    from study.architectures import CONFIGURATIONS, digits

    images, labels = digits(CONFIGURATIONS["lstm"].samples)
    return np.concatenate([images] * REPEAT), np.concatenate([labels] * REPEAT)


def generate_runs(seeds: list[int], epochs: int, arch: str = "lab") -> None:
    import keras

    from spikelab.losses import make_loss
    from spikelab.model import build_model
    from spikelab.monitor import BatchLosses
    from spikelab.optimizers import make_optimizer
    from spikelab.params import load_params

    params = load_params()
    if arch == "lab":
        x, y, data_format = training_set(params)
    else:
        from study.architectures import CONFIGURATIONS, build

        x, y = lstm_set()
        configuration = CONFIGURATIONS["lstm"]

    class StepLosses(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.losses, self.reader = [], BatchLosses()

        def on_epoch_begin(self, epoch, logs=None):
            self.reader.start_epoch()

        def on_train_batch_end(self, batch, logs=None):
            self.losses.append(self.reader.read(batch + 1, float(logs["loss"])))

    runs = read_runs()
    for seed in seeds:
        keras.utils.set_random_seed(seed)
        if arch == "lab":
            model = build_model(params.model, params.data.image_size, data_format)
            model.compile(make_optimizer(params.optimizer), make_loss(params.loss))
            batch_size = params.train.batch_size
        else:
            model = build("lstm")
            optimizer = keras.optimizers.Adam(configuration.learning_rate, beta_2=configuration.beta_2)
            model.compile(optimizer, "sparse_categorical_crossentropy")
            batch_size = configuration.batch_size
        steps, started = StepLosses(), time.perf_counter()
        history = model.fit(x, y, batch_size=batch_size, epochs=epochs, callbacks=[steps], verbose=0)
        run = f"{arch}-x{REPEAT}-s{seed}"
        runs[run] = {"step": steps.losses, "epoch": [float(v) for v in history.history["loss"]]}
        write_runs(runs)
        losses = " ".join(f"{v:.3g}" for v in history.history["loss"])
        print(f"{run}: {len(steps.losses)} steps in {time.perf_counter() - started:.0f} s; epochs {losses}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.step_spikes", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("generate",))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=9)
    parser.add_argument("--arch", choices=tuple(NATIVE_EPOCH), default="lab")
    args = parser.parse_args(argv)
    generate_runs(args.seeds, args.epochs, args.arch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
