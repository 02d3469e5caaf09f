"""The names the lab's metrics have in MLflow: `<section>/<name>`, one function for every logger.

MLflow's run page (its *Model metrics* tab) and the experiment's chart view draw one section per
key prefix before the last "/", with the chart titled by what follows it. The name after the
section is the metric's name in the DVC outputs: a history.csv column (`adam/v_sqrt_median`), a
train.json or rules.json key (`summary/diverged`), evaluate.json's `<model>.<key>`
(`eval/best.accuracy`), a stage's timing (`time/train.startup`). The files keep their names.

MLflow orders the sections by their names' code points, then "Model metrics" (keys without a
prefix) last, and the charts of a section by key; nothing in the store changes that order. What
Keras reports has capitalised sections, which sort before every lower-case one: the page opens on
`Loss` (loss, val_loss side by side), then `Training` (accuracy, val_accuracy), then the lab's
measurements (docs/metrics.md, "In MLflow").
"""

from __future__ import annotations

LOSS = "Loss"  # Keras's losses: loss, val_loss (and a multi-output model's <output>_loss)
TRAINING = "Training"  # Keras's other logs (the compiled metrics: accuracy, val_accuracy) and anything unknown
# the diagnostics' sections; each entry is a name, or the start of the names of a family
# (one per layer: weight_norm_conv1, g2_over_v_rms_logits)
EPOCH_SECTIONS = {
    "adam": ("v_sqrt_median", "v_below_eps_fraction", "adam_ratio_", "g2_over_v_rms", "update_rms"),
    "curvature": ("lambda_max", "lambda_grad", "grad_norm"),
    "dead_zone": ("dead_", "full_loss_", "saturated_", "logit_max_abs", "majority_prediction_fraction"),
    "weights": ("weight_norm_",),
}
# what is logged once, at step 0, under a dotted name whose head says where it comes from:
# summary.<train.json or rules.json key>, eval.<model>.<key>, time.<stage>.<phase>
ONCE_SECTIONS = ("summary", "eval", "time")


def mlflow_key(name: str) -> str:
    """The MLflow key of the lab's metric `name` (a history.csv column, or summary.<key>,
    eval.<model>.<key>, time.<stage>.<phase>). A key with a "/" (one this gave, or a SpikeMonitor
    user's own) is returned as it is."""
    if "/" in name:
        return name
    head, dot, rest = name.partition(".")
    if dot and head in ONCE_SECTIONS:
        return f"{head}/{rest}"
    section = next((section for section, starts in EPOCH_SECTIONS.items() if name.startswith(starts)), None)
    if section is None:
        section = LOSS if name == "loss" or name.endswith("_loss") else TRAINING
    return f"{section}/{name}"


def lab_name(key: str) -> str:
    """The name that mlflow_key gave `key`: a history.csv column, or summary.<key>, eval.<model>.<key>,
    time.<stage>.<phase>. A key outside the lab's sections (logged before they existed, or a
    SpikeMonitor user's own `val/auc`) is its own name."""
    section, _, name = key.partition("/")
    if section in ONCE_SECTIONS:
        return f"{section}.{name}"
    return name if section in (LOSS, TRAINING, *EPOCH_SECTIONS) else key
