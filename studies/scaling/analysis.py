"""When does the spike come: the onset scaling law, from the committed rows of the scaling study.

    python -m studies.scaling.analysis     # -> studies/scaling/results/scaling_law.{md,csv,png}, scaling_law_fit.csv

Each run's onset is the step at the end of its first flagged epoch (the divergence rule: 10x the
lowest loss before it), epoch x steps per epoch; a run that never spiked is censored at its last
epoch. Per point (a cell of the sweep): the Kaplan-Meier median onset with its 95% interval (the
log-log Greenwood band of S(t), read where it crosses 1/2), the stayed-up rate (the plateau rule)
with its Wilson interval and the dead fraction at the last accounted epoch. The median is the first
onset where S falls to 1/2 or below; where S sits at exactly 1/2 between two onsets, the first onset
below 1/2 and R survival's midpoint of that stretch are reported beside it.

The law is a log-normal accelerated-failure-time model fitted by maximum likelihood, censored runs
entering through their survival term:

    log(onset steps) = c + b_lr log(lr) + b_n log(n) + b_f log(filters) + b_B log(batch) + sigma * e,

e standard normal, n the training images per class. Its exponents' intervals come from a run
bootstrap (runs resampled within each point, the model refitted). Points named in HELD_OUT are left
out of the fit and predicted (docs/scaling.md pre-registers the checks); the seed's configuration is
extrapolated with a 95% interval for one run (the fit's uncertainty and the run-to-run spread).
"""

from __future__ import annotations

import argparse
import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spikelab.optimizers import steps_per_epoch
from spikelab.plumbing.errors import UserError, run_entry_point
from study.population_members import cells_with_params
from study.report import read_records
from study.stats import wilson_interval
from study.sweep import load_sweep, results_of, run_prefix

SWEEP = Path("studies/scaling/sweep.yaml")
COVARIATES = ("learning_rate", "n_per_class", "filters", "batch_size")
# pre-registered in docs/scaling.md before any of their runs: predicted from the other points' fit
HELD_OUT = ("h-lr1e-2-n512", "h-lr1e-2-f16", "h-b128")
# the seed's run (../shared/SEED.md): 250,000 training images per class, 64 filters, batch 256, lr 1e-5;
# its loss shot up near epoch 1,500 of 500,000 / 256 = 1,954 steps
SEED = {"learning_rate": 1e-5, "n_per_class": 250_000, "filters": 64, "batch_size": 256}
SEED_ONSET_EPOCH = 1500
SEED_STEPS_PER_EPOCH = math.ceil(2 * 250_000 / 256)
Z95 = 1.959963984540054
# S is a running product of fractions: an exact 1/2 (4 of 8 left) can land a rounding step either side
HALF_TOLERANCE = 1e-9


class ScalingError(UserError, ValueError):
    """Rows the scaling analysis cannot use; the message names the file and the fix."""


@dataclass
class Point:
    cell: str
    config: dict  # the covariates
    steps_per_epoch: int
    cap_epochs: int
    times: np.ndarray  # onset or censoring step, one per run
    events: np.ndarray  # 1 = spiked, 0 = censored
    stayed_up: int
    spiked: int
    dead_fractions: list[float]
    held_out: bool


# ---- Kaplan-Meier -------------------------------------------------------------------------------------


def kaplan_meier(times: np.ndarray, events: np.ndarray) -> list[tuple[float, float, float, float]]:
    """[(event time, S, lower, upper)] at each distinct event time: the product-limit estimate and its
    95% log-log band (Greenwood's variance)."""
    rows, survival, greenwood = [], 1.0, 0.0
    for time in np.unique(times[events == 1]):
        at_risk = int(np.sum(times >= time))
        died = int(np.sum((times == time) & (events == 1)))
        survival *= 1 - died / at_risk
        greenwood += died / (at_risk * (at_risk - died)) if at_risk > died else math.inf
        if 0 < survival < 1 and math.isfinite(greenwood):
            spread = Z95 * math.sqrt(greenwood) / abs(math.log(survival))
            lower, upper = survival ** math.exp(spread), survival ** math.exp(-spread)
        else:
            lower, upper = survival, survival
        rows.append((float(time), survival, lower, upper))
    return rows


