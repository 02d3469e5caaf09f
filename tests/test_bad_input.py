"""Bad input, each refused in one line: params.yaml edits, `dvc exp run -S` overrides, sweep files.

Each case runs the entry point's own function in-process (the validate stage's `main`, the sweep
tool's `main`, through `exit_code_of` as `python -m` runs them) in a temporary folder: exit 2, one
`error:` line holding the case's fragment, no traceback, no output written, a message of bounded
length (a value is quoted up to 200 characters), and in a few seconds. The `-S` cases write
params.yaml with DVC's own override code (what `dvc exp run -S` runs before any stage), so the file
is the one the validate stage would read. The same refusals under a real `dvc repro` (every output
byte-identical) are in tests/test_reliability.py (test_bad_params_stop_dvc_repro_...).
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import TINY
from spikelab.plumbing.errors import exit_code_of
from spikelab.snapshots import save_snapshot
from stages import validate

MAX_LINE = 1_000  # the longest message here is ~450 characters; a value echoed whole is megabytes
MAX_SECONDS = 10  # an alias bomb made DVC grow for 141 s; the pure-Python YAML reader takes ~2 s per MB
HUGE = 10_000_000  # characters: a value pasted by mistake


def refused_by(main, capsys, fragment: str) -> str:
    """Run an entry point's main as `python -m` does; its one error line, checked."""
    started = time.monotonic()
    code = exit_code_of(main)
    seconds = time.monotonic() - started
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert code == 2, captured.err[:2000]
    assert len(lines) == 1 and captured.err.count("\n") == 1 and "Traceback" not in captured.err, captured.err[:2000]
    assert fragment in lines[0], lines[0][:2000]
    assert len(lines[0]) < MAX_LINE, lines[0][:2000]
    assert seconds < MAX_SECONDS
    return lines[0]


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """An empty project folder as the working directory, with one snapshot of this lab (epoch 1)."""
    monkeypatch.chdir(tmp_path)
    save_snapshot(
        tmp_path / "models" / "snapshots" / "epoch_00001.npz",
        {"weight/conv1/kernel": np.zeros((3, 3, 1, 2), "float32")},
        1,
        [{"epoch": 1, "loss": 1.0}],
    )
    (tmp_path / "notes.txt").write_text("not a snapshot\n")
    return tmp_path


def validate_refuses(folder: Path, capsys, fragment: str) -> str:
    """The validate stage, as dvc.yaml runs it, refuses params.yaml: nothing written."""
    sys_argv = sys.argv
    sys.argv = ["validate", "data/params.checked"]
    try:
        line = refused_by(validate.main, capsys, fragment)
    finally:
        sys.argv = sys_argv
    assert not (folder / "data" / "params.checked").exists()
    return line


