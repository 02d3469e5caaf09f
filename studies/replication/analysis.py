"""The replication table: every verdict of the original study beside the replication's, judged by
the rule PREREGISTRATION.md (beside this file) fixed before the replication ran.

    python -m studies.replication.analysis [--verdicts-only]
        # the spike predictors on the replication's runs (python -m study.predictors), then
        # -> studies/replication/results/<replication prefix>_verdicts.md / .csv, and the study's
        #    figure <replication prefix>.png redrawn with each cell's verdicts marked beside its bar

Reads what `python -m study.report` and `python -m study.predictors` wrote for both sweeps, each in
its own study's results (<prefix>.csv, <prefix>_jumps.csv, <prefix>_predictors.csv: the evidence
study's and the replication's) and pairs the rows by family and cell (or predictor, target and
horizon). Judgement (PREREGISTRATION.md): a significant original
verdict (Holm p < 0.05) is *replicated* when the replication's verdict is the same, *not
replicated* when the replication finds no detectable difference, *contradicted* when it points the
other way; a not-significant original verdict is *still not significant* or *now significant*
(a new finding of the replication, not a replicated one). A row the replication lacks is *not run*.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from spikelab.plumbing.errors import UserError, run_entry_point
from study.predictors import main as predictors
from study.predictors import verdict as predictor_verdict
from study.report import redraw_study
from study.sweep import STUDIES, load_sweep, results_of, run_prefix
from study.tables import markdown_table, write_csv, write_text

NULL = "no detectable difference"
NOT_SIGNIFICANT = ("no detectable difference", "not distinguishable from chance")
OPPOSITE = {"fewer": "more", "more": "fewer", "smaller": "larger", "larger": "smaller"}
OPPOSITE |= {"above chance": "below chance", "below chance": "above chance"} | {v: k for k, v in OPPOSITE.items()}
# a cell's verdicts beside its bar: what the original study found, and whether the replication did
MARKS = {"replicated": "✓", "not replicated": "✗", "contradicted": "✗ contradicted:"}
WHAT = {"spike rate": "spikes", "stayed-up rate": "stay up", "largest jump": "jumps"}
COLUMNS = (
    "claim",
    "family",
    "comparison",
    "original",
    "original verdict",
    "replication",
    "replication verdict",
    "judgement",
)
# PREREGISTRATION.md's table lists every spike-rate, stayed-up and largest-jump comparison (rows
# 1-27) but only these five of the 32 predictor rows (28-32): the other predictor rows are
# exploratory, reported apart and never counted with the claims
PREREGISTERED_PREDICTORS = (
    "lambda_grad > 2/lr, first spike, K = 5",
    "lambda_grad > 38/lr, first spike, K = 5",
    "lambda_max > 2/lr, first spike, K = 5",
    "g2_over_v_rms > 1, first spike, K = 5",
    "naive: loss > 2x lowest so far, first spike, K = 5",
)


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        raise UserError(
            f"replicate: {path} not found; run `python -m study.report --from-files` and `python -m study.predictors` for that sweep first"
        )
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _number(text: str) -> str:
    return f"{float(text):.3g}" if text not in ("", None) else "—"


def verdicts(results: Path, prefix: str) -> dict[tuple[str, str], tuple[str, str]]:
    """{(family, comparison): (what was measured, verdict)} from one sweep's files."""
    found = {}
    for row in _rows(results / f"{prefix}.csv"):
        if not row["reference"]:
            continue
        comparison = f"{row['cell']} vs {row['reference']}"
        for family, text, p_key, words in (
            ("spike rate", "divergence_rate_text", "divergence_p", "divergence_verdict"),
            ("stayed-up rate", "plateau_rate_text", "plateau_p", "plateau_verdict"),
        ):
            if row[words]:
                measured = f"{row[text]}, p {_number(row[p_key])}, Holm {_number(row[p_key + '_holm'])}"
                found[(family, comparison)] = (measured, row[words])
    for row in _rows(results / f"{prefix}_jumps.csv"):
        if row["reference"] and row["jump_verdict"]:
            measured = (
                f"median {_number(row['median_jump'])}, p {_number(row['jump_p'])}, Holm {_number(row['jump_p_holm'])}"
            )
            found[("largest jump", f"{row['cell']} vs {row['reference']}")] = (measured, row["jump_verdict"])
    for row in _rows(results / f"{prefix}_predictors.csv"):
        lift = float(row["lift"]) if row["lift"] else None
        holm = float(row["lift_p_holm"]) if row["lift_p_holm"] else None
        words = predictor_verdict({"lift": lift, "lift_p_holm": holm})
        if words != "—":
            measured = f"lift {_number(row['lift'])}, Holm {_number(row['lift_p_holm'])}"
            found[("predictors", f"{row['predictor']}, {row['target']}, K = {row['horizon']}")] = (measured, words)
    return found


