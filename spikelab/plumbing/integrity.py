"""Which stored copy of a DVC output is damaged, and the repair that works: `make verify`.

    python -m spikelab.plumbing.integrity        (make verify)

DVC keeps each output twice: the file in the workspace and its object in the cache
(.dvc/cache/files/md5/<first 2 hex>/<rest>, named by the md5 dvc.lock records). A cache object
corrupted in place (bit rot: same file, same mtime) is the treacherous case, checked with DVC
3.67: DVC trusts it, so `dvc status` says up to date, `dvc checkout` copies it back, `dvc repro
<stage>` skips the stage, and even `dvc repro -f <stage>` re-runs it and then copies the corrupt
object over the fresh output. The repair is to delete the object first:
`rm <object> && dvc repro -f <stage>`. (A damage that changes the object's mtime DVC notices; a
damaged workspace copy with an intact object needs only `dvc checkout <path>`.)

`damage(path)` says which case an input that failed to load is in; `main` checks every output
dvc.lock records (a directory output's files too) and prints one line per damaged copy.
Kept free of heavy imports: the stages call it on an input error, before anything heavy loads.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from spikelab.params import read_yaml
from spikelab.plumbing.errors import run_entry_point

CACHE = Path(".dvc/cache/files/md5")


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_object(md5: str, root: Path) -> Path:
    return root / CACHE / md5[:2] / md5[2:]


def uncached_outputs(root: Path) -> set[str]:
    """The outputs dvc.yaml declares `cache: false`: git keeps them, DVC keeps no cache object of them
    (its run cache may hold one, or not), so they have no cache copy to verify."""
    pipeline = root / "dvc.yaml"
    stages = ((read_yaml(pipeline, "dvc.yaml") or {}).get("stages") or {}) if pipeline.is_file() else {}
    found = set()
    for stage in stages.values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind) or []:
                if isinstance(entry, dict):
                    found |= {path for path, flags in entry.items() if (flags or {}).get("cache") is False}
    return found


def locked_outputs(root: Path) -> dict[str, tuple[str, str]]:
    """{output path: (stage, md5)} of the cached outputs dvc.lock records; {} without one. A
    directory's md5 ends in .dir."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        return {}
    stages = (read_yaml(lock, "dvc.lock") or {}).get("stages") or {}
    uncached = uncached_outputs(root)
    return {
        out["path"]: (name, out["md5"])
        for name, stage in stages.items()
        for out in stage.get("outs") or []
        if out["path"] not in uncached
    }


def _object_problem(md5: str, root: Path) -> str | None:
    """Why the cache object named md5 is unusable, or None when it is intact."""
    found = cache_object(md5, root)
    if not found.is_file():
        return f"the DVC cache object {found.relative_to(root)} is missing"
    actual = file_md5(found)
    if actual != md5.removesuffix(".dir"):
        return f"the DVC cache object {found.relative_to(root)} is corrupt (its md5 is {actual}, not {md5})"
    return None


def damage(path: str | os.PathLike, root: Path | None = None) -> str | None:
    """For an input that failed to load: which copy is damaged and the repair, in one clause; None
    when dvc.lock does not record the file or the file matches it (the damage is not DVC's)."""
    root = root or Path.cwd()
    relative = Path(os.path.relpath(Path(path).resolve(), root.resolve())).as_posix()
    entry = locked_outputs(root).get(relative)
    if entry is None or not Path(path).is_file():
        return None
    stage, md5 = entry
    actual = file_md5(Path(path))
    if actual == md5:
        return None
    problem = _object_problem(md5, root)
    mismatch = f"its md5 {actual} differs from dvc.lock's {md5}"
    if problem is None:
        return (
            f"{mismatch}; DVC's cache copy is intact: dvc checkout {relative} (or re-run '{stage}': dvc repro {stage})"
        )
    return f"{mismatch} and {problem}: rm {cache_object(md5, root).relative_to(root)} && dvc repro -f {stage}"


def problems(root: Path) -> list[str]:
    """One line per damaged copy of every output dvc.lock records."""
    found = []
    for relative, (stage, md5) in sorted(locked_outputs(root).items()):
        problem = _object_problem(md5, root)
        if problem is not None:
            found.append(
                f"{relative} ({stage}): {problem}; repair: rm -f {CACHE / md5[:2] / md5[2:]} && dvc repro -f {stage}"
            )
            continue
        if not md5.endswith(".dir"):
            if (root / relative).is_file() and file_md5(root / relative) != md5:
                found.append(f"{relative} ({stage}): differs from dvc.lock; repair: dvc checkout {relative}")
            continue
        for item in json.loads(cache_object(md5, root).read_text()):
            inner = f"{relative}/{item['relpath']}"
            problem = _object_problem(item["md5"], root)
            if problem is not None:
                repair = f"rm -f {CACHE / item['md5'][:2] / item['md5'][2:]} && dvc repro -f {stage}"
                found.append(f"{inner} ({stage}): {problem}; repair: {repair}")
            elif (root / inner).is_file() and file_md5(root / inner) != item["md5"]:
                found.append(f"{inner} ({stage}): differs from dvc.lock; repair: dvc checkout {relative}")
    return found


def main() -> int:
    root = Path.cwd()
    found = problems(root)
    for line in found:
        print(f"verify: {line}")
    print(f"verify: {len(locked_outputs(root))} outputs in dvc.lock checked, {len(found)} damaged copies")
    return 1 if found else 0


if __name__ == "__main__":
    run_entry_point(main)
