"""A fresh copy of the project as a first-run git repo: for the tests and the benchmark's dvc repro."""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
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


def copy_files_at(source: Path, rev: str, target: Path) -> None:
    """Copy the files git tracked in `source` at commit `rev` (less LEFT_OUT) into `target`: an
    older version of the lab, for a same-day before/after measurement."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", rev], cwd=source, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and not m.name.startswith(LEFT_OUT)]
        tar.extractall(target, members=members, filter="data")


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
