"""The population engine: the trainings of one cell (the same params, other seeds) in one process.

A member is what one run of the train stage would be: its own initial weights (drawn exactly as a
single run with its train.seed draws them), its own batch order (training.epoch_order with its
train.seed), its own optimizer state, divergence rule, dead-zone accounting, diagnostics,
snapshots, best state and history. Members may also differ in data.seed and split.seed (each its
own dataset); every other param must be equal, or the population is refused in one line.

How members share one graph: every weight is stacked on a leading member axis, (P, *the single
model's shape), and named as the single model's (conv1/kernel, ...). At the default shapes both
convolutions are batched matrix products (StackedNetwork: the first in row form, the second in
dense form), elsewhere grouped convolutions; the dense layer is a batched product.
One Keras optimizer over the stacked variables is P optimizers: Adam, AMSGrad, SGD and RMSprop
update each weight from its own gradient and slots alone, and the shared step count is every
member's. The one rule that mixes weights, gradient-norm clipping, is applied per member and per
variable (Keras's own clip, over the non-member axes). The summed loss's gradient is each member's
own gradient: no parameter is shared.

What a member's numbers depend on: its own params, seeds and data only; not on its neighbours'
seeds or values, and in the product forms not on P or its slot either (batched products compute
each member's matrices apart; the grouped kernels' arithmetic depends on the group count), tested
in tests/test_population.py and stated in docs/performance.md. They agree with the single
run's to float tolerance, not bit for bit: the single run's convolutions are ungrouped (NCHW), and
its validation loss is a mean of batch means.

What is not supported, refused before any work: guard.enabled (the guard rewinds one run mid-epoch),
train.jit_compile, members resumed from different epochs. A member whose loss turns non-finite
stops after that epoch, as TerminateOnNaN stops a single run (which stops within the epoch, at the
end of its current steps_per_execution block: its last row's accuracy can differ).
"""

from __future__ import annotations

import math
import statistics
import time
import types
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from spikelab import snapshots as training_state
from spikelab.adam_state import adam_slots
from spikelab.curvature import curvature_along_step, power_iteration, power_start, preconditioner_of
from spikelab.dead_zone import accounting_epochs, dead_zone_stats
from spikelab.divergence import SpikeWatch
from spikelab.losses import make_loss
from spikelab.measurements import epoch_diagnostics, layer_of
from spikelab.model import build_model
from spikelab.optimizers import make_optimizer, steps_per_epoch
from spikelab.params import Params, flatten
from spikelab.training import TrainResult, compile_model, epoch_order, seed_everything

# the params that may differ between the members of one population
MEMBER_KEYS = ("train.seed", "data.seed", "split.seed", "train.resume_from")
ARRAYS = ("x_train", "y_train", "x_val", "y_val")
EVAL_BATCH = 256  # images per forward pass outside training (validation, dead zone): bounded memory


@dataclass
class Member:
    name: str
    params: Params
    arrays: dict[str, np.ndarray]  # x_train, y_train, x_val, y_val as the split stage writes them


@dataclass
class PopulationResult:
    results: list[TrainResult]  # per member; .model is None (see final_states)
    final_states: list[dict[str, np.ndarray]]  # per member, state.py's keys
    template: keras.Model  # the single model, compiled: restore a member's state into it to save it
    seconds: float = 0.0  # wall seconds of the whole population's training
    epoch_seconds: list[float] = field(default_factory=list)
    forms: dict[str, str] = field(default_factory=dict)  # StackedNetwork.forms(): what computed the members


def progress_line(epoch: int, epochs: int, losses, seconds: float, spiking: list[str]) -> str:
    """The console's line per epoch: the members' median loss (of two members their mean, not the
    upper one, which is the max) and the largest, the epoch's seconds, who spiked."""
    losses = [float(loss) for loss in losses]
    width = len(f"epoch {epochs}/{epochs}")  # the columns stay put from epoch 1 to the last
    mark = f"  <- spike: {', '.join(spiking)}" if spiking else ""
    return (
        f"{f'epoch {epoch}/{epochs}':<{width}}  {len(losses)} members: "
        f"loss median {statistics.median(losses):<10.4g}max {max(losses):<10.4g} {seconds:5.2f}s{mark}"
    )


def cell_params(params: Params) -> dict:
    """The flat params that must be equal across a population's members."""
    return {key: value for key, value in flatten(params).items() if key not in MEMBER_KEYS}


