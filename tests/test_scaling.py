"""The onset scaling analysis (studies/scaling/analysis.py): Kaplan-Meier, the censored log-normal law, the rows."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from studies.scaling.analysis import (
    Fit,
    ScalingError,
    against_median,
    count_against_median,
    design,
    fit_aft,
    fit_points,
    held_out_verdict,
    kaplan_meier,
    km_median,
    km_median_conventions,
    likelihood_and_gradient,
    load_points,
    negative_log_likelihood,
    profile_interval,
    sign_test,
)


def test_kaplan_meier_on_a_hand_worked_example():
    # 5 runs: onsets at steps 1, 2, 3 and censored at 2 and 4. S(1) = 4/5, S(2) = 4/5 * 3/4 = 0.6,
    # S(3) = 0.6 * 1/2 = 0.3. Greenwood at step 1: 1 / (5 * 4) = 0.05; the log-log band is
    # 0.8 ** exp(+-1.96 * sqrt(0.05) / |ln 0.8|) = [0.2038, 0.9692].
    times, events = np.array([1, 2, 2, 3, 4.0]), np.array([1, 1, 0, 1, 0])
    curve = kaplan_meier(times, events)
    assert [row[0] for row in curve] == [1.0, 2.0, 3.0]
    assert [round(row[1], 10) for row in curve] == [0.8, 0.6, 0.3]
    assert curve[0][2] == pytest.approx(0.2038, abs=1e-4)
    assert curve[0][3] == pytest.approx(0.9692, abs=1e-4)
    # the median is where S first reaches 1/2; its lower limit where the band's lower curve does (step
    # 1); the band's upper curve never gets there: the upper limit is censored beyond the last step
    assert km_median(times, events) == (3.0, 1.0, None)


def test_a_median_not_reached_is_none_not_the_last_step():
    times, events = np.array([5, 6, 7, 8.0]), np.array([1, 0, 0, 0])
    assert km_median(times, events)[0] is None


def test_the_median_conventions_where_the_curve_sits_at_exactly_a_half():
    # 4 runs spiking at steps 10, 20, 30, 40: S = 3/4, 1/2, 1/4, 0. S <= 1/2 first at 20 (the report's
    # median); S < 1/2 first at 30; R's midpoint of the stretch at 1/2 is 25
    times, events = np.array([10, 20, 30, 40.0]), np.array([1, 1, 1, 1])
    assert km_median(times, events)[0] == 20.0
    assert km_median_conventions(times, events) == (30.0, 25.0)
    # the stretch at 1/2 runs to the end (two runs still up at 30): no onset below 1/2; R ends it at the last time
    times, events = np.array([10, 20, 30, 30.0]), np.array([1, 1, 0, 0])
    assert km_median(times, events)[0] == 20.0
    assert km_median_conventions(times, events) == (None, 25.0)
    # 24 runs, one onset a step: after the 12th, S is 1/2, which the running product makes 0.5000000000000001
    times, events = np.arange(1, 25.0), np.ones(24, int)
    assert kaplan_meier(times, events)[11][1] > 0.5
    assert km_median(times, events)[0] == 12.0
    assert km_median_conventions(times, events) == (13.0, 12.5)
    # S steps over 1/2 (2/3, then 1/3): all three conventions agree
    times, events = np.array([10, 20, 30.0]), np.array([1, 1, 1])
    assert km_median(times, events)[0] == 20.0
    assert km_median_conventions(times, events) == (20.0, 20.0)


def synthetic(rng, lr_values, n_values, cap, runs=40, exponent_lr=-1.0, exponent_n=0.5, sigma=0.3):
    """Onsets from a known law, censored at `cap` steps."""
    configs, times, events = [], [], []
    for lr in lr_values:
        for n in n_values:
            for _ in range(runs):
                onset = math.exp(
                    1.0 + exponent_lr * math.log(lr) + exponent_n * math.log(n) + sigma * rng.standard_normal()
                )
                configs.append({"learning_rate": lr, "n_per_class": n, "filters": 8, "batch_size": 32})
                times.append(min(onset, cap))
                events.append(1 if onset < cap else 0)
    return configs, np.array(times), np.array(events)


def test_the_censored_fit_recovers_a_known_law_and_dropping_censored_runs_would_not():
    rng = np.random.default_rng(1)
    configs, times, events = synthetic(rng, [1e-2, 3e-3, 1e-3], [128, 512], cap=2.5e4)
    assert 0.2 < 1 - events.mean() < 0.6  # a real share of the runs is censored
    x = design(configs, ("learning_rate", "n_per_class"))
    theta = fit_aft(x, np.log(times), events)
    assert theta[1] == pytest.approx(-1.0, abs=0.08)
    assert theta[2] == pytest.approx(0.5, abs=0.08)
    assert math.exp(theta[-1]) == pytest.approx(0.3, abs=0.05)
    spiked = events == 1
    naive = np.linalg.lstsq(x[spiked], np.log(times[spiked]), rcond=None)[0]
    assert naive[1] > -0.9  # the onsets past the cap left out flatten the learning rate's exponent


def test_the_likelihoods_gradient_matches_finite_differences():
    from scipy.optimize import check_grad

    rng = np.random.default_rng(4)
    configs, times, events = synthetic(rng, [1e-2, 1e-3], [128, 512], cap=2.5e4, runs=10)
    x, y = design(configs, ("learning_rate", "n_per_class")), np.log(times)
    theta = np.array([1.5, -0.8, 0.4, math.log(0.5)])
    assert 0 < events.sum() < len(events)  # both kinds of term enter
    error = check_grad(
        lambda t: negative_log_likelihood(t, x, y, events),
        lambda t: likelihood_and_gradient(t, x, y, events)[1],
        theta,
    )
    assert error < 1e-4 * np.linalg.norm(likelihood_and_gradient(theta, x, y, events)[1])


def wald_half_width(x, y, events, theta, index):
    """1.96 standard errors from the inverse of the observed information (central differences of the gradient)."""
    step = 1e-5
    hessian = np.array(
        [
            (
                likelihood_and_gradient(theta + step * unit, x, y, events)[1]
                - likelihood_and_gradient(theta - step * unit, x, y, events)[1]
            )
            / (2 * step)
            for unit in np.eye(len(theta))
        ]
    )
    return 1.959963984540054 * math.sqrt(np.linalg.inv(hessian)[index, index])


def test_the_profile_interval_covers_a_known_exponent_and_is_about_as_wide_as_walds():
    rng = np.random.default_rng(5)
    # few runs and a real share censored: the intervals are wide enough to compare
    configs, times, events = synthetic(rng, [1e-2, 3e-3, 1e-3], [128, 512], cap=2.5e4, runs=6, sigma=0.5)
    assert 0.2 < 1 - events.mean() < 0.7
    x, y = design(configs, ("learning_rate", "n_per_class")), np.log(times)
    theta = fit_aft(x, y, events)
    for index, truth in ((1, -1.0), (2, 0.5)):
        low, high = profile_interval(x, y, events, index, theta)
        assert low < truth < high
        assert low < theta[index] < high
        # the log-likelihood at each end lies 1.92 below its maximum
        others = np.delete(x, index, axis=1)
        for end in (low, high):
            shifted = y - end * x[:, index]
            drop = negative_log_likelihood(fit_aft(others, shifted, events), others, shifted, events)
            assert drop - negative_log_likelihood(theta, x, y, events) == pytest.approx(1.9207, abs=1e-3)
        wald = wald_half_width(x, y, events, theta, index)
        assert 0.95 * wald <= (high - low) / 2 < 1.5 * wald


def test_an_exponent_the_data_do_not_bound_has_an_open_profile_end():
    # every run at lr 1e-3 still up at its cap: a steeper fall with lr fits them as well as any
    points = {1e-2: ([900, 1000, 1100, 1200], [1, 1, 1, 1]), 1e-3: ([5000] * 4, [0] * 4)}
    configs = [{"learning_rate": lr} for lr, (times, _) in points.items() for _ in times]
    x = design(configs, ("learning_rate",))
    y = np.log(np.concatenate([times for times, _ in points.values()]).astype(float))
    events = np.concatenate([flags for _, flags in points.values()])
    theta = fit_aft(x, y, events)
    low, high = profile_interval(x, y, events, 1, theta)
    assert low is None and high is not None


def test_onsets_against_the_median_and_the_sign_test_on_a_hand_made_case():
    # median 100: five onsets before it, one after, one run still up at 300 (after it)
    times, events = np.array([10, 20, 30, 40, 50, 150, 300.0]), np.array([1, 1, 1, 1, 1, 1, 0])
    assert against_median(times, events, 100.0) == (5, 2)
    # a run censored at 80 hides whether it would have spiked before 100: the point is not counted
    assert against_median(np.array([10, 80.0]), np.array([1, 0]), 100.0) is None
    rows = [
        {"runs_before_predicted": 5, "runs_after_predicted": 2},
        {"runs_before_predicted": 8, "runs_after_predicted": 0},
        {"runs_before_predicted": None, "runs_after_predicted": None},
    ]
    assert count_against_median(rows) == (13, 2)
    # two-sided, 13 of 15: 2 x (1 + 15 + 105) / 2^15
    assert sign_test(13, 2) == pytest.approx(2 * 121 / 2**15)
    assert sign_test(5, 2) == pytest.approx(2 * 29 / 128)


def point(cell, lr, n, times, events, held_out=False):
    from studies.scaling.analysis import Point

    return Point(
        cell,
        {"learning_rate": lr, "n_per_class": n, "filters": 8, "batch_size": 32},
        64,
        100,
        np.array(times, float),
        np.array(events),
        0,
        int(sum(events)),
        [],
        held_out,
    )


def test_fit_points_uses_only_the_covariates_that_vary_and_bootstraps_intervals():
    rng = np.random.default_rng(2)
    points = []
    for lr in (1e-2, 3e-3, 1e-3):
        onsets = [math.exp(2.0 - math.log(lr) + 0.2 * rng.standard_normal()) for _ in range(8)]
        points.append(point(f"lr{lr}", lr, 1024, onsets, [1] * 8))
    fit = fit_points(points, resamples=60)
    assert fit.names == ("learning_rate",)
    value, low, high = fit.exponent("learning_rate")
    assert low < value < high
    assert low < -1.0 < high
    assert fit.median_steps({"learning_rate": 1e-3}) == pytest.approx(math.exp(2.0) * 1e3, rel=0.15)
    # every point had 8 filters: the law cannot say what 64 would do
    with pytest.raises(ScalingError, match="filters"):
        fit.median_steps({"learning_rate": 1e-3, "filters": 64})


def test_held_out_verdict_as_documented():
    row = {
        "km_median_steps": 140.0,
        "km_lower": 100.0,
        "km_upper": 200.0,
        "predicted_median_steps": 150.0,
        "predicted_as": "",
    }
    assert held_out_verdict(row) == "passes"
    assert held_out_verdict(row | {"predicted_median_steps": 250.0}) == "fails"
    assert held_out_verdict(row | {"km_upper": None, "predicted_median_steps": 1e9}) == "passes"
    # a median not reached is untestable, even where the band's lower curve got to 1/2 (n256: 816)
    assert held_out_verdict(row | {"km_median_steps": None, "km_upper": None}).startswith("untestable")
    assert held_out_verdict(row | {"predicted_as": "batch_size 32"}) == (
        "passes (the law has no term for it: predicted at batch_size 32)"
    )


def test_a_point_that_never_spiked_alone_in_its_batch_size_is_left_out_of_the_fit():
    from studies.scaling.analysis import identified

    spiking = [point(f"lr{lr}", lr, 1024, [5000, 6000, 7000], [1, 1, 1]) for lr in (1e-2, 3e-3)]
    small = point("n128", 3e-3, 128, [16000] * 3, [0, 0, 0])
    wide = point("b256", 1e-2, 1024, [6400] * 3, [0, 0, 0])
    wide.config = wide.config | {"batch_size": 256}
    inside, left_out = identified([*spiking, small, wide])
    # n and batch vary only through points that never spiked: no term for either, both left out
    assert [p.cell for p in inside] == ["lr0.01", "lr0.003"]
    assert [p.cell for p in left_out] == ["n128", "b256"]
    spiking.append(point("n256", 3e-3, 256, [9000, 16000, 16000], [1, 0, 0]))
    inside, left_out = identified([*spiking, small, wide])
    assert "n128" in [p.cell for p in inside] and [p.cell for p in left_out] == ["b256"]


def test_one_runs_interval_is_wider_than_the_medians():
    draws = np.array([[1.0, -1.0, math.log(0.5)], [1.1, -0.9, math.log(0.5)], [0.9, -1.1, math.log(0.5)]] * 20)
    fit = Fit(("learning_rate",), draws[0], draws)
    config = {"learning_rate": 1e-3}
    median_low, median_high = fit.median_interval(config)
    run_low, run_high = fit.run_interval(config)
    assert run_low < median_low and run_high > median_high


def test_rows_become_points_with_onsets_in_steps_and_censoring(tmp_path):
    # studies/scaling/sweep.yaml's center: 1024 training images per class, batch 32 -> 64 steps per epoch
    path = tmp_path / "scaling_runs.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["name", "cell", "seed", "state", "divergence_epoch", "epochs_run", "plateaued", "final_dead_fraction"]
        )
        writer.writerow(["scaling-center-s40", "center", 40, "success", 90, 130, "True", 0.25])
        writer.writerow(["scaling-center-s41", "center", 41, "success", "", 400, "False", 0.0])
        writer.writerow(["scaling-center-s42", "center", 42, "failed", "", "", "", ""])
    points = {p.cell: p for p in load_points(__import__("pathlib").Path("studies/scaling/sweep.yaml"), path)}
    center = points["center"]
    assert center.steps_per_epoch == 64
    assert list(center.times) == [90 * 64, 400 * 64]
    assert list(center.events) == [1, 0]
    assert (center.spiked, center.stayed_up, center.dead_fractions) == (1, 1, [0.25, 0.0])
    assert center.config == {"learning_rate": 0.003, "n_per_class": 1024, "filters": 8, "batch_size": 32}


def test_write_results_tables_the_points_the_held_out_check_and_the_seed(tmp_path):
    from studies.scaling.analysis import write_results

    rng = np.random.default_rng(3)
    center = {"learning_rate": 3e-3, "n_per_class": 1024, "filters": 8, "batch_size": 32}
    variants = {
        "center": {},
        "lr1e-2": {"learning_rate": 1e-2},
        "lr3e-4": {"learning_rate": 3e-4},
        "n256": {"n_per_class": 256},
        "f16": {"filters": 16},
        "b256-lr1e-2": {"learning_rate": 1e-2, "batch_size": 256},
        "h-b128": {"batch_size": 128},
    }
    points = []
    for cell, change in variants.items():
        config = center | change
        law = 9.0 - 0.3 * math.log(config["learning_rate"]) - 0.2 * math.log(config["n_per_class"])
        onsets = [math.exp(law + 0.2 * rng.standard_normal()) for _ in range(8)]
        made = point(cell, 0, 0, onsets, [1] * 8, held_out=cell.startswith("h-"))
        made.config = config
        points.append(made)
    # a point stopped before its runs could reach the law's median: shown, not counted
    stopped = point("h-stopped", 0, 0, [640, 640], [0, 0], held_out=True)
    stopped.config = center | {"batch_size": 128}
    summary = write_results(points, tmp_path, [stopped])
    text = (tmp_path / "scaling_law.md").read_text()
    assert "| h-b128 | held out |" in text and "## Held-out points" in text
    assert "| h-stopped | held out, stopped at epoch 10 | 0/2 spiked | 640 |" in text
    assert "| not counted | not counted |" in text
    # the 8 held-out onsets of h-b128 are the only ones counted
    held = next(row for row in summary["rows"] if row["point"] == "h-b128")
    before, after = held["runs_before_predicted"], held["runs_after_predicted"]
    assert before + after == 8 and f"**{before} of 8 onsets come before the law's median**" in text
    assert "| learning_rate | " in text and "profile likelihood" in text
    assert "The law puts the share of runs spiked by then at" in text
    assert "2,931,000 steps" in text
    assert summary["exponents"]["learning_rate"][1] < -0.3 < summary["exponents"]["learning_rate"][2]
    assert (tmp_path / "scaling_law.png").stat().st_size > 10_000
    with open(tmp_path / "scaling_law.csv") as handle:
        assert [row["point"] for row in csv.DictReader(handle)] == list(variants)
