"""Typed, validated view of params.yaml: one frozen pydantic model per section.

Read exactly as DVC reads it: YAML 1.2 (`1e-08` is a float, `036` is 36, `yes` is a string) with
duplicate keys refused. Building the view rejects unknown keys, missing keys, wrong types and
out-of-range values with one ParamsError whose message names the key, the bad value and what is
allowed. The defaults live in params.yaml only; nothing here falls back to a hidden default.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError
from ruamel.yaml.nodes import MappingNode, SequenceNode

from spikelab.plumbing.errors import MAX_QUOTED, ParamsError, human_bytes, quoted

ADAM_FAMILY = ("adam", "adamw")
MAX_SEED = 2**32 - 1  # numpy's and Keras's seeds are uint32
MAX_EPOCHS = 1_000_000  # the seed ran 4,680; a larger count is a typo


# nodes a YAML file may expand to, its aliases followed: params.yaml has about 100; an alias bomb
# (each anchor a list of ten aliases of the one before) has billions and makes every reader grow
MAX_YAML_NODES = 100_000
# a YAML file the lab reads (params, sweeps, presets, dvc.lock) is a few KB; the pure-Python reader
# takes about 2 s per MB, and a value of megabytes is a mistake
MAX_YAML_BYTES = 1_000_000
MAX_FLOW_DEPTH = 50
# a path longer than Linux's PATH_MAX cannot be opened
MAX_PATH_BYTES = 4096


class Float32Error(ValueError):
    """A number the model, which trains in float32, would see as another (inf, 0, 1): its message
    is shown after the allowed values."""


def _nonzero_in_float32(value: float) -> float:
    # the model trains in float32: 1e-320 is > 0 in Python but 0 there (a division by zero later)
    with np.errstate(over="ignore"):  # an overflow to inf is refused by Section._bounds_in_float32
        if np.float32(value) == 0:
            raise ValueError("zero in float32")
    return value


# a file name holds at most 255 bytes on common file systems; the store adds nothing to the folder's name
MAX_NAME_BYTES = 255


def _plain_name(value: str) -> str:
    # the MLflow experiment name becomes a folder under mlruns/: '../x' would write outside the project,
    # and a name too long for a file name fails every artifact upload, after the training
    if value.strip() in ("", ".", "..") or any(bad in value for bad in ("/", "\\", "\0")):
        raise ValueError("a name without path separators or NUL")
    if len(value.encode()) > MAX_NAME_BYTES:
        raise ValueError(f"a name of at most {MAX_NAME_BYTES} bytes")
    return value


def _a_path(value: str | None) -> str | None:
    if value is not None and ("\0" in value or len(value.encode()) > MAX_PATH_BYTES):
        raise ValueError(f"a path of at most {MAX_PATH_BYTES} bytes, without NUL")
    return value


Positive = Annotated[float, Field(gt=0, description="a number > 0"), AfterValidator(_nonzero_in_float32)]
NonNegative = Annotated[float, Field(ge=0, description="a number >= 0")]
UnitOpen = Annotated[float, Field(gt=0, lt=1, description="a number in (0, 1)")]
AtLeastOne = Annotated[int, Field(ge=1, description="an integer >= 1")]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED, description=f"an integer in 0..{MAX_SEED}")]


class Section(BaseModel):
    """Strict: no unknown keys, no coercion (true is not 1, '0.1' is not a number), finite numbers only."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)
    # the section's numbers reach the model, which trains in float32: each must keep its bounds there
    FLOAT32: ClassVar[bool] = False

    @field_validator("*", mode="after")
    @classmethod
    def _bounds_in_float32(cls, value, info):
        if not cls.FLOAT32 or not isinstance(value, float):
            return value
        with np.errstate(over="ignore"):  # the overflow to inf is what this looks for
            single = np.float32(value)
        if not np.isfinite(single):
            raise Float32Error(
                f"it is {single} in float32, which the model trains in: at most {np.finfo(np.float32).max:.1e}"
            )
        for bound in cls.model_fields[info.field_name].metadata:
            upper, lower = getattr(bound, "lt", None), getattr(bound, "gt", None)
            if (upper is not None and single >= upper) or (lower is not None and single <= lower):
                raise Float32Error(f"it is {single} in float32, which the model trains in")
        return value


