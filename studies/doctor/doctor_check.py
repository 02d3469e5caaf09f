"""The spike doctor against the evidence study's own labels (issue 26).

    python -m studies.doctor.doctor_check [--sweep studies/evidence/sweep.yaml]   # -> studies/doctor/results/doctor_confusion.md

Reads the report's files (<prefix>_runs.csv, <prefix>_histories.csv.gz, in the sweep's own results), diagnoses every finished
run from its history alone (spikelab.verdict, the rules of params.yaml) and compares with the
labels the study gave each run:
- spiked: the run's `diverged` (the divergence rule, on the train stage's side);
- stayed up: its `plateaued` (the plateau rule, the rules stage's side);
- dead-zone plateau: plateaued AND at least DEAD_FRACTION of the training set dead at the end.
The diagnosis's side: spiked = at least one spike found; stayed up = a spike that stayed up; dead-zone
plateau = a spike diagnosed as the dead zone that stayed up. Then the mechanism per cell: which
verdict each cell's spikes got, beside the mechanism the study's design puts there.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from spikelab.params import load_params
from spikelab.plumbing.errors import UserError, run_entry_point
from spikelab.verdict import DEAD_FRACTION, MECHANISMS, diagnose
from study.report import read_histories, read_records
from study.stats import wilson_interval
from study.sweep import STUDIES, load_sweep, results_of, run_prefix, study_results
from study.tables import markdown_table, write_text

# what the study's design puts in each cell (docs/findings.md): the Adam spike at the default
# configuration; the dead zone in the clipped plateau configuration, whatever the optimizer
EXPECTED = {
    "baseline": "adam_step",
    "eps-1e-3": "adam_step",
    "eps-1e-2": "adam_step",
    "bce-keras3": "adam_step",
    "clipnorm-1": "adam_step",
    "plateau": "dead_zone",
    "plateau-amsgrad": "dead_zone",
}


def labels(record: dict) -> dict[str, bool]:
    dead = record.get("final_dead_fraction") or 0.0
    return {
        "spiked": bool(record["diverged"]),
        "stayed up": bool(record["plateaued"]),
        "dead-zone plateau": bool(record["plateaued"]) and dead >= DEAD_FRACTION,
    }


def verdicts(diagnosis) -> dict[str, bool]:
    spikes = [v for v in diagnosis.verdicts if v.mechanism != "broken_from_start"]
    return {
        "spiked": bool(spikes),
        "stayed up": any(v.stayed_up for v in spikes),
        "dead-zone plateau": any(v.stayed_up and v.mechanism == "dead_zone" for v in spikes),
    }


def confusion(pairs: list[tuple[bool, bool]]) -> dict:
    """(label, diagnosis) pairs -> the 2x2 counts, agreement, recall and precision."""
    counts = Counter(pairs)
    both, label_only, diag_only, neither = (
        counts[True, True],
        counts[True, False],
        counts[False, True],
        counts[False, False],
    )
    total = len(pairs)

    def rate(k: int, n: int) -> str:
        if n == 0:
            return "—"
        low, high = wilson_interval(k, n)
        return f"{k}/{n} = {k / n:.2f} [{low:.2f}, {high:.2f}]"

    return {
        "label yes, doctor yes": both,
        "label yes, doctor no": label_only,
        "label no, doctor yes": diag_only,
        "label no, doctor no": neither,
        "agreement": rate(both + neither, total),
        "recall": rate(both, both + label_only),
        "precision": rate(both, both + diag_only),
    }


def mechanism_rows(cells: list[str], diagnoses: dict[str, tuple[str, object]]) -> list[dict]:
    rows = []
    for cell in cells:
        found = [d for c, d in diagnoses.values() if c == cell]
        spikes = Counter(v.mechanism for d in found for v in d.verdicts)
        total = sum(count for name, count in spikes.items() if name != "broken_from_start")
        expected = EXPECTED.get(cell)
        row = {"cell": cell, "runs": len(found), "spikes": total, "expected": expected or "—"}
        row.update({name: spikes.get(name, 0) for name in MECHANISMS})
        if expected and total:
            low, high = wilson_interval(spikes[expected], total)
            row["as expected"] = f"{spikes[expected]}/{total} = {spikes[expected] / total:.2f} [{low:.2f}, {high:.2f}]"
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.doctor.doctor_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", type=Path, default=STUDIES / "evidence" / "sweep.yaml")
    parser.add_argument("--results", type=Path, default=study_results("doctor"), help="where the table goes")
    args = parser.parse_args(argv)
    sweep = load_sweep(args.sweep)
    prefix = run_prefix(sweep, quick=False)
    rows_of = results_of(args.sweep)
    histories = read_histories(rows_of / f"{prefix}_histories.csv.gz")
    if not histories:
        raise UserError(
            f"doctor_check: no {prefix}_histories.csv.gz in {rows_of}; run `python -m study.report --sweep {args.sweep}`"
        )
    params = load_params()
    records = [r for r in read_records(rows_of / f"{prefix}_runs.csv") if r["state"] == "success"]
    diagnoses = {
        r["name"]: (r["cell"], diagnose(histories[r["name"]], params.divergence, params.plateau)) for r in records
    }
    sections = []
    for question in ("spiked", "stayed up", "dead-zone plateau"):
        pairs = [(labels(r)[question], verdicts(diagnoses[r["name"]][1])[question]) for r in records]
        table = confusion(pairs)
        sections.append(f"### {question}\n\n" + markdown_table([table], [(key, key) for key in table]))
    cells = list(sweep.get("cells") or {})
    rows = mechanism_rows(cells, diagnoses)
    columns = [("cell", "cell"), ("runs", "runs"), ("spikes", "spikes"), ("expected", "design's mechanism")]
    columns += [(name, name) for name in MECHANISMS] + [("as expected", "diagnosed as the design's")]
    text = (
        f"# The spike doctor on `{prefix}`: {len(records)} labelled runs\n\n"
        "Written by `python -m studies.doctor.doctor_check`; definitions in its docstring (studies/doctor/doctor_check.py) and in "
        "spikelab/verdict.py. Rates with 95% Wilson intervals.\n\n"
        "## Diagnosis against the study's labels\n\n" + "\n".join(sections) + "\n## Mechanism per cell (spikes)\n\n"
        "One verdict per spike onset (a run can spike more than once). The design's mechanism: the Adam spike "
        "in the default configuration's Adam cells, the dead zone in the clipped plateau configuration.\n\n"
        + markdown_table(rows, columns)
    )
    write_text(args.results / "doctor_confusion.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    run_entry_point(main)
