"""The spike doctor's verdict: per spike of a training history, which mechanism, the numbers that
show it, and the fix the lab's evidence supports, with how strong that evidence is.

A spike is an episode of epochs the spike rule flags: the doctor's (RobustSpikeWatch below, what
SpikeMonitor and `python -m spikelab.diagnose` use) is the lab's divergence rule
(spikelab/divergence.py) measured from a robust level of the recent past instead of the lowest
single loss so far; `diagnose(window=None)` applies the lab's own. An onset is an episode's first epoch. The mechanisms the lab has measured (docs/findings.md), each with its
signature in the per-epoch diagnostics (docs/diagnostics.md), checked in this order:

- collapse: after the onset the network answers one class for (nearly) every sample
  (`majority_prediction_fraction`, which SpikeMonitor logs at its whole-sample passes);
- dead zone: samples thrown past the clipped cross-entropy's clip (wrong and saturated, so their
  gradient is exactly zero): after the onset `dead_fraction` has risen past DEAD_FRACTION, the loss
  sits on the dead samples' share (`dead_loss_clipped` >= DEAD_SHARE x loss) and the loss is the
  clipped form (nearer `full_loss_clipped` than `full_loss_unclipped`);
- Adam's normalised step: Adam's (or RMSprop's, Adadelta's: SpikeMonitor logs their v too)
  second moment decayed before the onset (`v_sqrt_median` at most
  V_DECAYED x its highest so far) and the step jumped (`update_rms_over_lr` or `adam_ratio_max`
  STEP_JUMP x their median over the PRE_WINDOW epochs before) or v lagged the gradients arriving
  (`g2_over_v_rms` > 1 in the epochs just before);
- otherwise: unexplained, with the numbers, and no fix offered.
A run broken from its first epoch (the broken-from-start rule) has no spike to explain: its verdict
is a learning rate too high from the start.

Free of TensorFlow: the command reads a finished run's history in a second.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, deque
from dataclasses import dataclass, field

from spikelab.divergence import SpikeWatch, broken_from_start, held_epochs, is_spike
from spikelab.params import DivergenceParams, PlateauParams

# the rules' values in the lab's params.yaml (a test checks they agree): the defaults for a user's run
DEFAULT_DIVERGENCE = DivergenceParams(ratio=10.0, min_rise=0.01)
DEFAULT_PLATEAU = PlateauParams(ratio=5.0, min_epochs=20)

# the spike rule's level: this quantile of the last LEVEL_WINDOW unflagged losses (docs/monitor.md)
LEVEL_WINDOW = 5
LEVEL_QUANTILE = 0.25
# the per-step rule's (StepSpikeWatch): the mean of this many steps its level, the median of the
# last STEP_CONFIRM steps the loss it judges (docs/monitor.md)
STEP_WINDOW = 64
STEP_CONFIRM = 5
PRE_WINDOW = 10  # epochs before an onset that set the step's usual size
AFTER_WINDOW = 20  # epochs from an onset in which the dead zone or a collapse must show
# v's median at most this share of its peak: the lab's Adam spikes follow a decay well below it,
# its dead-zone climbs happen with v at its peak (docs/monitor.md has the measured spread)
V_DECAYED = 0.85
STEP_JUMP = 1.5  # the step's size at the onset against its usual size
LAG_EPOCHS = 3  # g2_over_v_rms > 1 within this many epochs before the onset counts
DEAD_FRACTION = 0.01  # dead samples (share) that make a dead zone
DEAD_SHARE = 0.5  # the dead samples' share of the loss that says the loss sits on them
COLLAPSE_SHARE = 0.99  # the most predicted class's share that says the network answers one class

MECHANISMS = {
    "adam_step": "Adam's normalised step after its second moment v decayed",
    "dead_zone": "the clipped loss's dead zone (samples saturated wrong, zero gradient)",
    "collapse": "a collapse to one class",
    "broken_from_start": "a learning rate too high from the first epoch (the run never learned)",
    "unexplained": "unexplained: the signals fit no mechanism the lab has measured",
}

# the fix each mechanism's evidence supports, the evidence, and its strength (docs/findings.md)
FIXES = {
    "adam_step": (
        "AMSGrad (keras.optimizers.Adam(amsgrad=True)): its v cannot decay. Evidence: it keeps the jumps smaller "
        "(median largest jump 4.11x against Adam's 23.5x, and 4.88x against 20x on 20 fresh datasets, Holm p 0.002); "
        "that it spikes less often did not replicate (1/20 against 16/20, then 8/20 against 15/20 on fresh datasets, "
        "Holm p 0.38). On three networks this project did not write (LSTM, GRU, attention) it removed the spikes "
        "(0/5 against 5/5 each, p = 0.0079). Not supported: epsilon 1e-2 or 1e-3, clipnorm 1 (no detectable "
        "difference in how often, in either study)",
        "moderate: 20 seeds per cell, replicated for the jumps' size but not for how often; 5 seeds on each of "
        "three other networks",
    ),
    "dead_zone": (
        "the unclipped cross-entropy (Keras 3's from the logits: from_logits=True, or keras.losses."
        "BinaryCrossentropy on a softmax output). Evidence: stayed up in 4/20 runs against the clipped loss's "
        "20/20, and again 4/20 against 20/20 on 20 fresh datasets (Holm p 1.4e-06 each); replayed from a plateau "
        "with 19% dead it revived them (0.05% dead at the end), nothing else did. Epsilon 1e-2 prevents most from "
        "scratch (2/20, then 3/20 on fresh datasets) but revives no dead sample. Not supported: AMSGrad (20/20 "
        "stayed up, then 20/20 again)",
        "strong: replicated on 20 fresh datasets, and replays (evidence study, replay_plateau_late)",
    ),
    "collapse": (
        "a lower learning rate, and a loss that keeps a gradient on saturated samples (the unclipped "
        "cross-entropy). Evidence: SGD collapsed to one class at lr >= 0.1 in 3/3 seeds per cell and never at "
        "lr 0.01 (0/20). A bounded loss (log_cosh) hides a collapse rather than preventing it",
        "weak: a scan of 3 seeds per cell on the lab's network (docs/journal/2026-11-25-plateau-search.md)",
    ),
    "broken_from_start": (
        "lower the learning rate. Evidence: SGD at lr 0.3 and 1.0 collapsed inside the first epoch in 3/3 "
        "seeds per cell; at lr 0.01 it never blew up in 150 epochs (0/20)",
        "weak: a scan of 3 seeds per cell on the lab's network (docs/journal/2026-11-25-plateau-search.md)",
    ),
    "unexplained": (
        "none the lab's evidence supports; replay from a snapshot before the onset to test interventions",
        "none",
    ),
}


# the verdict's short form (summary): the fix in a few words, and how sure the lab is
SHORT = {
    "adam_step": (
        "AMSGrad: keras.optimizers.Adam(amsgrad=True) (its v cannot decay)",
        "moderate: smaller jumps replicated on fresh datasets, fewer spikes did not",
    ),
    "dead_zone": (
        "the unclipped cross-entropy (from the logits, as Keras 3's own losses compute it)",
        "strong: replicated on 20 fresh datasets, and replays",
    ),
    "collapse": ("a lower learning rate; a loss that keeps a gradient on saturated samples", "weak: 3 seeds per cell"),
    "broken_from_start": ("lower the learning rate", "weak: 3 seeds per cell"),
    "unexplained": ("none the lab's evidence supports: replay from a snapshot before the onset", "none"),
}
# the numbers the short form shows per mechanism: (key, how to say it)
HEADLINE = {
    "adam_step": (
        ("adam_step.v_sqrt_median_over_peak", "v at {:.2g} of its peak"),
        ("adam_step.update_rms_over_lr_jump", "step {:.2g}x its usual size"),
        ("adam_step.adam_ratio_max_jump", "m/sqrt(v) {:.2g}x its usual"),
        ("adam_step.g2_over_v_rms_max", "g^2/v {:.2g}"),
    ),
    "dead_zone": (
        ("dead_zone.dead_fraction", "{:.1%} of samples dead"),
        ("dead_zone.dead_loss_share", "carrying {:.0%} of the loss"),
    ),
    "collapse": (("collapse.majority_prediction_fraction", "{:.1%} of answers one class"),),
    "broken_from_start": (("first_loss", "loss {:.3g} at epoch 1"), ("final_loss", "{:.3g} at the end")),
}


@dataclass(frozen=True)
class Verdict:
    """One spike (or a run broken from the start, epoch 1): its mechanism and the numbers behind it."""

    epoch: int
    mechanism: str
    numbers: dict
    jump: float | None = None
    stayed_up: bool = False
    also: tuple[str, ...] = ()  # other mechanisms whose signals are present too

    @property
    def fix(self) -> str:
        return FIXES[self.mechanism][0]

    @property
    def strength(self) -> str:
        return FIXES[self.mechanism][1]


@dataclass(frozen=True)
class Diagnosis:
    verdicts: list[Verdict] = field(default_factory=list)
    epochs: int = 0
    skipped: tuple[str, ...] = ()  # signals the history lacks (a diagnostic that was off or not applicable)

    @property
    def mechanisms(self) -> set[str]:
        return {verdict.mechanism for verdict in self.verdicts}


def _column(history: list[dict], key: str) -> list[float]:
    return [float(row.get(key, math.nan)) for row in history]


def _finite(values) -> list[float]:
    return [value for value in values if math.isfinite(value)]


class RobustSpikeWatch:
    """The spike rule, applied one loss at a time: the lab's divergence rule (a loss not finite, or
    at least `rule.ratio` x the reference AND at least `rule.min_rise` above it), with a robust
    reference: the lowest so far of the `quantile` of the last `window` unflagged losses, not the
    lowest single loss so far. An episode, once flagged, lasts while the loss stays at least
    sqrt(ratio) x the reference (3.2x at the lab's 10), so a loss that hovers near the threshold
    makes one episode, not one per crossing.

    Why: one outlying low (an epoch that dipped to 0.0029 among epochs at 0.2) made "x the lowest so
    far" fire on the next ordinary epoch (68x) and on every epoch after it. The 0.25 quantile of the
    last 5 losses is their second lowest: it moves only when two of five are low, so one dip does not
    set the reference. Its lowest so far keeps the lab's memory (a slow climb from the run's best
    level is still a rise). Window 10 (robust to two dips in ten) found fewer of the lab's spikes
    at the same false-alarm rate (benchmarks/spike_rule.py; docs/monitor.md)."""

    def __init__(self, rule: DivergenceParams, window: int = LEVEL_WINDOW, quantile: float = LEVEL_QUANTILE):
        if window < 1 or not 0 <= quantile <= 1:
            raise ValueError(
                f"spike rule window = {window}, quantile = {quantile}: use a window >= 1, a quantile in [0, 1]"
            )
        self.rule, self.window, self.quantile = rule, window, quantile
        self.recent: list[float] = []
        self.lowest = math.inf  # the reference: what onsets() reports as the level before a spike
        self.flagged = False

    def _level(self) -> float:
        """The quantile of the recent losses (linear interpolation, numpy's default)."""
        ordered = sorted(self.recent)
        position = self.quantile * (len(ordered) - 1)
        below = math.floor(position)
        above = min(below + 1, len(ordered) - 1)
        return ordered[below] + (ordered[above] - ordered[below]) * (position - below)

    def observe(self, loss: float) -> bool:
        held = self.flagged and not (math.isfinite(loss) and loss < math.sqrt(self.rule.ratio) * self.lowest)
        self.flagged = held or is_spike(loss, self.lowest, self.rule)
        if not self.flagged:
            self.recent = [*self.recent, loss][-self.window :]
            self.lowest = min(self.lowest, self._level())
        return self.flagged


class StepSpikeWatch:
    """The spike rule over training steps (SpikeMonitor's per-step watch): the doctor's rule (the
    lab's thresholds, a loss not finite or at least `rule.ratio` x the reference AND `rule.min_rise`
    above it, measured from the lowest so far of a robust recent level; an episode lasting while the
    loss stays at least sqrt(ratio) x it), read for batches:

    - the level is the mean loss of the last `window` (64) unflagged steps, one of the lab's own
      epochs wide (2,048 images at batch 32): one dipping batch moves it by 1/64, as the epoch
      rule's second-lowest-of-5 ignores one dipping epoch; the reference is its lowest so far;
    - the loss judged is the median of the last `confirm` (5) steps' losses, so one outlying batch (a
      hard batch on a healthy model) is no spike: three of five must be high, the model got worse.

    A non-finite loss is flagged at once. The onset (`onset_back` steps before the step that flagged
    it) is the first of those `confirm` steps over the threshold: a spike is located to the step it
    began at, and flagged when its third high step arrives (two steps after its start). Measured
    against the alternatives in benchmarks/detectors.py (docs/monitor.md)."""

    def __init__(self, rule: DivergenceParams, window: int | None = None, confirm: int | None = None):
        window = STEP_WINDOW if window is None else window
        confirm = STEP_CONFIRM if confirm is None else confirm
        if window < 1 or confirm < 1:
            raise ValueError(f"per-step spike rule window = {window}, confirm = {confirm}: use integers >= 1")
        self.rule, self.window, self.confirm = rule, window, confirm
        self.recent: deque[float] = deque()
        self._sum = 0.0
        self.last: deque[float] = deque(maxlen=confirm)
        self.level = math.inf  # the mean of the last `window` unflagged losses
        self.lowest = math.inf  # the reference: the lowest level so far
        self.flagged = False
        self.onset_back = 0  # at an onset: how many steps before the flagging step it began

    def observe(self, loss: float) -> bool:
        loss = float(loss) if math.isfinite(loss) else math.inf
        self.last.append(loss)
        now = loss if math.isinf(loss) else statistics.median(self.last)
        before = self.flagged
        held = before and now < math.inf and not now < math.sqrt(self.rule.ratio) * self.lowest
        self.flagged = held or is_spike(now, self.lowest, self.rule)
        if self.flagged and not before:
            over = [is_spike(value, self.lowest, self.rule) for value in self.last]
            self.onset_back = len(over) - 1 - (over.index(True) if any(over) else len(over) - 1)
        if not self.flagged:
            self.recent.append(loss)
            self._sum += loss
            if len(self.recent) > self.window:
                self._sum -= self.recent.popleft()
            self.level = self._sum / len(self.recent)
            self.lowest = min(self.lowest, self.level)
        return self.flagged


def step_onsets(
    losses: list[float], rule: DivergenceParams, window: int | None = None, confirm: int | None = None
) -> list[tuple[int, int, float]]:
    """(1-based onset step, the step that flagged it, the reference before it) of every episode
    the per-step rule (StepSpikeWatch) flags in a sequence of per-step losses."""
    watch, found, flagged_before = StepSpikeWatch(rule, window, confirm), [], False
    for step, loss in enumerate(losses, start=1):
        reference = watch.lowest
        flagged = watch.observe(loss)
        if flagged and not flagged_before:
            found.append((step - watch.onset_back, step, reference))
        flagged_before = flagged
    return found


def spike_watch(rule: DivergenceParams, window: int | None = LEVEL_WINDOW):
    """The watch for a rule: robust (RobustSpikeWatch) with a window, the lab's SpikeWatch with None."""
    return SpikeWatch(rule) if window is None else RobustSpikeWatch(rule, window)


def onsets(losses: list[float], rule: DivergenceParams, window: int | None = LEVEL_WINDOW) -> list[tuple[int, float]]:
    """(1-based onset epoch, the reference before it) of every episode the spike rule flags; the
    reference is the robust level (window), or with window None the lowest loss so far (the lab's rule)."""
    watch, found, flagged_before = spike_watch(rule, window), [], False
    for epoch, loss in enumerate(losses, start=1):
        reference = watch.lowest
        flagged = watch.observe(loss)
        if flagged and not flagged_before:
            found.append((epoch, reference))
        flagged_before = flagged
    return found


def adam_signals(history: list[dict], onset: int, loss_clipped: bool | None = None) -> dict | None:
    """The Adam mechanism's numbers at an onset, with 'fits'; None without Adam's columns."""
    v = _column(history, "v_sqrt_median")
    before = _finite(v[: onset - 1])
    if not before or not math.isfinite(v[onset - 2] if onset >= 2 else math.nan):
        return None
    numbers = {"v_sqrt_median_over_peak": v[onset - 2] / max(before) if max(before) > 0 else math.nan}
    jumps = []
    for key in ("update_rms_over_lr", "adam_ratio_max"):
        values = _column(history, key)
        usual = _finite(values[max(0, onset - 1 - PRE_WINDOW) : onset - 1])
        at_onset = _finite(values[max(0, onset - 2) : onset])
        if usual and at_onset and statistics.median(usual) > 0:
            numbers[f"{key}_jump"] = max(at_onset) / statistics.median(usual)
            jumps.append(numbers[f"{key}_jump"])
    lag = _finite(_column(history, "g2_over_v_rms")[max(0, onset - 1 - LAG_EPOCHS) : onset])
    if lag:
        numbers["g2_over_v_rms_max"] = max(lag)
    decayed = numbers["v_sqrt_median_over_peak"] <= V_DECAYED
    jumped = any(jump >= STEP_JUMP for jump in jumps)
    lagged = bool(lag) and max(lag) > 1
    numbers["fits"] = decayed and (jumped or lagged)
    return numbers


def _accounted_after(history: list[dict], onset: int, key: str) -> list[dict]:
    return [
        row for row in history[onset - 1 : onset - 1 + AFTER_WINDOW] if math.isfinite(float(row.get(key, math.nan)))
    ]


def loss_is_clipped(history: list[dict]) -> bool | None:
    """Whether the loss trained on is the clipped form, read off the whole-set passes. At each pass
    where the two forms differ by more than a tenth of the loss, where the logged loss (an epoch's
    mean) sits between them: 0 at the clipped value, 1 at the unclipped. A clipped loss sits on its
    value pass after pass; an unclipped one scatters around 1 (it moves within an epoch wherever
    samples saturate), so clipped means the median distance from 0 stays under CLIPPED_SPREAD.
    None when no pass tells the forms apart."""
    positions = []
    for row in history:
        loss, clipped, unclipped = (float(row.get(key, math.nan)) for key in ("loss", *FORMS))
        if math.isfinite(loss + clipped + unclipped) and abs(unclipped - clipped) > 0.1 * abs(loss):
            positions.append((loss - clipped) / (unclipped - clipped))
    return statistics.median(abs(position) for position in positions) < CLIPPED_SPREAD if positions else None


FORMS = ("full_loss_clipped", "full_loss_unclipped")
CLIPPED_SPREAD = 0.25


def dead_zone_signals(history: list[dict], onset: int, loss_clipped: bool | None = None) -> dict | None:
    """The dead zone's numbers after an onset, with 'fits'; None without the whole-set accounting.
    loss_clipped: whether the loss trained on is the clipped form, None to read it off the history."""
    after = _accounted_after(history, onset, "dead_fraction")
    if not after:
        return None
    before = _finite(_column(history[: onset - 1], "dead_fraction"))
    row = max(after, key=lambda r: r["dead_fraction"])
    loss = float(row.get("loss", math.nan))
    numbers = {
        "epoch": int(row["epoch"]) if "epoch" in row else None,
        "dead_fraction_before": before[-1] if before else 0.0,
        "dead_fraction": row["dead_fraction"],
        # the dead samples' share of the pass's own clipped loss: in [0, 1]
        "dead_loss_share": row["dead_loss_clipped"] / row["full_loss_clipped"] if row["full_loss_clipped"] > 0 else 0.0,
        # what the rule compares: their loss over the epoch's mean loss (above 1 when the loss fell
        # within the epoch: the pass runs at its end)
        "dead_loss_over_epoch_loss": row["dead_loss_clipped"] / loss if loss > 0 else math.nan,
    }
    clipped = loss_is_clipped(history) if loss_clipped is None else loss_clipped
    numbers["loss_is_clipped"] = (
        clipped is not False
    )  # a run whose passes never tell the forms apart has no dead samples
    numbers["fits"] = (
        numbers["dead_fraction"] >= DEAD_FRACTION
        and numbers["dead_fraction"] > numbers["dead_fraction_before"]
        and numbers["dead_loss_over_epoch_loss"] >= DEAD_SHARE
        and numbers["loss_is_clipped"]
    )
    return numbers


def collapse_signals(history: list[dict], onset: int, loss_clipped: bool | None = None) -> dict | None:
    """The collapse's numbers after an onset, with 'fits'; None without majority_prediction_fraction."""
    after = _accounted_after(history, onset, "majority_prediction_fraction")
    if not after:
        return None
    share = max(row["majority_prediction_fraction"] for row in after)
    return {"majority_prediction_fraction": share, "fits": share >= COLLAPSE_SHARE}


SIGNALS = (("collapse", collapse_signals), ("dead_zone", dead_zone_signals), ("adam_step", adam_signals))
NEEDS = {  # mechanism -> (the column its signals need, where that column comes from)
    "collapse": ("majority_prediction_fraction", "SpikeMonitor's whole-sample pass"),
    "dead_zone": ("dead_fraction", "the whole-set dead-zone accounting"),
    "adam_step": ("v_sqrt_median", "an Adam-family optimizer"),
}


def missing_signals(history: list[dict]) -> tuple[str, ...]:
    """The mechanisms this history cannot show, each with the column it lacks."""
    return tuple(
        f"{MECHANISMS[name].split(' (')[0]} (no {column}: {source})"
        for name, (column, source) in NEEDS.items()
        if not any(math.isfinite(float(row.get(column, math.nan))) for row in history)
    )


def _episode_jump(losses: list[float], onset: int, end: int, lowest: float) -> float | None:
    """The highest finite loss from the onset up to the next onset, over the lowest loss before it."""
    peak = _finite(losses[onset - 1 : end - 1])
    return max(peak) / lowest if peak and lowest > 0 and math.isfinite(lowest) else None


def diagnose(
    history: list[dict],
    rule: DivergenceParams = DEFAULT_DIVERGENCE,
    plateau: PlateauParams = DEFAULT_PLATEAU,
    loss_clipped: bool | None = None,
    window: int | None = None,
) -> Diagnosis:
    """The verdict per spike of a history (rows with at least `loss`, epochs in order from 1).
    loss_clipped: whether the loss trained on clips probabilities (Keras 2's form), where the
    caller knows it; None reads it off the whole-set passes (loss_is_clipped). window: the doctor's
    spike rule with this window (RobustSpikeWatch; SpikeMonitor and the command pass LEVEL_WINDOW);
    None (the default, the study's checks): the lab's divergence rule, from the lowest loss so far."""
    if loss_clipped is None:
        loss_clipped = loss_is_clipped(history)
    losses = _column(history, "loss")
    skipped = missing_signals(history)
    if broken_from_start(losses)["broken_from_start"]:
        numbers = {"first_loss": losses[0] if losses else math.nan, "final_loss": losses[-1] if losses else math.nan}
        return Diagnosis([Verdict(1, "broken_from_start", numbers)], len(history), skipped)
    verdicts = []
    found = onsets(losses, rule, window)
    ends = [onset for onset, _ in found[1:]] + [len(losses) + 1]
    for (onset, lowest), end in zip(found, ends):
        measured = {name: signals(history, onset, loss_clipped) for name, signals in SIGNALS}
        fitting = [name for name, numbers in measured.items() if numbers and numbers.pop("fits")]
        numbers = {f"{name}.{key}": value for name, found in measured.items() if found for key, value in found.items()}
        numbers["loss"], numbers["lowest_before"] = losses[onset - 1], lowest
        verdicts.append(
            Verdict(
                onset,
                fitting[0] if fitting else "unexplained",
                numbers,
                _episode_jump(losses, onset, end, lowest),
                held_epochs(losses, onset, plateau.ratio * lowest) >= plateau.min_epochs,
                tuple(fitting[1:]),
            )
        )
    return Diagnosis(verdicts, len(history), skipped)


def _number(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _numbers(verdict: Verdict) -> str:
    """The numbers of the mechanism named (and of those also present); all of them when unexplained."""
    shown = {verdict.mechanism, *verdict.also}
    picked = {
        key: value
        for key, value in verdict.numbers.items()
        if verdict.mechanism in ("unexplained", "broken_from_start") or key.split(".")[0] in shown
    }
    return ", ".join(f"{key} {_number(value)}" for key, value in picked.items() if key not in ("loss", "lowest_before"))


def describe(diagnosis: Diagnosis) -> str:
    """The diagnosis in a few lines: one per spike, then the fix once per mechanism named."""
    if not diagnosis.verdicts:
        return f"spike doctor: no spike in {diagnosis.epochs} epochs (the divergence rule never fired)"
    lines = [f"spike doctor: {len(diagnosis.verdicts)} finding(s) in {diagnosis.epochs} epochs"]
    for verdict in diagnosis.verdicts:
        if verdict.mechanism == "broken_from_start":
            head = "never learned from epoch 1"
        else:
            size = f" {verdict.jump:.3g}x the lowest loss before it" if verdict.jump else ""
            head = f"spike at epoch {verdict.epoch}:{size}, {'stayed up' if verdict.stayed_up else 'recovered'}"
        also = f" (also: {', '.join(MECHANISMS[name].split(' (')[0] for name in verdict.also)})" if verdict.also else ""
        lines.append(f"- {head}: {MECHANISMS[verdict.mechanism]}{also}")
        lines.append(f"    {_numbers(verdict)}")
    named = Counter(verdict.mechanism for verdict in diagnosis.verdicts)
    for mechanism, count in named.items():
        lines.append(f"fix for {MECHANISMS[mechanism].split(' (')[0]} ({count}): {FIXES[mechanism][0]}")
        lines.append(f"    evidence: {FIXES[mechanism][1]}")
    if diagnosis.skipped:
        lines.append("not judged (the history lacks them): " + "; ".join(diagnosis.skipped))
    return "\n".join(lines)


def _headline(verdict: Verdict) -> str:
    said = [
        text.format(verdict.numbers[key])
        for key, text in HEADLINE.get(verdict.mechanism, ())
        if isinstance(verdict.numbers.get(key), float) and math.isfinite(verdict.numbers[key])
    ]
    return ", ".join(said) or "no signal of a mechanism the lab has measured"


def summary(diagnosis: Diagnosis, details: str = "monitor.details") -> str:
    """The verdict in at most five short lines: what happened, which mechanism, its numbers, the fix
    and how sure the lab is of it (for the mechanism named most); every number in describe()."""
    if not diagnosis.verdicts:
        return f"spike doctor: no spike in {diagnosis.epochs} epochs"
    named = Counter(verdict.mechanism for verdict in diagnosis.verdicts)
    main = named.most_common(1)[0][0]
    first = next(verdict for verdict in diagnosis.verdicts if verdict.mechanism == main)
    if main == "broken_from_start":
        head = f"spike doctor: the run never learned ({diagnosis.epochs} epochs)"
    else:
        epochs = ", ".join(str(verdict.epoch) for verdict in diagnosis.verdicts[:4])
        more = "..." if len(diagnosis.verdicts) > 4 else ""
        size = f", {first.jump:.3g}x its level before" if first.jump else ""
        ending = "stayed up" if first.stayed_up else "recovered"
        count = len(diagnosis.verdicts)
        head = f"spike doctor: {count} spike{'s' if count > 1 else ''} in {diagnosis.epochs} epochs (at {epochs}{more}); epoch {first.epoch}{size}, {ending}"
    others = ", ".join(f"{MECHANISMS[name].split(' (')[0]} {n}" for name, n in named.items() if name != main)
    mechanism = MECHANISMS[main].split(" (")[0] + (
        f" ({named[main]} of {len(diagnosis.verdicts)}; also {others})" if others else ""
    )
    fix, sure = SHORT[main]
    return "\n".join(
        [
            head,
            f"  cause: {mechanism}",
            f"  numbers: {_headline(first)}",
            f"  fix: {fix}",
            f"  how sure: {sure} (all numbers: {details})",
        ]
    )
