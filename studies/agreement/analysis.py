"""Do the two engines agree? Each cell's spike and stayed-up rates from the population engine beside
the committed per-run evidence study's, on the same seeds and dataset, with Fisher's exact p.

    python -m studies.agreement.analysis [--sweep studies/agreement/sweep.yaml]
        [--against studies/evidence/results/evidence_runs.csv]   # -> results/<prefix>_engines.md / .csv

Reads <prefix>_runs.csv (what `python -m study.report --engine population` wrote for the sweep) and
the committed rows; a cell pairs with the committed cell of the same name. The members are the
seeds' runs only up to float tolerance (chaos separates them later), so agreement is judged on
rates: a p above 0.05 is "no detectable difference". Each p is given unadjusted (for an agreement
check a correction only makes a difference harder to see) and Holm-adjusted over every p of the
table (spike and stayed-up, all cells: one family), the verdict pre-registered for the 13-cell run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from spikelab.plumbing.errors import UserError, run_entry_point
from study.report import read_records, summarize
from study.stats import fisher_exact, holm, wilson_interval
from study.sweep import STUDIES, load_sweep, results_of, run_prefix, study_results
from study.tables import markdown_table, write_csv, write_text

COLUMNS = (
    "cell",
    "runs (per-run / population)",
    "spiked, per-run",
    "spiked, population",
    "spike p",
    "spike p, Holm",
    "stayed up, per-run",
    "stayed up, population",
    "stayed-up p",
    "stayed-up p, Holm",
    "median jump_ratio of the runs that spiked, per-run / population",
)


def _rate(successes: int, trials: int) -> str:
    low, high = wilson_interval(successes, trials) or (float("nan"), float("nan"))
    return f"{successes}/{trials} [{low:.2f}, {high:.2f}]"


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def compare(population: list[dict], per_run: list[dict]) -> list[dict]:
    """One row per cell with finished population runs, beside the committed per-run rows of the same
    cell; both sides counted as the study's tables count them (report.summarize)."""
    rows, raw = [], []
    for cell in dict.fromkeys(r["cell"] for r in population if r["state"] == "success"):
        committed = [r for r in per_run if r["cell"] == cell]
        if not committed:
            raise UserError(
                f"agreement: the committed rows have no cell {cell!r}; name the cells as the evidence study does"
            )
        theirs, mine = summarize(committed), summarize([r for r in population if r["cell"] == cell])
        row = {"cell": cell, "runs (per-run / population)": f"{theirs['n_runs']} / {mine['n_runs']}"}
        for label, count, p_key in (("spiked", "n_diverged", "spike p"), ("stayed up", "n_plateaued", "stayed-up p")):
            row[f"{label}, per-run"] = _rate(theirs[count], theirs["n_runs"])
            row[f"{label}, population"] = _rate(mine[count], mine["n_runs"])
            p = fisher_exact(theirs[count], theirs["n_runs"], mine[count], mine["n_runs"])
            row[p_key] = _number(p)
            raw.append((row, p_key, p))
        row["median jump_ratio of the runs that spiked, per-run / population"] = (
            f"{_number(theirs['median_jump_ratio'])} / {_number(mine['median_jump_ratio'])}"
        )
        rows.append(row)
    for (row, p_key, _), adjusted in zip(raw, holm([p for _, _, p in raw])):
        row[f"{p_key}, Holm"] = _number(adjusted)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.agreement.analysis", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", type=Path, default=STUDIES / "agreement" / "sweep.yaml")
    parser.add_argument("--against", type=Path, default=study_results("evidence") / "evidence_runs.csv")
    parser.add_argument("--results", type=Path, help="the study's results folder (default: results/ beside the sweep)")
    args = parser.parse_args(argv)
    args.results = args.results or results_of(args.sweep)
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
        f"`python -m studies.agreement.analysis --sweep {args.sweep}`: the same cells, train seeds and dataset; rates with 95% "
        "Wilson intervals; p: Fisher's exact test, unadjusted, and Holm-adjusted over every p of this table.\n\n"
        + table
        + "\n",
    )
    print(table)
    return 0


if __name__ == "__main__":
    run_entry_point(main)