def write_params(folder: Path, raw) -> None:
    (folder / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def changed(**sections):
    """A change of the tiny params: changed(optimizer={"beta_2": 0.99999999999})."""

    def change(raw):
        for section, values in sections.items():
            raw[section].update(values)

    return change


# id: (change to the tiny params, fragment of the one line)
PARAMS_EDITS = {
    # numbers the model, which trains in float32, would see as inf, 0 or 1
    "learning_rate_inf_in_float32": (changed(optimizer={"learning_rate": 1e39}), "it is inf in float32"),
    "epsilon_inf_in_float32": (changed(optimizer={"epsilon": 1e39}), "optimizer.epsilon = 1e+39"),
    "learning_rate_zero_in_float32": (changed(optimizer={"learning_rate": 1e-320}), "optimizer.learning_rate = 1e-320"),
    "beta_1_one_in_float32": (changed(optimizer={"beta_1": 0.999999999999}), "optimizer.beta_1 = 0.999999999999"),
    "beta_2_one_in_float32": (changed(optimizer={"beta_2": 0.99999999999}), "it is 1.0 in float32"),
    "rho_one_in_float32": (changed(optimizer={"rho": 0.99999999999}), "optimizer.rho = 0.99999999999"),
    "momentum_one_in_float32": (changed(optimizer={"momentum": 0.99999999999}), "optimizer.momentum"),
    "step_factor_one_in_float32": (changed(optimizer={"step_factor": 0.999999999999}), "optimizer.step_factor"),
    "smoothing_one_in_float32": (changed(loss={"label_smoothing": 0.999999999999}), "loss.label_smoothing"),
    "lr_factor_one_in_float32": (changed(guard={"lr_factor": 0.999999999999}), "guard.lr_factor"),
    "clipnorm_zero_in_float32": (changed(optimizer={"clipnorm": 1e-50}), "it is 0.0 in float32"),
    "clipvalue_inf_in_float32": (changed(optimizer={"clipvalue": 1e39}), "optimizer.clipvalue = 1e+39"),
    "weight_decay_inf_in_float32": (
        changed(optimizer={"name": "adamw", "weight_decay": 1e39}),
        "optimizer.weight_decay = 1e+39",
    ),
    "nan_learning_rate": (changed(optimizer={"learning_rate": float("nan")}), "optimizer.learning_rate = nan"),
    "infinite_ratio": (changed(divergence={"ratio": float("inf")}), "divergence.ratio = inf"),
    # sizes beyond the machine's memory: refused with the estimate, before DVC deletes anything
    "image_size_40000": (changed(data={"image_size": 40000}), "data.image_size = 40000"),
    "filters_100000": (changed(model={"filters": 100000}), "of memory (images"),
    "per_class_huge": (changed(data={"per_class": 10**12}), "allowed: at most this machine's memory"),
    "batch_size_huge": (changed(train={"batch_size": 10**9}), "train.batch_size = 1000000000 need about"),
    # integers past every bound
    "seed_of_4000_digits": (changed(train={"seed": int("7" * 4000)}), "(4,000 characters); allowed: an integer in"),
    "epochs_1e30": (changed(train={"epochs": 10**30}), "train.epochs = 1000000000000000000000000000000"),
    "negative_per_class": (changed(data={"per_class": -5}), "data.per_class = -5"),
    "float_for_integer": (changed(model={"filters": 8.0}), "model.filters = 8.0"),
    # long values (a file of more than 1 MB is refused whole, TEXT_EDITS): quoted up to 200 characters
    "experiment_of_300_kb": (changed(tracking={"experiment": "x" * 300_000}), "(300,002 characters)"),
    "optimizer_name_of_300_kb": (changed(optimizer={"name": "a" * 300_000}), "optimizer.name = 'aaaa"),
    "key_of_300_kb": (changed(train={"k" * 300_000: 1}), "unknown key 'train.kkkk"),
    "string_for_bool": (changed(train={"jit_compile": "true"}), "train.jit_compile = 'true'; allowed: true/false"),
    "twins_unknown": (changed(split={"twins": "both"}), "split.twins = 'both'"),
    # train.resume_from that is not a checkpoint of this lab
    "resume_from_etc_passwd": (
        changed(train={"resume_from": "/etc/passwd", "resume_epoch": 1}),
        "train.resume_from = /etc/passwd: not a snapshot (.npz) file",
    ),
    "resume_from_a_text_file": (
        changed(train={"resume_from": "notes.txt", "resume_epoch": 1}),
        "a checkpoint of this lab is a snapshot the train stage wrote",
    ),
    "resume_from_a_folder": (changed(train={"resume_from": "models", "resume_epoch": 1}), "no such snapshot file"),
    "resume_from_dev_zero": (changed(train={"resume_from": "/dev/zero", "resume_epoch": 1}), "no such snapshot file"),
    "resume_from_missing": (
        changed(train={"resume_from": "models/snapshots/epoch_00002.npz", "resume_epoch": 2}),
        "no such snapshot file",
    ),
    "resume_from_other_epoch": (
        changed(train={"resume_from": "models/snapshots/epoch_00001.npz", "resume_epoch": 2}),
        "holds epoch 1, not train.resume_epoch = 2",
    ),
    "resume_from_too_long": (
        changed(train={"resume_from": "m/" * 3000, "resume_epoch": 1}),
        "allowed: null or a snapshot path (at most 4096 bytes",
    ),
    "resume_from_with_nul": (changed(train={"resume_from": "a\0b", "resume_epoch": 1}), "no NUL)"),
    # shapes
    "section_a_list": (lambda raw: raw.update(train=[1, 2]), "'train' must be a mapping of keys"),
    "section_null": (lambda raw: raw.update(data=None), "'data' must be a mapping of keys, got None"),
}


@pytest.mark.parametrize("case", PARAMS_EDITS)
def test_a_bad_params_edit_is_one_line_from_the_validate_stage(project, capsys, case):
    change, fragment = PARAMS_EDITS[case]
    raw = copy.deepcopy(TINY)
    change(raw)
    write_params(project, raw)
    validate_refuses(project, capsys, fragment)


def alias_bomb(levels: int = 9) -> str:
    """Each anchor a list of ten aliases of the one before: 10**levels values once expanded."""
    lines, previous = ["  a0: &a0 [x, x, x, x, x, x, x, x, x, x]"], "a0"
    for level in range(1, levels):
        lines.append(f"  a{level}: &a{level} [{', '.join([f'*{previous}'] * 10)}]")
        previous = f"a{level}"
    return "\n".join(lines) + "\n"


def tiny_text() -> str:
    return yaml.safe_dump(TINY, sort_keys=False)


# id: (params.yaml's text from the tiny one's, fragment); bytes are written as they are
TEXT_EDITS = {
    "alias_bomb": (lambda t: t + "bomb:\n" + alias_bomb(), "its aliases (*name) expand to 1,234,568,041 values"),
    "alias_bomb_inside_a_section": (
        lambda t: t.replace("train:\n", "train:\n" + alias_bomb(), 1),
        "allowed: at most 100,000",
    ),
    "seed_of_5000_digits": (
        lambda t: t.replace("  seed: 0\n", "  seed: " + "7" * 5000 + "\n"),
        "data.seed = an integer of 5,000 digits",
    ),
    "brackets_nested_100000_deep": (lambda t: t + "x: " + "[" * 100_000 + "]" * 100_000 + "\n", "nested more than 50"),
    "value_of_10_mb": (
        lambda t: t.replace("experiment: spikelab-test", "experiment: " + "z" * HUGE),
        "allowed: at most 1.0 MB",
    ),
    "recursive_alias": (lambda t: t.replace("  seed: 0\n", "  seed: &r [*r]\n", 1), "data.seed = [[...]]"),
    "duplicate_key": (lambda t: t.replace("  epochs: 3\n", "  epochs: 3\n  epochs: 5\n"), 'duplicate key "epochs"'),
    "tab_indentation": (lambda t: t.replace("  epochs: 3", "\tepochs: 3"), "not valid params YAML"),
    "two_documents": (lambda t: t + "---\nx: 1\n", "not valid params YAML"),
    "unclosed_quote": (lambda t: t.replace("  epochs: 3", '  epochs: "3'), "not valid params YAML"),
    "not_utf8": (lambda t: t.encode() + b"x: \xff\xfe\n", "not UTF-8 text"),
    "nul_bytes": (lambda t: t + "x: a\0b\n", "not valid params YAML"),
    "a_list": (lambda t: "- 1\n- 2\n", "params.yaml: the file must be a mapping of sections"),
    "a_number": (lambda t: "42\n", "params.yaml: the file must be a mapping of sections"),
    "empty": (lambda t: "", "params.yaml: the file must be a mapping of sections"),
}


@pytest.mark.parametrize("case", TEXT_EDITS)
def test_a_bad_params_file_is_one_line_in_seconds(project, capsys, case):
    change, fragment = TEXT_EDITS[case]
    text = change(tiny_text())
    (project / "params.yaml").write_bytes(text if isinstance(text, bytes) else text.encode())
    validate_refuses(project, capsys, fragment)


def test_params_yaml_that_is_a_folder_is_one_line(project, capsys):
    (project / "params.yaml").mkdir()
    validate_refuses(project, capsys, "params.yaml: not a file")


# id: (the `-S` overrides of `dvc exp run`, fragment); DVC writes them into params.yaml first
OVERRIDES = {
    "learning_rate_1e39": (["optimizer.learning_rate=1e39"], "it is inf in float32"),
    "beta_2_rounding_to_1": (["optimizer.beta_2=0.99999999999"], "optimizer.beta_2 = 0.99999999999"),
    "image_size_40000": (["data.image_size=40000"], "need about"),
    "filters_100000": (["model.filters=100000"], "model.filters = 100000"),
    "resume_from_etc_passwd": (
        ["train.resume_from=/etc/passwd", "train.resume_epoch=1"],
        "a checkpoint of this lab is a snapshot",
    ),
    "experiment_with_a_path": (["tracking.experiment=../x"], "tracking.experiment = '../x'"),
    "unknown_optimizer": (["optimizer.name=adamx"], "optimizer.name = 'adamx'"),
    "zero_epochs": (["train.epochs=0"], "train.epochs = 0"),
    "float_per_class": (["data.per_class=1e12"], "data.per_class = 1000000000000.0"),
    "negative_seed": (["train.seed=-1"], "train.seed = -1"),
    "yes_for_a_bool": (["train.jit_compile=yes"], "train.jit_compile = 'yes'; allowed: true/false"),
    "smoothing_one": (["loss.label_smoothing=1"], "loss.label_smoothing = 1.0"),
    "clipnorm_zero_in_float32": (["optimizer.clipnorm=1e-50"], "optimizer.clipnorm = 1e-50"),
    "twins_unknown": (["split.twins=both"], "split.twins = 'both'"),
    "resume_epoch_alone": (["train.resume_epoch=1"], "must be set together"),
    "long_experiment_name": (["tracking.experiment=" + "e" * 100_000], "(100,002 characters)"),
}


@pytest.mark.parametrize("case", OVERRIDES)
def test_a_bad_set_param_is_one_line_from_the_validate_stage(project, capsys, case):
    from dvc.utils.hydra import apply_overrides

    overrides, fragment = OVERRIDES[case]
    write_params(project, copy.deepcopy(TINY))
    apply_overrides(project / "params.yaml", overrides)  # what `dvc exp run -S` does before the stages
    validate_refuses(project, capsys, fragment)


def sweep_refuses(project: Path, capsys, sweep, fragment: str) -> str:
    from study import sweep as sweep_tool

    write_params(project, copy.deepcopy(TINY))
    path = project / "bad_sweep.yaml"
    if isinstance(sweep, bytes):
        path.write_bytes(sweep)
    elif isinstance(sweep, str):
        path.write_text(sweep)
    return refused_by(lambda: sweep_tool.main(["list", "--sweep", str(path)]), capsys, fragment)


GOOD_SWEEP = "seeds: [0, 1]\ncells:\n  base: {}\n  eps: {optimizer.epsilon: 0.001}\n"

# id: (the sweep file's text, fragment); sweep files are read by params' reader (read_yaml)
SWEEPS = {
    "alias_bomb": (GOOD_SWEEP + "bomb:\n" + alias_bomb(), "bad_sweep.yaml: its aliases (*name) expand to"),
    "seed_of_5000_digits": (GOOD_SWEEP.replace("[0, 1]", "[0, " + "9" * 5000 + "]"), "an integer of 5,000 digits"),
    "brackets_nested_deep": (GOOD_SWEEP + "x: " + "{a: " * 1000 + "}" * 1000 + "\n", "nested more than 50"),
    "ten_mb": (GOOD_SWEEP + "prefix: " + "p" * HUGE + "\n", "bad_sweep.yaml: 10.0 MB"),
    "not_utf8": (GOOD_SWEEP.encode() + b"prefix: \xff\n", "bad_sweep.yaml: not UTF-8 text"),
    "broken_yaml": (GOOD_SWEEP + "cells: [\n", "not valid sweep YAML"),
    "a_list": ("- 1\n", "must be a mapping with 'seeds' and 'cells'"),
    "unknown_key": (GOOD_SWEEP + "seed: [3]\n", "unknown keys ['seed']"),
    "string_seed": (GOOD_SWEEP.replace("[0, 1]", "[0, one]"), "seeds must be a non-empty list of integers"),
    "unknown_params_key": (GOOD_SWEEP + "  bad: {optimizer.epsilonn: 1}\n", "unknown params key 'optimizer.epsilonn'"),
    # a value the train stage refuses: refused for the whole sweep, not queued to fail in each run
    "bad_cell_value": (
        GOOD_SWEEP + "  neg: {optimizer.learning_rate: -1}\n",
        "bad_sweep.yaml: cells.neg: optimizer.learning_rate = -1.0; allowed: a number > 0",
    ),
    "cell_value_too_large": (
        GOOD_SWEEP + "  wide: {model.filters: 100000}\n",
        "bad_sweep.yaml: cells.wide: data.per_class = 96",
    ),
}


@pytest.mark.parametrize("case", SWEEPS)
def test_a_bad_sweep_file_is_one_line(project, capsys, case):
    text, fragment = SWEEPS[case]
    sweep_refuses(project, capsys, text, fragment)


def test_a_sweep_path_that_is_a_folder_is_one_line_naming_it(project, capsys):
    from study import sweep as sweep_tool

    write_params(project, copy.deepcopy(TINY))
    (project / "studies").mkdir()
    refused_by(lambda: sweep_tool.main(["list", "--sweep", "studies"]), capsys, "studies: not a file")


@pytest.mark.parametrize("size", ["0", "10000"])
def test_a_population_size_out_of_bounds_is_one_line_before_any_folder(project, capsys, size):
    from study import population as population_tool

    write_params(project, copy.deepcopy(TINY))
    (project / "bad_sweep.yaml").write_text(GOOD_SWEEP)
    refused_by(
        lambda: population_tool.main(["--sweep", "bad_sweep.yaml", "--size", size]),
        capsys,
        f"--size {size}: give 1 to 200 members per population",
    )
    assert not (project / "study" / "populations").exists()


@pytest.mark.parametrize(
    "damage, fragment",
    [
        (lambda text: text + "bomb:\n" + alias_bomb(), "its aliases (*name) expand to"),
        (lambda text: text.replace("seed: ", "seed: " + "7" * 5000 + "\n  zz: ", 1), "an integer of 5,000 digits"),
    ],
    ids=["alias_bomb", "seed_of_5000_digits"],
)
def test_make_repro_refuses_what_dvc_cannot_parse_in_one_line_before_dvc_runs(lab_repo, damage, fragment):
    """DVC parses params.yaml itself before any stage: it grew for 141 s on an alias bomb and said
    'unexpected error' on a 5,000-digit integer. `make repro` runs the lab's checks first."""
    import os
    import subprocess

    params = lab_repo / "params.yaml"
    params.write_text(damage(params.read_text()))
    venv = Path(sys.executable).parent.parent
    started = time.monotonic()
    result = subprocess.run(
        ["make", "-s", "repro", f"VENV={venv}", "INSTALLED="],
        cwd=lab_repo,
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ | {"PYTHONPATH": str(lab_repo)},
    )
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode != 0 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert fragment in errors[0]
    assert time.monotonic() - started < 60
    assert not (lab_repo / "data" / "params.checked").exists()  # DVC ran no stage