class DataParams(Section):
    per_class: AtLeastOne
    image_size: int = Field(ge=8, description="an integer >= 8")
    length_min: int = Field(ge=4, description="an integer >= 4")
    length_max: int = Field(ge=4, description="an integer >= 4")
    gap_min: AtLeastOne
    gap_max: AtLeastOne
    seed: Seed


class SplitParams(Section):
    val_per_class: AtLeastOne
    seed: Seed
    twins: Literal["independent", "together"]


class ModelParams(Section):
    filters: AtLeastOne
    kernel_size: AtLeastOne
    data_format: Literal["auto", "channels_first", "channels_last"]
    hidden_activation: Literal["none", "relu"]


class OptimizerParams(Section):
    FLOAT32 = True

    name: Literal["adam", "adamw", "sgd", "rmsprop", "nadam", "lion"]
    learning_rate: Positive
    schedule: Literal["constant", "cosine", "step", "warmup"]
    warmup_epochs: AtLeastOne
    step_every: AtLeastOne
    step_factor: UnitOpen
    epsilon: Positive
    beta_1: UnitOpen
    beta_2: UnitOpen
    rho: UnitOpen
    amsgrad: bool
    momentum: float = Field(ge=0, lt=1, description="a number in [0, 1)")
    clipnorm: float | None = Field(gt=0, description="null or a number > 0")
    global_clipnorm: float | None = Field(gt=0, description="null or a number > 0")
    clipvalue: float | None = Field(gt=0, description="null or a number > 0")
    weight_decay: float | None = Field(ge=0, description="null or a number >= 0")


class LossParams(Section):
    FLOAT32 = True

    name: Literal["binary_crossentropy", "categorical_crossentropy", "log_cosh"]
    form: Literal["keras3", "keras2_clipped"]
    label_smoothing: float = Field(ge=0, lt=1, description="a number in [0, 1)")


class TrainParams(Section):
    epochs: int = Field(ge=1, le=MAX_EPOCHS, description=f"an integer >= 1 (at most {MAX_EPOCHS:,})")
    batch_size: AtLeastOne
    seed: Seed
    snapshot_every: int = Field(ge=0, description="an integer >= 0")
    resume_from: Annotated[str | None, AfterValidator(_a_path)] = Field(
        description=f"null or a snapshot path (at most {MAX_PATH_BYTES} bytes, no NUL)"
    )
    resume_epoch: int | None = Field(ge=0, description="null or an integer >= 0")
    jit_compile: bool


class DivergenceParams(Section):
    ratio: float = Field(gt=1, description="a number > 1")
    min_rise: NonNegative


class PlateauParams(Section):
    ratio: float = Field(gt=1, description="a number > 1")
    min_epochs: AtLeastOne


class GuardParams(Section):
    FLOAT32 = True

    enabled: bool
    action: Literal["stop", "reduce_lr"]
    lr_factor: UnitOpen


class DiagnosticsParams(Section):
    enabled: bool
    probe_size: AtLeastOne
    dead_zone_every: int = Field(ge=0, description="an integer >= 0 (0 = only at the end and at snapshots)")
    curvature: bool
    eigen_every: int = Field(ge=0, description="an integer >= 0 (0 = never)")
    power_iterations: AtLeastOne


class TrackingParams(Section):
    experiment: Annotated[str, AfterValidator(_plain_name)] = Field(
        description=f"a non-empty name of at most {MAX_NAME_BYTES} bytes (UTF-8), without path separators or NUL"
    )


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)  # pydantic wraps it; _message unwraps it


