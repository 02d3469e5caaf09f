"""Optimizer factory for params `optimizer:`; each optimizer takes only the keys that apply."""

from __future__ import annotations

import keras

from spikelab.params import OptimizerParams


def make_optimizer(p: OptimizerParams, learning_rate: float | None = None) -> keras.optimizers.Optimizer:
    """learning_rate overrides p.learning_rate (the guard restarts with a reduced rate)."""
    common = {"learning_rate": p.learning_rate if learning_rate is None else learning_rate, "clipnorm": p.clipnorm}
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
    if p.name == "rmsprop":
        return keras.optimizers.RMSprop(
            rho=p.rho, momentum=p.momentum, epsilon=p.epsilon, weight_decay=p.weight_decay, **common
        )
    return keras.optimizers.SGD(momentum=p.momentum, weight_decay=p.weight_decay, **common)