def check_population(members: list[Member]) -> None:
    """Refuse, in one line and before any work, a population the engine cannot train as single runs."""
    if not members:
        raise ValueError("population: no members; give at least one run")
    names = [member.name for member in members]
    if len(set(names)) != len(names):
        raise ValueError(f"population: member names repeat ({', '.join(names)}); give each run its own name")
    first = members[0]
    reference = cell_params(first.params)
    for member in members[1:]:
        other = cell_params(member.params)
        differ = sorted(key for key in reference if reference[key] != other[key])
        if differ:
            raise ValueError(
                f"population: {member.name} differs from {first.name} in {', '.join(differ)}; a population is one "
                f"cell (only {', '.join(MEMBER_KEYS)} may differ): train the other cell as its own population"
            )
        shapes = [member.arrays[key].shape for key in ARRAYS]
        if shapes != [first.arrays[key].shape for key in ARRAYS]:
            raise ValueError(f"population: {member.name}'s dataset is not the shape of {first.name}'s")
    params = first.params
    if params.guard.enabled:
        raise ValueError(
            "population: guard.enabled = true is not supported (the guard rewinds one run mid-training); "
            "train this cell with the per-run engine (ENGINE=dvc)"
        )
    if params.train.jit_compile:
        raise ValueError("population: train.jit_compile = true is not supported; set it false or use ENGINE=dvc")


def _grouped(kernel):
    """(P, k, k, in, out) stacked kernels -> one (k, k, in, P*out) grouped-convolution filter, member-major."""
    _, height, width, channels_in, channels_out = kernel.shape
    return tf.reshape(tf.transpose(kernel, [1, 2, 3, 0, 4]), [height, width, channels_in, -1])


# A form replaces a convolution by a batched matrix product when at least this share of the product's
# weights are the kernel's (the rest are zeros it multiplies for nothing): at the default 16 x 16
# kernels on 32 x 32 images the first convolution's row form is 1/2 kernel, the second's dense form
# 0.89, and each step is faster than the grouped convolutions (benchmarks/population_forms.py).
FORM_DENSITY = 0.5


