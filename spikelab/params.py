"""Typed, validated view of params.yaml: one frozen dataclass per section.

Building the view rejects unknown keys, missing keys, wrong types and out-of-range values
with one ParamsError whose message names the key, the bad value and what is allowed. The
defaults live in params.yaml only; nothing here falls back to a hidden default.
"""
from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class ParamsError(ValueError):
    """A bad value in params.yaml; the message is meant to be shown to the user as is."""


def _rule(description: str, check) -> dict:
    return {"rule": (description, check)}


POSITIVE = _rule("a number > 0", lambda v: v > 0)
AT_LEAST_ONE = _rule("an integer >= 1", lambda v: v >= 1)
NON_NEGATIVE = _rule("a number >= 0", lambda v: v >= 0)
UNIT_OPEN = _rule("a number in (0, 1)", lambda v: 0 < v < 1)
OPTIONAL_POSITIVE = _rule("null or a number > 0", lambda v: v is None or v > 0)
OPTIONAL_NON_NEGATIVE = _rule("null or a number >= 0", lambda v: v is None or v >= 0)


def _choice(*allowed: str) -> dict:
    return _rule("one of " + ", ".join(allowed), lambda v: v in allowed)


OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
ADAM_FAMILY = ("adam", "adamw")
LOSSES = ("binary_crossentropy", "categorical_crossentropy", "log_cosh")
LOSS_FORMS = ("keras3", "keras2_clipped")


@dataclass(frozen=True)
class DataParams:
    per_class: int = field(metadata=AT_LEAST_ONE)
    image_size: int = field(metadata=_rule("an integer >= 8", lambda v: v >= 8))
    length_min: int = field(metadata=_rule("an integer >= 4", lambda v: v >= 4))
    length_max: int = field(metadata=_rule("an integer >= 4", lambda v: v >= 4))
    gap_min: int = field(metadata=AT_LEAST_ONE)
    gap_max: int = field(metadata=AT_LEAST_ONE)
    seed: int = field(metadata=NON_NEGATIVE)


@dataclass(frozen=True)
class SplitParams:
    val_per_class: int = field(metadata=AT_LEAST_ONE)
    seed: int = field(metadata=NON_NEGATIVE)


@dataclass(frozen=True)
class ModelParams:
    filters: int = field(metadata=AT_LEAST_ONE)
    kernel_size: int = field(metadata=AT_LEAST_ONE)
    data_format: str = field(metadata=_choice("auto", "channels_first", "channels_last"))


@dataclass(frozen=True)
class OptimizerParams:
    name: str = field(metadata=_choice(*OPTIMIZERS))
    learning_rate: float = field(metadata=POSITIVE)
    epsilon: float = field(metadata=POSITIVE)
    beta_1: float = field(metadata=UNIT_OPEN)
    beta_2: float = field(metadata=UNIT_OPEN)
    rho: float = field(metadata=UNIT_OPEN)
    amsgrad: bool
    momentum: float = field(metadata=_rule("a number in [0, 1)", lambda v: 0 <= v < 1))
    clipnorm: typing.Optional[float] = field(metadata=OPTIONAL_POSITIVE)
    weight_decay: typing.Optional[float] = field(metadata=OPTIONAL_NON_NEGATIVE)


@dataclass(frozen=True)
class LossParams:
    name: str = field(metadata=_choice(*LOSSES))
    form: str = field(metadata=_choice(*LOSS_FORMS))


@dataclass(frozen=True)
class TrainParams:
    epochs: int = field(metadata=AT_LEAST_ONE)
    batch_size: int = field(metadata=AT_LEAST_ONE)
    seed: int = field(metadata=NON_NEGATIVE)
    snapshot_every: int = field(metadata=NON_NEGATIVE)
    resume_from: typing.Optional[str]
    resume_epoch: typing.Optional[int] = field(metadata=OPTIONAL_NON_NEGATIVE)


@dataclass(frozen=True)
class DivergenceParams:
    ratio: float = field(metadata=_rule("a number > 1", lambda v: v > 1))
    min_rise: float = field(metadata=NON_NEGATIVE)


@dataclass(frozen=True)
class GuardParams:
    enabled: bool
    action: str = field(metadata=_choice("stop", "reduce_lr"))
    lr_factor: float = field(metadata=UNIT_OPEN)


@dataclass(frozen=True)
class DiagnosticsParams:
    enabled: bool
    probe_size: int = field(metadata=AT_LEAST_ONE)


@dataclass(frozen=True)
class TrackingParams:
    experiment: str = field(metadata=_rule("a non-empty string", lambda v: v.strip() != ""))


@dataclass(frozen=True)
class Params:
    data: DataParams
    split: SplitParams
    model: ModelParams
    optimizer: OptimizerParams
    loss: LossParams
    train: TrainParams
    divergence: DivergenceParams
    guard: GuardParams
    diagnostics: DiagnosticsParams
    tracking: TrackingParams


def _type_ok(value, annotation) -> bool:
    """Whether a YAML value fits a field's annotation (bool is never a number here)."""
    if typing.get_origin(annotation) is typing.Union:
        return any(_type_ok(value, arm) for arm in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, annotation)


