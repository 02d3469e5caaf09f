"""The benchmark runs end to end on a few batches (`--quick`), so it cannot rot unnoticed."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, lab_env


@pytest.mark.slow
def test_quick_benchmark_writes_every_figure(tmp_path: Path):
    out = tmp_path / "results.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench", "--quick", "--out", str(out)],
        cwd=tmp_path,
        env=lab_env(REPO),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    results = json.loads(out.read_text())
    for key in ("train_vs_bare", "train_vs_generator", "fraction_of_peak", "fraction_of_peak_seed_width"):
        assert math.isfinite(results[key]) and results[key] > 0, key
    assert set(results["samples_per_s"]) == {"lab", "bare", "generator"}
    assert results["repro_s"] is None and results["repro_noop_s"] is None  # --quick skips dvc
    assert results["date"] and results["machine"]
    # the analytic count, by hand: conv1 17*17*f*16*16, conv2 2*2*2f*16*16*f, dense 2f*2 MACs;
    # forward 2 FLOPs a MAC, forward + backward 3x forward
    assert results["train_flops_per_sample"] == {"filters_8": 6 * 722_976, "filters_64": 6 * 13_123_840}
    assert "(1)/(2) lab vs bare" in result.stdout
