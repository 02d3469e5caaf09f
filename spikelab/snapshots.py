"""Full training state (weights AND optimizer slots) as flat numpy dicts, for snapshots and replay.

Keys are 'weight/<variable path>' and 'optimizer/<class>/<slot>'; restoring matches by key, so
a replay that switches epsilon, loss or clipping restores Adam's m, v and step exactly, while a
replay that switches optimizer family starts that optimizer's state fresh (reported).

A snapshot (epoch_NNNNN.npz) holds the state and its epoch only; the per-epoch rows live once per
snapshot folder, in history.csv beside the snapshots (rewritten at each snapshot). Embedding the
history in every snapshot made the folder grow with the square of the epoch count. A resumed run
takes its rows 1..k from that file. Free of TensorFlow imports: the train stage checks
train.resume_from with it before anything heavy loads.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from spikelab.history import read_history_csv, write_history_csv
from spikelab.plumbing.errors import InputError, disk_full_error, disk_full_in, one_line_shortened, quoted
from spikelab.plumbing.files import atomic_path, project_root

if TYPE_CHECKING:
    import keras

    from spikelab.params import Params

HISTORY = "history.csv"


def _is_learning_rate(variable) -> bool:
    return variable.path.endswith("/learning_rate")


def _optimizer_key(optimizer, variable) -> str:
    """'optimizer/<class>/<slot>': Keras names a process's second Adam 'adam_1', so the instance
    name (the path's first part) cannot be the key, or an in-process replay would match nothing."""
    slot = variable.path.split("/", 1)[-1]
    return f"optimizer/{type(optimizer).__name__.lower()}/{slot}"


def capture(model: keras.Model, with_non_trainable: bool = False) -> dict[str, np.ndarray]:
    """with_non_trainable: also the layers' other state ('state/<path>': batch-norm statistics)."""
    state = {f"weight/{v.path}": v.numpy().copy() for v in model.trainable_variables}
    if with_non_trainable:
        state.update({f"state/{v.path}": v.numpy().copy() for v in model.non_trainable_variables})
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
    for variable in model.non_trainable_variables:
        if f"state/{variable.path}" in state:
            variable.assign(state[f"state/{variable.path}"])
    fresh = []
    for variable in model.optimizer.variables:
        key = _optimizer_key(model.optimizer, variable)
        if key in state:
            variable.assign(state[key])
        elif not _is_learning_rate(variable):
            fresh.append(variable.path)
    return fresh


def save_snapshot(path: Path, state: dict[str, np.ndarray], epoch: int, history: list[dict]) -> None:
    """The state after `epoch` epochs as one npz, and the history rows so far as history.csv beside it."""
    try:
        write_history_csv(path.parent / HISTORY, history)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, epoch=np.int64(epoch), **state)
    except OSError as error:
        if disk_full_in(error) is None:
            raise
        # an npz stores each array raw, with a .npy header and two zip records naming it
        needed = sum(array.nbytes + 256 + 2 * len(key) for key, array in state.items()) + 64 * len(history)
        raise disk_full_error(path, needed, f"(the snapshot of epoch {epoch})") from None


def load_snapshot(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], int]:
    """(state, epoch); a snapshot of an older layout also holds a 'history' member, which is not state."""
    with np.load(path) as archive:
        state = {key: archive[key] for key in archive.files if "/" in key}
        return state, int(archive["epoch"])


# what train.resume_from must name, said with every refusal of a file that is not one
CHECKPOINT = (
    "a checkpoint of this lab is a snapshot the train stage wrote (models/snapshots/epoch_NNNNN.npz, "
    f"every train.snapshot_every epochs) with the {HISTORY} beside it"
)


def _resume_error(path, message: str, explain: bool = True) -> InputError:
    return InputError(
        f"train.resume_from = {quoted(path, as_written=True)}: {message}" + (f"; {CHECKPOINT}" if explain else "")
    )


