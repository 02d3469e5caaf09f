"""Counterfactual replay: resume a spiking run shortly before its spike, change one thing, see if it spikes.

    python -m study.replay [--exp NAME] [--epoch K] [--jobs 2]    # make replay

The baseline is the workspace's last `dvc repro` (params.yaml, metrics/, models/snapshots/), or the
experiment --exp NAME (its snapshot is read from the DVC cache with dvc.api). The snapshot at the
latest epoch k <= divergence_epoch - replay.min_gap (the sweep file's) holds the weights AND the
optimizer state (Adam's m, v, step); it is copied to study/replays/<label>-e<k>/ with a history.csv
of the original's rows 1..k beside it, which a resume reads (DVC deletes models/ before train re-runs) and each replay is a normal DVC experiment with
`-S train.resume_from=<absolute path> -S train.resume_epoch=k` plus one cell's overrides. The path
is absolute because queued experiments run in a copy of the repo without git-ignored files; the
file stays on this machine. Epoch e's batch order depends only on (train.seed, e), so the replay
sees the batches the original saw: "unchanged" must reproduce the original curve, and the table
says how closely it did.

Whether a replay "spiked again" is judged on the epochs after the resume only, by the same
divergence rule: a replay that switches the loss (log_cosh) has losses on another scale than the
rows before the resume, which come from the snapshot.
Writes <name>.md, .csv and .png (--name, default `replay`) into --results (default: results/ beside
the sweep file, studies/sweep/results for the default sweep).
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

from spikelab.divergence import curve_summary, divergence_epoch, jump_ratio, plateau_metrics
from spikelab.history import parse_history_csv, write_history_csv
from spikelab.params import DivergenceParams, PlateauParams
from spikelab.plumbing.errors import UserError, run_entry_point
from spikelab.snapshots import HISTORY
from study.dvc_calls import experiments_by_name, history_of, history_text, queue_and_wait, read_output
from study.figures import plot_replay
from study.sweep import (
    SWEEP_FILE,
    SweepError,
    changed_params,
    expand,
    format_value,
    load_defaults,
    load_sweep,
    results_of,
)
from study.tables import markdown_table, write_csv, write_text

REPLAYS = Path("study/replays")


class ReplayError(UserError, ValueError):
    """A replay that cannot start: no such experiment, no spike, no snapshot before it."""


NOT_CARRIED = ("train.resume_from", "train.resume_epoch")
COLUMNS = (
    ("intervention", "intervention"),
    ("overrides", "overrides"),
    ("state", "state"),
    ("spiked", "spiked again?"),
    ("spike_epoch", "spike epoch"),
    ("ratio", "jump (peak from spike on / min before)"),
    ("plateaued", "stays up? (plateau rule, after the resume)"),
    ("recovered", "recovers? (final loss < plateau ratio x the original's lowest before its spike)"),
    ("final_loss", "final loss"),
    ("final_dead_fraction", "dead fraction at the end"),
    ("val_accuracy", "val accuracy"),
    ("max_loss_difference", "max abs(Δloss) vs original"),
)


def pick_snapshot_epoch(divergence_epoch: int, snapshot_every: int, min_gap: int) -> int:
    """The latest snapshot epoch k (a multiple of snapshot_every) with k <= divergence_epoch - min_gap."""
    if snapshot_every < 1:
        raise ReplayError("no snapshot: the baseline ran with train.snapshot_every = 0")
    k = (divergence_epoch - min_gap) // snapshot_every * snapshot_every
    if k < snapshot_every:
        raise ReplayError(
            f"no snapshot at least {min_gap} epochs before the divergence epoch {divergence_epoch} "
            f"(snapshots every {snapshot_every} epochs); pass --epoch or lower replay.min_gap"
        )
    return k


def recovery_bar(history: list[dict], spike_epoch: int | None, plateau: PlateauParams) -> float:
    """The loss a continuation must end below to count as recovered: the plateau rule's bar, plateau.ratio
    x the original's lowest loss before its spike (before its end, when it did not spike)."""
    before = [row["loss"] for row in history if spike_epoch is None or row["epoch"] < spike_epoch]
    return plateau.ratio * min((loss for loss in before if math.isfinite(loss)), default=math.inf)


