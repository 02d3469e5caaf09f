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
bootstrap (runs resampled within each point, the model refitted; its seed fixed, its ends also shown
under OTHER_SEEDS) and from the profile likelihood. Points named in HELD_OUT are left out of the fit
and predicted (docs/scaling.md pre-registers the checks); every onset the fit did not see is counted
against its predicted median (a sign test), the law's share spiked by the end of a default run is set
against the default's runs in other studies, and the seed's configuration is extrapolated with a 95%
interval for one run (the fit's uncertainty and the run-to-run spread).
"""

from __future__ import annotations

import argparse
import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spikelab.optimizers import steps_per_epoch
from spikelab.params import load_params
from spikelab.plumbing.errors import UserError, run_entry_point
from study.population_members import cells_with_params
from study.report import read_records
from study.stats import wilson_interval
from study.sweep import STUDIES, load_sweep, results_of, run_prefix

SWEEP = Path("studies/scaling/sweep.yaml")
COVARIATES = ("learning_rate", "n_per_class", "filters", "batch_size")
# pre-registered in docs/scaling.md before any of their runs: predicted from the other points' fit
HELD_OUT = ("h-lr1e-2-n512", "h-lr1e-2-f16", "h-b128")
# a point stopped for the session's time before any run finished: its epochs, read back from MLflow
STOPPED = {"h-b128": "scaling_h-b128_stopped.csv"}
# the lab's default configuration (params.yaml) run for its 150 epochs in other studies: their baseline
# cells, each on train seeds and datasets of its own (the agreement study repeats evidence's seeds and
# dataset on the other engine, so it is not counted again)
DEFAULT_STUDIES = tuple(STUDIES / name / "sweep.yaml" for name in ("evidence", "replication", "remedies"))
DEFAULT_CELL = "baseline"
RESAMPLES = 400
# the bootstrap's seed is fixed at 0; its percentile ends are also shown under these
OTHER_SEEDS = (1, 2, 3)
# the seed's run (../shared/SEED.md): 250,000 training images per class, 64 filters, batch 256, lr 1e-5;
# its loss shot up near epoch 1,500 of 500,000 / 256 = 1,954 steps
SEED = {"learning_rate": 1e-5, "n_per_class": 250_000, "filters": 64, "batch_size": 256}
SEED_ONSET_EPOCH = 1500
SEED_STEPS_PER_EPOCH = math.ceil(2 * 250_000 / 256)
Z95 = 1.959963984540054
# S is a running product of fractions: an exact 1/2 (4 of 8 left) can land a rounding step either side
HALF_TOLERANCE = 1e-9
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
PROFILE_DROP = 1.920729410347062  # chi2(1)'s 95% quantile / 2
# the profile is searched outward from the estimate in doubling steps, as far as 6.4 either side: an
# exponent of that size would move the onset 2^6.4 = 84 times for a doubling of its covariate
PROFILE_STEP, PROFILE_REACH = 0.05, 6.4


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


def likelihood_and_gradient(theta: np.ndarray, x: np.ndarray, y: np.ndarray, events: np.ndarray):
    """(the negative censored log-normal log-likelihood, its gradient in theta = (beta..., log sigma)).
    A spiked run enters through its density, a censored one through its survival term."""
    from scipy.special import log_ndtr

    beta, log_sigma = theta[:-1], theta[-1]
    sigma = math.exp(log_sigma)
    z = (y - x @ beta) / sigma
    spiked = events == 1
    log_density = -0.5 * z * z - HALF_LOG_2PI
    log_survival = log_ndtr(-z)
    value = -float(np.sum(np.where(spiked, log_density - log_sigma, log_survival)))
    # d(log-likelihood)/dz: -z for an onset, minus the hazard for a run still up at its last step
    slope = np.where(spiked, -z, -np.exp(log_density - log_survival))
    # z = (y - x beta) / sigma: dz/dbeta = -x / sigma, dz/d(log sigma) = -z; an onset's -log sigma adds -1
    gradient = np.append(x.T @ slope / sigma, float(np.sum(slope * z)) + float(spiked.sum()))
    return value, gradient


def negative_log_likelihood(theta: np.ndarray, x: np.ndarray, y: np.ndarray, events: np.ndarray) -> float:
    return likelihood_and_gradient(theta, x, y, events)[0]


def fit_aft(x: np.ndarray, y: np.ndarray, events: np.ndarray) -> np.ndarray:
    """(beta..., log sigma) maximising the censored log-normal likelihood."""
    from scipy.optimize import minimize

    spiked = events == 1
    start_beta = (
        np.linalg.lstsq(x[spiked], y[spiked], rcond=None)[0] if spiked.sum() > x.shape[1] else np.zeros(x.shape[1])
    )
    residual = y[spiked] - x[spiked] @ start_beta if spiked.any() else np.ones(1)
    start = np.append(start_beta, math.log(max(float(np.std(residual)), 0.05)))
    best = minimize(likelihood_and_gradient, start, args=(x, y, events), method="BFGS", jac=True)
    if not np.all(np.isfinite(best.x)):
        raise ScalingError("the onset model did not converge: too few spiked runs in the fitted points")
    return best.x


def profile_interval(
    x: np.ndarray, y: np.ndarray, events: np.ndarray, index: int, theta: np.ndarray, reach: float = PROFILE_REACH
) -> tuple[float | None, float | None]:
    """The 95% profile-likelihood interval of coefficient `index`: the values where the log-likelihood,
    maximised over every other parameter with this one fixed, lies 1.92 (chi2(1, 0.95) / 2) below its
    maximum. An end the profile does not reach within `reach` of the estimate is None: the data do
    not bound the coefficient on that side."""
    from scipy.optimize import brentq

    best = negative_log_likelihood(theta, x, y, events)
    others = np.delete(x, index, axis=1)

    def drop(value: float) -> float:
        shifted = y - value * x[:, index]
        return negative_log_likelihood(fit_aft(others, shifted, events), others, shifted, events) - best - PROFILE_DROP

    ends = []
    for direction in (-1.0, 1.0):
        inner, step, end = float(theta[index]), PROFILE_STEP, None
        while step <= reach:
            outer = float(theta[index]) + direction * step
            if drop(outer) > 0:
                end = brentq(drop, inner, outer, xtol=1e-4)
                break
            inner, step = outer, 2 * step
        ends.append(end)
    return ends[0], ends[1]


@dataclass
class Fit:
    names: tuple[str, ...]
    theta: np.ndarray
    draws: np.ndarray  # bootstrap refits, (B, len(theta))
    fixed: dict = field(default_factory=dict)  # covariates every fitted point shared: the law says nothing of them
    profile: dict = field(default_factory=dict)  # exponent's name -> its 95% profile-likelihood (lower, upper)

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

    def spiked_by(self, config: dict, steps: float) -> tuple[float, float, float]:
        """The law's share of runs spiked by `steps`, with its bootstrap 95% interval."""
        from scipy.stats import norm

        def share(theta: np.ndarray) -> float:
            return float(norm.cdf(math.log(steps / self.median_steps(config, theta)) / math.exp(theta[-1])))

        values = [share(draw) for draw in self.draws]
        return share(self.theta), float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))

    def exponent(self, name: str, draws: np.ndarray | None = None) -> tuple[float, float, float]:
        """(estimate, the bootstrap's 2.5 and 97.5 percentiles), from these draws or the fit's own."""
        index = 1 + self.names.index(name)
        column = (self.draws if draws is None else draws)[:, index]
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


