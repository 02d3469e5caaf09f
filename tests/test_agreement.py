"""studies.agreement.analysis pairs the population engine's cells with the committed per-run ones."""

from __future__ import annotations

import pytest

from spikelab.plumbing.errors import UserError
from studies.agreement.analysis import compare
from study.stats import fisher_exact


def _runs(cell: str, spiked: int, stayed: int, total: int = 20) -> list[dict]:
    """Finished runs as the committed _runs.csv rows read back (study.report.read_records)."""
    return [
        {
            "cell": cell,
            "state": "success",
            "diverged": i < spiked,
            "nan": False,
            "divergence_epoch": 90 if i < spiked else None,
            "jump_ratio": float(i + 1),
            "spike_ratio": float(i + 1),
            "final_loss": 0.01,
            "val_accuracy": 0.3,
            "plateaued": i < stayed,
            "final_dead_fraction": 0.0,
        }
        for i in range(total)
    ]


def test_rates_and_fisher_p_per_cell():
    per_run = _runs("baseline", 16, 0) + _runs("amsgrad", 1, 0)
    population = _runs("baseline", 15, 0) + _runs("amsgrad", 9, 2)
    rows = {row["cell"]: row for row in compare(population, per_run)}
    assert list(rows) == ["baseline", "amsgrad"]
    assert rows["amsgrad"]["spiked, per-run"].startswith("1/20 [")
    assert rows["amsgrad"]["spiked, population"].startswith("9/20 [")
    assert rows["amsgrad"]["spike p"] == f"{fisher_exact(1, 20, 9, 20):.3g}"
    assert rows["amsgrad"]["stayed-up p"] == f"{fisher_exact(0, 20, 2, 20):.3g}"
    assert rows["baseline"]["spike p"] == "1"
    # Holm over the table's four p (both cells, spike and stayed-up): the smallest times 4
    raw = [
        fisher_exact(16, 20, 15, 20),
        fisher_exact(0, 20, 0, 20),
        fisher_exact(1, 20, 9, 20),
        fisher_exact(0, 20, 2, 20),
    ]
    assert rows["amsgrad"]["spike p, Holm"] == f"{min(1.0, 4 * min(p for p in raw if p is not None)):.3g}"
    assert rows["amsgrad"]["stayed-up p, Holm"] == f"{min(1.0, 3 * fisher_exact(0, 20, 2, 20)):.3g}"
    assert (
        rows["baseline"]["median jump_ratio of the runs that spiked, per-run / population"] == "8.5 / 8"
    )  # of jumps 1..16 and 1..15


def test_a_cell_the_committed_rows_lack_is_named():
    with pytest.raises(UserError, match="no cell 'sgd'"):
        compare(_runs("sgd", 0, 0), _runs("baseline", 16, 0))


def test_members_not_finished_are_left_out():
    unfinished = [{"cell": "amsgrad", "state": "failed", "diverged": None, "plateaued": None}] * 20
    rows = compare(_runs("baseline", 15, 0) + unfinished, _runs("baseline", 16, 0) + _runs("amsgrad", 1, 0))
    assert [row["cell"] for row in rows] == ["baseline"]
    assert rows[0]["runs (per-run / population)"] == "20 / 20"