def km_median(times: np.ndarray, events: np.ndarray) -> tuple[float | None, float | None, float | None]:
    """(median, its 95% lower, upper limit): the first event time where S, its band's lower and its
    band's upper curve fall to 1/2 or below (S <= 1/2, the report's convention); None where the curve
    never gets there (censored beyond)."""
    curve = kaplan_meier(times, events)

    def first(column: int) -> float | None:
        return next((row[0] for row in curve if row[column] <= 0.5 + HALF_TOLERANCE), None)

    return first(1), first(2), first(3)


def km_median_conventions(times: np.ndarray, events: np.ndarray) -> tuple[float | None, float | None]:
    """The median under the two other common conventions: (the first event time where S falls below
    1/2, R survival's midpoint of the stretch where S is exactly 1/2). Both equal km_median's unless S
    sits at exactly 1/2 between two event times; a stretch that runs to the curve's end has no event
    below 1/2 (None) and, in R, ends at the last observed time."""
    curve = kaplan_meier(times, events)
    at = next((row for row in curve if row[1] <= 0.5 + HALF_TOLERANCE), None)
    if at is None:
        return None, None
    below = next((row[0] for row in curve if row[1] < 0.5 - HALF_TOLERANCE), None)
    if abs(at[1] - 0.5) > HALF_TOLERANCE:
        return at[0], at[0]
    return below, (at[0] + (below if below is not None else float(times.max()))) / 2


# ---- the log-normal AFT model ---------------------------------------------------------------------------


def design(configs: list[dict], names: tuple[str, ...]) -> np.ndarray:
    return np.array([[1.0] + [math.log(config[name]) for name in names] for config in configs])


def negative_log_likelihood(theta: np.ndarray, x: np.ndarray, y: np.ndarray, events: np.ndarray) -> float:
    from scipy.stats import norm

    beta, log_sigma = theta[:-1], theta[-1]
    sigma = math.exp(log_sigma)
    z = (y - x @ beta) / sigma
    return -float(np.sum(np.where(events == 1, norm.logpdf(z) - log_sigma, norm.logsf(z))))


def fit_aft(x: np.ndarray, y: np.ndarray, events: np.ndarray) -> np.ndarray:
    """(beta..., log sigma) maximising the censored log-normal likelihood."""
    from scipy.optimize import minimize

    spiked = events == 1
    start_beta = (
        np.linalg.lstsq(x[spiked], y[spiked], rcond=None)[0] if spiked.sum() > x.shape[1] else np.zeros(x.shape[1])
    )
    residual = y[spiked] - x[spiked] @ start_beta if spiked.any() else np.ones(1)
    start = np.append(start_beta, math.log(max(float(np.std(residual)), 0.05)))
    best = minimize(negative_log_likelihood, start, args=(x, y, events), method="BFGS")
    if not np.all(np.isfinite(best.x)):
        raise ScalingError("the onset model did not converge: too few spiked runs in the fitted points")
    return best.x


@dataclass
class Fit:
    names: tuple[str, ...]
    theta: np.ndarray
    draws: np.ndarray  # bootstrap refits, (B, len(theta))
    fixed: dict = field(default_factory=dict)  # covariates every fitted point shared: the law says nothing of them

    def median_steps(self, config: dict, theta: np.ndarray | None = None) -> float:
        _, moved = self.project(config)
        if moved:
            raise ScalingError(
                f"the law was fitted at one value of {moved[0]} ({self.fixed[moved[0]]}): it cannot predict another"
            )
        theta = self.theta if theta is None else theta
        return math.exp(float(design([config], self.names)[0] @ theta[:-1]))

    def project(self, config: dict) -> tuple[dict, list[str]]:
        """(config with the covariates the law has no term for set to the fitted points' values, their names)."""
        moved = [name for name, value in self.fixed.items() if config.get(name, value) != value]
        return {**config, **self.fixed}, moved

    def median_interval(self, config: dict) -> tuple[float, float]:
        values = np.array([self.median_steps(config, draw) for draw in self.draws])
        return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))

    def run_interval(self, config: dict, seed: int = 0) -> tuple[float, float]:
        """95% interval for one run's onset: each bootstrap fit's median times its own spread."""
        rng = np.random.default_rng(seed)
        logs = np.array(
            [
                math.log(self.median_steps(config, draw)) + math.exp(draw[-1]) * rng.standard_normal()
                for draw in self.draws
            ]
        )
        return float(math.exp(np.percentile(logs, 2.5))), float(math.exp(np.percentile(logs, 97.5)))

    def exponent(self, name: str) -> tuple[float, float, float]:
        index = 1 + self.names.index(name)
        column = self.draws[:, index]
        return float(self.theta[index]), float(np.percentile(column, 2.5)), float(np.percentile(column, 97.5))


