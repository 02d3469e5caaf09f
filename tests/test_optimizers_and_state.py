"""make_optimizer per optimizer, AMSGrad's diagnostics, and snapshots restored across optimizer families."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from conftest import with_changes
from spikelab import snapshots as training_state
from spikelab.measurements import adam_state_stats
from spikelab.optimizers import make_optimizer
from spikelab.params import params_from_dict
from spikelab.training import compile_model


def optimizer_params(tiny_raw, **changes):
    return params_from_dict(with_changes(tiny_raw, {"optimizer": changes})).optimizer


@pytest.mark.parametrize(
    ("changes", "kind", "expected"),
    [
        (
            {"name": "adam", "epsilon": 1e-3, "amsgrad": True, "clipnorm": 1.0},
            keras.optimizers.Adam,
            {"epsilon": 1e-3, "amsgrad": True, "clipnorm": 1.0, "beta_2": 0.999},
        ),
        ({"name": "adamw", "weight_decay": 0.01}, keras.optimizers.AdamW, {"weight_decay": 0.01, "epsilon": 1e-7}),
        (
            {"name": "sgd", "momentum": 0.9, "learning_rate": 0.1},
            keras.optimizers.SGD,
            {"momentum": 0.9, "learning_rate": 0.1},
        ),
        ({"name": "rmsprop", "rho": 0.8, "momentum": 0.5}, keras.optimizers.RMSprop, {"rho": 0.8, "momentum": 0.5}),
    ],
)
def test_make_optimizer_builds_each_optimizer_with_its_keys(tiny_raw, changes, kind, expected):
    optimizer = make_optimizer(optimizer_params(tiny_raw, **changes))
    assert type(optimizer) is kind
    config = optimizer.get_config()
    for key, value in expected.items():
        assert config[key] == pytest.approx(value), key


def test_make_optimizer_learning_rate_override(tiny_raw):
    optimizer = make_optimizer(optimizer_params(tiny_raw), learning_rate=0.5)
    assert optimizer.get_config()["learning_rate"] == pytest.approx(0.5)


def test_amsgrad_diagnostics_read_the_running_maximum_of_v():
    """After a large gradient then a small one, v has decayed but AMSGrad's v_hat keeps the maximum."""
    beta_1, beta_2, epsilon = 0.9, 0.999, 1e-7
    variable = keras.Variable(np.zeros(4, dtype="float32"))
    optimizer = keras.optimizers.Adam(0.01, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, amsgrad=True)
    gradients = [np.array([1.0, 2.0, 3.0, 4.0], "float32"), np.array([0.01, 0.02, 0.03, 0.04], "float32")]
    m = v = v_max = np.zeros(4)
    for g in gradients:
        optimizer.apply_gradients([(keras.ops.convert_to_tensor(g), variable)])
        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g * g
        v_max = np.maximum(v_max, v)
    step = len(gradients)
    v_sqrt = np.sqrt(v_max / (1 - beta_2**step))
    ratio = np.abs(m / (1 - beta_1**step)) / (v_sqrt + epsilon)
    stats = adam_state_stats(optimizer)
    assert not np.allclose(v_max, v)  # the check below tells the two apart
    assert stats["v_sqrt_median"] == pytest.approx(np.median(v_sqrt), rel=1e-5)
    assert stats["adam_ratio_max"] == pytest.approx(ratio.max(), rel=1e-5)


def trained_state(params) -> dict:
    """The full state of a model after one training step on fixed data."""
    keras.utils.set_random_seed(0)
    model = compile_model(params, 32, "channels_last")
    rng = np.random.default_rng(0)
    model.train_on_batch(rng.random((4, 32, 32, 1), dtype=np.float32), np.eye(2, dtype=np.float32)[[0, 1, 0, 1]])
    return training_state.capture(model)


@pytest.mark.parametrize(
    ("target", "restored_slots", "fresh_slot"),
    [
        ({"name": "adam", "epsilon": 1e-3}, ("momentum", "velocity"), None),  # same family: m and v carry over
        ({"name": "adam", "amsgrad": True}, ("momentum", "velocity"), "velocity_hat"),
        ({"name": "sgd", "momentum": 0.9}, (), "momentum"),  # another family: starts fresh
    ],
)
def test_snapshot_restores_weights_always_and_optimizer_state_within_a_family(
    tiny_raw, target, restored_slots, fresh_slot
):
    source = params_from_dict(tiny_raw)
    state = trained_state(source)
    model = compile_model(params_from_dict(with_changes(tiny_raw, {"optimizer": target})), 32, "channels_last")
    fresh = training_state.restore(model, state)
    for variable in model.trainable_variables:
        np.testing.assert_array_equal(variable.numpy(), state[f"weight/{variable.path}"])
    restored = {key: value for key, value in training_state.capture(model).items() if key.startswith("optimizer/")}
    for key, value in restored.items():
        if any(key.endswith(f"_{slot}") for slot in restored_slots):
            np.testing.assert_array_equal(value, state[key])
            assert np.any(value != 0)
    if fresh_slot is None:
        assert fresh == []
    else:
        assert fresh and all(path.endswith(f"_{fresh_slot}") or path.endswith("iteration") for path in fresh), fresh


@pytest.mark.parametrize("schedule", ["constant", "cosine", "step", "warmup"])
def test_each_schedule_gives_its_documented_rate_at_every_epoch_end(tiny_raw, schedule):
    import math

    from spikelab.optimizers import make_optimizer, steps_per_epoch

    raw = with_changes(
        tiny_raw,
        {
            "optimizer": {"schedule": schedule, "warmup_epochs": 2, "step_every": 2, "step_factor": 0.5},
            "train": {"epochs": 6},
        },
    )
    params = params_from_dict(raw)
    steps, rate = steps_per_epoch(params), params.optimizer.learning_rate
    assert steps == math.ceil(2 * (96 - 32) / 32)  # the tiny data's 128 training images, batches of 32
    optimizer = make_optimizer(params.optimizer, steps=steps, epochs=6)
    expected = {
        "constant": lambda epoch: rate,
        "cosine": lambda epoch: rate * 0.5 * (1 + math.cos(math.pi * epoch / 6)),  # to 0 at the last step
        "step": lambda epoch: rate * 0.5 ** (epoch // 2),  # x step_factor every step_every epochs
        "warmup": lambda epoch: rate * min(1.0, (epoch * steps + 1) / (2 * steps)),  # rate/W.. rate, then flat
    }[schedule]
    for epoch in range(7):  # the rate the next step uses, after `epoch` epochs
        optimizer.iterations.assign(epoch * steps)
        assert float(optimizer.learning_rate) == pytest.approx(expected(epoch), rel=1e-6, abs=1e-12), epoch
