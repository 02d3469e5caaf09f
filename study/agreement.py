"""Do the two engines agree? Each cell's spike and stayed-up rates from the population engine beside
the committed per-run evidence study's, on the same seeds and dataset, with Fisher's exact p.

    python -m study.agreement [--sweep study/agreement.yaml] [--against study/results/evidence_runs.csv]
                              # -> study/results/<prefix>_engines.md / .csv

Reads <prefix>_runs.csv (what `python -m study.report --engine population` wrote for the sweep) and
the committed rows; a cell pairs with the committed cell of the same name. The members are the
seeds' runs only up to float tolerance (chaos separates them later), so agreement is judged on
rates: a p above 0.05 is "no detectable difference". Each p is given unadjusted: for an agreement
check a correction would only make a difference harder to see.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from spikelab.plumbing.errors import UserError, run_entry_point
from study.report import RESULTS, read_records
from study.stats import fisher_exact, wilson_interval
from study.sweep import load_sweep, run_prefix
from study.tables import markdown_table, write_csv, write_text

COLUMNS = (
    "cell",
    "runs (per-run / population)",
    "spiked, per-run",
    "spiked, population",
    "spike p",
    "stayed up, per-run",
    "stayed up, population",
    "stayed-up p",
    "median jump_ratio of the runs that spiked, per-run / population",
)


def _count(records: list[dict], key: str) -> int:
    return sum(1 for record in records if record.get(key) is True)


def _rate(successes: int, trials: int) -> str:
    low, high = wilson_interval(successes, trials) or (float("nan"), float("nan"))
    return f"{successes}/{trials} [{low:.2f}, {high:.2f}]"


def _median_jump(records: list[dict]) -> str:
    jumps = sorted(
        r["jump_ratio"] for r in records if r.get("diverged") is True and isinstance(r.get("jump_ratio"), float)
    )
    if not jumps:
        return "—"
    middle = len(jumps) // 2
    value = jumps[middle] if len(jumps) % 2 else (jumps[middle - 1] + jumps[middle]) / 2
    return f"{value:.3g}"


def compare(population: list[dict], per_run: list[dict]) -> list[dict]:
    """One row per cell with finished population runs, paired with the finished per-run rows of the same cell."""
    rows = []
    population = [r for r in population if r.get("state") == "success"]  # a member not finished is no run yet
    for cell in dict.fromkeys(record["cell"] for record in population):
        mine = [r for r in population if r["cell"] == cell]
        theirs = [r for r in per_run if r["cell"] == cell and r.get("state") == "success"]
        if not theirs:
            raise UserError(
                f"agreement: the committed rows have no cell {cell!r}; name the cells as the evidence study does"
            )
        row = {"cell": cell, "runs (per-run / population)": f"{len(theirs)} / {len(mine)}"}
        for label, key, p_key in (("spiked", "diverged", "spike p"), ("stayed up", "plateaued", "stayed-up p")):
            a, b = _count(theirs, key), _count(mine, key)
            row[f"{label}, per-run"] = _rate(a, len(theirs))
            row[f"{label}, population"] = _rate(b, len(mine))
            p = fisher_exact(a, len(theirs), b, len(mine))
            row[p_key] = f"{p:.3g}" if p is not None else "—"
        row["median jump_ratio of the runs that spiked, per-run / population"] = (
            f"{_median_jump(theirs)} / {_median_jump(mine)}"
        )
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.agreement", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", type=Path, default=Path("study/agreement.yaml"))
    parser.add_argument("--against", type=Path, default=RESULTS / "evidence_runs.csv")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    prefix = run_prefix(load_sweep(args.sweep), False)
    mine_path = args.results / f"{prefix}_runs.csv"
    for path, how in (
        (mine_path, f"python -m study.report --sweep {args.sweep} --engine population"),
        (args.against, "git checkout it"),
    ):
        if not path.exists():
            raise UserError(f"agreement: {path} not found; run `{how}` first")
    rows = compare(read_records(mine_path), read_records(args.against))
    table = markdown_table(rows, [(column, column) for column in COLUMNS])
    write_csv(args.results / f"{prefix}_engines.csv", rows, COLUMNS)
    write_text(
        args.results / f"{prefix}_engines.md",
        "# The population engine against the per-run evidence study\n\n"
        f"`python -m study.agreement --sweep {args.sweep}`: the same cells, train seeds and dataset; rates with 95% "
        "Wilson intervals; p: Fisher's exact test, unadjusted (a correction would only hide a difference).\n\n"
        + table
        + "\n",
    )
    print(table)
    return 0


if __name__ == "__main__":
    run_entry_point(main)
