"""The spike doctor on networks this project did not write (issue 26): drive each into a spike,
diagnose it, apply the fix the diagnosis recommends, and count spikes over seeds.

    python -m studies.doctor.foreign_spikes search --arch lstm --learning-rates 0.003 0.01 0.03 --seeds 0 1
    python -m studies.doctor.foreign_spikes prove --seeds 0 1 2 3 4 [--arch lstm ...]  # -> results/foreign_spikes.md
    python -m studies.doctor.foreign_spikes table     # foreign_spikes.md again from the committed foreign_spikes.csv

`prove` trains each architecture's spiking configuration (study/architectures.py's CONFIGURATIONS) once per seed with
SpikeMonitor watching, takes the mechanism the diagnosis names most often over those seeds, and
trains the same seeds again with that mechanism's fix (FIX_FOR); spike rates with 95% Wilson
intervals and Fisher's exact test (study/stats.py). Networks and data: study/architectures.py.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from study.architectures import ARCHITECTURES, CONFIGURATIONS, Configuration, build, digits, inputs_for
from study.stats import fisher_exact, wilson_interval
from study.sweep import study_results
from study.tables import markdown_table, write_csv, write_text

RESULTS = study_results("doctor")


def fix_for(mechanism: str, configuration: Configuration) -> Configuration | None:
    """The configuration with the fix the diagnosis recommends for `mechanism` (None: no fix to try)."""
    if mechanism == "adam_step":
        return replace(configuration, amsgrad=True)
    if mechanism in ("collapse", "broken_from_start"):
        return replace(configuration, learning_rate=configuration.learning_rate / 10)
    return None  # the dead zone's fix is the unclipped loss, which these networks already use


def train_once(name: str, configuration: Configuration, seed: int, monitor_options: dict | None = None) -> dict:
    """One training with SpikeMonitor; the diagnosis's findings and the seconds it took."""
    import keras

    from spikelab.monitor import SpikeMonitor

    keras.utils.set_random_seed(seed)
    images, labels = digits(configuration.samples, seed)
    x = inputs_for(name, images)
    model = build(name)
    model.compile(
        optimizer=keras.optimizers.Adam(
            configuration.learning_rate, beta_2=configuration.beta_2, amsgrad=configuration.amsgrad
        ),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    monitor = SpikeMonitor(x, labels, report=False, snapshot_every=0, **(monitor_options or {"cheap": True}))
    started = time.perf_counter()
    model.fit(
        x, labels, batch_size=configuration.batch_size, epochs=configuration.epochs, callbacks=[monitor], verbose=0
    )
    seconds = time.perf_counter() - started
    verdicts = [v for v in monitor.diagnosis.verdicts if v.mechanism != "broken_from_start"]
    return {
        "arch": name,
        "seed": seed,
        "spiked": bool(verdicts),
        "onsets": [v.epoch for v in verdicts],
        "mechanisms": [v.mechanism for v in monitor.diagnosis.verdicts],
        "jump": max((v.jump or 0 for v in verdicts), default=None),
        "min_loss": min(row["loss"] for row in monitor.history),
        "final_loss": monitor.history[-1]["loss"],
        "seconds": seconds,
        "diagnosis": monitor.diagnosis,
    }


def rate(runs: list[dict]) -> str:
    spiked = sum(run["spiked"] for run in runs)
    low, high = wilson_interval(spiked, len(runs))
    return f"{spiked}/{len(runs)} = {spiked / len(runs):.2f} [{low:.2f}, {high:.2f}]"


def prove(names: list[str], seeds: list[int]) -> list[dict]:
    rows = []
    for name in names:
        configuration = CONFIGURATIONS[name]
        before = [train_once(name, configuration, seed) for seed in seeds]
        for run in before:
            print(
                f"{name} seed {run['seed']}: spiked {run['spiked']} at {run['onsets']} {run['mechanisms']}", flush=True
            )
        named = Counter(m for run in before for m in run["mechanisms"])
        mechanism = named.most_common(1)[0][0] if named else "none"
        fixed = fix_for(mechanism, configuration)
        after = [train_once(name, fixed, seed) for seed in seeds] if fixed else []
        for run in after:
            print(f"{name} fixed seed {run['seed']}: spiked {run['spiked']} at {run['onsets']}", flush=True)
        spiked_before, spiked_after = sum(r["spiked"] for r in before), sum(r["spiked"] for r in after)
        rows.append(
            {
                "architecture": name,
                "configuration": f"Adam lr {configuration.learning_rate:g}, beta_2 {configuration.beta_2:g}, "
                f"{configuration.epochs} epochs, "
                f"{configuration.samples} digits, batch {configuration.batch_size}",
                "spiked": rate(before),
                "diagnosis (spikes)": ", ".join(f"{m} {n}" for m, n in named.most_common()) or "—",
                "fix tried": _fix_text(configuration, fixed),
                "spiked with the fix": rate(after) if after else "—",
                "Fisher p": f"{fisher_exact(spiked_before, len(before), spiked_after, len(after)):.2g}"
                if after
                else "—",
                "median s per run": f"{sorted(r['seconds'] for r in before + after)[len(before + after) // 2]:.0f}",
            }
        )
    return rows


def _fix_text(configuration: Configuration, fixed: Configuration | None) -> str:
    if fixed is None:
        return "none recommended"
    if fixed.amsgrad != configuration.amsgrad:
        return "AMSGrad"
    return f"lr {fixed.learning_rate:g}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m studies.doctor.foreign_spikes", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("mode", choices=("search", "prove", "table"))
    parser.add_argument("--arch", nargs="+", choices=ARCHITECTURES, default=list(ARCHITECTURES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--learning-rates", nargs="+", type=float, default=[0.003, 0.01, 0.03])
    parser.add_argument("--epochs", type=int, help="search: override the configuration's epochs")
    parser.add_argument("--beta-2", type=float, help="search: override the configuration's Adam beta_2")
    args = parser.parse_args(argv)
    if args.mode == "search":
        for name in args.arch:
            for learning_rate in args.learning_rates:
                configuration = replace(CONFIGURATIONS[name], learning_rate=learning_rate)
                if args.epochs:
                    configuration = replace(configuration, epochs=args.epochs)
                if args.beta_2:
                    configuration = replace(configuration, beta_2=args.beta_2)
                for seed in args.seeds:
                    run = train_once(name, configuration, seed)
                    print(
                        f"{name} lr {learning_rate:g} seed {seed}: spiked {run['spiked']} at {run['onsets']} "
                        f"{run['mechanisms']} jump {run['jump']} min {run['min_loss']:.3g} final {run['final_loss']:.3g} "
                        f"{run['seconds']:.0f}s",
                        flush=True,
                    )
        return 0
    table = RESULTS / "foreign_spikes.csv"
    if args.mode == "table":
        print(write_table(read_rows(table)))
        return 0
    rows = prove(args.arch, args.seeds)
    kept = [row for row in read_rows(table) if row["architecture"] not in args.arch] if table.exists() else []
    print(write_table(kept + rows))
    return 0


def write_table(rows: list[dict]) -> str:
    """foreign_spikes.csv and .md from the rows of every architecture proven so far."""
    rows = sorted(rows, key=lambda row: ARCHITECTURES.index(row["architecture"]))
    columns = list(rows[0])
    write_csv(RESULTS / "foreign_spikes.csv", rows, columns)
    table = markdown_table(rows, [(key, key) for key in columns])
    write_text(
        RESULTS / "foreign_spikes.md",
        "# The spike doctor on networks this project did not write\n\n"
        "`python -m studies.doctor.foreign_spikes prove --arch <name> --seeds ...` per architecture (rows in "
        "foreign_spikes.csv); networks, data and spiking configurations in study/architectures.py. A spike: the divergence rule fired (SpikeMonitor's default rule). "
        "The fix is the one the diagnosis recommends for the mechanism it named most often.\n\n" + table,
    )
    return table


def read_rows(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


if __name__ == "__main__":
    from spikelab.plumbing.errors import run_entry_point

    run_entry_point(main)
