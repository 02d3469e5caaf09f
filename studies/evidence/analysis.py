"""The evidence study's own analysis: are the spike predictors predictive, on its 260 runs?

    python -m studies.evidence.analysis     # -> studies/evidence/results/evidence_predictors.{md,csv,png}

The shared predictive check (study/predictors.py, its docstring defines every number) on this
study's committed rows and histories; the replication runs the same check on its own
(studies/replication/analysis.py).
"""

from __future__ import annotations

import sys

from spikelab.plumbing.errors import run_entry_point
from study.predictors import main as predictors
from study.sweep import STUDIES

SWEEP = STUDIES / "evidence" / "sweep.yaml"


def main(argv: list[str] | None = None) -> int:
    """study.predictors on this study's sweep; any other argument goes to it (e.g. --results)."""
    return predictors(["--sweep", str(SWEEP), *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    run_entry_point(main)
