"""Where a run's seconds go: each stage's wall-clock phases, as MLflow metrics of the run.

`time.<stage>.<phase>` (seconds) and `time.<stage>.started_at` / `ended_at` (unix seconds, from the
process's own start, so interpreter start-up and imports count), logged as `time/<stage>.<phase>`
(spikelab.metric_names). benchmarks/study_throughput.py reads them to split a study run's time
between the stages and DVC. They stay out of the DVC metrics files: they differ from run to run.
Kept free of heavy imports: stages start it first.
"""

from __future__ import annotations

import os
import time

from spikelab.plumbing.lifetime import stat_fields


def process_started_at() -> float:
    """Unix time this process started (Linux /proc); now where /proc is not there."""
    fields = stat_fields("self")
    try:
        with open("/proc/stat") as handle:
            boot = next(int(line.split()[1]) for line in handle if line.startswith("btime "))
    except (OSError, StopIteration):
        return time.time()
    return time.time() if fields is None else boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")


class StageClock:
    """Laps of one stage's process: `lap(phase)` closes the phase that ran since the last lap."""

    def __init__(self, stage: str):
        self.stage = stage
        self.started_at = self.last = process_started_at()
        self.phases: dict[str, float] = {}

    def lap(self, phase: str) -> float:
        """Closes `phase`; returns its seconds."""
        now = time.time()
        self.phases[phase] = now - self.last
        self.last = now
        return self.phases[phase]

    def metrics(self, **more_phases: float) -> dict[str, float]:
        phases = self.phases | more_phases
        return {f"time.{self.stage}.{phase}": seconds for phase, seconds in phases.items()} | {
            f"time.{self.stage}.started_at": self.started_at,
            f"time.{self.stage}.ended_at": self.last,
        }
