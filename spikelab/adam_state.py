"""Adam's slots as plain arrays: what the diagnostics and the curvature read from an optimizer.

One view for a single run's optimizer and for one member of a population (study/population_engine.py),
whose optimizer holds every member's slots stacked on a leading axis: the statistics are computed
by the same functions from the same arrays either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AdamSlots:
    momentums: list[np.ndarray]  # m, one array per variable, ordered like the trainable variables
    velocities: list[np.ndarray]  # v, or its running maximum under AMSGrad (what Adam divides by)
    step: float  # steps taken (the optimizer's iterations)
    beta_1: float
    beta_2: float
    epsilon: float

    def member(self, index: int) -> AdamSlots:
        """One member's slots, from slots stacked on a leading member axis."""
        return AdamSlots(
            [m[index] for m in self.momentums],
            [v[index] for v in self.velocities],
            self.step,
            self.beta_1,
            self.beta_2,
            self.epsilon,
        )


def adam_slots(optimizer) -> AdamSlots:
    """The slots of a Keras 3 Adam (AdamW subclasses it) as numpy arrays."""
    # Keras 3 keeps the slots in these lists, ordered like model.trainable_variables
    velocities = optimizer._velocity_hats if optimizer.amsgrad else optimizer._velocities
    return AdamSlots(
        [m.numpy() for m in optimizer._momentums],
        [v.numpy() for v in velocities],
        float(optimizer.iterations.numpy()),
        optimizer.beta_1,
        optimizer.beta_2,
        optimizer.epsilon,
    )


# the optimizers that divide their step by a decaying running mean of g^2 (v), and where Keras 3
# keeps it; Adagrad's accumulator only grows (it cannot decay: the mechanism does not apply)
SECOND_MOMENT_SLOTS = {"RMSprop": "_velocities", "Adadelta": "_accumulated_grads"}


def second_moment_slots(optimizer) -> AdamSlots | None:
    """The decaying second moment v of RMSprop or Adadelta as AdamSlots with no momentums (beta_2 0:
    v is used as it is, no bias correction); None for another optimizer (Adam's: adam_slots)."""
    name = next((n for n in SECOND_MOMENT_SLOTS if type(optimizer).__name__ == n), None)
    if name is None:
        return None
    velocities = [v.numpy() for v in getattr(optimizer, SECOND_MOMENT_SLOTS[name])]
    return AdamSlots([], velocities, float(optimizer.iterations.numpy()), 0.0, 0.0, optimizer.epsilon)