def _arrays(chosen: list[tuple[Point, np.ndarray]], names: tuple[str, ...]):
    """(design, log onset steps, events) of the chosen runs of each point."""
    x = np.concatenate([design([p.config] * len(index), names) for p, index in chosen])
    y = np.log(np.concatenate([p.times[index] for p, index in chosen]))
    events = np.concatenate([p.events[index] for p, index in chosen])
    return x, y, events


def bootstrap(points: list[Point], names: tuple[str, ...], resamples: int, seed: int) -> np.ndarray:
    """The model refitted on runs resampled within each point, (refits, parameters); a resample with no
    more spikes than the model has coefficients is skipped."""
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        x, y, events = _arrays([(p, rng.integers(0, len(p.times), len(p.times))) for p in points], names)
        if events.sum() <= x.shape[1]:
            continue
        draws.append(fit_aft(x, y, events))
    return np.array(draws)


def fit_points(points: list[Point], resamples: int = RESAMPLES, seed: int = 0) -> Fit:
    """The model on these points, with covariates that vary among them; a run bootstrap within points
    and each exponent's profile-likelihood interval."""
    names = tuple(name for name in COVARIATES if len({p.config[name] for p in points}) > 1)
    x, y, events = _arrays([(p, np.arange(len(p.times))) for p in points], names)
    theta = fit_aft(x, y, events)
    profile = {name: profile_interval(x, y, events, 1 + index, theta) for index, name in enumerate(names)}
    fixed = {name: points[0].config[name] for name in COVARIATES if name not in names}
    return Fit(names, theta, bootstrap(points, names, resamples, seed), fixed, profile)


