"""Optimizer factory for params `optimizer:`; each optimizer takes only the keys that apply."""

from __future__ import annotations

import math

import keras

from spikelab.params import OptimizerParams, Params


def steps_per_epoch(params: Params) -> int:
    """Training steps in one epoch: the full batches and the last, partial one."""
    return math.ceil(2 * (params.data.per_class - params.split.val_per_class) / params.train.batch_size)


@keras.saving.register_keras_serializable(package="spikelab")
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """The rate rises linearly from learning_rate / warmup_steps at the first step to learning_rate
    at step warmup_steps, then stays there (the warmup of the large-model recipes)."""

    def __init__(self, learning_rate: float, warmup_steps: int):
        self.learning_rate, self.warmup_steps = learning_rate, warmup_steps

    def __call__(self, step):
        done = keras.ops.cast(step, "float32") + 1.0
        return self.learning_rate * keras.ops.minimum(done / float(self.warmup_steps), 1.0)

    def get_config(self) -> dict:
        return {"learning_rate": self.learning_rate, "warmup_steps": self.warmup_steps}


def learning_rate_of(p: OptimizerParams, learning_rate: float, steps: int | None, epochs: int | None):
    """The constant rate, or its schedule over steps (steps per epoch) x epochs."""
    if p.schedule == "constant":
        return learning_rate
    if steps is None or epochs is None:
        raise ValueError(f"optimizer.schedule = {p.schedule} needs the run's steps per epoch and epochs")
    if p.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=steps * epochs, alpha=0.0)
    if p.schedule == "step":
        return keras.optimizers.schedules.ExponentialDecay(
            learning_rate, decay_steps=steps * p.step_every, decay_rate=p.step_factor, staircase=True
        )
    return LinearWarmup(learning_rate, steps * p.warmup_epochs)


def make_optimizer(
    p: OptimizerParams, learning_rate: float | None = None, steps: int | None = None, epochs: int | None = None
) -> keras.optimizers.Optimizer:
    """learning_rate overrides p.learning_rate (the guard restarts with a reduced rate); a schedule
    (p.schedule) needs the run's steps per epoch and epochs."""
    rate = learning_rate_of(p, p.learning_rate if learning_rate is None else learning_rate, steps, epochs)
    common = {
        "learning_rate": rate,
        "clipnorm": p.clipnorm,
        "global_clipnorm": p.global_clipnorm,
        "clipvalue": p.clipvalue,
    }
    if p.name == "adam":
        return keras.optimizers.Adam(
            beta_1=p.beta_1,
            beta_2=p.beta_2,
            epsilon=p.epsilon,
            amsgrad=p.amsgrad,
            weight_decay=p.weight_decay,
            **common,
        )
    if p.name == "adamw":
        return keras.optimizers.AdamW(
            beta_1=p.beta_1,
            beta_2=p.beta_2,
            epsilon=p.epsilon,
            amsgrad=p.amsgrad,
            weight_decay=p.weight_decay,
            **common,
        )
    if p.name == "nadam":
        return keras.optimizers.Nadam(
            beta_1=p.beta_1, beta_2=p.beta_2, epsilon=p.epsilon, weight_decay=p.weight_decay, **common
        )
    if p.name == "lion":
        return keras.optimizers.Lion(beta_1=p.beta_1, beta_2=p.beta_2, weight_decay=p.weight_decay, **common)
    if p.name == "rmsprop":
        return keras.optimizers.RMSprop(
            rho=p.rho, momentum=p.momentum, epsilon=p.epsilon, weight_decay=p.weight_decay, **common
        )
    return keras.optimizers.SGD(momentum=p.momentum, weight_decay=p.weight_decay, **common)