def identified(points: list[Point]) -> tuple[list[Point], list[Point]]:
    """(the points the law is fitted on, the points left out). A covariate gets a term only if points
    with at least one spike differ in it: a point that never spiked and is alone in its value of a
    covariate says only "later than its cap", which no finite exponent fits best, so it is left out."""
    eventful = [p for p in points if p.spiked]
    if not eventful:
        raise ScalingError("no fitted point has a spiked run: run more of the scaling study first")
    base = {name: eventful[0].config[name] for name in COVARIATES if len({p.config[name] for p in eventful}) == 1}
    inside = [p for p in points if all(p.config[name] == value for name, value in base.items())]
    return inside, [p for p in points if p not in inside]


def fit_points(points: list[Point], resamples: int = 400, seed: int = 0) -> Fit:
    """The model on these points, with covariates that vary among them; a run bootstrap within points."""
    names = tuple(name for name in COVARIATES if len({p.config[name] for p in points}) > 1)

    def arrays(chosen: list[tuple[Point, np.ndarray]]):
        x = np.concatenate([design([p.config] * len(index), names) for p, index in chosen])
        y = np.log(np.concatenate([p.times[index] for p, index in chosen]))
        events = np.concatenate([p.events[index] for p, index in chosen])
        return x, y, events

    theta = fit_aft(*arrays([(p, np.arange(len(p.times))) for p in points]))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        chosen = [(p, rng.integers(0, len(p.times), len(p.times))) for p in points]
        x, y, events = arrays(chosen)
        if events.sum() <= x.shape[1]:
            continue
        draws.append(fit_aft(x, y, events))
    fixed = {name: points[0].config[name] for name in COVARIATES if name not in names}
    return Fit(names, theta, np.array(draws), fixed)


# ---- the rows ---------------------------------------------------------------------------------------


def load_points(sweep_path: Path, runs_csv: Path) -> list[Point]:
    if not runs_csv.is_file():
        raise ScalingError(
            f"{runs_csv} is missing: run the study and its report first "
            f"(python -m study.population --sweep {sweep_path}; python -m study.report --sweep {sweep_path} --engine population)"
        )
    records = {record["name"]: record for record in read_records(runs_csv)}
    points = []
    for cell, cell_runs, params in cells_with_params(load_sweep(sweep_path)):
        n = params.data.per_class - params.split.val_per_class
        steps = steps_per_epoch(params)
        config = {
            "learning_rate": params.optimizer.learning_rate,
            "n_per_class": n,
            "filters": params.model.filters,
            "batch_size": params.train.batch_size,
        }
        done = [records[run.name] for run in cell_runs if records.get(run.name, {}).get("state") == "success"]
        if not done:
            continue
        times, events, dead = [], [], []
        for record in done:
            spiked = record.get("divergence_epoch") is not None
            epoch = record["divergence_epoch"] if spiked else record["epochs_run"]
            times.append(float(epoch * steps))
            events.append(1 if spiked else 0)
            if record.get("final_dead_fraction") is not None:
                dead.append(float(record["final_dead_fraction"]))
        points.append(
            Point(
                cell.name,
                config,
                steps,
                params.train.epochs,
                np.array(times),
                np.array(events),
                sum(1 for r in done if r.get("plateaued") is True),
                sum(events),
                dead,
                cell.name in HELD_OUT,
            )
        )
    return points