class StackedNetwork:
    """P copies of model.build_model's network, as stacked variables named like the single model's.

    A member's images arrive in their own channel (x: (B, h, w, P)), or every member sees the same
    ones (x: (B, h, w, 1): validation, the dead-zone pass). The convolutions take one of two forms:
    - grouped: member p's filters in group p of one convolution (an ordinary one with P x f filters
      for shared images);
    - products: the first convolution in row form (each output row is the kernel's k image rows,
      side by side, times a banded matrix built from the kernel: one (B x o, k x w) by (k x w, o x f)
      product per member, o the output side; shared images make their rows once for every member),
      the second in dense form (its kernel placed at each output position of one (o x o x f,
      o2 x o2 x 2f) matrix).
    Both compute the single model's function; only the order of the sums differs (last bits)."""

    def __init__(self, template: keras.Model, weights: list[list[np.ndarray]], hidden_relu: bool, image_size: int):
        self.size, self.hidden_relu = len(weights), hidden_relu
        self.variables = []
        for index, variable in enumerate(template.trainable_variables):
            layer, name = variable.path.split("/")
            with keras.name_scope(layer, caller=None):
                stacked = np.stack([member[index] for member in weights])
                self.variables.append(keras.Variable(stacked, name=name, dtype="float32"))
        kernel = self.variables[0].shape[1]
        self.kernel, self.image_size = kernel, image_size
        self.side = image_size - kernel + 1
        self.side2 = self.side - kernel + 1
        self.row_form = kernel / image_size >= FORM_DENSITY
        self.dense_form = (kernel / self.side) ** 2 >= FORM_DENSITY
        # output row i reads image rows i .. i + k - 1; output column j takes tap w - j of image column w
        self._rows = tf.constant(np.arange(self.side)[:, None] + np.arange(kernel)[None, :], tf.int32)
        shift = np.arange(image_size)[:, None] - np.arange(self.side)[None, :]
        self._taps = tf.constant(np.where((shift >= 0) & (shift < kernel), shift, kernel), tf.int32)

    def forms(self) -> dict[str, str]:
        """Which form each convolution takes (run.json's `convolutions`)."""
        return {"conv1": "rows" if self.row_form else "grouped", "conv2": "dense" if self.dense_form else "grouped"}

    def _conv1(self, x):
        """(B, h, w, 1 or P) -> (P, B, o, o, f), bias added."""
        kernel1, bias1 = self.variables[0], self.variables[1]
        filters = kernel1.shape[-1]
        if self.row_form:
            # (P or 1, B, o, k, w): shared images' rows are made once and multiply every member's matrix
            rows = tf.gather(tf.transpose(x, [3, 0, 1, 2]), self._rows, axis=2)
            rows = tf.reshape(rows, [x.shape[-1], -1, self.kernel * self.image_size])
            taps = kernel1[:, :, :, 0, :]  # (P, k, k, f); tap k is a zero
            banded = tf.gather(tf.concat([taps, tf.zeros_like(taps[:, :, :1])], axis=2), self._taps, axis=2)
            h = tf.matmul(rows, tf.reshape(banded, [self.size, self.kernel * self.image_size, -1]))
        else:
            h = tf.nn.conv2d(x, _grouped(kernel1), 1, "VALID")  # (B, o, o, P*f)
            h = tf.transpose(tf.reshape(h, [-1, self.side, self.side, self.size, filters]), [3, 0, 1, 2, 4])
        return tf.reshape(h, [self.size, -1, self.side, self.side, filters]) + bias1[:, None, None, None, :]

    def _conv2(self, h):
        """(P, B, o, o, f) -> (P x B, o2, o2, 2f) member-major, bias added."""
        kernel2, bias2 = self.variables[2], self.variables[3]
        _, _, _, channels_in, channels_out = kernel2.shape
        if self.dense_form:
            pad = self.side - self.kernel
            placed = [
                tf.pad(kernel2, [[0, 0], [i, pad - i], [j, pad - j], [0, 0], [0, 0]])
                for i in range(self.side2)
                for j in range(self.side2)
            ]  # (P, o, o, f, 2f) each: the kernel at output position (i, j)
            dense = tf.reshape(tf.stack(placed, axis=4), [self.size, self.side * self.side * channels_in, -1])
            h = tf.matmul(tf.reshape(h, [self.size, -1, self.side * self.side * channels_in]), dense)
            h = tf.reshape(h, [self.size, -1, self.side2 * self.side2, channels_out]) + bias2[:, None, None, :]
            return tf.reshape(h, [-1, self.side2, self.side2, channels_out])
        batch = tf.shape(h)[1]
        h = tf.reshape(tf.transpose(h, [1, 2, 3, 0, 4]), [batch, self.side, self.side, -1])
        h = tf.nn.conv2d(h, _grouped(kernel2), 1, "VALID") + tf.reshape(bias2, [-1])  # (B, o2, o2, P*2f)
        h = tf.reshape(h, [batch, self.side2, self.side2, self.size, channels_out])
        return tf.reshape(tf.transpose(h, [3, 0, 1, 2, 4]), [-1, self.side2, self.side2, channels_out])

    def logits(self, x):
        """x: (batch, height, width, channels) float32 in [0, 1]; channels = 1 (images every member
        sees) or P (a batch per member, member p's images in channel p). Returns (P, batch, 2)."""
        dense, dense_bias = self.variables[4], self.variables[5]
        h = self._conv1(tf.nn.relu(x))  # the seed's ReLU on the input
        if self.hidden_relu:
            h = tf.nn.relu(h)
        h = tf.nn.max_pool2d(self._conv2(h), 2, 2, "VALID")  # (P x B, height, width, 2f)
        # Keras's Flatten orders features (height, width, channels) in either data format
        h = tf.reshape(h, [self.size, tf.shape(x)[0], -1])
        return tf.einsum("pbi,pio->pbo", h, dense) + dense_bias[:, None, :]


def _member_dot64(a, b):
    """Per-member dot products of two lists of stacked tensors, summed in float64: shape (P,)."""
    return tf.add_n(
        [
            tf.reduce_sum(tf.cast(x, tf.float64) * tf.cast(y, tf.float64), axis=list(range(1, len(x.shape))))
            for x, y in zip(a, b)
        ]
    )


def _clip_by_member_global_norm(gradients, clip_norm: float):
    """Keras's clip_by_global_norm per member: each member's gradients scaled by
    min(1, clip_norm / its global norm) (NaN for a non-finite norm, as Keras makes it)."""
    norm = _member_norms(gradients)  # (P,)
    scale = clip_norm * tf.minimum(1.0 / norm, 1.0 / clip_norm) + (norm - norm)
    return [g * tf.reshape(scale, [-1] + [1] * (len(g.shape) - 1)) for g in gradients]


def _member_norms(gradients):
    """Per-member global norm of a list of stacked gradients: shape (P,)."""
    return tf.sqrt(tf.add_n([tf.reduce_sum(g * g, axis=list(range(1, len(g.shape)))) for g in gradients]))


def _images(images: np.ndarray) -> tf.Tensor:
    """(n, h, w) uint8 shared, or (P, n, h, w) one set per member -> (n, h, w, 1 or P), still uint8."""
    return tf.constant(images[..., None] if images.ndim == 3 else np.ascontiguousarray(images.transpose(1, 2, 3, 0)))


