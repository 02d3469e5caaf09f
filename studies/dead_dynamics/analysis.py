"""The dead zone's dynamics, image by image: does the dead set only grow (a ratchet) or do images
leave it too (a balance)? Measured on the plateau configuration (studies/plateau/sweep.yaml).

    python -m studies.dead_dynamics.analysis run --seed 0   # one plateau run, its dead sets kept
    python -m studies.dead_dynamics.analysis report         # -> results/dead_dynamics.{md,csv,png}

`run` trains the plateau configuration (params.yaml with the plateau preset's overrides, at a
train seed) in this process, without DVC or MLflow, with the dead-zone accounting keeping which
training images are dead at each accounting epoch and their signed margin (wrong logit minus
right logit; dead = saturated past the Keras-2 clip and wrong). It writes
studies/dead_dynamics/results/dead_sets/plateau-s<seed>.npz: epochs, dead (accountings x images, bool), margin
(float32), label (0 solid, 1 broken), loss (per epoch). Its loss curve is the committed study run's
(`evidence` cell `plateau`, the same seed), which the report checks.

`report` follows every image between consecutive accountings: entered (live -> dead), left
(dead -> live) and stayed dead; per interval the revival rate (left / dead before) and the entry
rate (entered / live before); and, for the images that left, where they went (right, or still wrong
but no longer saturated) and how far inside the dead zone they sat before (their margin).
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

import numpy as np

from spikelab.figures import plt, save_figure
from spikelab.params import params_from_dict, read_yaml
from spikelab.plumbing.errors import UserError, run_entry_point
from study.report import late_change, read_histories
from study.stats import wilson_interval
from study.sweep import STUDIES, expand, load_defaults, load_sweep, study_results
from study.tables import markdown_table, write_csv, write_text

PLATEAU_SWEEP = STUDIES / "plateau" / "sweep.yaml"  # its first cell is the plateau configuration
# the committed evidence runs of the same configuration and seeds, whose curves each run is checked against
EVIDENCE_HISTORIES = study_results("evidence") / "evidence_histories.csv.gz"
MARGIN_EDGE = math.log((1 - 1e-7) / 1e-7)  # the margin where the smaller probability reaches the clip


def plateau_params(seed: int):
    """params.yaml with the plateau configuration's overrides (the plateau study's first cell)."""
    cells, _ = expand(load_sweep(PLATEAU_SWEEP), load_defaults())
    raw = read_yaml("params.yaml", "params")
    for name, value in {**cells[0].overrides, "train.seed": seed}.items():
        section, key = name.split(".")
        raw[section][key] = value
    return params_from_dict(raw)


def run(seed: int, out: Path) -> Path:
    from spikelab.data import generate, split
    from spikelab.model import resolve_data_format
    from spikelab.training import train

    params = plateau_params(seed)
    solid, broken, _ = generate(params.data)
    arrays = split(solid, broken, params.split)
    dead_sets: dict = {}
    result = train(params, arrays, resolve_data_format(params.model.data_format), None, dead_sets=dead_sets)
    epochs = sorted(dead_sets)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out,
        epochs=np.array(epochs),
        dead=np.stack([dead_sets[e][0] for e in epochs]),
        margin=np.stack([dead_sets[e][1] for e in epochs]),
        label=arrays["y_train"].argmax(axis=1).astype(np.int8),
        loss=np.array([row["loss"] for row in result.history]),
    )
    return out


# ---- the accounting, image by image (pure) ----------------------------------------------------------


def transitions(epochs, dead: np.ndarray, margin: np.ndarray, label: np.ndarray) -> list[dict]:
    """One row per interval between consecutive accountings."""
    rows = []
    for i in range(1, len(epochs)):
        before, after = dead[i - 1], dead[i]
        left, entered = before & ~after, ~before & after
        revived_right = left & (margin[i] < 0)
        rows.append(
            {
                "images": len(label),
                "from": int(epochs[i - 1]),
                "to": int(epochs[i]),
                "dead before": int(before.sum()),
                "entered": int(entered.sum()),
                "left": int(left.sum()),
                "stayed": int((before & after).sum()),
                "dead after": int(after.sum()),
                "revival rate": left.sum() / before.sum() if before.any() else None,
                "entry rate": entered.sum() / (~before).sum() if (~before).any() else None,
                "left: now right": int(revived_right.sum()),
                "left: broken (class 1)": int((left & (label == 1)).sum()),
                "dead: broken (class 1)": int((before & (label == 1)).sum()),
                "entered: broken (class 1)": int((entered & (label == 1)).sum()),
                "left: margin before (median)": float(np.median(margin[i - 1][left])) if left.any() else None,
                "stayed: margin before (median)": (
                    float(np.median(margin[i - 1][before & after])) if (before & after).any() else None
                ),
            }
        )
    return rows


def _median_of(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r[key] is not None]
    return statistics.median(values) if values else None


def summarize(name: str, rows: list[dict], loss) -> dict:
    """A run's totals over the intervals after its dead set first reached 1% of the images."""
    after = [
        r for r in rows if r["dead before"] >= 0.01 * (r["dead before"] + r["entered"] + 1e-9) and r["dead before"]
    ]
    entered, left = sum(r["entered"] for r in after), sum(r["left"] for r in after)
    return {
        "run": name,
        "intervals": len(after),
        "intervals where the dead set shrank": sum(1 for r in after if r["dead after"] < r["dead before"]),
        "entered": entered,
        "left": left,
        "left / entered": left / entered if entered else None,
        "median revival rate": statistics.median(r["revival rate"] for r in after) if after else None,
        "median entry rate": statistics.median(r["entry rate"] for r in after) if after else None,
        "left that became right": sum(r["left: now right"] for r in after) / left if left else None,
        # a swing of the class balance revives one class at a time, and kills the other
        "left from the interval's main class": (
            sum(max(r["left: broken (class 1)"], r["left"] - r["left: broken (class 1)"]) for r in after) / left
            if left
            else None
        ),
        "intervals where the other class entered": sum(
            1
            for r in after
            if r["left"]
            and r["entered"]
            and (2 * r["left: broken (class 1)"] > r["left"]) != (2 * r["entered: broken (class 1)"] > r["entered"])
        ),
        "left: margin before (median of intervals)": _median_of(after, "left: margin before (median)"),
        "stayed: margin before (median of intervals)": _median_of(after, "stayed: margin before (median)"),
        "dead at the end": rows[-1]["dead after"] if rows else None,
        "loss slope, last 30 epochs (log/epoch)": late_change([float(v) for v in loss])[0],
        "loss(end) / loss(end - 30)": late_change([float(v) for v in loss])[1],
    }


