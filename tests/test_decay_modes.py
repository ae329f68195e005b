"""decoupled_weight_decay(mode=...): each library's decay convention, by closed form.

With zero base updates the parameters follow θ_T = θ_0 · Π_t (1 − λ f(η_t)) exactly, where
f is the mode's function of the learning rate at step t (schedules evaluated at t = 0, 1, ...).
"""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxreg

LAM, STEPS = 0.1, 30
SCHED = optax.cosine_decay_schedule(0.05, STEPS, alpha=0.1)
PEAK = 0.05


def _run(tx):
    params = {"w": jnp.array([1.0, -2.0, 0.5]), "b": jnp.array([3.0])}
    state = tx.init(params)
    for _ in range(STEPS):
        zero = {k: jnp.zeros_like(v) for k, v in params.items()}
        u, state = tx.update(zero, state, params)
        params = optax.apply_updates(params, u)
    return params


def _closed_form(f):
    lrs = [float(SCHED(float(t))) for t in range(STEPS)]
    return np.prod([1.0 - LAM * f(lr) for lr in lrs])


@pytest.mark.parametrize(
    "mode,kwargs,f",
    [
        ("lr", {}, lambda lr: lr),
        ("schedule", {"max_learning_rate": PEAK}, lambda lr: lr / PEAK),
        ("fixed", {}, lambda lr: 1.0),
        ("corrected", {"max_learning_rate": PEAK}, lambda lr: lr * lr / PEAK),
        ("lr_power", {"power": 2.0}, lambda lr: lr**2),
        ("lr_power", {"power": 0.5}, lambda lr: lr**0.5),
    ],
)
def test_mode_follows_its_closed_form(mode, kwargs, f):
    out = _run(jaxreg.decoupled_weight_decay(LAM, SCHED, mode=mode, **kwargs))
    shrink = _closed_form(f)
    np.testing.assert_allclose(np.asarray(out["w"]), np.array([1.0, -2.0, 0.5]) * shrink,
                               rtol=1e-13)  # fmt: skip
    np.testing.assert_allclose(np.asarray(out["b"]), np.array([3.0]) * shrink, rtol=1e-13)


def test_modes_differ_and_lr_mode_is_the_default():
    default = _run(jaxreg.decoupled_weight_decay(LAM, SCHED))
    lr_mode = _run(jaxreg.decoupled_weight_decay(LAM, SCHED, mode="lr"))
    np.testing.assert_array_equal(np.asarray(default["w"]), np.asarray(lr_mode["w"]))
    fixed = _run(jaxreg.decoupled_weight_decay(LAM, SCHED, mode="fixed"))
    assert abs(float(fixed["w"][0]) - float(default["w"][0])) > 0.5


def test_constant_lr_needs_no_max():
    out = _run(jaxreg.decoupled_weight_decay(LAM, 0.05, mode="schedule"))
    np.testing.assert_allclose(float(out["w"][0]), (1 - LAM) ** STEPS, rtol=1e-13)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"mode": "cosine"}, "mode must be one of"),
        ({"mode": "schedule"}, "needs max_learning_rate"),
        ({"mode": "corrected", "max_learning_rate": 0.0}, "max_learning_rate must be > 0"),
        ({"mode": "corrected", "max_learning_rate": -1.0}, "max_learning_rate"),
        ({"mode": "lr_power", "power": -1.0}, "power"),
    ],
)
def test_bad_mode_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        jaxreg.decoupled_weight_decay(LAM, SCHED, **kwargs)
