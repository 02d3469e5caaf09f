"""params.yaml is read as DVC reads it (YAML 1.2), and every rule refuses bad values in one line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import with_changes
from spikelab.params import load_params, params_from_dict
from spikelab.plumbing.errors import ParamsError

CROSS_KEY_RULES = {
    # id: (changes, fragment of the message)
    "length_min_above_max": ({"data": {"length_min": 21}}, "data.length_min = 21 exceeds data.length_max = 20"),
    "gap_min_above_max": ({"data": {"gap_min": 4, "gap_max": 3}}, "data.gap_min = 4 exceeds data.gap_max = 3"),
    "gap_leaves_no_line": ({"data": {"gap_max": 7}}, "data.gap_max = 7; allowed: at most data.length_min - 2 = 6"),
    "line_longer_than_image": (
        {"data": {"length_max": 33, "length_min": 8}},
        "data.length_max = 33; allowed: at most data.image_size = 32",
    ),
    "no_training_images_left": ({"split": {"val_per_class": 96}}, "split.val_per_class = 96; allowed: fewer than"),
    "kernel_too_large": ({"model": {"kernel_size": 17}}, "model.kernel_size = 17; allowed: at most (data.image_size"),
    "amsgrad_without_adam": ({"optimizer": {"name": "sgd", "amsgrad": True}}, "optimizer.amsgrad = true applies only"),
    "adamw_without_decay": ({"optimizer": {"name": "adamw"}}, "optimizer.weight_decay = None; allowed for adamw"),
    "two_clips": (
        {"optimizer": {"clipnorm": 1.0, "global_clipnorm": 1.0}},
        "optimizer.clipnorm and optimizer.global_clipnorm are both set",
    ),
    "smoothing_log_cosh": (
        {"loss": {"name": "log_cosh", "label_smoothing": 0.1}},
        "loss.label_smoothing = 0.1 applies to the cross-entropies, not log_cosh",
    ),
    "schedule_under_reduce_lr": (
        {"optimizer": {"schedule": "cosine"}, "guard": {"enabled": True, "action": "reduce_lr"}},
        "guard.action = reduce_lr sets the learning rate, which optimizer.schedule = cosine computes",
    ),
    "resume_without_epoch": ({"train": {"resume_from": "x.npz"}}, "must be set together"),
    "resume_epoch_past_the_end": (
        {"train": {"resume_from": "x.npz", "resume_epoch": 3}},
        "train.resume_epoch = 3; allowed: fewer than train.epochs = 3",
    ),
}


@pytest.mark.parametrize("rule", CROSS_KEY_RULES)
def test_every_cross_key_rule_refuses_in_one_line(tiny_raw, rule):
    changes, fragment = CROSS_KEY_RULES[rule]
    with pytest.raises(ParamsError, match=re.escape(fragment)) as raised:
        params_from_dict(with_changes(tiny_raw, changes))
    assert "\n" not in str(raised.value)


SINGLE_KEY = {
    "float32_zero_learning_rate": ({"optimizer": {"learning_rate": 1e-320}}, "optimizer.learning_rate = 1e-320"),
    "float32_zero_epsilon": ({"optimizer": {"epsilon": 1e-50}}, "optimizer.epsilon = 1e-50"),
    "seed_past_uint32": ({"train": {"seed": 2**32}}, "train.seed = 4294967296; allowed: an integer in 0..4294967295"),
    "negative_seed": ({"data": {"seed": -1}}, "data.seed = -1"),
    "epochs_beyond_bound": ({"train": {"epochs": 10**7}}, "train.epochs = 10000000"),
    "experiment_outside_the_tree": ({"tracking": {"experiment": "../../tmp/x"}}, "tracking.experiment = '../../tmp/x'"),
    "experiment_with_nul": ({"tracking": {"experiment": "a\0b"}}, "tracking.experiment = 'a\\x00b'"),
    "bool_for_integer": ({"train": {"epochs": True}}, "train.epochs = True"),
    "string_for_bool": ({"optimizer": {"amsgrad": "yes"}}, "optimizer.amsgrad = 'yes'; allowed: true/false"),
    "nan": ({"optimizer": {"beta_1": float("nan")}}, "optimizer.beta_1 = nan"),
    "unknown_schedule": ({"optimizer": {"schedule": "linear"}}, "optimizer.schedule = 'linear'; allowed: one of"),
    "zero_warmup": ({"optimizer": {"warmup_epochs": 0}}, "optimizer.warmup_epochs = 0; allowed: an integer >= 1"),
    "step_factor_one": (
        {"optimizer": {"step_factor": 1.0}},
        "optimizer.step_factor = 1.0; allowed: a number in (0, 1)",
    ),
    "negative_global_clip": ({"optimizer": {"global_clipnorm": -1.0}}, "optimizer.global_clipnorm = -1.0"),
    "zero_clipvalue": ({"optimizer": {"clipvalue": 0.0}}, "optimizer.clipvalue = 0.0; allowed: null or a number > 0"),
    "smoothing_one": ({"loss": {"label_smoothing": 1.0}}, "loss.label_smoothing = 1.0; allowed: a number in [0, 1)"),
    "unknown_optimizer": ({"optimizer": {"name": "adafactor"}}, "optimizer.name = 'adafactor'; allowed: one of"),
}


@pytest.mark.parametrize("case", SINGLE_KEY)
def test_edge_values_are_refused_naming_key_and_value(tiny_raw, case):
    changes, fragment = SINGLE_KEY[case]
    with pytest.raises(ParamsError, match=re.escape(fragment)):
        params_from_dict(with_changes(tiny_raw, changes))


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def params_text(tiny_raw: dict, section: str, line: str) -> str:
    """The tiny params as YAML text, with `line` (e.g. 'epochs: 036') replacing that key's line."""
    import yaml

    text = yaml.safe_dump(tiny_raw, sort_keys=False)
    key = line.split(":")[0]
    return re.sub(rf"(?m)^(  ){key}:.*$", "  " + line, text, count=1) if section else text


