"""`make exp S="optimizer.epsilon=1e-3 train.seed=2"` and `make preset NAME=plateau`: one DVC
experiment that starts from the committed params.yaml, named after what it changes.

    python -m tools.exp optimizer.epsilon=1e-3 train.seed=2 [--queue] [--from workspace]
    python -m tools.exp --preset plateau [section.key=value ...]

`dvc exp run -S` writes its changes into the workspace's params.yaml and leaves them there, so the
next `dvc exp run` silently starts from them. This starts from the committed params.yaml (git
HEAD's) unless `--from workspace` says otherwise, and says which it started from; the experiment
runs in DVC's copy of the project (`--temp`), so it leaves params.yaml and the workspace as they
were. A preset is a file in configs/ holding only the keys it changes.

`dvc exp run -S ...` names an experiment at random (`nosed-pome`), and that name is all the legend
of `dvc plots diff` shows. Here the experiment is named after its changes (`epsilon=1e-3,seed=2`)
or its preset (`plateau`; `plateau-2` when that name is taken), so the legend says what differs.
The changes are checked against params.yaml's keys and rules first: a typo is one line, not a
failed experiment minutes later.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from spikelab.params import ParamsError, flat_raw, params_from_dict, read_yaml
from spikelab.plumbing.errors import UserError, run_entry_point
from spikelab.snapshots import check_named_files
from study.dvc_calls import is_valid_ref_name, run_experiment
from study.sweep import format_value

PARAMS = Path("params.yaml")
PRESETS = Path("configs")
# where the workspace's own params.yaml goes when an experiment starts from the committed one:
# inside .dvc/tmp, which git and DVC experiments ignore, so it never rides along into a run
SAVED_WORKSPACE_PARAMS = Path(".dvc/tmp/params.workspace.yaml")


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
    # the validate stage's checks of the files params name (train.resume_from), before DVC runs
    check_named_files(params_from_dict(changed))


def experiment_name(changes: list[str]) -> str:
    """`optimizer.epsilon=1e-3 train.seed=2` -> `epsilon=1e-3,seed=2`: the short key where it is
    unique among the changes, the section too where two sections share a key name; a `name` key is
    named by its section (`loss=log_cosh`): short, so two such runs differ early in MLflow's table,
    which cuts names."""
    keys = [text.partition("=")[0] for text in changes]
    short = [key.rpartition(".")[2] for key in keys]

    def label(key: str, name: str) -> str:
        if name == "name":
            return key.rpartition(".")[0]
        return name if short.count(name) == 1 else key

    # a path names the experiment by its file (`resume_from=epoch_00010.npz`): a ref name has no '/'
    return ",".join(
        label(key, name) + "=" + text.partition("=")[2].rpartition("/")[2]
        for key, name, text in zip(keys, short, changes)
    )


def check_ref_name(name: str) -> None:
    """DVC experiment names are git ref names (no spaces, `~^:?*[\\`, `..`, `/`)."""
    if not is_valid_ref_name(f"refs/exps/{name}") or "/" in name:
        raise ExpError(f"experiment name {name!r} (from the changes) is not a valid git ref name: simplify the values")


# ---- presets: named configurations as files ------------------------------------------------------


def preset_names(folder: Path = PRESETS) -> list[str]:
    return sorted(path.stem for path in folder.glob("*.yaml"))


def preset_changes(name: str, folder: Path = PRESETS) -> list[str]:
    """configs/<name>.yaml ({section: {key: value}}) -> ["section.key=value", ...] as `-S` takes them."""
    path = folder / f"{name}.yaml"
    if not path.is_file():
        raise ExpError(f"no preset {name!r} ({path} not found); presets: {', '.join(preset_names(folder)) or 'none'}")
    raw = read_yaml(path, "preset")
    if not isinstance(raw, dict) or not all(isinstance(values, dict) and values for values in raw.values()):
        raise ExpError(f"{path}: a preset is a mapping of params sections to the keys it changes")
    return [
        f"{section}.{key}={format_value(value)}" for section, values in raw.items() for key, value in values.items()
    ]


# ---- where an experiment starts -----------------------------------------------------------------


def git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], capture_output=True, text=True)


def committed_params_text() -> str:
    """params.yaml as git HEAD has it (the text, byte for byte)."""
    result = git("show", "HEAD:params.yaml")
    if result.returncode != 0:
        raise ExpError(
            "params.yaml is not committed (git show HEAD:params.yaml failed): commit it, or use --from workspace"
        )
    return result.stdout


def flat(raw) -> dict:
    """Parsed params -> {'section.key': value as `-S` writes it}."""
    return {key: format_value(value) for key, value in flat_raw(raw).items()}


def differences(raw: dict, baseline: dict) -> list[str]:
    """`key=value` for each key whose value in raw differs from baseline's (keys of either)."""
    mine, base = flat(raw), flat(baseline)
    return [
        f"{key}={mine.get(key, '(absent)')}"
        for key in [*base, *(k for k in mine if k not in base)]
        if mine.get(key) != base.get(key)
    ]


def parse_params_text(text: str, what: str) -> dict:
    try:
        raw = YAML(typ="safe", pure=True).load(text)
    except YAMLError as error:
        raise ParamsError(f"{what}: not valid params YAML: {' '.join(str(error).split())}") from None
    return raw if isinstance(raw, dict) else {}


def resets(workspace: dict, committed: dict) -> list[str] | None:
    """`-S` changes that turn the workspace's params into the committed ones, or None where `-S`
    cannot (a section or key that only one of them has)."""
    mine, base = flat(workspace), flat(committed)
    if set(mine) != set(base):
        return None
    return [f"{key}={value}" for key, value in base.items() if mine[key] != value]