def continuation(
    history: list[dict], resume_epoch: int, rule: DivergenceParams, plateau: PlateauParams, bar: float = math.nan
) -> dict:
    """The divergence and plateau rules and the curve summary over the epochs after resume_epoch only;
    recovered: the final loss is below `bar` (recovery_bar). The plateau rule alone cannot say it: a
    resume from inside a plateau starts high, so "stays up" measures from that new start."""
    losses = [row["loss"] for row in history if row["epoch"] > resume_epoch]
    first = divergence_epoch(losses, rule)
    summary = curve_summary(losses)
    final = summary["final"]
    return {
        "recovered": None if math.isnan(bar) or final is None else bool(final < bar),
        "plateaued": plateau_metrics(losses, rule, plateau)["plateaued"],
        "spiked": first is not None,
        "spike_epoch": None if first is None else first + resume_epoch,
        "ratio": jump_ratio(losses, first),
        "final_loss": summary["final"],
        "min_loss": summary["min"],
        "nan": any(not math.isfinite(loss) for loss in losses),
    }


def max_difference(history: list[dict], original: list[dict], resume_epoch: int) -> float | None:
    before = {row["epoch"]: row["loss"] for row in original}
    gaps = [
        abs(row["loss"] - before[row["epoch"]])
        for row in history
        if row["epoch"] > resume_epoch and row["epoch"] in before
    ]
    return max(gaps) if gaps else None


def replay_runs(
    label: str, epoch: int, snapshot: Path, carried: dict, variants: dict
) -> list[tuple[str, str, list[str]]]:
    """(experiment name, variant, dvc -S args) per variant; carried: the baseline's params that differ from params.yaml."""
    common = {**carried, "train.resume_from": str(snapshot.resolve()), "train.resume_epoch": epoch}
    runs = []
    for variant, overrides in variants.items():
        args = [arg for key, value in {**common, **overrides}.items() for arg in ("-S", f"{key}={format_value(value)}")]
        runs.append((f"replay-{label}-e{epoch}-{variant}", variant, args))
    return runs


def baseline_from_workspace(defaults: dict) -> dict:
    train = json.loads(Path("metrics/train.json").read_text())
    text = Path("metrics/history.csv").read_text()
    return {
        "label": "workspace",
        "params": defaults,
        "train": train,
        "history": parse_history_csv(text),
        "history_text": text,
        "snapshot": lambda name: Path("models/snapshots", name).read_bytes(),
    }


def baseline_from_experiment(name: str) -> dict:
    found = experiments_by_name().get(name)
    if found is None or found["state"] != "success":
        raise ReplayError(f"no finished experiment named {name!r} (see `dvc exp show`)")

    def snapshot(file_name: str) -> bytes:
        return read_output(found["rev"], f"models/snapshots/{file_name}")

    return {
        "label": name,
        "params": found["params"],
        "train": found["metrics"]["metrics/train.json"],
        "history": history_of(found["rev"]),
        "history_text": history_text(found["rev"]),
        "snapshot": snapshot,
    }


