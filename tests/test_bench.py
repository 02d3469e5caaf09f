"""The benchmark runs end to end on a few batches (`--quick`), so it cannot rot unnoticed."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, lab_env


def run_benchmark(module: str, *args: str, cwd: Path = REPO, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m benchmarks.<module> args` with the lab's environment; output captured."""
    return subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", *args],
        cwd=cwd,
        env=lab_env(REPO),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_quick_benchmark_writes_every_figure(tmp_path: Path):
    out = tmp_path / "results.json"
    result = run_benchmark("bench", "--quick", "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    results = json.loads(out.read_text())
    ratios = ("train_vs_bare", "train_no_diagnostics_vs_bare", "train_vs_generator")
    fractions = ("fraction_of_peak", "fraction_of_peak_seed_width", "fraction_of_peak_seed_width_jit")
    for key in ratios + fractions:
        assert math.isfinite(results[key]) and results[key] > 0, key
    assert set(results["samples_per_s"]) == {"lab", "lab_no_diagnostics", "bare", "generator"}
    assert results["repro_s"] is None and results["repro_noop_s"] is None  # --quick skips dvc
    assert results["date"] and results["machine"]
    # the analytic count, by hand: conv1 17*17*f*16*16, conv2 2*2*2f*16*16*f, dense 2f*2 MACs;
    # forward 2 FLOPs a MAC, forward + backward 3x forward
    assert results["train_flops_per_sample"] == {"filters_8": 6 * 722_976, "filters_64": 6 * 13_123_840}
    assert "(1)/(2) lab vs bare" in result.stdout


@pytest.mark.slow
def test_study_throughput_benchmark_splits_a_queued_run_between_the_stages_and_dvc(tmp_path: Path):
    out = tmp_path / "results.json"
    out.write_text(json.dumps({"samples_per_s": {"lab": 1.0}}))  # make bench's figures stay beside
    result = run_benchmark("study_throughput", "--runs", "1", "--jobs", "1", "--epochs", "2", "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    results = json.loads(out.read_text())
    assert results["samples_per_s"] == {"lab": 1.0}
    study = results["study"]["by_jobs"]["1"]
    assert results["study_runs_per_hour"] == study["runs_per_hour"] > 0
    phases = study["breakdown"]
    # every phase was measured, and the stages and DVC add up to a worker's time per run
    for key in ("train.startup", "train.first_epoch", "train.other_epochs", "evaluate.startup", "dvc.rest"):
        assert phases[key] > 0, key
    total = phases["train.total"] + phases["evaluate.total"] + phases["dvc.rest"]
    assert total == pytest.approx(phases["worker_seconds_per_run"])
    assert phases["train.total"] >= phases["train.startup"] + phases["train.first_epoch"]
    # one run: the in-queue span is its train, the gap, its evaluate (the gap can read below zero:
    # a stage's start is /proc's boot time, in whole seconds, plus its start ticks); the
    # once-per-study part is what the wall has beyond it
    span = phases["in_queue_worker_seconds_per_run"]
    stages = phases["train.total"] + phases["dvc.between_stages"] + phases["evaluate.total"]
    assert span == pytest.approx(stages) and span < phases["worker_seconds_per_run"]
    assert span + phases["queueing_and_wait_s"] == pytest.approx(phases["worker_seconds_per_run"])
    assert phases["in_queue_runs_per_hour"] == pytest.approx(3600 / span)
    assert "runs per hour" in result.stdout


def test_conv2_forms_compute_the_same_function_and_print_both_timings():
    result = run_benchmark("conv2_forms", "--filters", "2", "--batch", "2", "--repeats", "2", timeout=300)
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line.split()[:1] == ["2"]]
    assert [row[1] for row in rows] == ["convolution", "matrix"]  # "matrix product"
    for row in rows:
        milliseconds, gflops, difference = float(row[-3]), float(row[-2]), float(row[-1])
        assert milliseconds > 0 and gflops > 0
        assert difference < 1e-5  # the two forms' gradients agree to float32 rounding
