"""The seed's shape, searched for in every committed run: fell for long, shot up suddenly, stayed up.

    python -m studies.seed_shape.analysis     # -> studies/seed_shape/results/seed-shape_search.{md,csv}

The rule (docs/scaling.md#the-seeds-shape), on a run's training loss by epoch:
- the jump J: the first epoch the divergence rule flags (10x the lowest loss m of the epochs before it);
- sudden: the last epoch before J whose loss was within 2x of m is at most 3 epochs before J (the loss
  went from near its minimum to 10x it within 3 epochs);
- stays up: every epoch from J to the run's end has loss >= 5 m, and at least 20 epochs follow J
  (fewer: too short to tell, counted as not staying up).
A configuration shows the shape when at least 4 of 5 of its runs (80%) do. Per spiked run the climb is
also measured in steps (J minus that last epoch near m, times the configuration's steps per epoch): an
epoch of the seed's was 1,954 steps, of the lab's default 64, so a climb of the same length in steps
looks 30x more sudden in the seed's epochs.
"""

from __future__ import annotations

import argparse
import csv
import math
from dataclasses import dataclass
from pathlib import Path

from spikelab.divergence import SpikeWatch
from spikelab.optimizers import steps_per_epoch
from spikelab.params import DivergenceParams, read_yaml
from spikelab.plumbing.errors import run_entry_point
from study.population_members import cells_with_params
from study.report import read_histories, read_records
from study.sweep import STUDIES, load_sweep, results_of, run_prefix, study_results

RESULTS = study_results("seed_shape")
NEAR, WITHIN, STAY, AFTER = 2.0, 3, 5.0, 20
DIVERGENCE = DivergenceParams(ratio=10.0, min_rise=0.01)  # params.yaml's rule; each run is judged by its own
SHAPE_SHARE = 0.8


@dataclass
class Shape:
    jump_epoch: int | None
    climb_epochs: int | None
    sudden: bool
    stays_up: bool
    epochs_after: int

    @property
    def seed_shape(self) -> bool:
        return self.sudden and self.stays_up


def shape_of(losses: list[float], rule: DivergenceParams = DIVERGENCE) -> Shape:
    """The rule above on one run's losses (epoch 1 first); a non-finite loss counts as up."""
    watch = SpikeWatch(rule)
    for index, loss in enumerate(losses):
        lowest = watch.lowest
        if watch.observe(loss):
            near = [i for i in range(index) if math.isfinite(losses[i]) and losses[i] <= NEAR * lowest]
            climb = index - near[-1]
            after = losses[index:]
            stays = len(after) - 1 >= AFTER and all(not math.isfinite(x) or x >= STAY * lowest for x in after)
            return Shape(index + 1, climb, climb <= WITHIN, stays, len(after) - 1)
    return Shape(None, None, False, False, 0)


UNFINISHED = ("missing", "stopped", "queued", "running")


def sweeps(folder: Path = STUDIES) -> dict[str, Path]:
    """{prefix: sweep file} of every study's sweep (studies/<name>/sweep.yaml), in folder order."""
    found = {}
    for path in sorted(folder.glob("*/sweep.yaml")):
        sweep = read_yaml(path, "sweep")
        if isinstance(sweep, dict) and "cells" in sweep:
            found.setdefault(run_prefix(sweep, quick=False), path)
    return found