def test_yaml_1_2_as_dvc_writes_it(tiny_raw, tmp_path):
    text = params_text(tiny_raw, "optimizer", "epsilon: 1e-08")
    text = text.replace("  epochs: 3", "  epochs: 036")  # YAML 1.1 (PyYAML) would read octal 30
    params = load_params(write(tmp_path / "params.yaml", text))
    assert params.optimizer.epsilon == 1e-08
    assert params.train.epochs == 36


@pytest.mark.parametrize(
    ("text_change", "fragment"),
    [
        (lambda t: t.replace("  amsgrad: false", "  amsgrad: yes"), "optimizer.amsgrad = 'yes'"),  # a string in 1.2
        (lambda t: t.replace("  epochs: 3", "  epochs: 3\n  epochs: 5"), 'found duplicate key "epochs"'),
        (lambda t: t.replace("  epochs: 3", "  epochs: [3"), "not valid params YAML"),
    ],
)
def test_strings_duplicates_and_broken_yaml_are_refused(tiny_raw, tmp_path, text_change, fragment):
    path = write(tmp_path / "params.yaml", text_change(params_text(tiny_raw, "", "")))
    with pytest.raises(ParamsError, match=re.escape(fragment)) as raised:
        load_params(path)
    assert "\n" not in str(raised.value)


def test_non_utf8_params_file_is_refused(tmp_path):
    with pytest.raises(ParamsError, match="not UTF-8"):
        load_params(write(tmp_path / "params.yaml", b"data:\n  per_class: \xff\n"))


def test_the_view_is_frozen(tiny_raw):
    params = params_from_dict(tiny_raw)
    with pytest.raises(ValueError, match="frozen"):
        params.train.epochs = 5


def test_raw_params_flatten_the_same_way_everywhere():
    """One flattener for params as parsed (tracking's run names, make compare, make exp, DVC's records)."""
    from spikelab.params import flat_raw

    assert flat_raw({"optimizer": {"epsilon": 1e-3, "beta_2": 0.95}, "train": {"seed": 1}}) == {
        "optimizer.epsilon": 1e-3,
        "optimizer.beta_2": 0.95,
        "train.seed": 1,
    }
    assert flat_raw({"optimizer.epsilon": 1e-3, "train": {"seed": 1}}) == {"optimizer.epsilon": 1e-3, "train.seed": 1}
    assert flat_raw(None) == {} and flat_raw(["a"]) == {}
