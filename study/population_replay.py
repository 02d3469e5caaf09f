"""Counterfactual replays of one population member: study.replay's replays (the unchanged control and
the sweep's `replay` cells from a snapshot before the spike), each variant trained as a population
(`python -m study.population --replay RUN`, `make replay ENGINE=population`)."""

from __future__ import annotations

import json
from pathlib import Path

from spikelab.params import params_from_dict
from study.population_members import PopulationError, member_dir, population_of
from study.population_training import train_population
from study.sweep import expand, load_defaults


def unflatten(flat: dict) -> dict:
    raw: dict = {}
    for key, value in flat.items():
        section, name = key.split(".", 1)
        raw.setdefault(section, {})[name] = value
    return raw


def replay(args, sweep: dict, prefix: str) -> int:
    """Counterfactual replays of one population member, each variant a population of the original's
    size with the member at its slot: every original member resumed from its snapshot at the same
    epoch (a slot whose member has no such snapshot gets a copy of the replayed member's: a member's
    numbers do not depend on its neighbours). Same P, same slot: the unchanged control reproduces the
    original's losses bit for bit. Writes <results>/<name>.{md,csv,png} as study.replay does."""
    from spikelab.history import read_history_csv
    from spikelab.params import DivergenceParams, PlateauParams
    from study.replay import continuation, max_difference, pick_snapshot_epoch, recovery_bar, write_replay

    cells = {cell.name: cell.overrides for cell in expand(sweep, load_defaults())[0]}
    settings = sweep.get("replay") or {}
    unknown = [name for name in settings.get("cells", []) if name not in cells]
    if unknown or "min_gap" not in settings:
        raise PopulationError(f"{args.sweep}: replay needs min_gap and cells from {sorted(cells)}; unknown: {unknown}")
    facts, slot_names = population_of(prefix, args.replay, args.root)
    target = member_dir(prefix, args.replay, args.root)
    original = read_history_csv(target / "metrics" / "history.csv")
    train = json.loads((target / "metrics" / "train.json").read_text())
    flat = json.loads((target / "params.json").read_text())
    epoch = args.epoch
    if epoch is None:
        if train.get("divergence_epoch") is None:
            raise PopulationError(f"{args.replay} did not diverge; pass --epoch to replay anyway")
        epoch = pick_snapshot_epoch(train["divergence_epoch"], flat["train.snapshot_every"], settings["min_gap"])
    snapshot_name = f"epoch_{epoch:05d}.npz"

    def snapshot_of(name: str) -> Path:
        path = member_dir(prefix, name, args.root) / "models" / "snapshots" / snapshot_name
        return path if path.is_file() else target / "models" / "snapshots" / snapshot_name

    if not snapshot_of(args.replay).is_file():
        raise PopulationError(f"{args.replay} has no snapshot at epoch {epoch} ({snapshot_name})")
    variants = {"unchanged": {}, **{name: cells[name] for name in settings.get("cells", [])}}
    cache: dict = {}
    curves, rows = {"original": original}, []
    rule = DivergenceParams(ratio=flat["divergence.ratio"], min_rise=flat["divergence.min_rise"])
    plateau = PlateauParams(ratio=flat["plateau.ratio"], min_epochs=flat["plateau.min_epochs"])
    bar = recovery_bar(original, train.get("divergence_epoch"), plateau)
    rows.append(
        {
            "intervention": "original",
            "overrides": "",
            "state": "success",
            **continuation(original, epoch, rule, plateau, bar),
            "final_dead_fraction": train.get("final_dead_fraction"),
            "val_accuracy": None,
        }
    )
    replays_root = args.root / f"{prefix}-replay"
    for variant, overrides in variants.items():
        names, member_params, folders = [], [], []
        for slot, name in enumerate(slot_names):
            source = member_dir(prefix, name, args.root)
            member_flat = (
                json.loads((source / "params.json").read_text()) if (source / "params.json").is_file() else flat
            )
            member_flat = member_flat | dict(overrides)
            member_flat |= {"train.resume_from": str(snapshot_of(name).resolve()), "train.resume_epoch": epoch}
            lane = (
                f"{name}-e{epoch}-{variant}" if name != args.replay or slot == facts["slot"] else f"{name}-lane{slot}"
            )
            names.append(lane)
            member_params.append(params_from_dict(unflatten(member_flat)))
            folders.append(replays_root / lane)
        population = f"replay-{args.replay}-e{epoch}-{variant}"
        print(f"replay: population {population}: {len(names)} members resumed at epoch {epoch}", flush=True)
        train_population(population, names, member_params, folders, cache)
        replayed = folders[facts["slot"]]
        history = read_history_csv(replayed / "metrics" / "history.csv")
        curves[variant] = history
        replay_train = json.loads((replayed / "metrics" / "train.json").read_text())
        scores = json.loads((replayed / "metrics" / "evaluate.json").read_text())
        row = {
            "intervention": variant,
            "state": "success",
            "overrides": " ".join(f"{k}={v}" for k, v in overrides.items()),
            **continuation(history, epoch, rule, plateau, bar),
            "final_dead_fraction": replay_train.get("final_dead_fraction"),
            "val_accuracy": scores["last"]["accuracy"],
        }
        if variant == "unchanged":
            row["max_loss_difference"] = max_difference(history, original, epoch)
        rows.append(row)
    write_replay(rows, curves, epoch, f"population member {args.replay}", args.results, args.name)
    print((args.results / f"{args.name}.md").read_text())
    return 0
