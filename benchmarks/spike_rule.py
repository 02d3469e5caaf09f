"""The spike doctor's spike rule against the lab's, on labelled runs and on noisy healthy ones.

    python -m benchmarks.spike_rule             # the table (docs/monitor.md), in a few seconds
    python -m benchmarks.spike_rule generate    # retrain the optimizer runs (~10 minutes on 2 cores)

Two rules, both the lab's thresholds (ratio 10, min_rise 0.01; spikelab/verdict.py):
- the lab's: a loss >= 10x the lowest loss so far (spikelab/divergence.py);
- the doctor's: a loss >= 10x a robust reference, the lowest so far of the 0.25 quantile of the
  last 5 unflagged losses (their second lowest), an episode lasting while the loss stays >= 3.2x
  it (RobustSpikeWatch); `--window N` tries another window.

Two sets of runs:
- labelled: every committed study history (<study>/results/*_histories.csv.gz; per epoch). The
  lab's rule made the labels, so for it recall is 1 by construction: the question is what the
  doctor's rule keeps. A lab onset counts as found when the doctor's rule has an onset within
  TOLERANCE epochs of it;
- optimizers: a small CNN on scikit-learn's digits (1,797 images, batch 16: 113 steps an epoch),
  60 epochs under RMSprop, Adam, Adagrad and SGD with momentum at learning rates that make the
  curve noisy (`generate`, 17 minutes on 2 shared cores; committed in benchmarks/spike_rule_runs.csv.gz,
  the epoch losses; `generate` also writes each step's loss, left out of the committed file).

A false alarm, for either rule on either set: an onset whose loss is below ORDINARY x the median
of the MEDIAN_WINDOW epochs before it, i.e. an epoch no higher than the run's usual level (the
issue's case: 0.198 against a usual ~0.2, called 68x because one epoch had dipped to 0.0029).
This definition uses neither rule's reference; it does not call every other alarm a true spike.
The lab's real onsets are its rule's onsets that are not ordinary; recall is counted per onset,
per run (flagged at all) and for the large ones.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import math
import statistics
import sys
from pathlib import Path

from spikelab.verdict import DEFAULT_DIVERGENCE, LEVEL_WINDOW, onsets

REPO = Path(__file__).resolve().parent.parent
RUNS = Path(__file__).resolve().parent / "spike_rule_runs.csv.gz"
HISTORIES = "studies/*/results/*_histories.csv.gz"  # every study's (study.sweep.results_of)
TOLERANCE = 2  # epochs between a lab onset and the doctor's that still count as the same spike
ORDINARY = 2.0
MEDIAN_WINDOW = 10
LARGE = 30.0  # a large spike: its peak over JUMP_EPOCHS at least this many times the lowest loss before it
JUMP_EPOCHS = 10
RULES = {"lab: x lowest loss so far": None, f"doctor: x robust level (window {LEVEL_WINDOW})": LEVEL_WINDOW}
# the noisy optimizer runs: (name, optimizer, learning rate)
OPTIMIZERS = (
    ("rmsprop", "RMSprop", 0.03),
    ("rmsprop", "RMSprop", 0.01),
    ("adam", "Adam", 0.03),
    ("adagrad", "Adagrad", 0.3),
    ("sgd", "SGD", 0.3),
)
SEEDS = (0, 1, 2)
EPOCHS = 60


def read_labelled() -> dict[str, list[float]]:
    """Every committed study history's per-epoch losses, by '<file>:<run>' (studies/<name>/results/)."""
    losses: dict[str, list[float]] = {}
    paths = {path.name: path for path in REPO.glob(HISTORIES)}
    for _, path in sorted(paths.items()):
        with gzip.open(path, "rt", newline="") as handle:
            for row in csv.DictReader(handle):
                losses.setdefault(f"{path.name}:{row['run']}", []).append(float(row["loss"]))
    return losses


def read_generated(kind: str) -> dict[str, list[float]]:
    """The optimizer runs' losses ('epoch' or 'step') from benchmarks/spike_rule_runs.csv.gz."""
    losses: dict[str, list[float]] = {}
    if RUNS.exists():
        with gzip.open(RUNS, "rt", newline="") as handle:
            for row in csv.DictReader(handle):
                if row["kind"] == kind:
                    losses.setdefault(row["run"], []).append(float(row["loss"]))
    return losses


def ordinary(losses: list[float], onset: int) -> bool:
    """Whether the loss at a 1-based onset is below ORDINARY x the median of the epochs before it."""
    before = [loss for loss in losses[max(0, onset - 1 - MEDIAN_WINDOW) : onset - 1] if math.isfinite(loss)]
    loss = losses[onset - 1]
    return bool(before) and math.isfinite(loss) and loss < ORDINARY * statistics.median(before)


def jump(losses: list[float], onset: int) -> float:
    """The highest finite loss over the JUMP_EPOCHS from an onset, over the lowest loss before it."""
    peak = [loss for loss in losses[onset - 1 : onset - 1 + JUMP_EPOCHS] if math.isfinite(loss)]
    lowest = min(losses[: onset - 1])
    return max(peak) / lowest if peak and lowest > 0 else math.inf