def cell_rows(prefix: str, sweep_path: Path, results: Path) -> list[dict]:
    """The shape rule on each cell of one study, from its committed rows and histories in `results`."""
    runs_csv, histories_csv = results / f"{prefix}_runs.csv", results / f"{prefix}_histories.csv.gz"
    if not runs_csv.is_file() or not histories_csv.is_file():
        return []
    records = read_records(runs_csv)
    if any(r["state"] in UNFINISHED for r in records):
        return []  # a study still under way (the remedy atlas) is searched once all its runs are in
    records = [r for r in records if r["state"] == "success"]
    histories = read_histories(histories_csv)
    rows = []
    for cell, _, params in cells_with_params(load_sweep(sweep_path)):
        done = [r for r in records if r["cell"] == cell.name and histories.get(r["name"])]
        if not done:
            continue
        steps = steps_per_epoch(params)
        shapes = [shape_of([row["loss"] for row in histories[r["name"]]], params.divergence) for r in done]
        climbs = sorted(s.climb_epochs for s in shapes if s.climb_epochs is not None)
        count = sum(s.seed_shape for s in shapes)
        rows.append(
            {
                "study": prefix,
                "cell": cell.name,
                "overrides": " ".join(f"{k}={v}" for k, v in cell.overrides.items()) or "(params.yaml)",
                "optimizer": params.optimizer.name + (" amsgrad" if params.optimizer.amsgrad else ""),
                "steps_per_epoch": steps,
                "runs": len(shapes),
                "spiked": sum(s.jump_epoch is not None for s in shapes),
                "sudden": sum(s.sudden for s in shapes),
                "stays_up": sum(s.stays_up for s in shapes),
                "seed_shape": count,
                "median_climb_epochs": climbs[len(climbs) // 2] if climbs else None,
                "median_climb_steps": climbs[len(climbs) // 2] * steps if climbs else None,
                "shows_the_shape": count >= SHAPE_SHARE * len(shapes),
            }
        )
    return rows


def write_search(results: Path = RESULTS, folder: Path = STUDIES) -> list[dict]:
    """seed-shape_search.{csv,md} in `results`: every study's cells under `folder`, each read from its own results."""
    rows = [row for prefix, path in sweeps(folder).items() for row in cell_rows(prefix, path, results_of(path))]
    with open(results / "seed-shape_search.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "# The seed's shape in every committed run",
        "",
        "Generated by `python -m studies.seed_shape.analysis` from each study's committed _runs.csv and _histories.csv.gz",
        "(a study with runs still missing or stopped is left out until all its runs are in).",
        f"Rule (docs/scaling.md#the-seeds-shape): the first epoch at {DIVERGENCE.ratio:g}x the lowest loss before it, reached",
        f"within {WITHIN} epochs of the last epoch within {NEAR:g}x of that lowest (sudden), then >= {STAY:g}x it",
        f"to the end for at least {AFTER} epochs (stays up). A configuration shows the shape when >= 80% of its",
        "runs do. Climb: epochs (and steps) from the last epoch near the minimum to the jump, median of the",
        "spiked runs.",
        "",
        "| study | cell | overrides | steps/epoch | runs | spiked | sudden | stayed up | both (the shape) | climb, epochs (steps) | shows it |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        climb = f"{row['median_climb_epochs']} ({row['median_climb_steps']:,})" if row["median_climb_epochs"] else "-"
        lines.append(
            f"| {row['study']} | {row['cell']} | {row['overrides']} | {row['steps_per_epoch']} | {row['runs']} "
            f"| {row['spiked']} | {row['sudden']} | {row['stays_up']} | {row['seed_shape']} | {climb} "
            f"| {'yes' if row['shows_the_shape'] else 'no'} |"
        )
    total = sum(row["runs"] for row in rows)
    shaped = sum(row["seed_shape"] for row in rows)
    lines += [
        "",
        f"{len(rows)} configurations, {total} runs: {shaped} runs show the shape; "
        f"{sum(row['shows_the_shape'] for row in rows)} configurations do.",
    ]
    (results / "seed-shape_search.md").write_text("\n".join(lines) + "\n")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.seed_shape.analysis", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the search table goes")
    parser.add_argument("--studies", type=Path, default=STUDIES, help="the folder whose studies are searched")
    args = parser.parse_args(argv)
    write_search(args.results, args.studies)
    print((args.results / "seed-shape_search.md").read_text())
    return 0


if __name__ == "__main__":
    run_entry_point(main)