# ---- the rows ---------------------------------------------------------------------------------------


def config_of(params) -> dict:
    """The law's covariates of a run's params."""
    return {
        "learning_rate": params.optimizer.learning_rate,
        "n_per_class": params.data.per_class - params.split.val_per_class,
        "filters": params.model.filters,
        "batch_size": params.train.batch_size,
    }


def load_points(sweep_path: Path, runs_csv: Path) -> list[Point]:
    if not runs_csv.is_file():
        raise ScalingError(
            f"{runs_csv} is missing: run the study and its report first "
            f"(python -m study.population --sweep {sweep_path}; python -m study.report --sweep {sweep_path} --engine population)"
        )
    records = {record["name"]: record for record in read_records(runs_csv)}
    points = []
    for cell, cell_runs, params in cells_with_params(load_sweep(sweep_path)):
        steps, config = steps_per_epoch(params), config_of(params)
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


def load_stopped(sweep_path: Path, results: Path, finished: list[Point]) -> list[Point]:
    """The points in STOPPED that have no finished runs: each run's onset is the first epoch the
    divergence rule flags in its logged losses, or it is censored at its last logged epoch."""
    from spikelab.divergence import divergence_epoch

    done = {p.cell for p in finished}
    stopped = []
    for cell, _, params in cells_with_params(load_sweep(sweep_path)):
        if cell.name not in STOPPED or cell.name in done:
            continue
        path = results / STOPPED[cell.name]
        if not path.is_file():
            raise ScalingError(f"{path} is missing: it holds the epochs of {cell.name}, stopped before its runs ended")
        histories: dict[str, list[tuple[int, float]]] = {}
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                histories.setdefault(row["run"], []).append((int(row["epoch"]), float(row["loss"])))
        steps = steps_per_epoch(params)
        times, events = [], []
        for run, history in histories.items():
            history.sort()
            if [epoch for epoch, _ in history] != list(range(1, len(history) + 1)):
                raise ScalingError(f"{path}: {run}'s epochs are not 1, 2, ... without a gap")
            epoch = divergence_epoch([loss for _, loss in history], params.divergence)
            times.append(float((epoch if epoch is not None else len(history)) * steps))
            events.append(0 if epoch is None else 1)
        # the plateau rule and the dead zone were not judged on a stopped point: no stayed-up count
        stopped.append(
            Point(
                cell.name,
                config_of(params),
                steps,
                params.train.epochs,
                np.array(times),
                np.array(events),
                0,
                sum(events),
                [],
                cell.name in HELD_OUT,
            )
        )
    return stopped