def evaluate(runs: dict[str, list[float]]) -> dict[str, dict]:
    """Per rule: onsets, false alarms (ordinary epochs), and recall of the lab rule's real onsets
    (those not ordinary): per onset (+-TOLERANCE), per run, and of the large ones (>= LARGE x)."""
    found = {
        name: {run: [epoch for epoch, _ in onsets(losses, DEFAULT_DIVERGENCE, window)] for run, losses in runs.items()}
        for name, window in RULES.items()
    }
    lab = {
        run: [o for o in found_onsets if not ordinary(runs[run], o)]
        for run, found_onsets in found[next(iter(RULES))].items()
    }
    real = [(run, onset) for run, lab_onsets in lab.items() for onset in lab_onsets]
    large = [(run, onset) for run, onset in real if jump(runs[run], onset) >= LARGE]
    spiked = [run for run, lab_onsets in lab.items() if lab_onsets]
    units = sum(len(losses) for losses in runs.values())
    results = {}
    for name, per_run in found.items():

        def near(run, onset, per_run=per_run):
            return any(abs(onset - other) <= TOLERANCE for other in per_run[run])

        false = sum(ordinary(runs[run], onset) for run, found_onsets in per_run.items() for onset in found_onsets)
        results[name] = {
            "runs": len(runs),
            "units": units,
            "onsets": sum(len(o) for o in per_run.values()),
            "onset_recall": (sum(near(*pair) for pair in real), len(real)),
            "large_recall": (sum(near(*pair) for pair in large), len(large)),
            "run_recall": (sum(bool(per_run[run]) for run in spiked), len(spiked)),
            "false_alarms": false,
            "false_per_1000": 1000 * false / units if units else math.nan,
        }
    return results


def _share(pair: tuple[int, int]) -> str:
    found, total = pair
    return f"{found}/{total} = {found / total:.2f}" if total else "-"


def table(title: str, runs: dict[str, list[float]], unit: str = "epochs") -> str:
    results = evaluate(runs)
    first = next(iter(results.values()))
    lines = [
        f"{title}: {first['runs']} runs, {first['units']:,} {unit}",
        "",
        f"| rule | onsets | lab's real onsets found (+-{TOLERANCE}) | of them >= {LARGE:g}x | runs the lab flags, flagged | "
        f"false alarms (an ordinary {unit[:-1]}) | per 1,000 {unit} |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['onsets']} | {_share(r['onset_recall'])} | {_share(r['large_recall'])} | "
            f"{_share(r['run_recall'])} | {r['false_alarms']} | {r['false_per_1000']:.2f} |"
        )
    return "\n".join(lines)


def generate() -> None:
    """Train the optimizer runs and write their epoch and step losses to RUNS."""
    import keras
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, labels = (digits.images / 16.0).astype("float32")[..., None], digits.target
    rows = []
    for name, optimizer, learning_rate in OPTIMIZERS:
        for seed in SEEDS:
            keras.utils.set_random_seed(seed)
            model = keras.Sequential(
                [
                    keras.Input((8, 8, 1)),
                    keras.layers.Conv2D(16, 3, activation="relu"),
                    keras.layers.Flatten(),
                    keras.layers.Dense(32, activation="relu"),
                    keras.layers.Dense(10, activation="softmax"),
                ]
            )
            kwargs = {"momentum": 0.9} if optimizer == "SGD" else {}
            model.compile(
                getattr(keras.optimizers, optimizer)(learning_rate, **kwargs), "sparse_categorical_crossentropy"
            )
            steps = StepLosses()
            history = model.fit(x, labels, batch_size=16, epochs=EPOCHS, callbacks=[steps], verbose=0)
            run = f"{name}-lr{learning_rate}-s{seed}"
            rows += [(run, "epoch", i + 1, loss) for i, loss in enumerate(history.history["loss"])]
            rows += [(run, "step", i + 1, loss) for i, loss in enumerate(steps.losses)]
            print(run, f"final {history.history['loss'][-1]:.3g}", flush=True)
    with gzip.open(RUNS, "wt", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["run", "kind", "index", "loss"])
        writer.writerows((run, kind, index, f"{float(loss):.7g}") for run, kind, index, loss in rows)


class StepLosses:
    """Each batch's own loss, from Keras's running mean over the epoch (m_k = m_{k-1} + (l_k - m_{k-1}) / k)."""

    def __new__(cls):
        import keras

        class _StepLosses(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.losses: list[float] = []

            def on_epoch_begin(self, epoch, logs=None):
                self._mean, self._count = 0.0, 0

            def on_train_batch_end(self, batch, logs=None):
                mean = float(logs["loss"])
                self._count += 1
                self.losses.append(self._count * mean - (self._count - 1) * self._mean)
                self._mean = mean

        return _StepLosses()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.spike_rule", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", nargs="?", choices=("table", "generate"), default="table")
    parser.add_argument("--window", type=int, action="append", help="also the doctor's rule with this window")
    args = parser.parse_args(argv)
    for window in args.window or ():
        RULES[f"doctor, window {window}"] = window
    if args.command == "generate":
        generate()
    print(table("the lab's labelled study histories (per epoch)", read_labelled()))
    generated = read_generated("epoch")
    if generated:
        print()
        print(table("noisy optimizer runs on digits (per epoch)", generated))
    return 0


if __name__ == "__main__":
    sys.exit(main())
