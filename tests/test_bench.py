"""The benchmark runs end to end on a few batches (`--quick`), so it cannot rot unnoticed."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.study_ab import summarise, turn_order
from benchmarks.workspace import commit_fresh_repo, copy_files_at
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
    kept = {"study_ab": {"ratio_of_medians": 1.0}, "study_2026_11_26": {"runs": 4}, "fraction_of_peak": -1.0}
    out.write_text(json.dumps(kept))  # other benchmarks' figures stay; this run's own are replaced
    result = run_benchmark("bench", "--quick", "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    results = json.loads(out.read_text())
    assert results["study_ab"] == kept["study_ab"] and results["study_2026_11_26"] == kept["study_2026_11_26"]
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


def test_a_copy_at_a_revision_holds_that_commits_files_less_the_first_run_leftovers(tmp_path: Path):
    source, target = tmp_path / "source", tmp_path / "target"
    (source / "metrics").mkdir(parents=True)
    (source / "params.yaml").write_text("epochs: 1\n")
    (source / "metrics" / "train.json").write_text("{}")
    (source / "dvc.lock").write_text("schema: '2.0'\n")
    commit_fresh_repo(source, "before")
    (source / "params.yaml").write_text("epochs: 2\n")
    (source / "new.py").write_text("")
    subprocess.run(["git", "add", "-A"], cwd=source, check=True)
    subprocess.run(["git", "commit", "-qm", "after"], cwd=source, check=True)
    copy_files_at(source, "HEAD~1", target)
    copied = {str(path.relative_to(target)) for path in target.rglob("*") if path.is_file()}
    assert copied == {"params.yaml"}  # no file of the later commit, no lock file or metrics
    assert (target / "params.yaml").read_text() == "epochs: 1\n"


def test_the_before_after_turns_alternate_and_each_round_gives_its_own_ratio():
    assert [turn_order(index) for index in range(3)] == [
        ("after", "before"),
        ("before", "after"),
        ("after", "before"),
    ]
    figures = {("after", 1): 60.0, ("before", 1): 40.0, ("before", 2): 50.0, ("after", 2): 55.0, ("after", 3): 70.0}
    figures[("before", 3)] = 35.0
    turns = [
        {"code": code, "round": round_number, "runs_per_hour": rate, "in_queue_runs_per_hour": 2 * rate}
        | {"epochs_s_per_run": 3600 / rate}
        for (code, round_number), rate in figures.items()
    ]
    summary = summarise(turns)
    assert summary["ratio_by_round"] == pytest.approx([1.5, 1.1, 2.0])
    assert (
        summary["medians"]["after"]["runs_per_hour"] == 60.0 and summary["medians"]["before"]["runs_per_hour"] == 40.0
    )
    assert summary["ratio_of_medians"] == pytest.approx(1.5) == summary["in_queue_ratio_of_medians"]
    assert summary["medians"]["before"]["epochs_s_per_run"] == pytest.approx(90.0)


def test_a_baseline_that_is_no_commit_is_one_line_before_any_work(tmp_path: Path):
    out = tmp_path / "results.json"
    result = run_benchmark("study_ab", "--baseline-rev", "no-such-rev", "--out", str(out), timeout=60)
    assert result.returncode != 0
    assert result.stderr.strip() == "study_ab: --baseline-rev 'no-such-rev' is not a commit of this repository"
    assert not out.exists()


@pytest.mark.slow
def test_study_ab_runs_both_codes_in_turns_and_writes_their_ratio(tmp_path: Path):
    out = tmp_path / "results.json"
    args = ("--baseline-rev", "HEAD", "--rounds", "1", "--runs", "1", "--jobs", "1", "--epochs", "2")
    result = run_benchmark("study_ab", *args, "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    ab = json.loads(out.read_text())["study_ab"]
    assert (
        ab["baseline_rev"]
        == subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    assert [(turn["code"], turn["round"]) for turn in ab["turns"]] == [("after", 1), ("before", 1)]
    for turn in ab["turns"]:
        assert turn["runs_per_hour"] == pytest.approx(3600 / turn["wall_s"])
        assert 0 < turn["epochs_s_per_run"] < turn["breakdown"]["train.total"]
        assert [run["train.total"] for run in turn["per_run"]] == [turn["breakdown"]["train.total"]]
    after, before = (turn["runs_per_hour"] for turn in ab["turns"])
    assert ab["ratio_of_medians"] == pytest.approx(after / before) == ab["ratio_by_round"][0]
    assert "after / before" in result.stdout