def _stacked_or_shared(arrays: list[np.ndarray]) -> np.ndarray:
    """One array when every member has the same one (shared images: ungrouped first convolution),
    else the members' arrays stacked."""
    first = arrays[0]
    if all(a is first or np.array_equal(a, first) for a in arrays[1:]):
        return first
    return np.stack(arrays)


def snapshot_path(folder: Path, epoch: int) -> Path:
    return folder / f"epoch_{epoch:05d}.npz"


def resume_state_path(folder: Path, epoch: int) -> Path:
    return folder / f"resume_{epoch:05d}.npz"


def save_resume_state(folder: Path, epoch: int, best: tuple, vectors: list | None) -> None:
    """What a population needs beyond a member's snapshot to continue it bit for bit: its best epoch
    so far (val_loss, epoch, state) and the power iteration's last vectors (its warm start)."""
    val_loss, best_epoch, state = best
    arrays = {"best_val_loss": np.float64(val_loss), "best_epoch": np.int64(best_epoch or 0)}
    arrays |= {f"best/{key}": value for key, value in (state or {}).items()}
    arrays |= {f"vector/{index:03d}": value for index, value in enumerate(vectors or [])}
    with training_state.atomic_path(resume_state_path(folder, epoch)) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)


def load_resume_state(folder: Path, epoch: int) -> tuple[tuple, list | None]:
    with np.load(resume_state_path(folder, epoch)) as archive:
        state = {key[len("best/") :]: archive[key] for key in archive.files if key.startswith("best/")}
        vectors = [archive[key] for key in sorted(archive.files) if key.startswith("vector/")]
        best_epoch = int(archive["best_epoch"]) or None
        best = (float(archive["best_val_loss"]), best_epoch, state if best_epoch else None)
    return best, vectors or None


def has_resume_state(folder: Path | None, epoch: int) -> bool:
    """Whether folder holds a whole snapshot and resume state of this epoch (a kill mid-write leaves
    neither: both are written to a temporary name, then renamed)."""
    if folder is None:
        return False
    try:
        for path in (snapshot_path(folder, epoch), resume_state_path(folder, epoch)):
            with np.load(path) as archive:
                archive.files  # noqa: B018 -- a truncated zip fails here
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return False
    return True


