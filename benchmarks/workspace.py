"""A fresh copy of the project as a first-run git repo: for the tests and the benchmark's dvc repro."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

# a copy starts as a first run: no lock file, no metrics of an earlier run
LEFT_OUT = ("metrics/", "dvc.lock")


def copy_tracked_files(source: Path, target: Path) -> None:
    """Copy the files git tracks in `source` (less LEFT_OUT) into `target`."""
    tracked = subprocess.run(["git", "ls-files"], cwd=source, capture_output=True, text=True, check=True).stdout.split()
    for name in tracked:
        if (source / name).is_file() and not name.startswith(LEFT_OUT):
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, target / name)


def commit_fresh_repo(target: Path, message: str) -> None:
    """`git init` in target and commit everything there. The repo keeps a local identity, because
    DVC experiments and tests commit in it again."""
    for command in (
        ["git", "init", "-q", "-b", "main"],
        ["git", "config", "user.name", "spikelab"],
        ["git", "config", "user.email", "spikelab@spikelab.invalid"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", message],
    ):
        subprocess.run(command, cwd=target, check=True, capture_output=True)
