"""Every study's tables and figures recomputed from its committed rows: nothing trained, nothing read
from DVC's experiments or population folders.

    python -m tools.recompute            # make tables
    python -m tools.recompute --check    # and fail, naming them, if a committed table came out different

Per study with a sweep: `python -m study.report --sweep studies/<name>/sweep.yaml --from-files`
(and the first study's quick subset), then the studies' own analyses that read committed files.
`--check` compares the tables (.md, .csv) with what git holds; figures are left out of the check,
since their bytes follow the installed fonts and Matplotlib, not the numbers.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from spikelab.plumbing.errors import UserError, run_entry_point

ROOT = Path(__file__).resolve().parent.parent
STUDIES = ROOT / "studies"
# each study's own analysis of its committed files, after every report (some read two studies' rows)
ANALYSES = (
    ["studies.evidence.analysis"],
    ["studies.replication.analysis"],
    ["studies.agreement.analysis"],
    ["studies.scaling.analysis"],
    ["studies.seed_shape.analysis"],
    ["studies.dead_dynamics.analysis", "report"],
    ["studies.remedies.atlas"],
)
CHECKED = (".md", ".csv")


def commands() -> list[list[str]]:
    reports = [
        ["study.report", "--sweep", str(sweep.relative_to(ROOT)), "--from-files"]
        for sweep in sorted(STUDIES.glob("*/sweep.yaml"))
    ]
    quick = ["study.report", "--sweep", "studies/sweep/sweep.yaml", "--quick", "--from-files"]
    return [*reports, quick, *ANALYSES]


def changed_tables() -> list[str]:
    """Result tables that differ from git's (or are new), as paths from the project root."""
    result = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all", "--", "studies"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    paths = [line[3:] for line in result.stdout.splitlines()]
    return [path for path in paths if "/results/" in path and path.endswith(CHECKED)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.recompute", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if a committed table came out different")
    args = parser.parse_args(argv)
    before = changed_tables() if args.check else []
    if before:
        raise UserError(
            f"recompute --check: {len(before)} result tables differ from git before anything ran "
            f"({before[0]}, ...): commit or restore them first (git checkout -- studies)"
        )
    env = os.environ | {"PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    steps = commands()
    for number, command in enumerate(steps, 1):
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", *command], cwd=ROOT, env=env, capture_output=True, text=True)
        seconds = time.monotonic() - started
        if result.returncode != 0:
            last = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()[-1]
            raise UserError(f"recompute: `python -m {' '.join(command)}` exited {result.returncode}: {last}")
        print(f"recompute: {number}/{len(steps)} python -m {' '.join(command)} ({seconds:.0f} s)", flush=True)
    if not args.check:
        return 0
    changed = changed_tables()
    if changed:
        print("recompute --check: these tables differ from the committed ones (git diff shows how):", file=sys.stderr)
        for path in changed:
            print(f"  {path}", file=sys.stderr)
        return 1
    print("recompute --check: every committed table came out the same")
    return 0


if __name__ == "__main__":
    run_entry_point(main)