def judge(original: str, replication: str | None) -> str:
    if replication is None:
        return "not run"
    if original in NOT_SIGNIFICANT:
        return "still not significant" if replication in NOT_SIGNIFICANT else f"now significant: {replication}"
    if replication == original:
        return "replicated"
    if replication in NOT_SIGNIFICANT:
        return "not replicated"
    return "contradicted" if OPPOSITE.get(original) == replication else f"not replicated ({replication})"


def table(original: dict, replication: dict) -> list[dict]:
    rows = []
    for (family, comparison), (measured, words) in original.items():
        again = replication.get((family, comparison))
        preregistered = family != "predictors" or comparison in PREREGISTERED_PREDICTORS
        rows.append(
            {
                "claim": "pre-registered" if preregistered else "exploratory",
                "family": family,
                "comparison": comparison,
                "original": measured,
                "original verdict": words,
                "replication": again[0] if again else None,
                "replication verdict": again[1] if again else None,
                "judgement": judge(words, again[1] if again else None),
            }
        )
    order = ("spike rate", "stayed-up rate", "largest jump", "predictors")
    return sorted(rows, key=lambda row: (row["claim"] != "pre-registered", order.index(row["family"])))


def headline(rows: list[dict]) -> str:
    """The pre-registered claims first (the significant ones: replicated or not), the exploratory
    rows apart: a tally of all rows together counted predictor rows that were never claims."""

    def tally(claim: str, significant: bool) -> str:
        counts: dict[str, int] = {}
        for row in rows:
            if row["claim"] == claim and (row["original verdict"] not in NOT_SIGNIFICANT) == significant:
                counts[row["judgement"]] = counts.get(row["judgement"], 0) + 1
        total = sum(counts.values())
        return f"{total}" + (
            " (" + ", ".join(f"{n} {name}" for name, n in sorted(counts.items())) + ")" if total else ""
        )

    return (
        f"**Pre-registered claims** (the table of PREREGISTRATION.md): significant in the first study "
        f"{tally('pre-registered', True)}; not significant {tally('pre-registered', False)}. "
        f"**Exploratory rows** (predictor rows the pre-registration did not list; not claims): significant "
        f"{tally('exploratory', True)}; not significant {tally('exploratory', False)}."
    )


def marks(rows: list[dict]) -> dict[str, str]:
    """{cell: its significant verdicts, each marked replicated (✓) or not (✗)}, e.g. amsgrad:
    "✗ fewer spikes  ✓ smaller jumps"; a verdict first found by the replication reads "new:"; cells
    with no significant verdict in either study get none; "" heads the column. The predictors are no
    cell's: not marked."""
    found: dict[str, list[str]] = {}
    for row in rows:
        if row["family"] not in WHAT or row["judgement"] in ("still not significant", "not run"):
            continue
        cell = row["comparison"].split(" vs ")[0]
        if row["judgement"].startswith("now significant"):
            text = f"new: {row['replication verdict']} {WHAT[row['family']]}"
        else:
            mark = MARKS.get(row["judgement"], "✗")
            text = f"{mark} {row['original verdict']} {WHAT[row['family']]}"
        found.setdefault(cell, []).append(text)
    heading = {"": "the first study's verdicts: ✓ replicated, ✗ not"}
    return heading | {cell: "  ".join(texts) for cell, texts in found.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m studies.replication.analysis", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--original", type=Path, default=STUDIES / "evidence" / "sweep.yaml")
    parser.add_argument("--replication", type=Path, default=STUDIES / "replication" / "sweep.yaml")
    parser.add_argument("--verdicts-only", action="store_true", help="the verdicts from the committed predictor tables")
    args = parser.parse_args(argv)
    if not args.verdicts_only:
        predictors(["--sweep", str(args.replication)])
    first, second = (run_prefix(load_sweep(path), quick=False) for path in (args.original, args.replication))
    results = results_of(args.replication)
    rows = table(verdicts(results_of(args.original), first), verdicts(results, second))
    write_csv(results / f"{second}_verdicts.csv", rows, list(COLUMNS))
    write_text(
        results / f"{second}_verdicts.md",
        f"# Replication: `{first}` against `{second}`\n\n"
        "Judged by the rule studies/replication/PREREGISTRATION.md fixed before the replication ran "
        "(`python -m studies.replication.analysis`). "
        + headline(rows)
        + "\n\n"
        + markdown_table(rows, [(key, key) for key in COLUMNS]),
    )
    print(markdown_table(rows, [(key, key) for key in COLUMNS]))
    print(f"replicate: {redraw_study(args.replication, marks(rows))} marks each cell's verdicts")
    return 0


if __name__ == "__main__":
    run_entry_point(main)