def default_runs(epochs: int, sweeps: tuple[Path, ...] = DEFAULT_STUDIES) -> list[tuple[str, int, int]]:
    """(study, runs spiked by `epochs`, finished runs) of each study's default cell, from its committed rows."""
    counts = []
    for sweep in sweeps:
        path = results_of(sweep) / f"{run_prefix(load_sweep(sweep), quick=False)}_runs.csv"
        if not path.is_file():
            raise ScalingError(f"{path} is missing: the default configuration's runs are counted from it")
        done = [r for r in read_records(path) if r["cell"] == DEFAULT_CELL and r["state"] == "success"]
        spiked = [r for r in done if r["divergence_epoch"] is not None and r["divergence_epoch"] <= epochs]
        if any(r["epochs_run"] < epochs for r in done if r not in spiked):
            raise ScalingError(f"{path}: a {DEFAULT_CELL} run ended before epoch {epochs} without a spike")
        counts.append((sweep.parent.name, len(spiked), len(done)))
    return counts


# ---- the checks on onsets the fit did not see -----------------------------------------------------------


def against_median(times: np.ndarray, events: np.ndarray, median: float) -> tuple[int, int] | None:
    """(runs that spiked before the predicted median, runs still up after it), or None where a run was
    censored before the median: a point stopped that early shows only its early onsets, and counting
    them alone would call any point followed for too short a time early."""
    if np.any((events == 0) & (times < median)):
        return None
    return int(np.sum((events == 1) & (times < median))), int(np.sum(times > median))


def count_against_median(rows: list[dict]) -> tuple[int, int]:
    """(onsets before, after their point's predicted median), summed over the rows against_median counted."""
    counted = [row for row in rows if row["runs_before_predicted"] is not None]
    return sum(row["runs_before_predicted"] for row in counted), sum(row["runs_after_predicted"] for row in counted)


def sign_test(below: int, above: int) -> float:
    """Two-sided: the chance of a split at least this uneven if each onset were equally likely to fall
    either side of its predicted median."""
    from scipy.stats import binomtest

    return float(binomtest(below, below + above, 0.5).pvalue)


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
        # the bias check counts only the onsets the fit did not see
        split = against_median(point.times, point.events, predicted) if role != "fit" else None
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
                "runs_before_predicted": split[0] if split else None,
                "runs_after_predicted": split[1] if split else None,
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
    the point's Kaplan-Meier 95% interval (an upper limit not reached counts as unbounded; a median
    not reached is untestable, even where the band's lower curve reached 1/2)."""
    if row["km_median_steps"] is None:
        return "untestable (median not reached)"
    upper = row["km_upper"] if row["km_upper"] is not None else math.inf
    verdict = "passes" if row["km_lower"] <= row["predicted_median_steps"] <= upper else "fails"
    return (
        f"{verdict} (the law has no term for it: predicted at {row['predicted_as']})"
        if row["predicted_as"]
        else verdict
    )