class Params(Section):
    data: DataParams
    split: SplitParams
    model: ModelParams
    optimizer: OptimizerParams
    loss: LossParams
    train: TrainParams
    divergence: DivergenceParams
    plateau: PlateauParams
    guard: GuardParams
    diagnostics: DiagnosticsParams
    tracking: TrackingParams

    @model_validator(mode="after")
    def _check_relations(self) -> Params:
        """The rules that involve more than one key (each has a unit test)."""
        d, o, t = self.data, self.optimizer, self.train
        _require(
            d.length_min <= d.length_max, f"data.length_min = {d.length_min} exceeds data.length_max = {d.length_max}"
        )
        _require(d.gap_min <= d.gap_max, f"data.gap_min = {d.gap_min} exceeds data.gap_max = {d.gap_max}")
        _require(
            d.gap_max <= d.length_min - 2,
            f"data.gap_max = {d.gap_max}; allowed: at most data.length_min - 2 = {d.length_min - 2}, "
            "so every gap leaves line on both sides",
        )
        _require(
            d.length_max <= d.image_size,
            f"data.length_max = {d.length_max}; allowed: at most data.image_size = {d.image_size}",
        )
        _require(
            self.split.val_per_class < d.per_class,
            f"split.val_per_class = {self.split.val_per_class}; allowed: fewer than data.per_class = {d.per_class}, "
            "so some images are left to train on",
        )
        _require(
            self.model.kernel_size * 2 - 1 <= d.image_size,
            f"model.kernel_size = {self.model.kernel_size}; allowed: at most (data.image_size + 1) / 2 = "
            f"{(d.image_size + 1) // 2}, so both valid convolutions fit the image",
        )
        _require(
            not o.amsgrad or o.name in ADAM_FAMILY,
            f"optimizer.amsgrad = true applies only to optimizer.name in {', '.join(ADAM_FAMILY)}, not '{o.name}'",
        )
        clips = [key for key in ("clipnorm", "global_clipnorm", "clipvalue") if getattr(o, key) is not None]
        _require(
            len(clips) <= 1,
            f"optimizer.{' and optimizer.'.join(clips)} are both set; Keras clips one way at a time: keep one, set the others null",
        )
        _require(
            self.loss.label_smoothing == 0 or self.loss.name != "log_cosh",
            f"loss.label_smoothing = {self.loss.label_smoothing} applies to the cross-entropies, not log_cosh; set it 0",
        )
        _require(
            o.schedule == "constant" or not (self.guard.enabled and self.guard.action == "reduce_lr"),
            f"guard.action = reduce_lr sets the learning rate, which optimizer.schedule = {o.schedule} computes "
            "each step; use guard.action = stop or optimizer.schedule = constant",
        )
        _require(
            o.name != "adamw" or o.weight_decay is not None,
            "optimizer.weight_decay = None; allowed for adamw: a number >= 0 (decoupled decay)",
        )
        _require(
            (t.resume_from is None) == (t.resume_epoch is None),
            "train.resume_from and train.resume_epoch must be set together (both null for a fresh run), "
            f"got {quoted(t.resume_from)} and {t.resume_epoch!r}",
        )
        _require(
            t.resume_epoch is None or t.resume_epoch < t.epochs,
            f"train.resume_epoch = {t.resume_epoch}; allowed: fewer than train.epochs = {t.epochs}",
        )
        needed, parts = memory_needed(self)
        limit = memory_limit()
        _require(
            needed <= limit,
            f"data.per_class = {d.per_class}, data.image_size = {d.image_size}, model.filters = "
            f"{self.model.filters}, model.kernel_size = {self.model.kernel_size} and train.batch_size = "
            f"{t.batch_size} need about {human_bytes(needed)} of memory "
            f"({', '.join(f'{what} {human_bytes(count)}' for what, count in parts.items())}); "
            f"allowed: at most this machine's memory, {human_bytes(limit)}",
        )
        return self


def memory_limit() -> int:
    """The bytes a training may hold: the machine's physical memory."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_needed(params: Params) -> tuple[int, dict[str, int]]:
    """A lower bound of the bytes a training holds, and its parts: the images (the uint8 stacks and
    the float32 copy the model reads), the model (weights, gradients, two optimizer slots, float32)
    and one batch's activations (forward and backward). Exact integers: 10**5 filters must not overflow."""
    d, m = params.data, params.model
    pixels, k, f = d.image_size**2, m.kernel_size, m.filters
    conv1 = d.image_size - k + 1  # (batch, f, conv1, conv1)
    conv2 = conv1 - k + 1  # (batch, 2f, conv2, conv2)
    pooled = conv2 // 2  # (batch, 2f, pooled, pooled)
    weights = (k * k + 1) * f + (k * k * f + 1) * 2 * f + (pooled * pooled * 2 * f + 1) * 2
    activations = pixels + f * conv1 * conv1 + 2 * f * (conv2 * conv2 + pooled * pooled)
    parts = {
        "images": 2 * d.per_class * pixels * (1 + 4),
        "model": weights * 4 * 4,
        "one batch": params.train.batch_size * activations * 4 * 2,
    }
    return sum(parts.values()), parts


