"""File I/O with the two guarantees the stages need: no half-written output, clear input errors."""

from __future__ import annotations

import contextlib
import json
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from spikelab.plumbing.errors import InputError
from spikelab.plumbing.integrity import damage


def project_root(start: Path | None = None) -> Path:
    """The repo root, seen through DVC's experiment copies (<root>/.dvc/tmp/exps/...)."""
    here = (start or Path.cwd()).resolve()
    parts = here.parts
    if ".dvc" in parts:
        index = parts.index(".dvc")
        if parts[index + 1 : index + 3] == ("tmp", "exps"):
            return Path(*parts[:index])
    return here


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary sibling path; rename it onto `path` only if the block succeeds.

    The temporary name keeps the suffix, because Keras and numpy pick the format from it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | os.PathLike, payload: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, allow_nan=False) + "\n")


def write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)


def read_npz(path: str | os.PathLike, keys: tuple[str, ...], produced_by: str) -> dict[str, np.ndarray]:
    """Load the named arrays, or raise InputError saying which stage makes the file."""
    hint = f"re-run the '{produced_by}' stage: dvc repro {produced_by}"
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: missing; {hint}")
    try:
        with np.load(path) as archive:
            missing = [key for key in keys if key not in archive.files]
            if missing:
                raise InputError(f"{path}: lacks arrays {', '.join(missing)}; {hint}")
            return {key: archive[key] for key in keys}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:  # zlib: corrupt, not cut short
        raise InputError(f"{path}: unreadable, truncated or corrupt ({error}); {damage(path) or hint}") from None