def resume_history(path: str | os.PathLike, epoch: int) -> list[dict]:
    """The rows of epochs 1..epoch from the history.csv beside the snapshot; InputError without them."""
    source = Path(path).parent / HISTORY
    if not source.is_file():
        raise _resume_error(path, f"no {HISTORY} beside it (the run's per-epoch rows up to the snapshot)")
    rows = [row for row in read_history_csv(source, skip_empty=True) if row.get("epoch", 0) <= epoch]
    if [row.get("epoch") for row in rows] != list(range(1, epoch + 1)):
        raise _resume_error(path, f"{source} lacks rows for epochs 1..{epoch}")
    return rows


def check_named_files(params: Params) -> None:
    """What a Params cannot see alone: the files it names (train.resume_from, whether it is a
    snapshot of this lab first), as the train stage will check them. The validate stage and
    `make exp` call it before DVC deletes any output."""
    if params.train.resume_from is not None:
        check_resume(params.train.resume_from, params.train.resume_epoch)
        check_resume_in_project(params.train.resume_from)


def check_resume_in_project(path: str | os.PathLike) -> None:
    """Refuse (for the train stage) a train.resume_from that lies outside the project, symlinks
    followed: nothing of the project keeps such a file, so the run could not be reproduced. A
    queued run's copy (<project>/.dvc/tmp/exps/...) counts as its project's."""
    target, inside = Path(path).resolve(), project_root()
    if not target.is_relative_to(inside):
        raise _resume_error(
            path,
            f"resolves to {target}, outside the project ({inside}), where DVC does not track it: copy the "
            f"snapshot and its {HISTORY} into the project (e.g. models/resume/) and name that copy",
        )


def check_resume(path: str | os.PathLike, epoch: int) -> None:
    """Refuse a train.resume_from that is not a snapshot of epoch `epoch` (before any training)."""
    if not Path(path).is_file():
        raise _resume_error(path, "no such snapshot file")
    try:
        with np.load(path) as archive:
            found = int(archive["epoch"]) if "epoch" in archive.files else None
    except OSError as error:  # unreadable: say why (permission, an I/O error)
        raise _resume_error(path, f"not a snapshot (.npz) file ({one_line_shortened(error, 100)})") from None
    except (ValueError, EOFError, zipfile.BadZipFile):  # numpy's words here would offer to unpickle it
        raise _resume_error(path, "not a snapshot (.npz) file: numpy cannot read it as saved arrays") from None
    if found is None:
        raise _resume_error(path, "not a snapshot: it holds no 'epoch'")
    if found != epoch:
        raise _resume_error(path, f"holds epoch {found}, not train.resume_epoch = {epoch}")
    resume_history(path, epoch)


def check_resume_weights(path: str | os.PathLike, model: keras.Model) -> None:
    """Refuse a snapshot whose weights do not fit `model` (another model.* than the run's), before
    the MLflow run opens: restoring it would fail with a KeyError mid-setup."""
    expected = {f"weight/{v.path}": tuple(v.shape) for v in model.trainable_variables}
    with np.load(path) as archive:
        found = {key: tuple(archive[key].shape) for key in archive.files if key.startswith("weight/")}
    missing = sorted(expected.keys() - found.keys())
    wrong = [
        f"{key} {found[key]} (this model: {shape})" for key, shape in expected.items() if found.get(key, shape) != shape
    ]
    if missing or wrong:
        problem = f"lacks {', '.join(missing)}" if missing else f"holds {', '.join(wrong)}"
        raise _resume_error(
            path,
            f"its weights do not fit the model params.yaml builds: it {problem}; resume with the model.* it was made with",
            explain=False,
        )


def load_resume(path: str | os.PathLike, epoch: int) -> tuple[dict[str, np.ndarray], list[dict]]:
    """(state, history rows 1..epoch) of the snapshot a run resumes from, checked."""
    check_resume(path, epoch)
    return load_snapshot(path)[0], resume_history(path, epoch)
