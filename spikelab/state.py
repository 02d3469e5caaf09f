"""Full training state (weights AND optimizer slots) as flat numpy dicts, for snapshots and replay.

Keys are 'weight/<variable path>' and 'optimizer/<class>/<slot>'; restoring matches by key, so
a replay that switches epsilon, loss or clipping restores Adam's m, v and step exactly, while a
replay that switches optimizer family starts that optimizer's state fresh (reported).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import keras
import numpy as np

from spikelab.files import atomic_path


def _is_learning_rate(variable) -> bool:
    return variable.path.endswith("/learning_rate")


def _optimizer_key(optimizer, variable) -> str:
    """'optimizer/<class>/<slot>': Keras names a process's second Adam 'adam_1', so the instance
    name (the path's first part) cannot be the key, or an in-process replay would match nothing."""
    slot = variable.path.split("/", 1)[-1]
    return f"optimizer/{type(optimizer).__name__.lower()}/{slot}"


def capture(model: keras.Model) -> dict[str, np.ndarray]:
    state = {f"weight/{v.path}": v.numpy().copy() for v in model.trainable_variables}
    # the learning rate is not state: a replay or the guard may set a new one
    state.update(
        {
            _optimizer_key(model.optimizer, v): v.numpy().copy()
            for v in model.optimizer.variables
            if not _is_learning_rate(v)
        }
    )
    return state


def restore(model: keras.Model, state: dict[str, np.ndarray]) -> list[str]:
    """Assign every variable found in state; returns the optimizer variables left fresh."""
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    for variable in model.trainable_variables:
        variable.assign(state[f"weight/{variable.path}"])
    fresh = []
    for variable in model.optimizer.variables:
        key = _optimizer_key(model.optimizer, variable)
        if key in state:
            variable.assign(state[key])
        elif not _is_learning_rate(variable):
            fresh.append(variable.path)
    return fresh


def save_snapshot(path: Path, state: dict[str, np.ndarray], epoch: int, history: list[dict]) -> None:
    """One npz: the state after `epoch` epochs plus the history rows up to it."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, epoch=np.int64(epoch), history=np.array(json.dumps(history)), **state)


def load_snapshot(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], int, list[dict]]:
    with np.load(path) as archive:
        state = {key: archive[key] for key in archive.files if "/" in key}
        return state, int(archive["epoch"]), json.loads(str(archive["history"]))