# the dead set's size before an interval, in bins: its revival rate falls as the set grows
SIZE_BINS = ((1, 9), (10, 99), (100, 299), (300, None))


def revival_by_size(intervals: list[dict]) -> list[dict]:
    """The revival rate by the dead set's size before the interval, pooled over runs: per bin the
    intervals, the images dead before and those that left, left / dead before with a 95% Wilson
    interval, and the median and range of the intervals' own rates. The Wilson interval treats the
    images as independent; those of one interval move together, so it is narrower than the truth."""
    rows = []
    for low, high in SIZE_BINS:
        inside = [r for r in intervals if r["dead before"] >= low and (high is None or r["dead before"] <= high)]
        dead, left = sum(r["dead before"] for r in inside), sum(r["left"] for r in inside)
        interval = wilson_interval(left, dead)
        rates = [r["revival rate"] for r in inside]
        rows.append(
            {
                "dead before": f"{low}-{high}" if high is not None else f"{low} or more",
                "intervals": len(inside),
                "runs": len({r["run"] for r in inside}),
                "dead images": dead,
                "left": left,
                "revival rate (pooled)": left / dead if dead else None,
                "95% interval": f"[{interval[0]:.3g}, {interval[1]:.3g}]" if interval else None,
                "median of the intervals' rates": statistics.median(rates) if rates else None,
                "lowest": min(rates) if rates else None,
                "highest": max(rates) if rates else None,
            }
        )
    return rows


def plot_dead_dynamics(intervals: dict[str, list[dict]], path: Path, title: str) -> None:
    """One panel per run: per interval between accountings the images that entered the dead set
    (up) and left it (down), and the dead set's size (line): a ratchet would have no bars below 0."""
    figure, axes = plt.subplots(1, len(intervals), figsize=(3.4 * len(intervals), 3.4), sharey=True, squeeze=False)
    for axis, (run, rows) in zip(axes[0], intervals.items()):
        ends = [row["to"] for row in rows]
        width = 0.8 * (ends[1] - ends[0]) if len(ends) > 1 else 8
        axis.bar(ends, [row["entered"] for row in rows], width=width, color="tab:red", label="entered")
        axis.bar(ends, [-row["left"] for row in rows], width=width, color="tab:green", label="left")
        axis.plot(ends, [row["dead after"] for row in rows], color="black", marker=".", label="dead")
        axis.axhline(0, color="gray", linewidth=0.8)
        axis.set_title(run, fontsize=9, loc="left")
        axis.set_xlabel("epoch (end of the interval)", fontsize=8)
        axis.tick_params(labelsize=7)
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("training images", fontsize=8)
    axes[0][0].legend(fontsize=7, loc="upper left")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    save_figure(figure, path, dpi=100)