class Population:
    """The graphs and state of one population; `train()` runs it to the end."""

    def __init__(
        self,
        members: list[Member],
        data_format: str,
        snapshot_dirs: list[Path | None],
        resume_epoch: int | None = None,
    ):
        """resume_epoch: continue a stopped population from every member's snapshot and resume state
        of that epoch in its snapshot_dirs folder (what `train` wrote there), its params unchanged."""
        check_population(members)
        self.real_size = len(members)
        self.resume_epoch = resume_epoch
        if resume_epoch is not None:
            missing = [m.name for m, d in zip(members, snapshot_dirs) if not has_resume_state(d, resume_epoch)]
            if missing:
                raise ValueError(f"population: no snapshot and resume state of epoch {resume_epoch} for {missing}")
            self._sources = list(snapshot_dirs)
        if len(members) == 1:
            # TensorFlow's CPU batched product computes a batch of one as a plain 2-D contraction and
            # a batch of more matrix by matrix (another kernel, other last bits), and a per-member
            # reduction of one member is a whole-tensor reduction: alone, a member would sum in
            # another order than in any larger population. A twin (the member again, its outputs
            # dropped) keeps every population at two or more, so a member's bytes do not depend on P.
            members, snapshot_dirs = [members[0], members[0]], [snapshot_dirs[0], None]
            if resume_epoch is not None:
                self._sources *= 2
        self.members, self.snapshot_dirs = members, snapshot_dirs
        self.params = params = members[0].params
        self.size = len(members)
        first_arrays = members[0].arrays
        self.image_size = first_arrays["x_train"].shape[-1]
        self.count = len(first_arrays["x_train"])
        # the single model: variable names and state keys, and the model files a member is saved as;
        # built before any member's seeding, so it draws nothing from a member's random stream
        self.template = compile_model(params, self.image_size, data_format)
        self.template.optimizer.build(self.template.trainable_variables)
        self.first_epoch = resume_epoch or params.train.resume_epoch or 0
        states, self.histories, self.fresh = [], [], []
        for slot, member in enumerate(members):
            state, history = self._start(member, data_format, slot)
            states.append(state)
            self.histories.append(history)
        weights = [[state[f"weight/{v.path}"] for v in self.template.trainable_variables] for state in states]
        self.network = StackedNetwork(self.template, weights, params.model.hidden_activation == "relu", self.image_size)
        self.variables = self.network.variables
        self.layers = [layer_of(v.path) for v in self.variables]
        self.kernels = {
            layer.name: self.layers.index(layer.name) for layer in self.template.layers if hasattr(layer, "kernel")
        }
        # norm clips are per member: the optimizer steps unclipped gradients, clipped here first
        # (clipvalue is elementwise, so the optimizer's own is every member's)
        self.optimizer = make_optimizer(
            params.optimizer.model_copy(update={"clipnorm": None, "global_clipnorm": None}),
            steps=steps_per_epoch(params),
            epochs=params.train.epochs,
        )
        self.clipper = make_optimizer(params.optimizer) if params.optimizer.clipnorm is not None else None
        self.global_clipnorm = params.optimizer.global_clipnorm
        self.optimizer.build(self.variables)
        self._restore_optimizer(states)
        self.is_adam = isinstance(self.optimizer, keras.optimizers.Adam)
        loss = make_loss(params.loss)
        self.per_sample_loss = loss.call if isinstance(loss, keras.losses.Loss) else loss
        self.train_images = _stacked_or_shared([m.arrays["x_train"] for m in members])
        self.train_labels = _stacked_or_shared([m.arrays["y_train"] for m in members])
        self.val_labels = tf.constant(_stacked_or_shared([m.arrays["y_val"] for m in members]))
        self.val_images = _images(_stacked_or_shared([m.arrays["x_val"] for m in members]))
        self._train_x = tf.constant(self.train_images)
        self._train_y = tf.constant(self.train_labels)
        diagnostics = params.diagnostics
        if diagnostics.enabled:
            probe = slice(0, diagnostics.probe_size)
            self.probe_x = _images(_stacked_or_shared([m.arrays["x_train"][probe] for m in members]))
            self.probe_y = [m.arrays["y_train"][probe] for m in members]
            self._probe_y = tf.constant(np.stack(self.probe_y))
            self.accounting = accounting_epochs(
                params.train.epochs, diagnostics.dead_zone_every, params.train.snapshot_every
            )
            self.train_eval_images = _images(self.train_images)
        self._train_steps = tf.function(self._steps)
        self._forward = tf.function(self._logits_loss_correct)
        self._probe = tf.function(self._probe_pass)
        self._probe_and_step = tf.function(self._probe_and_step_product)
        self._power = tf.function(self._power_iteration)
        self._last_vectors: list = [None] * self.size

    # ---- state ------------------------------------------------------------------------------------

    def _start(self, member: Member, data_format: str, slot: int) -> tuple[dict[str, np.ndarray], list[dict]]:
        """(state, history so far) a single run of this member starts from, or the population resumes."""
        train = member.params.train
        if self.resume_epoch is not None:
            return training_state.load_resume(snapshot_path(self._sources[slot], self.resume_epoch), self.resume_epoch)
        if train.resume_from is not None:
            return training_state.load_resume(train.resume_from, train.resume_epoch)
        seed_everything(train.seed)  # as training.train does, right before it builds the model
        model = build_model(member.params.model, self.image_size, data_format)
        return {f"weight/{v.path}": v.numpy() for v in model.trainable_variables}, []

    def _view(self) -> types.SimpleNamespace:
        """The stacked variables and optimizer as state.py reads a model."""
        return types.SimpleNamespace(trainable_variables=self.variables, optimizer=self.optimizer)

    def _restore_optimizer(self, states: list[dict[str, np.ndarray]]) -> None:
        """Members resumed from snapshots: their optimizer slots, as state.restore assigns a single
        run's (the step must be every member's); the variables no snapshot holds stay fresh."""
        self.fresh = []
        if self.params.train.resume_from is None and self.resume_epoch is None:
            return
        for variable in self.optimizer.variables:
            key = training_state._optimizer_key(self.optimizer, variable)
            found = [state[key] for state in states if key in state]
            if not found:
                if not variable.path.endswith("/learning_rate"):
                    self.fresh.append(variable.path)
                continue
            if len(found) != len(states):
                raise ValueError(f"population: some members' snapshots lack {key}; resume them apart")
            if variable.shape == ():
                if any(not np.array_equal(value, found[0]) for value in found):
                    raise ValueError(f"population: the members' snapshots differ in {key}; resume them apart")
                variable.assign(found[0])
            else:
                variable.assign(np.stack(found))

    def member_states(self) -> list[dict[str, np.ndarray]]:
        """Every member's state now, with state.py's keys (what a single run's capture holds)."""
        stacked = training_state.capture(self._view())
        return [
            {key: value if value.ndim == 0 else value[index].copy() for key, value in stacked.items()}
            for index in range(self.size)
        ]

    # ---- graphs -----------------------------------------------------------------------------------

    def _losses(self, labels, logits):
        """Per-member mean loss (P,) and correct count (P,) of a batch of logits (P, B, 2)."""
        probabilities = keras.ops.softmax(logits)  # caches its logits: the keras3 form reads them
        per_sample = self.per_sample_loss(labels, probabilities)
        correct = tf.cast(tf.equal(tf.argmax(labels, -1), tf.argmax(probabilities, -1)), tf.float32)
        return tf.reduce_mean(per_sample, axis=1), tf.reduce_sum(per_sample, axis=1), tf.reduce_sum(correct, axis=1)

    def _steps(self, batches):
        """Train every member on its batches (steps, P, B) of indices; (loss x batch, correct) summed, per member."""
        loss_sum = tf.zeros([self.size])
        correct_sum = tf.zeros([self.size])
        shared = self.train_images.ndim == 3
        for step in tf.range(tf.shape(batches)[0]):
            indices = batches[step]
            if shared:
                x, y = tf.gather(self._train_x, indices), tf.gather(self._train_y, indices)
            else:
                x = tf.gather(self._train_x, indices, batch_dims=1)
                y = tf.gather(self._train_y, indices, batch_dims=1)
            x = tf.transpose(tf.cast(x, tf.float32) / 255.0, [1, 2, 3, 0])  # (B, h, w, P)
            with tf.GradientTape() as tape:
                member_loss, _, correct = self._losses(y, self.network.logits(x))
                total = tf.reduce_sum(member_loss)
            gradients = tape.gradient(total, self.variables)
            if self.clipper is not None:
                gradients = [self.clipper._clip_by_norm(g, axes=list(range(1, len(g.shape)))) for g in gradients]
            if self.global_clipnorm is not None:
                gradients = _clip_by_member_global_norm(gradients, self.global_clipnorm)
            self.optimizer.apply(gradients, self.variables)
            # Keras's loss tracker: the sum of batch loss x batch size, over the sum of batch sizes
            loss_sum += member_loss * tf.cast(tf.shape(indices)[1], tf.float32)
            correct_sum += correct
        return loss_sum, correct_sum

    def _logits_loss_correct(self, images, labels):
        logits = self.network.logits(tf.cast(images, tf.float32) / 255.0)
        _, loss_sum, correct = self._losses(labels, logits)
        return logits, loss_sum, correct

    def _probe_loss(self):
        logits = self.network.logits(tf.cast(self.probe_x, tf.float32) / 255.0)
        member_loss, _, _ = self._losses(self._probe_y, logits)
        return logits, tf.reduce_sum(member_loss)

    def _probe_pass(self):
        with tf.GradientTape() as tape:
            logits, loss = self._probe_loss()
        gradients = tape.gradient(loss, self.variables)
        return _member_norms(gradients), logits, gradients

    def _tapes(self):
        with tf.GradientTape(persistent=True) as outer:
            with tf.GradientTape() as inner:
                logits, loss = self._probe_loss()
            gradient = inner.gradient(loss, self.variables)
        return outer, logits, gradient

    def _hessian_product(self, outer, gradient):
        # the summed loss's Hessian is block-diagonal by member: one product is every member's own;
        # shapes restated, as the second-order gradient of the grouped filter's reshape loses them
        return lambda vectors: [
            tf.ensure_shape(product, variable.shape)
            for product, variable in zip(
                outer.gradient(
                    gradient,
                    self.variables,
                    output_gradients=vectors,
                    unconnected_gradients=tf.UnconnectedGradients.ZERO,
                ),
                self.variables,
            )
        ]

    def _probe_and_step_product(self, preconditioner):
        outer, logits, gradient = self._tapes()
        step = [p * g for p, g in zip(preconditioner, gradient)]
        return _member_norms(gradient), logits, gradient, self._hessian_product(outer, gradient)(step)

    def _power_iteration(self, root, start):
        outer, _, gradient = self._tapes()
        return power_iteration(
            self._hessian_product(outer, gradient), root, start, self.params.diagnostics.power_iterations, _member_dot64
        )

    # ---- one epoch --------------------------------------------------------------------------------

    def _epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """This epoch's batches as (steps, P, B) index arrays: the full batches, then the last one."""
        batch = self.params.train.batch_size
        orders = np.stack(
            [
                epoch_order(self.count, member.params.train.seed, tf.constant(epoch, tf.int64)).numpy()
                for member in self.members
            ]
        )  # (P, n)
        full = self.count // batch * batch
        parts = [orders[:, :full].reshape(self.size, -1, batch).transpose(1, 0, 2)] if full else []
        if full < self.count:
            parts.append(orders[:, None, full:].transpose(1, 0, 2))
        return [part.astype(np.int32) for part in parts]

    def _whole_set(self, images, labels):
        """(logits (P, n, 2) as numpy, loss mean (P,), accuracy (P,)) over a whole image set, in chunks."""
        logits, loss_sum, correct = [], 0.0, 0.0
        count = images.shape[0]
        for start in range(0, count, EVAL_BATCH):
            stop = min(start + EVAL_BATCH, count)
            part_labels = labels[start:stop] if len(labels.shape) == 2 else labels[:, start:stop]
            if len(labels.shape) == 2:
                part_labels = tf.broadcast_to(part_labels, [self.size, *part_labels.shape])
            chunk_logits, chunk_loss, chunk_correct = self._forward(images[start:stop], part_labels)
            logits.append(chunk_logits.numpy())
            loss_sum += chunk_loss.numpy().astype(np.float64)
            correct += chunk_correct.numpy().astype(np.float64)
        return np.concatenate(logits, axis=1), loss_sum / count, correct / count

    def _diagnostics(self, epoch: int, before: list[np.ndarray], after: list[np.ndarray], learning_rate: float):
        """Every member's diagnostics keys at this epoch's end, the single run's functions on its slices."""
        diagnostics = self.params.diagnostics
        slots = adam_slots(self.optimizer) if self.is_adam else None
        preconditioner = preconditioner_of(slots) if slots is not None else None
        curvature = diagnostics.curvature and preconditioner is not None
        if curvature:
            grad_norm, logits, gradients, products = self._probe_and_step(
                [np.asarray(p, np.float32) for p in preconditioner]
            )
            products = [p.numpy() for p in products]
        else:
            grad_norm, logits, gradients = self._probe()
        grad_norm, logits = grad_norm.numpy(), logits.numpy()
        gradients = [g.numpy() for g in gradients]
        rows = []
        for index in range(self.size):
            member_gradients = [g[index] for g in gradients]
            row = epoch_diagnostics(
                [w[index] for w in before],
                [w[index] for w in after],
                learning_rate,
                grad_norm[index],
                member_gradients if slots is not None else [],
                logits[index],
                self.probe_y[index],
                self.layers,
                {layer: after[position][index] for layer, position in self.kernels.items()},
                slots.member(index) if slots is not None else None,
            )
            rows.append(row)
        if epoch + 1 in self.accounting:
            train_logits, _, _ = self._whole_set(self.train_eval_images, tf.constant(self.train_labels))
            for index, row in enumerate(rows):
                labels = self.train_labels if self.train_labels.ndim == 2 else self.train_labels[index]
                row.update(dead_zone_stats(train_logits[index], labels))
        if diagnostics.curvature and self.is_adam:
            self._curvature(epoch, rows, preconditioner, gradients, products if curvature else None)
        return rows

    def _curvature(self, epoch, rows, preconditioner, gradients, products) -> None:
        """lambda_grad every epoch, lambda_max every eigen_every epochs (else NaN), as Curvature logs them."""
        for row in rows:
            row["lambda_grad"] = row["lambda_max"] = math.nan
        if products is None:
            return
        member = [[array[index] for array in preconditioner] for index in range(self.size)]
        for index, row in enumerate(rows):
            row["lambda_grad"] = curvature_along_step(
                [g[index] for g in gradients], member[index], [p[index] for p in products]
            )
        every = self.params.diagnostics.eigen_every
        if not every or (epoch + 1) % every:
            return
        starts = [
            power_start([g[index] for g in gradients], member[index], self._last_vectors[index])
            for index in range(self.size)
        ]
        root = [np.sqrt(p).astype(np.float32) for p in preconditioner]
        start = [np.stack([s[position] for s in starts]).astype(np.float32) for position in range(len(root))]
        estimates, vectors = self._power(root, start)
        estimates, vectors = estimates.numpy(), [v.numpy() for v in vectors]
        for index, row in enumerate(rows):
            finite = math.isfinite(float(estimates[index]))
            row["lambda_max"] = float(estimates[index]) if finite else math.nan
            self._last_vectors[index] = [v[index] for v in vectors] if finite else None

    # ---- the loop ---------------------------------------------------------------------------------

    def train(
        self, on_epoch: Callable[[int, int, dict], None] | None = None, stop_after_spike: int | None = None
    ) -> PopulationResult:
        """Train every member to train.epochs; on_epoch(member index, 0-based epoch, logs) after each
        member's epoch (logs: the epoch's keys without epoch and learning_rate, as Keras hands them).
        stop_after_spike=N ends the population early, once every member has had N epochs after its
        first flagged epoch (or stopped on a non-finite loss): a study of spike onsets pays for the
        epochs after the last onset only as long as the plateau rule needs them."""
        params = self.params
        epochs = params.train.epochs
        best = [(math.inf, None, None)] * self.size  # (val_loss, epoch, state)
        watches = [SpikeWatch(params.divergence, min((r["loss"] for r in h), default=math.inf)) for h in self.histories]
        stopped = [False] * self.size
        first_spike: list[int | None] = [None] * self.size
        if self.resume_epoch is not None:
            for index, history in enumerate(self.histories):
                best[index], self._last_vectors[index] = load_resume_state(self._sources[index], self.resume_epoch)
                # the watch and the first flagged epoch as the uninterrupted run left them
                watches[index] = SpikeWatch(params.divergence)
                for row in history:
                    if watches[index].observe(row["loss"]):
                        first_spike[index] = first_spike[index] or row["epoch"]
        started, epoch_seconds = time.perf_counter(), []
        for epoch in range(self.first_epoch, epochs):
            epoch_start = time.perf_counter()
            before = [v.numpy() for v in self.variables] if params.diagnostics.enabled else None
            loss_sum = np.zeros(self.size, np.float32)
            correct_sum = np.zeros(self.size, np.float32)
            for batches in self._epoch_batches(epoch):
                part_loss, part_correct = self._train_steps(tf.constant(batches))
                loss_sum += part_loss.numpy()
                correct_sum += part_correct.numpy()
            # the rate at the epoch's end, as the single run's history reads it (a schedule moves it)
            learning_rate = float(keras.ops.convert_to_numpy(self.optimizer.learning_rate))
            count = np.float32(self.count)
            train_loss, train_accuracy = loss_sum / count, correct_sum / count
            _, val_loss, val_accuracy = self._whole_set(self.val_images, self.val_labels)
            extra = [{} for _ in range(self.size)]
            if params.diagnostics.enabled:
                extra = self._diagnostics(epoch, before, [v.numpy() for v in self.variables], learning_rate)
            states = None
            spiking = []
            for index in range(self.real_size):
                if stopped[index]:
                    continue
                logs = {
                    "accuracy": float(train_accuracy[index]),
                    "loss": float(train_loss[index]),
                    "val_accuracy": float(val_accuracy[index]),
                    "val_loss": float(np.float32(val_loss[index])),
                    **extra[index],
                }
                history = self.histories[index]
                history.append({"epoch": epoch + 1, "learning_rate": learning_rate, **logs})
                if watches[index].observe(logs["loss"]):
                    spiking.append(self.members[index].name)
                    first_spike[index] = first_spike[index] or epoch + 1
                if math.isfinite(logs["val_loss"]) and logs["val_loss"] < best[index][0]:
                    states = states or self.member_states()
                    best[index] = (logs["val_loss"], epoch + 1, states[index])
                every = params.train.snapshot_every
                folder = self.snapshot_dirs[index]
                if folder is not None and every and (epoch + 1) % every == 0:
                    states = states or self.member_states()
                    training_state.save_snapshot(snapshot_path(folder, epoch + 1), states[index], epoch + 1, history)
                    # written after the snapshot: a resume state marks the epoch as resumable
                    save_resume_state(folder, epoch + 1, best[index], self._last_vectors[index])
                if on_epoch is not None:
                    on_epoch(index, epoch, logs)
                if not math.isfinite(logs["loss"]):
                    stopped[index] = True  # as TerminateOnNaN: this epoch is the member's last
            epoch_seconds.append(time.perf_counter() - epoch_start)
            print(
                progress_line(epoch + 1, epochs, train_loss[: self.real_size], epoch_seconds[-1], spiking), flush=True
            )
            if all(stopped[: self.real_size]):
                break
            if stop_after_spike is not None and all(
                stopped[index]
                or (first_spike[index] is not None and epoch + 1 - first_spike[index] >= stop_after_spike)
                for index in range(self.real_size)
            ):
                print(
                    f"population: every member {stop_after_spike}+ epochs past its first spike: "
                    f"stopped at epoch {epoch + 1} of {epochs} (stop_after_spike)",
                    flush=True,
                )
                break
        final = self.member_states()[: self.real_size]
        results = [
            TrainResult(
                None,
                self.histories[index],
                best[index][2],
                best[index][1],
                [],
                list(self.fresh),
                {},
                list(epoch_seconds),
            )
            for index in range(self.real_size)
        ]
        return PopulationResult(
            results, final, self.template, time.perf_counter() - started, epoch_seconds, self.network.forms()
        )
