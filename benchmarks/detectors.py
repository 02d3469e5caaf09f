"""SpikeMonitor's rules against the spike detectors people use, on the same runs.

    python -m benchmarks.detectors            # the tables (docs/monitor.md); a few minutes
    python -m benchmarks.detectors --check    # also: each re-implementation against the released code

The detectors, each fed one loss at a time and continuing after an alarm (an alarm that stops
training, as Lightning's does, is counted and the run goes on as if resumed):
- naive: the lab's rule, a loss >= 10x the lowest loss so far and 0.01 above it (spikelab/divergence.py);
- Lightning's SpikeDetection (lightning.fabric.utilities.spike, 2.6.6): a loss at least rtol 2 x
  above the running mean of the last 10 unflagged losses (and not lower than the previous one);
  warmup 1; a non-finite loss is a spike;
- trainscope's default detector (trainscope.core.detectors.ChangePointDetector, 1.8.1): Page's
  CUSUM of (loss - median) / (1.4826 MAD) over the last 200 losses, slack 1, threshold 6, after
  30 losses; it fires on a shift either way, and skips a non-finite loss (trainscope.scope does);
  ruptures (its optional magnitude refinement) is not installed and changes no alarm;
- trainpulse's loss alert (trainpulse.Monitor's LossSpikeDetector and NaNDetector, 0.4.0): a loss
  above 5x the mean of the last 50, or NaN/Inf;
- SpikeMonitor: per epoch, its robust rule (spikelab.verdict.RobustSpikeWatch); per step, its
  per-step rule (StepSpikeWatch: the median of 3 steps against the level of 64).

Each detector's released code is used where its package imports (they do in a venv with torch,
lightning, trainscope and trainpulse); elsewhere (the lab's venv, which has no torch) the
re-implementations below run, and `--check` shows they give the same alarms as the released code
on every run of both sets.

Alarms are counted as episodes: an alarm at a step or epoch right after another alarm continues it.

Per-epoch histories (the committed study histories and the noisy optimizer runs of
benchmarks/spike_rule.py): the truth is the lab's onsets that are not ordinary (spike_rule.ordinary);
an alarm within TOLERANCE epochs of one finds it (lead time: onset minus the first such alarm, in
epochs); a false alarm is an alarm at an ordinary epoch (below 2x the median of the 10 before it).

Per-step runs (benchmarks/step_spikes.py: the lab's default run and the LSTM of
study/architectures.py, each in epochs 16 passes long): the truth is the lab's rule on the
network's own epochs (the mean of each 64 or 32 steps: one pass over its training set), onsets
not ordinary; the lab knows of a spike at the end of that epoch. An alarm from TOLERANCE of those
epochs before the onset to the end of the lab's episode finds it; lead time is the step the lab
knows minus the first such alarm (positive: earlier than the lab's rule on epochs of one pass). A
false alarm is an alarm outside every lab episode at which the next epoch's worth of steps has a
mean below 2x the median of the ten epoch means before it. The per-epoch rules also run on the
runs' long epochs (one look per 16 passes: an alarm there is at the long epoch's last step).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections import deque

from benchmarks.spike_rule import TOLERANCE, ordinary, read_generated, read_labelled
from benchmarks.step_spikes import native_epoch, read_runs
from spikelab.verdict import DEFAULT_DIVERGENCE, LEVEL_WINDOW, onsets, step_onsets

# --- the detectors: each a function of a loss sequence -> the 1-based positions it alarms at ----


def naive(losses: list[float]) -> list[int]:
    return [epoch for epoch, _ in onsets(losses, DEFAULT_DIVERGENCE, window=None)]


def spike_monitor_epochs(losses: list[float]) -> list[int]:
    return [epoch for epoch, _ in onsets(losses, DEFAULT_DIVERGENCE, LEVEL_WINDOW)]


def spike_monitor_steps(losses: list[float]) -> list[int]:
    # where SpikeMonitor knows: the step that flagged (the onset it reports is up to 2 steps before)
    return [flagged for _, flagged, _ in step_onsets(losses, DEFAULT_DIVERGENCE)]


def lightning_reimplemented(losses: list[float], window: int = 10, warmup: int = 1, rtol: float = 2.0) -> list[int]:
    recent: deque[float] = deque(maxlen=window)
    last, alarms = 0.0, []
    for index, loss in enumerate(losses):
        mean = sum(recent) / len(recent) if recent else math.nan  # torchmetrics' Running(MeanMetric): nan empty
        spike = False
        if index >= warmup:
            if not math.isfinite(loss):
                spike = True
            elif not loss - last <= 0.0:
                spike = abs(loss - mean) >= abs(rtol * mean)
        if spike:
            alarms.append(index + 1)
        elif math.isfinite(loss):
            recent.append(loss)
            last = loss
    return alarms


def lightning_released(losses: list[float]) -> list[int]:
    import torch
    from lightning.fabric.utilities.spike import SpikeDetection, TrainingSpikeException

    class Strategy:  # a single process: what on_train_batch_end asks of Fabric's strategy
        root_device = torch.device("cpu")

        def barrier(self):
            pass

        def reduce_boolean_decision(self, decision, all=True):
            return decision

    class Fabric:
        strategy, global_rank = Strategy(), 0

    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        detection, fabric, alarms = SpikeDetection(exclude_batches_path=folder), Fabric(), []
        for index, loss in enumerate(losses):
            try:
                detection.on_train_batch_end(fabric, torch.tensor(loss, dtype=torch.float64), None, index)
            except TrainingSpikeException:
                alarms.append(index + 1)
    return alarms


def trainscope_reimplemented(
    losses: list[float], threshold: float = 6.0, slack: float = 1.0, window: int = 200, warmup: int = 30
) -> list[int]:
    import numpy as np

    history: deque[float] = deque()
    high = low = 0.0
    alarms = []
    for index, loss in enumerate(losses):
        if not math.isfinite(loss):
            continue
        if len(history) < warmup:
            history.append(loss)
            continue
        values = np.fromiter(history, dtype=float, count=len(history))
        median = float(np.median(values))
        spread = max(float(np.median(np.abs(values - median))) * 1.4826, 1e-12)
        z = (loss - median) / spread
        high, low = max(0.0, high + z - slack), min(0.0, low + z + slack)
        history.append(loss)
        if len(history) > window:
            history.popleft()
        if high >= threshold or abs(low) >= threshold:
            alarms.append(index + 1)
            high = low = 0.0
    return alarms


def trainscope_released(losses: list[float]) -> list[int]:
    from trainscope.core.detectors import make_detector

    detector = make_detector({"name": "changepoint"})  # TrainScopeConfig's default detector
    return [
        index + 1
        for index, loss in enumerate(losses)
        if math.isfinite(loss) and detector.update(float(loss)) is not None
    ]


def trainpulse_reimplemented(losses: list[float], threshold: float = 5.0, window: int = 50) -> list[int]:
    recent: deque[float] = deque(maxlen=window)
    alarms = []
    for index, loss in enumerate(losses):
        alarm = not math.isfinite(loss)
        if len(recent) == window:
            mean = sum(recent) / window
            alarm = alarm or (mean > 0 and loss > mean * threshold)
        recent.append(loss)
        if alarm:
            alarms.append(index + 1)
    return alarms


def trainpulse_released(losses: list[float]) -> list[int]:
    from trainpulse import Monitor

    monitor = Monitor()
    for index, loss in enumerate(losses):
        monitor.log("loss", index, float(loss))
    alerts = {alert.step + 1 for alert in monitor.alerts if alert.detector in ("loss_spike", "nan_detector")}
    return sorted(alerts)


RELEASED = {
    "Lightning SpikeDetection": (lightning_released, lightning_reimplemented, "lightning"),
    "trainscope CUSUM": (trainscope_released, trainscope_reimplemented, "trainscope"),
    "trainpulse loss alert": (trainpulse_released, trainpulse_reimplemented, "trainpulse"),
}


def detectors(per_step: bool) -> dict:
    """Name -> (function, whether it is the released code)."""
    import importlib.util

    found = {"naive: x the lowest so far": (naive, False)}
    for name, (released, again, package) in RELEASED.items():
        usable = importlib.util.find_spec(package) is not None and importlib.util.find_spec("torch") is not None
        found[name] = (released, True) if usable else (again, False)
    found["SpikeMonitor"] = (spike_monitor_steps if per_step else spike_monitor_epochs, False)
    return found


# --- scoring ----------------------------------------------------------------------------------


def episodes(alarms: list[int]) -> list[int]:
    """The first position of each run of consecutive alarms."""
    return [a for i, a in enumerate(alarms) if i == 0 or alarms[i - 1] != a - 1]


def score_epochs(runs: dict[str, list[float]], detector) -> dict:
    truth = {run: [o for o in naive(losses) if not ordinary(losses, o)] for run, losses in runs.items()}
    found = false = alarms_total = 0
    lead_times = []
    for run, losses in runs.items():
        alarms = episodes(detector(losses))
        alarms_total += len(alarms)
        false += sum(ordinary(losses, a) for a in alarms if a > 1)
        for onset in truth[run]:
            near = [a for a in alarms if abs(a - onset) <= TOLERANCE]
            if near:
                found += 1
                lead_times.append(onset - near[0])
    units = sum(len(losses) for losses in runs.values())
    total = sum(len(t) for t in truth.values())
    return {
        "alarms": alarms_total,
        "recall": (found, total),
        "lead": statistics.median(lead_times) if lead_times else math.nan,
        "false": false,
        "per_1000": 1000 * false / units,
    }


def block_means(losses: list[float], size: int) -> list[float]:
    return [statistics.fmean(losses[i : i + size]) for i in range(0, len(losses) - size + 1, size)]


def step_truth(losses: list[float], size: int) -> list[tuple[int, int, int]]:
    """The lab's spikes on the network's own epochs (`size` steps): (first step of the onset's epoch,
    the step the lab knows it (that epoch's last), the last step of the lab's episode)."""
    blocks = block_means(losses, size)
    flagged = [False] * len(blocks)
    from spikelab.divergence import SpikeWatch

    watch = SpikeWatch(DEFAULT_DIVERGENCE)
    for i, mean in enumerate(blocks):
        flagged[i] = watch.observe(mean)
    truth = []
    for i, flag in enumerate(flagged):
        if flag and (i == 0 or not flagged[i - 1]) and not ordinary(blocks, i + 1):
            end = i
            while end + 1 < len(blocks) and flagged[end + 1]:
                end += 1
            truth.append((i * size + 1, (i + 1) * size, (end + 1) * size))
    return truth


def step_ordinary(losses: list[float], step: int, size: int) -> bool:
    """Whether the `size` steps (an epoch of the network's own) from `step` sit below 2x the median of
    the ten epoch means before it."""
    before = block_means(losses[max(0, step - 1 - 10 * size) : step - 1], size)
    after = [loss for loss in losses[step - 1 : step - 1 + size] if math.isfinite(loss)]
    return bool(before) and bool(after) and statistics.fmean(after) < 2 * statistics.median(before)


def score_steps(runs: dict[str, dict[str, list[float]]], detector, per_epoch: bool = False) -> dict:
    """per_epoch: the detector reads the runs' long epochs' means; its alarm is at the epoch's last step."""
    found = false = alarms_total = 0
    lead_times, total, units = [], 0, 0
    for name, run in runs.items():
        losses, size = run["step"], native_epoch(name)
        units += len(losses)
        steps_per_epoch = len(losses) // len(run["epoch"])
        if per_epoch:
            alarms = [epoch * steps_per_epoch for epoch in episodes(detector(run["epoch"]))]
        else:
            alarms = episodes(detector(losses))
        alarms_total += len(alarms)
        truth = step_truth(losses, size)
        total += len(truth)
        windows = [(start - TOLERANCE * size, end) for start, _, end in truth]
        for (_, known, _), (low, high) in zip(truth, windows):
            inside = [a for a in alarms if low <= a <= high]
            if inside:
                found += 1
                lead_times.append(known - inside[0])
        false += sum(
            not any(low <= a <= high for low, high in windows) and step_ordinary(losses, a, size) for a in alarms
        )
    return {
        "alarms": alarms_total,
        "recall": (found, total),
        "lead": statistics.median(lead_times) if lead_times else math.nan,
        "false": false,
        "per_1000": 1000 * false / units if units else math.nan,
    }


def _row(name: str, released: bool, r: dict, unit: str) -> str:
    found, total = r["recall"]
    recall = f"{found}/{total} = {found / total:.2f}" if total else "-"
    lead = f"{r['lead']:+g} {unit}" if math.isfinite(r["lead"]) else "-"
    code = "released" if released else "re-implemented" if name in RELEASED else "this lab's"
    return f"| {name} ({code}) | {r['alarms']} | {recall} | {lead} | {r['false']} | {r['per_1000']:.2f} |"


HEADER = "| detector (code) | alarms | recall of the lab's spikes | median lead | false alarms | per 1,000 {unit} |\n|---|---|---|---|---|---|"


def epoch_table(title: str, runs: dict[str, list[float]]) -> str:
    units = sum(len(v) for v in runs.values())
    lines = [f"{title}: {len(runs)} runs, {units:,} epochs", "", HEADER.format(unit="epochs")]
    for name, (detector, released) in detectors(per_step=False).items():
        lines.append(_row(name, released, score_epochs(runs, detector), "epochs"))
    return "\n".join(lines)


def step_table(runs: dict[str, dict[str, list[float]]]) -> str:
    units = sum(len(v["step"]) for v in runs.values())
    epochs = sum(len(v["epoch"]) for v in runs.values())
    lines = [
        f"per-step runs (benchmarks/step_spikes.py): {len(runs)} runs, {units:,} steps in {epochs} epochs",
        "",
        HEADER.format(unit="steps"),
    ]
    for name, (detector, released) in detectors(per_step=True).items():
        lines.append(_row(name, released, score_steps(runs, detector), "steps"))
    for name, detector in (("naive: x the lowest so far", naive), ("SpikeMonitor", spike_monitor_epochs)):
        lines.append(_row(f"{name}, per epoch", False, score_steps(runs, detector, per_epoch=True), "steps"))
    return "\n".join(lines)


def check() -> str:
    """Each re-implementation against the released code, on every run of both sets."""
    sequences = [
        *read_labelled().values(),
        *read_generated("epoch").values(),
        *(run["step"] for run in read_runs().values()),
    ]
    lines = []
    for name, (released, again, _) in RELEASED.items():
        differ = sum(released(losses) != again(losses) for losses in sequences)
        lines.append(
            f"{name}: the re-implementation's alarms differ from the released code's on {differ} of {len(sequences)} runs"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.detectors", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare each re-implementation with the released code")
    parser.add_argument("--only", choices=("epochs", "steps"), help="one set of runs")
    args = parser.parse_args(argv)
    if args.only != "steps":
        print(epoch_table("the lab's labelled study histories (per epoch)", read_labelled()))
        print()
        print(epoch_table("noisy optimizer runs on digits (per epoch)", read_generated("epoch")))
        print()
    if args.only != "epochs":
        runs = read_runs()
        print(step_table(runs) if runs else "no per-step runs: python -m benchmarks.step_spikes generate")
    if args.check:
        print()
        print(check())
    return 0


if __name__ == "__main__":
    sys.exit(main())
