"""The replication table's judgement, as studies/replication/PREREGISTRATION.md fixed it."""

import csv

import pytest

from studies.replication.analysis import judge, table, verdicts


@pytest.mark.parametrize(
    ("original", "replication", "judgement"),
    [
        ("fewer", "fewer", "replicated"),
        ("fewer", "no detectable difference", "not replicated"),
        ("fewer", "more", "contradicted"),
        ("smaller", "larger", "contradicted"),
        ("above chance", "not distinguishable from chance", "not replicated"),
        ("no detectable difference", "no detectable difference", "still not significant"),
        ("no detectable difference", "fewer", "now significant: fewer"),
        ("fewer", None, "not run"),
    ],
)
def test_judgement_follows_the_preregistered_rule(original, replication, judgement):
    assert judge(original, replication) == judgement


def _write(path, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _study(results, prefix, sgd_verdict, lift_p_holm):
    rate = {"divergence_rate_text": "0/20", "plateau_rate_text": "0/20", "plateau_p": "1", "plateau_p_holm": "1"}
    _write(
        results / f"{prefix}.csv",
        [
            {"cell": "baseline", "reference": "", "divergence_p": "", "divergence_p_holm": "", **rate}
            | {"divergence_verdict": "", "plateau_verdict": ""},
            {"cell": "sgd", "reference": "baseline", "divergence_p": "0.001", "divergence_p_holm": "0.002", **rate}
            | {"divergence_verdict": sgd_verdict, "plateau_verdict": "no detectable difference"},
        ],
    )
    _write(
        results / f"{prefix}_jumps.csv",
        [
            {"cell": "sgd", "reference": "baseline", "median_jump": "1", "jump_p": "0.01", "jump_p_holm": "0.02"}
            | {"jump_verdict": "smaller"}
        ],
    )
    _write(
        results / f"{prefix}_predictors.csv",
        [{"predictor": "naive", "target": "first spike", "horizon": "5", "lift": "2.0", "lift_p_holm": lift_p_holm}],
    )


def test_the_table_pairs_each_verdict_with_the_replications(tmp_path):
    _study(tmp_path, "evidence", "fewer", "0.001")
    _study(tmp_path, "replication", "no detectable difference", "0.2")
    rows = table(verdicts(tmp_path, "evidence"), verdicts(tmp_path, "replication"))
    judged = {(row["family"], row["comparison"]): row["judgement"] for row in rows}
    assert judged == {
        ("spike rate", "sgd vs baseline"): "not replicated",
        ("stayed-up rate", "sgd vs baseline"): "still not significant",
        ("largest jump", "sgd vs baseline"): "replicated",
        ("predictors", "naive, first spike, K = 5"): "not replicated",
    }


def test_the_headline_counts_the_preregistered_claims_apart_from_exploratory_rows():
    """Recomputed from the committed rows of both studies: the old headline ("27 replicated, 7 not")
    tallied 17 predictor rows the pre-registration never listed as claims."""
    from studies.replication.analysis import headline
    from study.sweep import STUDIES, results_of

    rows = table(
        verdicts(results_of(STUDIES / "evidence" / "sweep.yaml"), "evidence"),
        verdicts(results_of(STUDIES / "replication" / "sweep.yaml"), "replication"),
    )
    assert sum(row["claim"] == "pre-registered" for row in rows) == 38  # rows 1-27 (16: 7 pairs) + 5 predictors
    said = headline(rows)
    assert "significant in the first study 16 (6 not replicated, 10 replicated)" in said
    assert "not significant 22 (22 still not significant)" in said
