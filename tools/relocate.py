"""`make relocate`: point the project's MLflow store at this folder after the project moved.

    python -m tools.relocate

The store (<root>/mlflow.db) records absolute artifact folders: every experiment's and run's
`<old root>/mlruns/...`. After a move, a rename or a copy of the project, new runs would write into
the old folder (the train stage refuses to, and names this command). The artifacts themselves
moved with the project (mlruns/ is inside it); this rewrites the recorded folders from the old root
to this one. Running it again changes nothing.
"""

from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path

from spikelab.plumbing.errors import UserError, run_entry_point

# (table, column) holding an absolute artifact folder, in MLflow 3's sqlite schema
LOCATIONS = (("experiments", "artifact_location"), ("runs", "artifact_uri"), ("logged_models", "artifact_location"))


class RelocateError(UserError, ValueError):
    """No store here, or one that names no other folder."""


def old_roots(connection: sqlite3.Connection, root: Path) -> set[Path]:
    """The project folders, other than root, that the store's experiments keep their artifacts in."""
    found = set()
    for (location,) in connection.execute("SELECT artifact_location FROM experiments"):
        path = Path(location.removeprefix("file://"))
        if "mlruns" in path.parts and not path.is_relative_to(root):
            found.add(Path(*path.parts[: path.parts.index("mlruns")]))
    return found


def relocate(store: Path, root: Path) -> dict[str, int]:
    """Rewrite every recorded artifact folder under an old root's mlruns/ to root's; rows changed per table."""
    changed: dict[str, int] = {}
    with sqlite3.connect(store) as connection:
        tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for old in old_roots(connection, root):
            for prefix_old, prefix_new in (
                (f"file://{old}/mlruns/", f"file://{root}/mlruns/"),
                (f"{old}/mlruns/", f"{root}/mlruns/"),
            ):
                for table, column in (pair for pair in LOCATIONS if pair[0] in tables):
                    cursor = connection.execute(
                        f"UPDATE {table} SET {column} = ? || substr({column}, ?) WHERE substr({column}, 1, ?) = ?",
                        (prefix_new, len(prefix_old) + 1, len(prefix_old), prefix_old),
                    )
                    changed[table] = changed.get(table, 0) + cursor.rowcount
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.relocate", description=__doc__.split("\n\n")[0])
    parser.parse_args(argv)
    root = Path.cwd().resolve()
    store = root / "mlflow.db"
    if not store.exists():
        raise RelocateError(f"no MLflow store at {store}: run make relocate from the project root")
    with sqlite3.connect(store) as connection:
        olds = old_roots(connection, root)
    if not olds:
        print(f"relocate: {store} already keeps its artifacts in {root / 'mlruns'}: nothing to change")
        return 0
    changed = relocate(store, root)
    print(
        f"relocate: {store}: artifact folders moved from {', '.join(map(str, sorted(olds)))} to {root} "
        f"({', '.join(f'{count} {table}' for table, count in changed.items() if count)})"
    )
    return 0


if __name__ == "__main__":
    run_entry_point(main)