def _type_name(annotation) -> str:
    if typing.get_origin(annotation) is typing.Union:
        return " or ".join(_type_name(arm) for arm in typing.get_args(annotation))
    return {type(None): "null", float: "a number", int: "an integer", bool: "true/false", str: "a string"}[
        annotation
    ]


def _build_section(cls, section: str, raw):
    if not isinstance(raw, dict):
        raise ParamsError(f"params.yaml: '{section}' must be a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            raise ParamsError(
                f"params.yaml: unknown key '{section}.{key}'; allowed keys in '{section}': {', '.join(names)}"
            )
    values = {}
    for f in dataclasses.fields(cls):
        key = f"{section}.{f.name}"
        if f.name not in raw:
            raise ParamsError(f"params.yaml: missing key '{key}'")
        value = raw[f.name]
        if not _type_ok(value, hints[f.name]):
            raise ParamsError(f"params.yaml: {key} = {value!r} is not {_type_name(hints[f.name])}")
        if hints[f.name] is float and value is not None:
            value = float(value)
        if "rule" in f.metadata:
            description, check = f.metadata["rule"]
            if not check(value):
                raise ParamsError(f"params.yaml: {key} = {value!r}; allowed: {description}")
        values[f.name] = value
    return cls(**values)


def _check_relations(p: Params) -> None:
    """Constraints that involve more than one key."""
    if p.data.length_min > p.data.length_max:
        raise ParamsError(
            f"params.yaml: data.length_min = {p.data.length_min} exceeds data.length_max = {p.data.length_max}"
        )
    if p.data.gap_min > p.data.gap_max:
        raise ParamsError(f"params.yaml: data.gap_min = {p.data.gap_min} exceeds data.gap_max = {p.data.gap_max}")
    if p.data.gap_max > p.data.length_min - 2:
        raise ParamsError(
            f"params.yaml: data.gap_max = {p.data.gap_max}; allowed: at most data.length_min - 2 = "
            f"{p.data.length_min - 2}, so every gap leaves line on both sides"
        )
    if p.data.length_max > p.data.image_size:
        raise ParamsError(
            f"params.yaml: data.length_max = {p.data.length_max}; allowed: at most data.image_size = {p.data.image_size}"
        )
    if p.split.val_per_class >= p.data.per_class:
        raise ParamsError(
            f"params.yaml: split.val_per_class = {p.split.val_per_class}; allowed: fewer than "
            f"data.per_class = {p.data.per_class}, so some images are left to train on"
        )
    if p.model.kernel_size * 2 - 1 > p.data.image_size:
        raise ParamsError(
            f"params.yaml: model.kernel_size = {p.model.kernel_size}; allowed: at most "
            f"(data.image_size + 1) / 2 = {(p.data.image_size + 1) // 2}, so both valid convolutions fit the image"
        )
    if p.optimizer.amsgrad and p.optimizer.name not in ADAM_FAMILY:
        raise ParamsError(
            f"params.yaml: optimizer.amsgrad = true applies only to optimizer.name in {', '.join(ADAM_FAMILY)}, "
            f"not '{p.optimizer.name}'"
        )
    if p.optimizer.name == "adamw" and p.optimizer.weight_decay is None:
        raise ParamsError("params.yaml: optimizer.weight_decay = None; allowed for adamw: a number >= 0 (decoupled decay)")
    if (p.train.resume_from is None) != (p.train.resume_epoch is None):
        raise ParamsError(
            "params.yaml: train.resume_from and train.resume_epoch must be set together (both null for a fresh run), "
            f"got {p.train.resume_from!r} and {p.train.resume_epoch!r}"
        )
    if p.train.resume_epoch is not None and p.train.resume_epoch >= p.train.epochs:
        raise ParamsError(
            f"params.yaml: train.resume_epoch = {p.train.resume_epoch}; allowed: fewer than train.epochs = {p.train.epochs}"
        )


def params_from_dict(raw) -> Params:
    """Validate a parsed params.yaml; raises ParamsError naming the first bad key."""
    if not isinstance(raw, dict):
        raise ParamsError("params.yaml: the file must be a mapping of sections")
    hints = typing.get_type_hints(Params)
    sections = list(hints)
    for key in raw:
        if key not in hints:
            raise ParamsError(f"params.yaml: unknown section '{key}'; allowed sections: {', '.join(sections)}")
    built = {}
    for section, cls in hints.items():
        if section not in raw:
            raise ParamsError(f"params.yaml: missing section '{section}'")
        built[section] = _build_section(cls, section, raw[section])
    params = Params(**built)
    _check_relations(params)
    return params


class _ParamsLoader(yaml.SafeLoader):
    """PyYAML reads YAML 1.1, where `1e-08` (no dot) is a string; `dvc exp run -S optimizer.epsilon=1e-8`
    writes exactly that (ruamel, YAML 1.2), so exponent floats without a dot are read as floats too."""


_ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: not found (run from the project root)")
    try:
        raw = yaml.load(path.read_text(), Loader=_ParamsLoader)
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML: {error}") from None
    return params_from_dict(raw)


def flatten(params: Params) -> dict:
    """{'optimizer.epsilon': 1e-07, ...}: the keys MLflow and `dvc exp show` use."""
    flat = {}
    for section, values in dataclasses.asdict(params).items():
        for key, value in values.items():
            flat[f"{section}.{key}"] = value
    return flat