def write_results(points: list[Point], results: Path, stopped: list[Point] | None = None) -> dict:
    """The law on the points, its tables, checks and figure; `stopped` points (load_stopped) enter only
    the count of onsets the fit did not see."""
    fitted, left_out = identified([p for p in points if not p.held_out])
    if sum(p.spiked for p in fitted) < 5:
        raise ScalingError("fewer than 5 spiked runs among the fitted points: run more of the scaling study first")
    fit = fit_points(fitted)
    rows = point_rows(points, fit, left_out)
    stopped_rows = point_rows(stopped or [], fit, [])
    for row in stopped_rows:
        row["role"] += f", stopped at epoch {row['last_time'] / row['steps_per_epoch']:.0f}"
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
    reseeded = {seed: bootstrap(fitted, fit.names, RESAMPLES, seed) for seed in OTHER_SEEDS}
    seed_ends = {
        name: {0: exponents[name][1:], **{seed: fit.exponent(name, draws)[1:] for seed, draws in reseeded.items()}}
        for name in fit.names
    }
    with open(results / "scaling_law_fit.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["term", "estimate", "bootstrap_lower", "bootstrap_upper", "profile_lower", "profile_upper"])
        writer.writerow(["intercept", fit.theta[0], *np.percentile(fit.draws[:, 0], [2.5, 97.5])])
        for name, (value, low, high) in exponents.items():
            writer.writerow([f"exponent of {name}", value, low, high, *fit.profile[name]])
            for other in OTHER_SEEDS:
                writer.writerow([f"exponent of {name}, bootstrap seed {other}", value, *seed_ends[name][other]])
        writer.writerow(["sigma", math.exp(fit.theta[-1]), *np.exp(np.percentile(fit.draws[:, -1], [2.5, 97.5]))])
        writer.writerow(["seed median onset steps", seed_median, seed_median_low, seed_median_high])
        writer.writerow(["seed one run's onset steps", seed_median, seed_low, seed_high])
    default = load_params()
    default_steps = default.train.epochs * steps_per_epoch(default)
    summary = {
        "fit": fit,
        "rows": rows,
        "seed_steps": seed_steps,
        "seed_median": (seed_median, seed_median_low, seed_median_high),
        "seed_run": (seed_low, seed_high),
        "exponents": exponents,
        "seed_ends": seed_ends,
        "seed_as": ", ".join(f"{name} {fit.fixed[name]:g} (the seed's: {SEED[name]:g})" for name in seed_moved),
        "left_out": left_out,
        "unseen": [row for row in rows if row["role"] != "fit"] + stopped_rows,
        "default": {
            "config": config_of(default),
            "epochs": default.train.epochs,
            "steps": default_steps,
            "predicted": fit.spiked_by(fit.project(config_of(default))[0], default_steps),
            "observed": default_runs(default.train.epochs),
        },
    }
    (results / "scaling_law.md").write_text(markdown(summary))
    from studies.scaling.figures import plot_scaling

    plot_scaling(rows, fit, summary, results / "scaling_law.png")
    return summary


def _ends(low: float | None, high: float | None) -> str:
    return f"[{'unbounded' if low is None else f'{low:+.3f}'}, {'unbounded' if high is None else f'{high:+.3f}'}]"


def _includes_zero(low: float | None, high: float | None) -> bool:
    return (low is None or low <= 0) and (high is None or high >= 0)


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


def _law_lines(summary: dict) -> list[str]:
    fit, rows = summary["fit"], summary["rows"]
    law = " x ".join(f"{name}^{value:+.2f}" for name, (value, _, _) in summary["exponents"].items())
    seeds = ", ".join(str(seed) for seed in (0, *OTHER_SEEDS))
    lines = [
        "",
        "## The law",
        "",
        f"median onset steps = {math.exp(fit.theta[0]):.3g} x {law}; run-to-run spread sigma = "
        f"{math.exp(fit.theta[-1]):.2f} (log scale), from {sum(r['role'] == 'fit' for r in rows)} points, "
        f"{len(fit.draws)} bootstrap refits.",
        "",
        "Two 95% intervals per exponent. *Bootstrap*: the 2.5 and 97.5 percentiles of the exponent over "
        f"{RESAMPLES} refits on runs resampled within each point (seed 0; the pre-registered interval), and the "
        f"range of each end under seeds {seeds}. *Profile likelihood*: the values where the log-likelihood, "
        "maximised over every other parameter with the exponent fixed, lies chi2(1, 0.95) / 2 = 1.92 below its "
        "maximum.",
        "",
        f"| exponent of | estimate | bootstrap 95% (seed 0) | bootstrap ends, seeds {seeds} | profile likelihood 95% |",
        "|---|---|---|---|---|",
    ]
    for name, (value, low, high) in summary["exponents"].items():
        ends = list(summary["seed_ends"][name].values())
        lows, highs = [end[0] for end in ends], [end[1] for end in ends]
        lines.append(
            f"| {name} | {value:+.3f} | {_ends(low, high)} | lower {min(lows):+.3f} to {max(lows):+.3f}, "
            f"upper {min(highs):+.3f} to {max(highs):+.3f} | {_ends(*fit.profile[name])} |"
        )

    def with_zero(names: list[str]) -> str:
        return ", ".join(names) if names else "none"

    bootstrap_zero = [name for name, (_, low, high) in summary["exponents"].items() if _includes_zero(low, high)]
    reseeded_zero = [
        f"{name} (seed {seed})"
        for name, ends in summary["seed_ends"].items()
        for seed, (low, high) in ends.items()
        if seed and _includes_zero(low, high)
    ]
    profile_zero = [name for name, ends in fit.profile.items() if _includes_zero(*ends)]
    lines += [
        "",
        f"Intervals that include 0: bootstrap (seed 0) {with_zero(bootstrap_zero)}; bootstrap under the other seeds "
        f"{with_zero(reseeded_zero)}; profile likelihood {with_zero(profile_zero)}.",
    ]
    for point in summary["left_out"]:
        lines.append(
            f"\nLeft out of the fit: {point.cell}, whose runs never spiked (0/{len(point.times)}, onset later than "
            f"{point.times.max():,.0f} steps) and is alone in its value of a covariate, so no finite exponent fits it best; "
            "the law has no term for that covariate."
        )
    return lines


def _unseen_lines(summary: dict) -> list[str]:
    unseen = summary["unseen"]
    if not unseen:
        return []
    lines = [
        "",
        "## Onsets the fit did not see, against the law's median",
        "",
        "Each run of a point outside the fit is before the law's predicted median (it spiked earlier) or after it "
        "(it spiked later, or was still up past it). A point with a run censored before the median is not counted: "
        "only its early onsets could be seen.",
        "",
        "| point | role | runs | followed to, steps | predicted median | before | after |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in unseen:
        counted = row["runs_before_predicted"] is not None
        lines.append(
            f"| {row['point']} | {row['role']} | {row['spiked']}/{row['runs']} spiked | {row['last_time']:,.0f} "
            f"| {_steps(row['predicted_median_steps'])} "
            f"| {row['runs_before_predicted'] if counted else 'not counted'} "
            f"| {row['runs_after_predicted'] if counted else 'not counted'} |"
        )
    counted = [row for row in unseen if row["runs_before_predicted"] is not None]
    before, after = count_against_median(unseen)
    if before + after:
        points_before = sum(
            row["km_median_steps"] is not None and row["km_median_steps"] < row["predicted_median_steps"]
            for row in counted
        )
        lines += [
            "",
            f"**{before} of {before + after} onsets come before the law's median** (two-sided sign test p = "
            f"{sign_test(before, after):.2g}, if each were equally likely either side). The runs of a point share "
            f"its predicted median, so the test takes the law's estimate as exact; point by point, {points_before} of "
            f"{len(counted)} Kaplan-Meier medians lie below the prediction.",
        ]
    return lines


def _default_lines(summary: dict) -> list[str]:
    default = summary["default"]
    share, low, high = default["predicted"]
    spiked = sum(count for _, count, _ in default["observed"])
    runs = sum(total for _, _, total in default["observed"])
    observed_low, observed_high = wilson_interval(spiked, runs)
    config = default["config"]
    sources = ", ".join(f"{study} {count}/{total}" for study, count, total in default["observed"])
    return [
        "",
        "## The lab's default configuration",
        "",
        f"params.yaml (lr {config['learning_rate']:g}, {config['n_per_class']:,} training images per class, "
        f"{config['filters']} filters, batch {config['batch_size']}) trains {default['epochs']} epochs, "
        f"{default['steps']:,} steps. The law puts the share of runs spiked by then at {share:.2f} "
        f"[{low:.2f}, {high:.2f}] (bootstrap); the default's baseline runs of other studies spiked by then in "
        f"**{spiked}/{runs} = {spiked / runs:.2f} [{observed_low:.2f}, {observed_high:.2f}]** (Wilson; studies/<name>/results, "
        f"cell {DEFAULT_CELL}: {sources}).",
    ]


def markdown(summary: dict) -> str:
    rows = summary["rows"]
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
    lines += _law_lines(summary)
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
    lines += _unseen_lines(summary)
    lines += _default_lines(summary)
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
    write_results(points, args.results, load_stopped(args.sweep, args.results, points))
    print((args.results / "scaling_law.md").read_text())
    return 0


if __name__ == "__main__":
    run_entry_point(main)
