"""The remedy atlas's analysis (studies/remedies/atlas.py), on rows made here with known answers."""

from __future__ import annotations

import csv
import math

import pytest

from studies.remedies import atlas
from study.report import write_histories


def test_newcombe_interval_reproduces_newcombes_worked_example():
    # Newcombe (1998), Statistics in Medicine 17:873, method 10: 56/70 - 48/80 = 0.2, [0.0524, 0.3339]
    low, high = atlas.newcombe(56, 70, 48, 80)
    assert (round(low, 4), round(high, 4)) == (0.0524, 0.3339)


def spiking(seed: int, epochs: int = 40, jump: float = 100.0) -> list[dict]:
    """A loss that falls, jumps `jump` x its lowest at epoch 20 (a spike at the pre-registered 10x
    when jump >= 10), then recovers; the common scale measured every 10 epochs."""
    rows = []
    for epoch in range(1, epochs + 1):
        loss = 0.5 * 0.8**epoch * (1 + 0.01 * seed)
        if epoch == 20:
            loss = jump * 0.5 * 0.8**19 * (1 + 0.01 * seed)
        row = {"epoch": epoch, "loss": loss}
        if epoch % 10 == 0:
            row["full_loss_clipped"] = loss
        rows.append(row)
    return rows


def write_rows(folder, cells: dict[str, list[list[dict]]], lie: str | None = None) -> None:
    records, histories = [], {}
    for cell, runs in cells.items():
        for seed, history in enumerate(runs):
            name = f"remedies-{cell}-s{seed}"
            losses = [row["loss"] for row in history]
            spiked = atlas.divergence_epoch(losses, atlas.RULE) is not None
            records.append(
                {
                    "name": name,
                    "cell": cell,
                    "seed": seed,
                    "state": "success",
                    "diverged": (not spiked) if name == lie else spiked,
                    "plateaued": False,
                }
            )
            histories[name] = history
    with open(folder / "remedies_runs.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["name", "cell", "seed", "state", "diverged", "plateaued"])
        writer.writeheader()
        writer.writerows(records)
    write_histories(folder / "remedies_histories.csv.gz", histories)


def test_a_remedy_that_stops_the_spike_at_no_cost_is_a_fix_and_one_that_stops_training_is_not(tmp_path):
    seeds = range(12)
    cells = {
        "baseline": [spiking(seed) for seed in seeds],
        "cosine": [spiking(seed, jump=1.0) for seed in seeds],  # the same curve without its spike
        # no spike either, but it never trains: its lowest loss stays at the first epoch's
        "eps-1": [
            [
                {**row, "loss": 0.4, **({"full_loss_clipped": 0.4} if "full_loss_clipped" in row else {})}
                for row in spiking(seed)
            ]
            for seed in seeds
        ],
        "beta2-095": [spiking(seed) for seed in seeds],  # changes nothing
    }
    write_rows(tmp_path, cells)
    assert atlas.main(["--results", str(tmp_path)]) == 0
    with open(tmp_path / "atlas.csv", newline="") as handle:
        rows = {row["remedy"]: row for row in csv.DictReader(handle)}
    assert rows["cosine"]["verdict"] == "fix"
    assert rows["cosine"]["spiked"] == "0/12 vs 12/12"
    assert rows["eps-1"]["verdict"] == "prevents by not training"
    assert rows["beta2-095"]["verdict"] == "no detectable effect"
    # Holm over the three remedies of regime A: Fisher's p for 0/12 vs 12/12 is 2 / C(24, 12) = 7.4e-7
    # for cosine and eps-1 alike, the smallest of 3 p-values: times 3 (the second ties at the same value)
    assert float(rows["cosine"]["p (Holm)"]) == pytest.approx(3 * 2 / math.comb(24, 12), rel=0.02)
    assert rows["eps-1"]["p (Holm)"] == rows["cosine"]["p (Holm)"]
    text = (tmp_path / "atlas.md").read_text()
    assert "Not yet run" in text and "`plateau-baseline`" in text
    assert (tmp_path / "atlas.png").stat().st_size > 0 and (tmp_path / "atlas_doses.png").stat().st_size > 0


def test_the_rule_fires_at_exactly_its_ratio_and_the_atlas_refuses_rows_that_disagree(tmp_path):
    exactly = spiking(0, jump=10.0)  # 10x the lowest loss before it: counts (>=), as documented
    below = spiking(0, jump=9.99)
    run = atlas.Run("r", "baseline", 0, [row["loss"] for row in exactly], [], None, None)
    assert atlas.spiked(run)
    run.losses = [row["loss"] for row in below]
    assert not atlas.spiked(run)
    write_rows(tmp_path, {"baseline": [spiking(0)], "cosine": [spiking(0)]}, lie="remedies-cosine-s0")
    with pytest.raises(atlas.AtlasError, match="remedies-cosine-s0: diverged False in its row, True recomputed"):
        atlas.main(["--results", str(tmp_path)])


def test_epochs_to_the_reference_level_are_censored_at_the_run_end():
    run = atlas.Run("r", "c", 0, [1.0] * 30, [(10, 0.5), (20, 0.2), (30, 0.1)], None, None)
    assert atlas.epochs_to(run, 0.2) == (20, True)
    assert atlas.epochs_to(run, 0.01) == (30, False)
    assert math.isnan(atlas.lowest_common(atlas.Run("r", "c", 0, [1.0], [], None, None)))
