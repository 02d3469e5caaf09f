"""The user errors of the lab, and the one way every entry point reports them.

A user error is a bad input the user can fix (params.yaml, a stage input, the tracking store, a
sweep file): it is shown as one line, `error: <message>`, with exit status 2 and no traceback.
Kept free of heavy imports: generate and split never load TensorFlow or MLflow, and a bad
params.yaml is reported before anything heavy loads.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable
from pathlib import Path


class UserError(Exception):
    """A bad input the user can fix; the message is shown as is, on one line."""


class ParamsError(UserError, ValueError):
    """A bad value in params.yaml; the message names the key, the value and what is allowed."""


class InputError(UserError):
    """A missing or unreadable stage input; the message names the file and the stage to re-run."""


class TrackingError(UserError):
    """The tracking store cannot be used; raised before any training starts."""


class DiskFullError(UserError, OSError):
    """A write that found its device full; the message names the path and the space it needs."""


# ENOSPC (no space left), EDQUOT (quota exceeded); sqlite and MLflow report them in words only
DISK_FULL_ERRNOS = (28, 122)
DISK_FULL_WORDS = ("No space left on device", "database or disk is full", "Disk quota exceeded")


def disk_full_in(error: BaseException | None) -> BaseException | None:
    """The disk-full error in error's chain (causes and contexts), or None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, DiskFullError) or (isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS):
            return error
        if any(words in str(error) for words in DISK_FULL_WORDS):
            return error
        error = error.__cause__ or error.__context__
    return None


def human_bytes(count: float) -> str:
    if count < 1000:
        return f"{count:.0f} bytes"
    for unit in ("KB", "MB", "GB", "TB", "PB"):
        count /= 1000
        if count < 1000 or unit == "PB":
            return f"{count:.1f} {unit}"


def disk_full_error(path, needed_bytes: float, what: str = "") -> DiskFullError:
    """The one-line error for a write to `path` that found its device full: the path, the space the
    write needs (about), the space free there, and what to do."""
    import shutil

    where = Path(path).absolute()
    existing = next((folder for folder in (where, *where.parents) if folder.exists()), Path("/"))
    free = shutil.disk_usage(existing).free
    return DiskFullError(
        f"{path}: no space left on its device{' ' + what if what else ''}: it needs about "
        f"{human_bytes(needed_bytes)}, {human_bytes(free)} free there; free space (or move the folder to "
        "a larger disk) and run it again"
    )


# a message quotes at most this many characters of a value (a 10 MB value is refused, not echoed)
MAX_QUOTED = 200


def quoted(value, as_written: bool = False) -> str:
    """repr(value) (str(value) when as_written), at most MAX_QUOTED characters of it; a longer one
    ends '...' and its length."""
    text = str(value) if as_written else repr(value)
    if len(text) <= MAX_QUOTED:
        return text
    return f"{text[:MAX_QUOTED]}... ({len(text):,} characters)"


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def one_line_shortened(error: BaseException, limit: int) -> str:
    """one_line(error), at most about `limit` characters, cut between words (a word cut in half can
    read as another word or a wrong number), ' ...' marking the cut."""
    text = one_line(error)
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit)
    return (text[:cut] if cut > 0 else text[:limit]) + " ..."


def removed_outputs_hint(stage: str, dvc_yaml: str = "dvc.yaml") -> str:
    """How to get back the outputs of `stage` that are missing now: DVC deletes a stage's outputs
    before running it, so a stage that refuses its inputs leaves none ("" when none is missing).

    The restore must give one run: `dvc checkout` brings back the cached outputs dvc.lock names (the
    last run's), git the uncached ones (`cache: false`) of the last commit. Where dvc.lock's hashes
    of the uncached ones are the committed files' (the last run was committed), the two agree;
    otherwise the last run's uncached outputs exist nowhere, and the line restores the last
    committed run whole (dvc.lock too) or re-runs the stage."""
    from ruamel.yaml import YAML  # not spikelab.params' reader: params imports this module
    from ruamel.yaml.error import YAMLError

    try:
        declared = YAML(typ="safe", pure=True).load(Path(dvc_yaml).read_text())["stages"][stage]
    except (OSError, YAMLError, KeyError, TypeError):
        return ""
    gone, uncached = [], []
    for kind in ("outs", "metrics", "plots"):
        for entry in declared.get(kind) or []:
            path, options = next(iter(entry.items())) if isinstance(entry, dict) else (entry, {})
            if not Path(path).exists():
                gone.append(path)
                if (options or {}).get("cache") is False:
                    uncached.append(path)
    if not gone:
        return ""
    deleted = f"; DVC deleted the {stage} stage's outputs before it ran ({', '.join(gone)}): "
    if uncached and not _committed_as_locked(stage, uncached, Path(dvc_yaml).with_suffix(".lock")):
        return deleted + (
            f"the last run's {' '.join(uncached)} (cache: false) were never committed, so that run cannot be "
            f"restored: `git checkout HEAD -- dvc.lock {' '.join(uncached)}` and `dvc checkout --force {stage}` "
            f"restore the last committed run whole, or `dvc repro {stage}` runs it again"
        )
    restore = f"`dvc checkout --force {stage}`"
    if uncached:  # not in DVC's cache: in git
        restore += f" and `git checkout HEAD -- {' '.join(uncached)}`"
    return deleted + f"{restore} restores the last committed ones"


def _committed_as_locked(stage: str, paths: list[str], lock: Path) -> bool:
    """Whether git's HEAD holds each of `paths` with the md5 dvc.lock records for it; True when
    there is no lock to compare with (nothing else to offer then)."""
    import hashlib
    import subprocess

    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        outs = YAML(typ="safe", pure=True).load(lock.read_text())["stages"][stage]["outs"]
        locked = {entry["path"]: entry.get("md5") for entry in outs}
    except (OSError, YAMLError, KeyError, TypeError):
        return True
    for path in paths:
        try:
            shown = subprocess.run(
                ["git", "show", f"HEAD:./{path}"], cwd=lock.parent or ".", capture_output=True, timeout=30
            )
        except (OSError, subprocess.SubprocessError):
            return False
        if shown.returncode != 0 or hashlib.md5(shown.stdout).hexdigest() != locked.get(path):
            return False
    return True


def exit_code_of(main: Callable[[], int | None], stage: str | None = None) -> int:
    """Call main(); a user error prints `error: <message>` on one line and gives 2. For a pipeline
    stage the line also says how to restore the outputs DVC deleted before running it."""
    try:
        return main() or 0
    except UserError as error:
        print("error: " + one_line(error) + (removed_outputs_hint(stage) if stage else ""), file=sys.stderr)
        return 2


def run_entry_point(main: Callable[[], int | None], stage: str | None = None) -> None:
    """`if __name__ == "__main__": run_entry_point(main)` for every tool; a stage names itself."""
    code = exit_code_of(main, stage)
    # the interpreter's last garbage collection walks every object TensorFlow, Keras and MLflow
    # made, about a second of each stage's exit. Frozen objects are skipped; the work is done,
    # files are closed, and atexit handlers still run
    gc.freeze()
    sys.exit(code)