def start_from(source: str) -> tuple[dict, list[str], bool, str]:
    """(the params an experiment starts from, the `-S` changes that reset the workspace's params.yaml
    to them in DVC's copy, whether params.yaml itself must be put back first, one line saying so).
    `workspace`: params.yaml as it is. `committed`: git HEAD's, reached by `-S` resets where they
    can, so the workspace's file is never touched; else by putting the file back (saved first)."""
    committed_text = committed_params_text()
    committed = parse_params_text(committed_text, "params.yaml at git HEAD")
    head = git("rev-parse", "--short", "HEAD").stdout.strip()
    workspace_text = PARAMS.read_text() if PARAMS.exists() else ""
    try:
        workspace = parse_params_text(workspace_text, str(PARAMS))
    except ParamsError:
        workspace = None
    changed = differences(workspace, committed) if workspace is not None else ["(the file is not valid YAML)"]
    if source == "workspace":
        if workspace is None:
            raise ExpError("params.yaml is not valid YAML: `git checkout params.yaml` restores the committed file")
        if not changed:
            return workspace, [], False, f"exp: starting from params.yaml, the same as the committed one (HEAD {head})"
        return (
            workspace,
            [],
            False,
            (
                f"exp: starting from the workspace's params.yaml, which differs from the committed one (HEAD {head}) in: "
                + " ".join(changed)
            ),
        )
    if workspace_text == committed_text or not changed:
        return committed, [], False, f"exp: starting from the committed params.yaml (HEAD {head})"
    undo = resets(workspace, committed) if workspace is not None else None
    if undo is not None:
        return (
            committed,
            undo,
            False,
            (
                f"exp: starting from the committed params.yaml (HEAD {head}), not the workspace's, which differs in: "
                + " ".join(changed)
                + " (left by an earlier `dvc exp run -S`?; the file is left as it is, `--from workspace` starts from it)"
            ),
        )
    return (
        committed,
        [],
        True,
        (
            f"exp: starting from the committed params.yaml (HEAD {head}); the workspace's differed in: "
            + " ".join(changed)
            + f": put back, the workspace's saved to {SAVED_WORKSPACE_PARAMS} (`--from workspace` starts from it)"
        ),
    )


def restore_committed_params() -> None:
    """params.yaml <- git HEAD's, the workspace's own file saved to SAVED_WORKSPACE_PARAMS first."""
    committed_text = committed_params_text()
    if PARAMS.exists() and PARAMS.read_text() == committed_text:
        return
    if PARAMS.exists():
        SAVED_WORKSPACE_PARAMS.parent.mkdir(parents=True, exist_ok=True)
        SAVED_WORKSPACE_PARAMS.write_text(PARAMS.read_text())
    temporary = PARAMS.with_name(PARAMS.name + ".tmp")
    temporary.write_text(committed_text)
    temporary.replace(PARAMS)


def existing_experiment_names() -> set[str]:
    """Names of this commit's experiments (DVC refuses a second one with the same name)."""
    result = subprocess.run(["dvc", "exp", "list", "--name-only"], capture_output=True, text=True)
    return set(result.stdout.split()) if result.returncode == 0 else set()


def unique_name(name: str, taken: set[str]) -> str:
    """name, or name-2, name-3, ... : the first that is not taken."""
    if name not in taken:
        return name
    number = 2
    while f"{name}-{number}" in taken:
        number += 1
    return f"{name}-{number}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.exp", description=__doc__.split("\n\n")[0])
    parser.add_argument("changes", nargs="*", metavar="section.key=value")
    parser.add_argument("--preset", metavar="NAME", help="start from configs/NAME.yaml's changes")
    parser.add_argument(
        "--from",
        dest="source",
        choices=("committed", "workspace"),
        default="committed",
        help="the params.yaml to start from: git HEAD's (default) or the workspace's as it is",
    )
    parser.add_argument("--queue", action="store_true", help="queue it (`dvc queue start` runs it)")
    args = parser.parse_args(argv)
    if args.preset is not None and not args.preset:
        raise ExpError(f"no preset named: make preset NAME=<name>; presets: {', '.join(preset_names()) or 'none'}")
    changes = (preset_changes(args.preset) if args.preset else []) + args.changes
    if not changes:
        raise ExpError('no change given: make exp S="optimizer.epsilon=1e-3" (params.yaml as it is is `make repro`)')
    # every check before anything is touched
    start, undo, put_back, message = start_from(args.source)
    checked_changes(changes, start)
    name = args.preset if args.preset and not args.changes else None
    name = name or (f"{args.preset},{experiment_name(args.changes)}" if args.preset else experiment_name(changes))
    check_ref_name(name)
    final_name = unique_name(name, existing_experiment_names())
    if put_back:
        restore_committed_params()
    print(message, flush=True)
    if final_name != name:
        print(f"exp: this commit already has an experiment named {name!r}: this one is {final_name!r}", flush=True)
    changed_keys = {text.partition("=")[0] for text in changes}
    overrides = [text for text in undo if text.partition("=")[0] not in changed_keys] + changes
    # --temp: DVC runs it in a copy (.dvc/tmp/exps), so `-S` never writes into the workspace's params.yaml
    where = [] if args.queue else ["--temp"]
    code = run_experiment(final_name, where + [arg for text in overrides for arg in ("-S", text)], queue=args.queue)
    if code == 0 and not args.queue:
        print(
            f"exp: the workspace is as it was (the run ran in a copy): `dvc exp apply {final_name}` brings its "
            f"outputs here; `dvc plots diff {final_name}` and `make compare` show it",
            flush=True,
        )
    return code


if __name__ == "__main__":
    run_entry_point(main)