# ---- output -----------------------------------------------------------------------------------------


def _steps(value: float | None, censored_beyond: float | None = None) -> str:
    if value is None:
        return f"> {censored_beyond:,.0f}" if censored_beyond is not None else "not reached"
    return f"{value:,.0f}" if value >= 100 else f"{value:.2g}"


def point_rows(points: list[Point], fit: Fit, left_out: list[Point]) -> list[dict]:
    rows = []
    for point in points:
        median, lower, upper = km_median(point.times, point.events)
        median_below, median_midpoint = km_median_conventions(point.times, point.events)
        stayed_low, stayed_high = wilson_interval(point.stayed_up, point.spiked) if point.spiked else (None, None)
        config, moved = fit.project(point.config)
        predicted = fit.median_steps(config)
        predicted_low, predicted_high = fit.median_interval(config)
        role = "held out" if point.held_out else "left out (never spiked)" if point in left_out else "fit"
        rows.append(
            {
                "point": point.cell,
                "role": role,
                # a covariate the law has no term for is predicted as at the fitted points' value
                "predicted_as": ", ".join(f"{name} {fit.fixed[name]:g}" for name in moved),
                **point.config,
                "steps_per_epoch": point.steps_per_epoch,
                "runs": len(point.times),
                "spiked": point.spiked,
                "cap_steps": point.cap_epochs * point.steps_per_epoch,
                "km_median_steps": median,
                "km_lower": lower,
                "km_upper": upper,
                # the median under the other conventions (km_median_conventions): S < 1/2, R's midpoint
                "km_median_below_steps": median_below,
                "km_median_midpoint_steps": median_midpoint,
                "lr_x_median_steps": point.config["learning_rate"] * median if median is not None else None,
                # the same median in epochs (passes over the training set): exploratory, not the law's unit
                "km_median_epochs": median / point.steps_per_epoch if median is not None else None,
                "predicted_median_steps": predicted,
                "predicted_lower": predicted_low,
                "predicted_upper": predicted_high,
                "stayed_up": point.stayed_up,
                "stayed_up_lower": stayed_low,
                "stayed_up_upper": stayed_high,
                "dead_fraction_median": float(np.median(point.dead_fractions)) if point.dead_fractions else None,
                "last_time": float(point.times.max()),
            }
        )
    return rows


def held_out_verdict(row: dict) -> str:
    """Pre-registered (docs/scaling.md): the prediction passes where the predicted median lies inside
    the point's Kaplan-Meier 95% interval (an upper limit not reached counts as unbounded)."""
    if row["km_lower"] is None:
        return "untestable (median not reached)"
    upper = row["km_upper"] if row["km_upper"] is not None else math.inf
    verdict = "passes" if row["km_lower"] <= row["predicted_median_steps"] <= upper else "fails"
    return (
        f"{verdict} (the law has no term for it: predicted at {row['predicted_as']})"
        if row["predicted_as"]
        else verdict
    )


