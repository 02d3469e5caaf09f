"""The twins leak, checked image by image (issue 10, "network structure?").

    python -m studies.leak.analysis [--model models/last.keras]   # after `dvc repro`; -> studies/leak/results/leak.md

Every broken image is a solid one with a few pixels removed (its twin). The seed's split
(`split.twins: independent`) shuffles the two stacks on their own, so a validation image's twin is
often in the training set. Hypothesis: a network that memorises its training images calls such a
validation image by its twin's class (the twins differ in a few pixels only), which would pull
validation accuracy below chance. The check: the trained model's accuracy on validation images
whose twin was trained on, against those whose twin is in validation too.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from spikelab.params import SplitParams, load_params
from spikelab.plumbing.errors import UserError, run_entry_point
from study.stats import wilson_interval
from study.sweep import study_results
from study.tables import markdown_table, write_text


def twin_in_training(per_class: int, p: SplitParams) -> dict[str, np.ndarray]:
    """For the validation images in split()'s order: is the image's twin in the training set?

    Replays split()'s seeded permutations (the same generator calls in the same order)."""
    rng = np.random.default_rng(p.seed)
    solid_order = rng.permutation(per_class)
    broken_order = solid_order if p.twins == "together" else rng.permutation(per_class)
    held = p.val_per_class
    solid_in_val, broken_in_val = set(solid_order[:held]), set(broken_order[:held])
    # validation rows before split()'s final shuffle: held solid images, then held broken ones
    twin_trained = np.array(
        [index not in broken_in_val for index in solid_order[:held]]
        + [index not in solid_in_val for index in broken_order[:held]]
    )
    labels = np.concatenate([np.zeros(held, np.int64), np.ones(held, np.int64)])
    rng.permutation(2 * (per_class - held))  # the training set's shuffle comes first in split()
    order = rng.permutation(2 * held)
    return {"twin_trained": twin_trained[order], "label": labels[order]}


def leak_rows(predicted: np.ndarray, label: np.ndarray, twin_trained: np.ndarray) -> list[dict]:
    rows = []
    for name, members in (("twin in training", twin_trained), ("twin in validation too", ~twin_trained)):
        correct = int((predicted[members] == label[members]).sum())
        n = int(members.sum())
        low, high = wilson_interval(correct, n) or (float("nan"), float("nan"))
        rows.append(
            {
                "group": name,
                "images": n,
                "accuracy": f"{correct}/{n} = {correct / n:.3f} [{low:.3f}, {high:.3f}]" if n else "-",
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.leak.analysis", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/last.keras"))
    parser.add_argument("--split", type=Path, default=Path("data/split.npz"))
    parser.add_argument("--results", type=Path, default=study_results("leak"))
    args = parser.parse_args(argv)
    params = load_params()
    for path in (args.model, args.split):
        if not path.exists():
            raise UserError(f"leak: {path} is missing; run `dvc repro` first")
    from spikelab.evaluation import load_model, model_data_format
    from spikelab.model import to_model_input

    arrays = np.load(args.split)
    groups = twin_in_training(params.data.per_class, params.split)
    if not np.array_equal(np.argmax(arrays["y_val"], axis=1), groups["label"]):
        raise UserError(f"leak: {args.split} was not made by params.yaml's split (labels differ); run `dvc repro`")
    model = load_model(args.model)
    x = to_model_input(arrays["x_val"], model_data_format(model))
    predicted = np.argmax(model.predict(x, verbose=0), axis=1)
    rows = leak_rows(predicted, groups["label"], groups["twin_trained"])
    text = (
        f"# The twins leak, image by image: `{args.model}`, split.twins = {params.split.twins}\n\n"
        "Validation accuracy of the trained model on the validation images whose twin (the same line, "
        "solid or broken) is in the training set, and on those whose twin is in validation too "
        "(95% Wilson intervals). `python -m studies.leak.analysis`; its docstring says why.\n\n"
        + markdown_table(rows, [(key, key) for key in rows[0]])
    )
    write_text(args.results / "leak.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    run_entry_point(main)