SECTIONS = tuple(Params.model_fields)


def _field_of(loc: tuple):
    """(model class, field info) for a pydantic error location like ('optimizer', 'epsilon')."""
    model, info = Params, None
    for part in loc:
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            return model, None
        info = fields[part]
        model = info.annotation
    return model, info


def _allowed(info) -> str:
    if info is None:
        return "see params.yaml"
    if info.description:
        return info.description
    annotation = info.annotation
    choices = getattr(annotation, "__args__", None)
    if getattr(annotation, "__origin__", None) is Literal and choices:
        return "one of " + ", ".join(choices)
    return {bool: "true/false", str: "a string", int: "an integer", float: "a number"}.get(annotation, str(annotation))


def _shown(value, info):
    """The value as the user wrote it; an integer given for a number shows as that number (0 -> 0.0)."""
    if info is not None and info.annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _message(error: dict) -> str:
    """One pydantic error -> the lab's one-line message."""
    loc = tuple(str(part) for part in error["loc"] if not isinstance(part, int))
    key = ".".join(loc)
    if len(key) > MAX_QUOTED:  # a key is a value the user wrote, too
        key = quoted(key, as_written=True)
    parent, info = _field_of(loc)
    kind = error["type"]
    if kind == "value_error" and not loc:  # a rule across keys: its own message names them
        return str(error["ctx"]["error"])
    if kind == "extra_forbidden":
        if len(loc) == 1:
            return f"unknown section '{key}'; allowed sections: {', '.join(SECTIONS)}"
        return f"unknown key '{key}'; allowed keys in '{loc[0]}': {', '.join(parent.model_fields)}"
    if kind == "missing":
        return f"missing {'section' if len(loc) == 1 else 'key'} '{key}'"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"'{key or 'params.yaml'}' must be a mapping of keys, got {quoted(error['input'])}"
    reason = error.get("ctx", {}).get("error")
    why = f" ({reason})" if isinstance(reason, Float32Error) else ""
    return f"{key} = {quoted(_shown(error['input'], info))}; allowed: {_allowed(info)}{why}"


def params_from_dict(raw) -> Params:
    """Validate a parsed params.yaml; raises ParamsError naming the first bad key."""
    if not isinstance(raw, dict):
        raise ParamsError("params.yaml: the file must be a mapping of sections")
    for where, key in _keys_of(raw):
        if isinstance(key, str) and key != key.strip() and len(where + key) <= MAX_QUOTED:
            # 'epochs ' would otherwise read as a missing 'epochs' (and an unknown 'epochs ')
            raise ParamsError(
                f"params.yaml: key '{where}{key}' has spaces around its name; write '{where}{key.strip()}'"
            )
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        errors = error.errors()
        # an unknown key names the typo ('epoch'); the missing one it stands for ('epochs') does not
        first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        raise ParamsError("params.yaml: " + _message(first)) from None


def _keys_of(raw: dict):
    """(prefix, key) of every section name ('', 'train') and every key of a mapping section ('train.', 'epochs')."""
    for section, values in raw.items():
        yield "", section
        if isinstance(values, dict):
            yield from ((f"{section}.", key) for key in values)