def write_results(points: list[Point], results: Path) -> dict:
    fitted, left_out = identified([p for p in points if not p.held_out])
    if sum(p.spiked for p in fitted) < 5:
        raise ScalingError("fewer than 5 spiked runs among the fitted points: run more of the scaling study first")
    fit = fit_points(fitted)
    rows = point_rows(points, fit, left_out)
    results.mkdir(parents=True, exist_ok=True)
    with open(results / "scaling_law.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    seed_steps = SEED_ONSET_EPOCH * SEED_STEPS_PER_EPOCH
    seed, seed_moved = fit.project(SEED)
    seed_median = fit.median_steps(seed)
    seed_median_low, seed_median_high = fit.median_interval(seed)
    seed_low, seed_high = fit.run_interval(seed)
    exponents = {name: fit.exponent(name) for name in fit.names}
    with open(results / "scaling_law_fit.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["term", "estimate", "lower", "upper"])
        writer.writerow(["intercept", fit.theta[0], *np.percentile(fit.draws[:, 0], [2.5, 97.5])])
        for name, (value, low, high) in exponents.items():
            writer.writerow([f"exponent of {name}", value, low, high])
        writer.writerow(["sigma", math.exp(fit.theta[-1]), *np.exp(np.percentile(fit.draws[:, -1], [2.5, 97.5]))])
        writer.writerow(["seed median onset steps", seed_median, seed_median_low, seed_median_high])
        writer.writerow(["seed one run's onset steps", seed_median, seed_low, seed_high])
    summary = {
        "fit": fit,
        "rows": rows,
        "seed_steps": seed_steps,
        "seed_median": (seed_median, seed_median_low, seed_median_high),
        "seed_run": (seed_low, seed_high),
        "exponents": exponents,
        "seed_as": ", ".join(f"{name} {fit.fixed[name]:g} (the seed's: {SEED[name]:g})" for name in seed_moved),
        "left_out": left_out,
    }
    (results / "scaling_law.md").write_text(markdown(summary))
    from studies.scaling.figures import plot_scaling

    plot_scaling(rows, fit, summary, results / "scaling_law.png")
    return summary


def _other_conventions(row: dict) -> str:
    """The S < 1/2 and midpoint medians where either differs from the report's."""
    below, midpoint = row["km_median_below_steps"], row["km_median_midpoint_steps"]
    if below == row["km_median_steps"] and midpoint == row["km_median_steps"]:
        return "="
    return f"{_steps(below, row['last_time'])}; {_steps(midpoint)}"


def _convention_lines(rows: list[dict]) -> list[str]:
    moved = [row for row in rows if _other_conventions(row) != "="]
    if not moved:
        return ["", "No point's median depends on the convention: S never sits at exactly 1/2 between two onsets."]

    def epochs(value: float | None, row: dict) -> str:
        return f"{value / row['steps_per_epoch']:.1f}".removesuffix(".0") if value is not None else "not reached"

    reached = sum(row["km_median_steps"] is not None for row in rows)
    moves = "; ".join(
        f"{row['point']} {epochs(row['km_median_steps'], row)} -> {epochs(row['km_median_below_steps'], row)} "
        f"(midpoint {epochs(row['km_median_midpoint_steps'], row)})"
        for row in moved
    )
    return [
        "",
        f"Under S < 1/2 the median moves at {len(moved)} of the {reached} points that reach one, in epochs: {moves}.",
    ]


def markdown(summary: dict) -> str:
    fit, rows = summary["fit"], summary["rows"]
    lines = [
        "# When the spike comes: onset steps across learning rate, data, width and batch",
        "",
        "Generated by `python -m studies.scaling.analysis` from studies/scaling/results/scaling_runs.csv (its sweep.yaml;",
        "docs/scaling.md: the design and the pre-registered checks). Onset: the step at the end of a run's",
        "first flagged epoch; runs that never spiked are censored at their last epoch. Intervals are 95%.",
        "The median onset is the first onset where the Kaplan-Meier curve S falls to 1/2 or below (S <= 1/2);",
        "where S sits at exactly 1/2 between two onsets, the first onset below 1/2 (S < 1/2) and R survival's",
        "midpoint of that stretch differ from it, and the column *S < 1/2; midpoint* gives both (= where they agree).",
        "",
        "| point | role | lr | n/class | filters | batch | spiked | median onset, steps [KM 95%] | S < 1/2; midpoint | in epochs | lr x median | fit's median [95%] | stayed up | dead at end |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        km = _steps(row["km_median_steps"], row["last_time"])
        band = f"[{_steps(row['km_lower'], row['last_time'])}, {_steps(row['km_upper'], row['last_time'])}]"
        lr_x = f"{row['lr_x_median_steps']:.3g}" if row["lr_x_median_steps"] is not None else "-"
        stayed = (
            f"{row['stayed_up']}/{row['spiked']} [{row['stayed_up_lower']:.2f}, {row['stayed_up_upper']:.2f}]"
            if row["spiked"]
            else "-"
        )
        dead = f"{row['dead_fraction_median']:.3f}" if row["dead_fraction_median"] is not None else "-"
        epochs = (
            f"{row['km_median_epochs']:.0f}"
            if row["km_median_epochs"] is not None
            else f"> {row['last_time'] / row['steps_per_epoch']:.0f}"
        )
        lines.append(
            f"| {row['point']} | {row['role']} | {row['learning_rate']:g} | {row['n_per_class']} | {row['filters']} "
            f"| {row['batch_size']} | {row['spiked']}/{row['runs']} | {km} {band} | {_other_conventions(row)} "
            f"| {epochs} | {lr_x} "
            f"| {_steps(row['predicted_median_steps'])} [{_steps(row['predicted_lower'])}, {_steps(row['predicted_upper'])}] "
            f"| {stayed} | {dead} |"
        )
    lines += _convention_lines(rows)
    lines += ["", "## The law", ""]
    law = " x ".join(f"{name}^{value:+.2f}" for name, (value, _, _) in summary["exponents"].items())
    lines.append(
        f"median onset steps = {math.exp(fit.theta[0]):.3g} x {law}; run-to-run spread sigma = "
        f"{math.exp(fit.theta[-1]):.2f} (log scale), from {sum(r['role'] == 'fit' for r in rows)} points, "
        f"{len(fit.draws)} bootstrap refits."
    )
    lines += ["", "| exponent of | estimate | 95% interval |", "|---|---|---|"]
    for name, (value, low, high) in summary["exponents"].items():
        lines.append(f"| {name} | {value:+.3f} | [{low:+.3f}, {high:+.3f}] |")
    for point in summary["left_out"]:
        lines.append(
            f"\nLeft out of the fit: {point.cell}, whose runs never spiked (0/{len(point.times)}, onset later than "
            f"{point.times.max():,.0f} steps) and is alone in its value of a covariate, so no finite exponent fits it best; "
            "the law has no term for that covariate."
        )
    held = [row for row in rows if row["role"] == "held out"]
    if held:
        lines += [
            "",
            "## Held-out points (pre-registered check)",
            "",
            "| point | KM median [95%] | predicted | verdict |",
            "|---|---|---|---|",
        ]
        for row in held:
            lines.append(
                f"| {row['point']} | {_steps(row['km_median_steps'], row['last_time'])} "
                f"[{_steps(row['km_lower'], row['last_time'])}, {_steps(row['km_upper'], row['last_time'])}] "
                f"| {_steps(row['predicted_median_steps'])} | {held_out_verdict(row)} |"
            )
    median, low, high = summary["seed_median"]
    run_low, run_high = summary["seed_run"]
    seed = summary["seed_steps"]
    inside = run_low <= seed <= run_high
    lines += [
        "",
        "## The seed's configuration, extrapolated",
        "",
        f"lr 1e-5, 250,000 training images per class, 64 filters, batch 256: predicted median onset "
        f"{_steps(median)} steps [{_steps(low)}, {_steps(high)}], one run's onset in [{_steps(run_low)}, {_steps(run_high)}] "
        f"(95%). The seed's loss shot up near epoch {SEED_ONSET_EPOCH:,} x {SEED_STEPS_PER_EPOCH:,} steps = "
        f"{seed:,} steps: {'inside' if inside else 'outside'} the one-run interval "
        f"({seed / median:.2g}x the predicted median).",
    ]
    if summary["seed_as"]:
        lines.append(f"\nThe law has no term for part of the seed's configuration: predicted at {summary['seed_as']}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.scaling.analysis", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", type=Path, default=SWEEP)
    parser.add_argument("--results", type=Path, help="the study's results folder (default: results/ beside the sweep)")
    args = parser.parse_args(argv)
    args.results = args.results or results_of(args.sweep)
    prefix = run_prefix(load_sweep(args.sweep), quick=False)
    points = load_points(args.sweep, args.results / f"{prefix}_runs.csv")
    write_results(points, args.results)
    print((args.results / "scaling_law.md").read_text())
    return 0


if __name__ == "__main__":
    run_entry_point(main)
