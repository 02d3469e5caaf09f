"""`make exp S="optimizer.epsilon=1e-3 train.seed=2"`: one DVC experiment named after what it changes.

    python -m study.exp optimizer.epsilon=1e-3 train.seed=2 [--queue]

`dvc exp run -S ...` names an experiment at random (`nosed-pome`), and that name is all the legend
of `dvc plots diff` shows. Here the experiment is named after its changes (`epsilon=1e-3,seed=2`),
so the legend of `dvc plots diff epsilon=1e-3,seed=2 epsilon=1e-2,seed=2` says what differs. The
changes are checked against params.yaml's keys and rules first: a typo is one line, not a failed
experiment minutes later.
"""

from __future__ import annotations

import argparse

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from spikelab.errors import UserError, run_entry_point
from spikelab.params import params_from_dict, read_yaml
from study.experiments import is_valid_ref_name, run_experiment


class ExpError(UserError, ValueError):
    """A change that names no params key, or that params.yaml's rules refuse."""


def parse_change(text: str) -> tuple[str, str, object]:
    """`section.key=value` -> (section, key, value parsed as YAML 1.2, as DVC parses `-S`)."""
    key, sep, raw_value = text.partition("=")
    section, dot, name = key.partition(".")
    if not sep or not dot or not name or not section:
        raise ExpError(f"{text!r}: a change is section.key=value (e.g. optimizer.epsilon=1e-3)")
    try:
        value = YAML(typ="safe", pure=True).load(raw_value)
    except YAMLError:
        raise ExpError(f"{text!r}: the value is not valid YAML") from None
    return section, name, value


def checked_changes(changes: list[str], raw_params: dict) -> None:
    """Apply the changes to a copy of params.yaml and validate it; ExpError names the bad change."""
    changed = {section: dict(values) for section, values in raw_params.items()}
    for text in changes:
        section, key, value = parse_change(text)
        if key not in changed.get(section, {}):
            raise ExpError(f"{text!r}: params.yaml has no key {section}.{key}")
        changed[section][key] = value
    params_from_dict(changed)


def experiment_name(changes: list[str]) -> str:
    """`optimizer.epsilon=1e-3 train.seed=2` -> `epsilon=1e-3,seed=2`: the short key where it is
    unique among the changes, the section too where two sections share a key name."""
    keys = [text.partition("=")[0] for text in changes]
    short = [key.rpartition(".")[2] for key in keys]
    return ",".join(
        (name if short.count(name) == 1 else key) + "=" + text.partition("=")[2]
        for key, name, text in zip(keys, short, changes)
    )


def check_ref_name(name: str) -> None:
    """DVC experiment names are git ref names (no spaces, `~^:?*[\\`, `..`, `/`)."""
    if not is_valid_ref_name(f"refs/exps/{name}") or "/" in name:
        raise ExpError(f"experiment name {name!r} (from the changes) is not a valid git ref name: simplify the values")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.exp", description=__doc__.split("\n\n")[0])
    parser.add_argument("changes", nargs="*", metavar="section.key=value")
    parser.add_argument("--queue", action="store_true", help="queue it (`dvc queue start` runs it)")
    args = parser.parse_args(argv)
    if not args.changes:
        raise ExpError('no change given: make exp S="optimizer.epsilon=1e-3" (params.yaml as it is is `make repro`)')
    checked_changes(args.changes, read_yaml("params.yaml", "params"))
    name = experiment_name(args.changes)
    check_ref_name(name)
    return run_experiment(name, [arg for text in args.changes for arg in ("-S", text)], queue=args.queue)


if __name__ == "__main__":
    run_entry_point(main)
