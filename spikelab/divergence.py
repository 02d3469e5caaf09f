"""Divergence metrics of a loss curve, and the one rule that decides "diverged".

The rule (thresholds in params `divergence:`): epoch t diverges when its loss is not finite,
or when it is at least `ratio` times the lowest loss of the epochs before it AND exceeds
that lowest loss by at least `min_rise` (the absolute floor keeps noise at 1e-6 from counting).
The divergence guard applies the same rule online, epoch by epoch.

The plateau rule (params `plateau:`): a run plateaued when, from some epoch t that the divergence
rule flags, the loss stays >= plateau.ratio x (the lowest loss before t), or non-finite, for at
least plateau.min_epochs epochs in a row. The seed's loss "shot up and plateaued"; the lab's
default spikes and recovers within 5-15 epochs, which this rule tells apart.
The broken-from-start rule: a run broken from its first epoch (a learning rate so high that
epoch 1 already collapsed, or NaN at once) has no low point to spike from, so the divergence rule
reads it as "not diverged". `broken_from_start` is true when epoch 1's loss is not finite, or when
the run has at least 2 epochs and no later finite loss ever fell below (1 - MIN_FALL) x epoch 1's
loss (a run that never learned; it may have ended up far above its start). Reported beside
`diverged`, not folded into it: "learned, then blew up" and "never learned" are different failures.
Epochs are numbered from 1, as Keras prints them.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from spikelab.params import DivergenceParams, PlateauParams

# The fall that counts as learning, relative to epoch 1's loss. Epoch 1's loss is the mean over
# an epoch in which the model already learned, so a working run falls well below it by epoch 2-3
# (the tiny 3-epoch test runs fall ~5%); a collapsed run moves by noise around its level.
MIN_FALL = 0.02


def is_spike(loss: float, lowest_before: float, rule: DivergenceParams) -> bool:
    if not math.isfinite(loss):
        return True
    return loss >= rule.ratio * lowest_before and loss - lowest_before >= rule.min_rise


class SpikeWatch:
    """The divergence rule applied epoch by epoch, as the metrics, the guard and the progress line
    all apply it: `observe(loss)` says whether the epoch is flagged; `lowest` is the lowest loss of
    the epochs before it (a flagged epoch never lowers it)."""

    def __init__(self, rule: DivergenceParams, lowest: float = math.inf):
        self.rule, self.lowest = rule, lowest

    def observe(self, loss: float) -> bool:
        if is_spike(loss, self.lowest, self.rule):
            return True
        self.lowest = min(self.lowest, loss)
        return False


def divergence_epoch(losses: Sequence[float], rule: DivergenceParams) -> int | None:
    """The first epoch (1-based) the rule flags, or None."""
    watch = SpikeWatch(rule)
    return next((epoch for epoch, loss in enumerate(losses, start=1) if watch.observe(loss)), None)


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def curve_summary(losses: Sequence[float]) -> dict:
    """final, min (and its epoch), peak after the min (and its epoch), peak/min ratio."""
    finite = [(epoch, loss) for epoch, loss in enumerate(losses, start=1) if math.isfinite(loss)]
    if not finite:
        return {"final": None, "min": None, "min_epoch": None, "peak": None, "peak_epoch": None, "ratio": None}
    min_epoch, min_loss = min(finite, key=lambda pair: pair[1])
    peak_epoch, peak_loss = max((pair for pair in finite if pair[0] >= min_epoch), key=lambda pair: pair[1])
    return {
        "final": _finite_or_none(losses[-1]),
        "min": min_loss,
        "min_epoch": min_epoch,
        "peak": peak_loss,
        "peak_epoch": peak_epoch,
        "ratio": peak_loss / min_loss if min_loss > 0 else None,
    }


def jump_ratio(losses: Sequence[float], epoch: int | None) -> float | None:
    """Highest finite loss from the divergence epoch on / lowest loss before it.

    Unlike spike_ratio (peak after the run's overall minimum), this still shows the size of a
    spike that the run later recovered from and undercut.
    """
    if epoch is None:
        return None
    before = [loss for loss in losses[: epoch - 1] if math.isfinite(loss)]
    after = [loss for loss in losses[epoch - 1 :] if math.isfinite(loss)]
    if not before or not after or min(before) <= 0:
        return None
    return max(after) / min(before)


def broken_from_start(losses: Sequence[float]) -> dict:
    """broken_from_start (the rule above), first_loss, and final_to_first (final / epoch 1's loss)."""
    if not losses:
        return {"broken_from_start": False, "first_loss": None, "final_to_first": None}
    first = losses[0]
    if not math.isfinite(first):
        return {"broken_from_start": True, "first_loss": None, "final_to_first": None}
    later = [loss for loss in losses[1:] if math.isfinite(loss)]
    never_learned = len(losses) >= 2 and all(loss >= (1 - MIN_FALL) * first for loss in later)
    final = losses[-1]
    return {
        "broken_from_start": never_learned,
        "first_loss": float(first),
        "final_to_first": float(final / first) if math.isfinite(final) and first > 0 else None,
    }


def divergence_metrics(losses: Sequence[float], val_losses: Sequence[float], rule: DivergenceParams) -> dict:
    """The keys of metrics/train.json that describe the curves (non-finite values become null)."""
    train = curve_summary(losses)
    val = curve_summary(val_losses)
    epoch = divergence_epoch(losses, rule)
    return {
        "final_loss": train["final"],
        "min_loss": train["min"],
        "min_epoch": train["min_epoch"],
        "peak_loss": train["peak"],
        "peak_epoch": train["peak_epoch"],
        "spike_ratio": train["ratio"],
        "diverged": epoch is not None,
        "divergence_epoch": epoch,
        "jump_ratio": jump_ratio(losses, epoch),
        **broken_from_start(losses),
        "nan": any(not math.isfinite(loss) for loss in losses),
        "epochs_run": len(losses),
        "final_val_loss": val["final"],
        "min_val_loss": val["min"],
        "peak_val_loss": val["peak"],
        "val_spike_ratio": val["ratio"],
    }


def held_epochs(losses: Sequence[float], start: int, floor: float) -> int:
    """How many epochs in a row, from `start` (1-based) on, the loss stays at `floor` or above (or non-finite)."""
    length = 0
    for later in losses[start - 1 :]:
        if math.isfinite(later) and later < floor:
            break
        length += 1
    return length


def plateau_metrics(losses: Sequence[float], rule: DivergenceParams, plateau: PlateauParams) -> dict:
    """plateaued, plateau_start_epoch (the flagged epoch it starts at), plateau_epochs (how long it
    stays up from there), plateau_to_end (still up at the last epoch), plateau_level (median loss over it)."""
    watch = SpikeWatch(rule)
    for start, loss in enumerate(losses, start=1):
        if watch.observe(loss):
            length = held_epochs(losses, start, plateau.ratio * watch.lowest)
            if length >= plateau.min_epochs:
                held = [value for value in losses[start - 1 : start - 1 + length] if math.isfinite(value)]
                return {
                    "plateaued": True,
                    "plateau_start_epoch": start,
                    "plateau_epochs": length,
                    "plateau_to_end": start - 1 + length == len(losses),
                    "plateau_level": statistics.median(held) if held else None,
                }
    return {
        "plateaued": False,
        "plateau_start_epoch": None,
        "plateau_epochs": 0,
        "plateau_to_end": False,
        "plateau_level": None,
    }


def final_dead_zone(history: list[dict]) -> dict:
    """final_dead_fraction and final_dead_loss_share (the share of the loss the dead samples carry,
    clipped form) from the last epoch that has the whole-set accounting; null without one."""
    accounted = [row for row in history if math.isfinite(row.get("dead_fraction", math.nan))]
    if not accounted:
        return {"final_dead_fraction": None, "final_dead_loss_share": None}
    last = accounted[-1]
    total = last["full_loss_clipped"]
    return {
        "final_dead_fraction": last["dead_fraction"],
        "final_dead_loss_share": last["dead_loss_clipped"] / total if total > 0 else None,
    }


def train_metrics(
    history: list[dict],
    rule: DivergenceParams,
    guard_epochs: Sequence[int],
    best_epoch: int | None,
) -> dict:
    """metrics/train.json: the curves' divergence metrics, the dead zone at the end, the guard and the
    best epoch. What only reads the finished curve (the plateau rule) is rule_metrics', so changing
    such a rule re-judges the history instead of retraining."""
    losses = [row.get("loss", math.nan) for row in history]
    val_losses = [row.get("val_loss", math.nan) for row in history]
    return {
        **divergence_metrics(losses, val_losses, rule),
        **final_dead_zone(history),
        "guard_triggered": bool(guard_epochs),
        "guard_epoch": guard_epochs[0] if guard_epochs else None,
        "best_epoch": best_epoch,
    }


def rule_metrics(history: list[dict], rule: DivergenceParams, plateau: PlateauParams) -> dict:
    """metrics/rules.json: the rules read off a finished history (the rules stage's whole work)."""
    return plateau_metrics([row.get("loss", math.nan) for row in history], rule, plateau)


def describe_training(metrics: dict, history: list[dict], rule: DivergenceParams, plateau: PlateauParams) -> str:
    """The train stage's closing sentence, with the plateau rule applied as the rules stage will
    apply it: a run whose loss stays up is never called recovered."""
    return describe_run(metrics | rule_metrics(history, rule, plateau))


def describe_run(metrics: dict) -> str:
    """metrics/train.json in one sentence, for the end of the train stage's console output."""
    final = metrics.get("final_loss")
    ending = f"final loss {final:.3g}" if final is not None else "final loss not finite"
    if metrics.get("nan"):
        return f"blew up: the loss became NaN/inf at epoch {metrics['divergence_epoch']}"
    if metrics.get("broken_from_start"):
        return f"never learned: {ending}, {metrics.get('final_to_first') or 0:.3g}x the first epoch's"
    if metrics.get("plateaued"):
        return (
            f"spiked at epoch {metrics['divergence_epoch']} (jump {metrics['jump_ratio']:.0f}x) and stayed up: "
            f"plateau from epoch {metrics['plateau_start_epoch']} for {metrics['plateau_epochs']} epochs at "
            f"~{metrics['plateau_level']:.3g}; {ending}"
        )
    if metrics.get("diverged"):
        return f"spiked at epoch {metrics['divergence_epoch']} (jump {metrics['jump_ratio']:.0f}x), recovered; {ending}"
    return f"no spike; lowest loss {metrics['min_loss']:.3g} at epoch {metrics['min_epoch']}, {ending}"
