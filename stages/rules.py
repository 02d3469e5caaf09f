"""Stage rules: <history.csv> -> <rules.json>, and into train's MLflow run.

    python -m stages.rules metrics/history.csv metrics/run.json metrics/rules.json

The rules that only read a finished curve (the plateau rule) live here, not in the train stage, so
changing one re-judges the history in about a second instead of retraining. The rules themselves:
docs/metrics.md#rules.
"""

import json
import sys
from pathlib import Path

from spikelab.history import read_history_csv
from spikelab.params import load_params
from spikelab.plumbing.errors import run_entry_point
from spikelab.plumbing.files import write_json
from spikelab.plumbing.lean_imports import without_sklearn
from spikelab.plumbing.native_logs import quiet_native_startup


def main() -> None:
    history_path, run_file, output = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    params = load_params()
    from spikelab.divergence import rule_metrics

    history = read_history_csv(history_path)
    metrics = rule_metrics(history, params.divergence, params.plateau)
    with quiet_native_startup(), without_sklearn():  # the tracking module's Keras import prints noise
        from spikelab.tracking import check_run, log_metrics_at, summary_metrics

    run_id = json.loads(run_file.read_text())["mlflow_run_id"]
    check_run(params.tracking.experiment, run_id)  # before writing: a wrong store is one line, not a traceback
    write_json(output, metrics)
    if metrics["plateaued"]:
        print(
            f"rules: stayed up from epoch {metrics['plateau_start_epoch']} for {metrics['plateau_epochs']} epochs "
            f"at ~{metrics['plateau_level']:.3g} -> {output}"
        )
    else:
        print(f"rules: no plateau (a spike, if any, came back down) -> {output}")
    log_metrics_at(run_id, summary_metrics(metrics), 0)


if __name__ == "__main__":
    run_entry_point(main)