def read_yaml(path: str | Path, what: str):
    """A YAML file as DVC reads it (YAML 1.2, duplicate keys refused), or ParamsError in one line."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: not found (run from the project root)")
    if not path.is_file():
        raise ParamsError(f"{path}: not a file (a {what} YAML file is expected)")
    if (size := path.stat().st_size) > MAX_YAML_BYTES:
        raise ParamsError(
            f"{path}: {human_bytes(size)}{_longest_line(path)}; allowed: at most {human_bytes(MAX_YAML_BYTES)}"
        )
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise ParamsError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    _check_flow_depth(path, text, what)
    try:
        # composed first (aliases stay shared references there): sizes are checked before anything
        # builds or walks the data; a fresh reader per file, as YAML.load uses one
        constructor, _ = YAML(typ="safe", pure=True).get_constructor_parser(text)
        node = constructor.composer.get_single_node()
        _check_nodes(path, node)
        return None if node is None else constructor.construct_document(node)
    except YAMLError as error:
        problem = " ".join(str(error).split())
        if len(problem) > 2 * MAX_QUOTED:  # the line it quotes may be long
            problem = problem[: 2 * MAX_QUOTED] + " ..."
        raise ParamsError(f"{path}: not valid {what} YAML: {problem}") from None
    except RecursionError:
        raise ParamsError(f"{path}: not valid {what} YAML: nested too deeply") from None


def _longest_line(path: Path) -> str:
    """', line N alone M (`key: value...`)' for a file's longest line, if it is most of the file."""
    with path.open("rb") as handle:
        number, line = max(enumerate(handle, 1), key=lambda item: len(item[1]))
    if len(line) * 2 < path.stat().st_size:
        return ""
    start = line[:40].decode("utf-8", "replace").strip()
    return f", line {number} alone {human_bytes(len(line))} (it starts {start!r})"


def _check_flow_depth(path: Path, text: str, what: str) -> None:
    """Refuse [[[[...]]]] nested deeper than MAX_FLOW_DEPTH: the YAML reader recurses per level
    and takes seconds to fail on a few thousand."""
    if text.count("[") + text.count("{") <= MAX_FLOW_DEPTH:
        return
    depth = 0
    for character in text:
        if character in "[{":
            depth += 1
            if depth > MAX_FLOW_DEPTH:
                raise ParamsError(f"{path}: not valid {what} YAML: brackets nested more than {MAX_FLOW_DEPTH} deep")
        elif character in "]}":
            depth = max(0, depth - 1)


def _check_nodes(path: Path, root) -> None:
    """Refuse a document whose aliases expand beyond MAX_YAML_NODES nodes, or holding an integer
    too long for Python to convert (sys.get_int_max_str_digits()), naming its key."""
    sizes: dict[int, int] = {}

    def size(node, where: str) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        sizes[id(node)] = 1  # a node that holds itself (a recursive alias) counts once
        total = 1
        if isinstance(node, MappingNode):
            for key, value in node.value:
                name = key.value if isinstance(key.value, str) else "?"
                total += size(key, where) + size(value, f"{where}{name}.")
        elif isinstance(node, SequenceNode):
            total += sum(size(item, where) for item in node.value)
        elif node.tag.endswith(":int") and len(node.value) > sys.get_int_max_str_digits():
            key = where.rstrip(".")
            raise ParamsError(
                f"{path}: {quoted(key, as_written=True)} = an integer of {len(node.value):,} "
                f"digits (it starts {node.value[:20]}); allowed: at most {sys.get_int_max_str_digits():,} digits"
            )
        sizes[id(node)] = total
        return total

    if root is not None and (total := size(root, "")) > MAX_YAML_NODES:
        raise ParamsError(
            f"{path}: its aliases (*name) expand to {total:,} values; allowed: at most {MAX_YAML_NODES:,} "
            "(an alias bomb makes every reader of the file, DVC too, grow until it fails)"
        )


# `dvc exp run -S` writes its value into params.yaml before the stages read it, and leaves a bad one
# there: every later command fails on it too until the file is put back
RECOVERY = "; if `dvc exp run -S` put it there, `git checkout params.yaml` restores the committed file"


def load_params(path: str | Path = "params.yaml") -> Params:
    raw = read_yaml(path, "params")
    try:
        return params_from_dict(raw)
    except ParamsError as error:
        raise ParamsError(str(error) + RECOVERY) from None


def flat_raw(raw) -> dict:
    """Params as parsed from YAML, unvalidated ({section: {key: value}}, or DVC's dotted keys)
    -> {'section.key': value}; anything but a mapping -> {}."""
    if not isinstance(raw, dict):
        return {}
    flat = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{name}": item for name, item in value.items()})
        else:
            flat[key] = value
    return flat


def flatten(params: Params) -> dict:
    """{'optimizer.epsilon': 1e-07, ...}: the keys MLflow and `dvc exp show` use."""
    return {
        f"{section}.{key}": value for section, values in params.model_dump().items() for key, value in values.items()
    }
