"""Where the seconds of `make exp S="train.epochs=3"` go: a fresh copy of the project, `make repro`'s
data stages once, then the experiment twice (the first after a change, the second as a user's
next one), each stage's seconds read off DVC's output as it arrives, and each stage's own Python
timed alone for its import and work.

    python -m benchmarks.exp_loop [--epochs 3] [--repeat 2]

Prints the breakdown; measure it on a quiet machine (nothing else heavy running): it is a wall
clock. The pipeline's numbers are not touched: the copy is thrown away.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.workspace import commit_fresh_repo, copy_tracked_files

REPO = Path(__file__).resolve().parent.parent
STAGE_LINE = re.compile(r"Running stage '([\w-]+)'")
# the stages' own imports, each in a Python of its own as DVC starts them
IMPORTS = {
    "validate": "import stages.validate",
    "generate": "import stages.generate",
    "split": "import stages.split",
    "train": "import stages.train",
    "rules": "import stages.rules",
    "evaluate": "import stages.evaluate",
}


def timed_lines(command: list[str], cwd: Path) -> tuple[float, list[tuple[float, str]]]:
    """Run `command`, its output lines each with the seconds since the start; (total, lines)."""
    env = os.environ | {"PYTHONPATH": str(cwd), "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = [(time.monotonic() - started, line.rstrip()) for line in process.stdout]
    if process.wait() != 0:
        tail = "\n".join(line for _, line in lines[-20:])
        raise SystemExit(f"exp_loop: {' '.join(command)} exited {process.returncode}:\n{tail}")
    return time.monotonic() - started, lines


def stage_seconds(total: float, lines: list[tuple[float, str]]) -> dict[str, float]:
    """Seconds from each 'Running stage' line to the next (the last to the end of the command);
    'before stages' is DVC's start and its copy of the workspace."""
    starts = [(at, match.group(1)) for at, line in lines if (match := STAGE_LINE.search(line))]
    seconds = {"before stages": starts[0][0] if starts else total}
    for (at, name), (next_at, _) in zip(starts, starts[1:] + [(total, "")]):
        seconds[name] = next_at - at
    return seconds


def import_seconds(cwd: Path) -> dict[str, float]:
    """Each stage module imported alone in a fresh Python (what every stage pays before its work)."""
    env = os.environ | {"PYTHONPATH": str(cwd), "TF_CPP_MIN_LOG_LEVEL": "2"}
    found = {}
    for stage, statement in IMPORTS.items():
        started = time.monotonic()
        subprocess.run([sys.executable, "-c", statement], cwd=cwd, env=env, check=True, capture_output=True)
        found[stage] = time.monotonic() - started
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=2, help="experiments one after another (the first pays the data)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="exp-loop-") as folder:
        lab = Path(folder) / "lab"
        copy_tracked_files(REPO, lab)
        commit_fresh_repo(lab, "exp loop")
        print(f"exp_loop: a fresh copy in {lab}; the data stages once (make repro's first stages)", flush=True)
        seconds, _ = timed_lines(["dvc", "repro", "split"], lab)
        print(f"  dvc repro split: {seconds:.1f} s", flush=True)
        subprocess.run(["git", "add", "-A"], cwd=lab, check=True)
        subprocess.run(["git", "commit", "-qm", "data"], cwd=lab, check=True)
        for index in range(args.repeat):
            change = [f"train.epochs={args.epochs}", f"train.seed={index + 1}"]
            total, lines = timed_lines([sys.executable, "-m", "tools.exp", *change], lab)
            print(f'make exp S="{" ".join(change)}": {total:.1f} s', flush=True)
            for name, part in stage_seconds(total, lines).items():
                print(f"  {name:<14} {part:6.1f} s", flush=True)
        print("each stage's imports alone, in a fresh Python:", flush=True)
        for stage, part in import_seconds(lab).items():
            print(f"  {stage:<14} {part:6.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