def write_replay(
    rows: list[dict], curves: dict[str, list[dict]], epoch: int, label: str, results: Path, name: str = "replay"
) -> None:
    results.mkdir(parents=True, exist_ok=True)
    write_csv(results / f"{name}.csv", rows, [key for key, _ in COLUMNS])
    text = (
        f"# Counterfactual replay of `{label}` from its epoch-{epoch} snapshot\n\n"
        "Each row continues the same run from the same weights and optimizer state on the same batch order, "
        'with one thing changed. "spiked again?" applies the divergence rule to the epochs after the resume only. '
        '"recovers?": the run ends below the plateau bar of the original (plateau ratio x its lowest loss before '
        'its spike). "unchanged" must match the original (last column).\n\n'
        + markdown_table(rows, COLUMNS)
        + f"\n![{name}]({name}.png)\n"
    )
    write_text(results / f"{name}.md", text)
    plot_replay(curves, epoch, label, results / f"{name}.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.replay", description=__doc__.split("\n\n")[0])
    parser.add_argument("--exp", help="replay this DVC experiment (default: the workspace's last run)")
    parser.add_argument("--epoch", type=int, help="resume from this snapshot epoch (default: picked from the spike)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--rerun", action="store_true", help="re-run replays that already succeeded")
    parser.add_argument(
        "--report-only", action="store_true", help="queue nothing: tabulate the replays that exist (on any commit)"
    )
    parser.add_argument("--sweep", type=Path, default=SWEEP_FILE)
    parser.add_argument("--results", type=Path, help="where the table goes (default: results/ beside the sweep)")
    parser.add_argument("--name", default="replay", help="file name of the results (e.g. replay_plateau)")
    args = parser.parse_args(argv)
    args.results = args.results or results_of(args.sweep)
    try:
        sweep = load_sweep(args.sweep)
        defaults = load_defaults()
        cells = {cell.name: cell.overrides for cell in expand(sweep, defaults)[0]}
        settings = sweep.get("replay") or {}
        unknown = [name for name in settings.get("cells", []) if name not in cells]
        if unknown or "min_gap" not in settings:
            raise SweepError(f"{args.sweep}: replay needs min_gap and cells from {sorted(cells)}; unknown: {unknown}")
        baseline = baseline_from_experiment(args.exp) if args.exp else baseline_from_workspace(defaults)
        params = baseline["params"]
        if params.get("train.resume_from") is not None:
            raise ReplayError(f"{baseline['label']} is itself a resumed run; replay the original")
        epoch = args.epoch
        if epoch is None:
            spike = baseline["train"].get("divergence_epoch")
            if spike is None:
                raise ReplayError(
                    f"{baseline['label']} did not diverge (metrics/train.json); pass --epoch to replay anyway"
                )
            epoch = pick_snapshot_epoch(spike, params["train.snapshot_every"], settings["min_gap"])
    except FileNotFoundError as error:  # the workspace has not run `dvc repro` yet
        raise ReplayError(f"{error.filename}: missing; run `dvc repro` first, or pass --exp NAME") from None
    label = re.sub(r"[^a-z0-9-]+", "-", baseline["label"].lower())
    # what a resume needs, in one folder: the snapshot (state) and history.csv beside it (the
    # original's rows up to the snapshot; empty cells stay empty, as the original wrote them)
    folder = REPLAYS / f"{label}-e{epoch}"
    snapshot = folder / f"epoch_{epoch:05d}.npz"
    folder.mkdir(parents=True, exist_ok=True)
    snapshot.write_bytes(baseline["snapshot"](snapshot.name))
    rows = parse_history_csv(baseline["history_text"], skip_empty=True)
    write_history_csv(folder / HISTORY, [row for row in rows if row["epoch"] <= epoch])
    print(f"replay: {baseline['label']} resumed from epoch {epoch} ({snapshot})")
    carried = {key: value for key, value in changed_params(params, defaults).items() if key not in NOT_CARRIED}
    variants = {"unchanged": {}, **{name: cells[name] for name in settings.get("cells", [])}}
    runs = replay_runs(label, epoch, snapshot, carried, variants)
    if not args.report_only:
        queue_and_wait([(name, dvc_args) for name, _, dvc_args in runs], args.jobs, args.rerun)

    rule = DivergenceParams(ratio=params["divergence.ratio"], min_rise=params["divergence.min_rise"])
    # a baseline older than the plateau rule has no plateau keys: today's params.yaml gives them
    setting = {key: params.get(f"plateau.{key}", defaults[f"plateau.{key}"]) for key in ("ratio", "min_epochs")}
    plateau = PlateauParams(**setting)
    bar = recovery_bar(baseline["history"], baseline["train"].get("divergence_epoch"), plateau)
    experiments = experiments_by_name()
    rows = [
        {
            "intervention": "original",
            "overrides": "",
            "state": "success",
            **continuation(baseline["history"], epoch, rule, plateau, bar),
            "final_dead_fraction": baseline["train"].get("final_dead_fraction"),
            "val_accuracy": None,
        }
    ]
    curves = {"original": baseline["history"]}
    for name, variant, _ in runs:
        found = experiments.get(name) or {"state": "missing"}
        row = {
            "intervention": variant,
            "state": found["state"],
            "overrides": " ".join(f"{k}={format_value(v)}" for k, v in variants[variant].items()),
        }
        if found["state"] == "success":
            history = history_of(found["rev"])
            curves[variant] = history
            row.update(continuation(history, epoch, rule, plateau, bar))
            row["final_dead_fraction"] = found["metrics"].get("metrics/train.json", {}).get("final_dead_fraction")
            row["val_accuracy"] = (found["metrics"].get("metrics/evaluate.json", {}).get("last") or {}).get("accuracy")
            if variant == "unchanged":
                row["max_loss_difference"] = max_difference(history, baseline["history"], epoch)
        rows.append(row)
    shown = "the workspace run (params.yaml)" if baseline["label"] == "workspace" else f"experiment {baseline['label']}"
    write_replay(rows, curves, epoch, shown, args.results, args.name)
    print((args.results / f"{args.name}.md").read_text())
    return 0


if __name__ == "__main__":
    run_entry_point(main)