def report(results: Path, evidence_histories: Path = EVIDENCE_HISTORIES) -> list[dict]:
    files = sorted((results / "dead_sets").glob("plateau-s*.npz"), key=lambda p: int(p.stem.split("-s")[1]))
    if not files:
        raise UserError(
            f"dead_dynamics: no plateau-s*.npz in {results / 'dead_sets'}; run `python -m studies.dead_dynamics.analysis run --seed 0` first"
        )
    committed = read_histories(evidence_histories)
    per_run, intervals = [], []
    for path in files:
        data = np.load(path)
        name = path.stem
        rows = transitions(data["epochs"], data["dead"], data["margin"], data["label"])
        intervals += [{"run": name, **row} for row in rows]
        summary = summarize(name, rows, data["loss"])
        study_run = committed.get(f"evidence-{name}")
        if study_run is not None:
            same = [row["loss"] for row in study_run] == [float(v) for v in data["loss"]]
            summary["same loss curve as the study's run"] = "yes" if same else "no"
        per_run.append(summary)
    write_csv(results / "dead_dynamics.csv", intervals, list(intervals[0]))
    by_run: dict[str, list[dict]] = {}
    for row in intervals:
        by_run.setdefault(row["run"], []).append(row)
    by_size = revival_by_size(intervals)
    plot_dead_dynamics(
        by_run, results / "dead_dynamics.png", "the dead set between accountings: images that entered (up), left (down)"
    )
    text = (
        f"# The dead zone, image by image ({len(files)} plateau runs)\n\n"
        "Runs of the plateau configuration (lr 0.01, 200 epochs, data 0) at train seeds 0-4, made on this "
        "machine: results are bit-identical per CPU model, not across them, so their curves are not the "
        "committed study runs' of the same seeds (last column) but new runs of the same configuration.\n\n"
        "`python -m studies.dead_dynamics.analysis report` from results/dead_sets/*.npz "
        "(each from `python -m studies.dead_dynamics.analysis run --seed N`). Between consecutive accountings "
        "(every 10 epochs) every training image is live or dead; *entered*: live -> dead, *left*: "
        "dead -> live. Totals over the intervals after the dead set formed; per interval: "
        "`dead_dynamics.csv`.\n\n"
        + markdown_table(per_run, [(key, key) for key in per_run[0]])
        + "\n## The revival rate by the dead set's size\n\n"
        "A run's median revival rate mixes intervals of a handful of dead images (where all of them "
        "often leave) with intervals of hundreds: the rate by the size of the dead set before the "
        "interval, pooled over the runs. The Wilson interval counts images as independent draws; "
        "the images of one interval move together, so the truth is wider.\n\n"
        + markdown_table(by_size, [(key, key) for key in by_size[0]])
        + "\n## Per interval\n\n"
        + markdown_table(
            intervals,
            [
                (k, k)
                for k in (
                    "run",
                    "from",
                    "to",
                    "dead before",
                    "entered",
                    "left",
                    "stayed",
                    "dead after",
                    "revival rate",
                    "entry rate",
                    "left: now right",
                    "left: margin before (median)",
                    "stayed: margin before (median)",
                    "dead: broken (class 1)",
                    "left: broken (class 1)",
                    "entered: broken (class 1)",
                )
            ],
        )
        + f"\nMargin: wrong logit minus right logit; the dead zone starts at {MARGIN_EDGE:.2f}.\n"
        + "\n![the dead set between accountings](dead_dynamics.png)\n"
    )
    write_text(results / "dead_dynamics.md", text)
    print(markdown_table(per_run, [(key, key) for key in per_run[0]]))
    return per_run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m studies.dead_dynamics.analysis", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("command", choices=("run", "report"))
    parser.add_argument("--seed", type=int, default=0, help="run: the train seed")
    parser.add_argument("--results", type=Path, default=study_results("dead_dynamics"))
    args = parser.parse_args(argv)
    if args.command == "run":
        if args.seed < 0:
            raise UserError(f"dead_dynamics: --seed {args.seed}; allowed: 0 or more")
        print(f"dead_dynamics: wrote {run(args.seed, args.results / 'dead_sets' / f'plateau-s{args.seed}.npz')}")
    else:
        report(args.results)
    return 0


if __name__ == "__main__":
    run_entry_point(main)
