"""jaxreg.optim.lr_scheduler against torch.optim.lr_scheduler itself: the value at step k
is torch's get_last_lr() after k scheduler.step() calls, float64, over several cycles."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from torch.optim import lr_scheduler as T

from jaxreg import optim
from jaxreg.optim import lr_scheduler as J

LR = 0.1
# torch computes most schedules recursively (each lr from the last), jaxreg in closed
# form: the two differ by accumulated float64 round-off, a few ulps per step at most.
RTOL = 1e-12


def _torch_lrs(make, n, lr=LR, **opt_kwargs):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr, **opt_kwargs)
    sched = make(opt)
    out = [sched.get_last_lr()[0]]
    for _ in range(n):
        opt.step()
        sched.step()
        out.append(sched.get_last_lr()[0])
    return np.array(out, dtype=np.float64)


def _jax_lrs(schedule, n):
    return np.asarray(jax.jit(jax.vmap(schedule))(jnp.arange(n + 1)))


CASES = {
    "step_lr": (lambda o: T.StepLR(o, 7, 0.5), lambda: J.step_lr(LR, 7, 0.5), 60),
    "multi_step_lr": (
        lambda o: T.MultiStepLR(o, [5, 12, 12, 30], 0.3),
        lambda: J.multi_step_lr(LR, [30, 5, 12, 12], 0.3),
        50,
    ),
    "constant_lr": (lambda o: T.ConstantLR(o, 0.3, 9), lambda: J.constant_lr(LR, 0.3, 9), 30),
    "linear_lr": (
        lambda o: T.LinearLR(o, 0.05, 0.9, 40),
        lambda: J.linear_lr(LR, 0.05, 0.9, 40),
        80,
    ),
    "exponential_lr": (lambda o: T.ExponentialLR(o, 0.97), lambda: J.exponential_lr(LR, 0.97), 300),
    "polynomial_lr": (
        lambda o: T.PolynomialLR(o, 50, 2.5),
        lambda: J.polynomial_lr(LR, 50, 2.5),
        80,
    ),
    # four half-periods past T_max: torch's schedule rises again
    "cosine_annealing_lr": (
        lambda o: T.CosineAnnealingLR(o, 25, 1e-3),
        lambda: J.cosine_annealing_lr(LR, 25, 1e-3),
        100,
    ),
    "cosine_annealing_lr_eta0": (
        lambda o: T.CosineAnnealingLR(o, 16),
        lambda: J.cosine_annealing_lr(LR, 16),
        70,
    ),
    "warm_restarts": (
        lambda o: T.CosineAnnealingWarmRestarts(o, 10, 1, 1e-4),
        lambda: J.cosine_annealing_warm_restarts(LR, 10, 1, 1e-4),
        45,
    ),
    "warm_restarts_tmult": (
        lambda o: T.CosineAnnealingWarmRestarts(o, 3, 2, 1e-4),
        lambda: J.cosine_annealing_warm_restarts(LR, 3, 2, 1e-4),
        100,  # cycles of 3, 6, 12, 24, 48 steps
    ),
    "one_cycle_cos": (
        lambda o: T.OneCycleLR(o, 0.4, total_steps=100, cycle_momentum=False),
        lambda: J.one_cycle_lr(0.4, total_steps=100),
        100,
    ),
    "one_cycle_linear_three_phase": (
        lambda o: T.OneCycleLR(
            o, 0.4, epochs=10, steps_per_epoch=9, pct_start=0.25, anneal_strategy="linear",
            three_phase=True, cycle_momentum=False,
        ),
        lambda: J.one_cycle_lr(
            0.4, epochs=10, steps_per_epoch=9, pct_start=0.25, anneal_strategy="linear",
            three_phase=True,
        ),
        90,
    ),  # fmt: skip
    "cyclic_triangular": (
        lambda o: T.CyclicLR(o, 0.01, 0.2, step_size_up=7, cycle_momentum=False),
        lambda: J.cyclic_lr(0.01, 0.2, step_size_up=7),
        60,
    ),
    "cyclic_triangular2": (
        lambda o: T.CyclicLR(
            o, 0.01, 0.2, step_size_up=5, step_size_down=9, mode="triangular2",
            cycle_momentum=False,
        ),
        lambda: J.cyclic_lr(0.01, 0.2, step_size_up=5, step_size_down=9, mode="triangular2"),
        60,
    ),  # fmt: skip
    "cyclic_exp_range": (
        lambda o: T.CyclicLR(
            o, 0.01, 0.2, step_size_up=6, mode="exp_range", gamma=0.98, cycle_momentum=False
        ),
        lambda: J.cyclic_lr(0.01, 0.2, step_size_up=6, mode="exp_range", gamma=0.98),
        60,
    ),
    "lambda_lr": (
        lambda o: T.LambdaLR(o, lambda e: 0.95**e * min(1.0, (e + 1) / 10)),
        lambda: J.lambda_lr(LR, lambda e: 0.95**e * jnp.minimum(1.0, (e + 1) / 10)),
        60,
    ),
    "multiplicative_lr": (
        lambda o: T.MultiplicativeLR(o, lambda e: 0.9 if e % 3 == 0 else 1.01),
        lambda: J.multiplicative_lr(LR, lambda e: jnp.where(e % 3 == 0, 0.9, 1.01)),
        40,
    ),
    # the realistic recipe: linear warm-up, then cosine
    "sequential_warmup_cosine": (
        lambda o: T.SequentialLR(
            o, [T.LinearLR(o, 0.01, 1.0, 10), T.CosineAnnealingLR(o, 40, 1e-4)], milestones=[10]
        ),
        lambda: J.sequential_lr(
            [J.linear_lr(LR, 0.01, 1.0, 10), J.cosine_annealing_lr(LR, 40, 1e-4)], [10]
        ),
        120,
    ),
    "sequential_three": (
        lambda o: T.SequentialLR(
            o,
            [T.ConstantLR(o, 0.2, 4), T.ExponentialLR(o, 0.9), T.StepLR(o, 5, 0.5)],
            milestones=[6, 20],
        ),
        lambda: J.sequential_lr(
            [J.constant_lr(LR, 0.2, 4), J.exponential_lr(LR, 0.9), J.step_lr(LR, 5, 0.5)],
            [6, 20],
        ),
        50,
    ),
    "chained": (
        lambda o: T.ChainedScheduler(
            [T.ConstantLR(o, 0.5, 6), T.ExponentialLR(o, 0.95), T.MultiStepLR(o, [10, 25], 0.5)]
        ),
        lambda: J.chained_scheduler(
            [
                J.constant_lr(LR, 0.5, 6),
                J.exponential_lr(LR, 0.95),
                J.multi_step_lr(LR, [10, 25], 0.5),
            ]
        ),
        60,
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_schedule_equals_torchs_get_last_lr(name):
    make_torch, make_jax, n = CASES[name]
    ref = _torch_lrs(make_torch, n)
    got = _jax_lrs(make_jax(), n)
    np.testing.assert_allclose(got, ref, rtol=RTOL, atol=1e-300)


def test_schedule_from_torch_records_any_scheduler_and_restores_it():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    sched = T.LambdaLR(opt, lambda e: 1.0 / (1 + e) if e % 2 else 2.0)  # any Python code
    s = J.schedule_from_torch(sched, 20)
    assert opt.param_groups[0]["lr"] == 2 * LR and sched.last_epoch == 0  # restored
    ref = _torch_lrs(lambda o: T.LambdaLR(o, lambda e: 1.0 / (1 + e) if e % 2 else 2.0), 20)
    np.testing.assert_array_equal(_jax_lrs(s, 20), ref)
    assert np.isnan(float(s(21)))  # past the recording: loud, not the last value


def test_a_scheduled_optimizer_follows_torch():
    """AdamW with warm-up + cosine: the lr reaches the decay term too (decoupled)."""
    rng = np.random.default_rng(0)
    w0, grads = rng.standard_normal((3, 4)), rng.standard_normal((40, 3, 4))
    w = torch.tensor(w0, requires_grad=True)
    opt = torch.optim.AdamW([w], lr=0.05, weight_decay=0.3)
    sched = T.SequentialLR(
        opt, [T.LinearLR(opt, 0.1, 1.0, 8), T.CosineAnnealingLR(opt, 32)], milestones=[8]
    )
    for g in grads:
        w.grad = torch.tensor(g)
        opt.step()
        sched.step()
    lr = J.sequential_lr([J.linear_lr(0.05, 0.1, 1.0, 8), J.cosine_annealing_lr(0.05, 32)], [8])
    tx = optim.adamw(lr=lr, weight_decay=0.3)
    p = jnp.asarray(w0)
    state = tx.init(p)
    for g in grads:
        u, state = tx.update(jnp.asarray(g), state, p)
        p = optax.apply_updates(p, u)
    np.testing.assert_allclose(np.asarray(p), w.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_bad_arguments_are_refused():
    for build, match in [
        (lambda: J.step_lr(0.1, 0), "step_size"),
        (lambda: J.constant_lr(0.1, 1.5), "between 0 and 1"),
        (lambda: J.linear_lr(0.1, 0.0), "greater than 0"),
        (lambda: J.cosine_annealing_warm_restarts(0.1, 5, 0), "T_mult"),
        (lambda: J.one_cycle_lr(0.1), "total_steps OR"),
        (lambda: J.one_cycle_lr(0.1, 100, pct_start=1), "pct_start"),
        (lambda: J.cyclic_lr(0.01, 0.1, mode="sawtooth"), "mode is invalid"),
        (lambda: J.sequential_lr([J.exponential_lr(0.1, 0.9)], [3]), "one more"),
        (lambda: J.chained_scheduler([J.cosine_annealing_lr(0.1, 10)]), "schedule_from_torch"),
        (lambda: J.step_lr("0.1", 3), "number"),
    ]:
        with pytest.raises(ValueError, match=match):
            build()
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    with pytest.raises(ValueError, match="metrics"):
        J.schedule_from_torch(T.ReduceLROnPlateau(opt), 5)
    assert math.isfinite(float(J.step_lr(0.1, 3)(jnp.int32(4))))


@pytest.mark.parametrize(
    "kw",
    [
        {"patience": 3},
        {"mode": "max", "threshold_mode": "abs", "threshold": 0.01, "patience": 2, "cooldown": 3},
        {"factor": 0.5, "patience": 1, "min_lr": 0.004, "cooldown": 1},
    ],
)
def test_reduce_lr_on_plateau_follows_torch(kw):
    """SGD with momentum, the metric fed once per 'epoch' of 3 steps, plateaus included."""
    rng = np.random.default_rng(1)
    w0, grads = rng.standard_normal(5), rng.standard_normal((60, 5))
    # a metric that improves, stalls, improves a little (below the threshold), jumps
    metrics = np.concatenate([np.linspace(1.0, 0.5, 5), np.full(6, 0.5), [0.49999, 0.3, 0.3, 0.3,
                             0.31, 0.2, 0.2, 0.2, 0.2, 0.2]])  # fmt: skip
    if kw.get("mode") == "max":
        metrics = -metrics
    w = torch.tensor(w0, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.05, momentum=0.9)
    sched = T.ReduceLROnPlateau(opt, **kw)
    tx = optax.chain(optim.sgd(0.05, momentum=0.9), J.reduce_lr_on_plateau(0.05, **kw))
    p = jnp.asarray(w0)
    state = tx.init(p)
    step = jax.jit(lambda g, s, p, m: tx.update(g, s, p, metric=m))
    plain = jax.jit(lambda g, s, p: tx.update(g, s, p))
    lrs_t, lrs_j = [], []
    for k, g in enumerate(grads):
        w.grad = torch.tensor(g)
        opt.step()
        epoch_end = k % 3 == 2
        if epoch_end:
            sched.step(metrics[k // 3])
        # JAX: the metric goes with the next update (torch's step() sits between two steps)
        if k % 3 == 0 and k > 0:
            u, state = step(jnp.asarray(g), state, p, metrics[k // 3 - 1])
        else:
            u, state = plain(jnp.asarray(g), state, p)
        p = optax.apply_updates(p, u)
        lrs_t.append(sched.get_last_lr()[0])
        lrs_j.append(float(state[1].lr))
    # the JAX state lags by one update where the metric arrives with the next update
    assert lrs_j[3::3] == lrs_t[2:-1:3]
    assert len(set(lrs_t)) >= 2  # the lr did drop
    np.testing.assert_allclose(np.asarray(p), w.detach().numpy(), rtol=1e-13, atol=1e-15)


def test_reduce_lr_on_plateau_refuses_what_torch_refuses():
    for kw, match in [({"factor": 1.0}, "Factor"), ({"mode": "up"}, "mode"),
                      ({"threshold_mode": "x"}, "threshold mode"), ({"patience": -1}, "patience")]:
        with pytest.raises(ValueError, match=match):
            J.reduce_lr_on_plateau(0.1, **kw)


def _cycled_run(make_opt, make_sched, tx, n=80, shape=(6,)):
    rng = np.random.default_rng(2)
    w0, grads = rng.standard_normal(shape), rng.standard_normal((n, *shape))
    w = torch.tensor(w0, requires_grad=True)
    opt = make_opt([w])
    sched = make_sched(opt)
    moms = []
    for g in grads:
        group = opt.param_groups[0]
        moms.append(group["betas"][0] if "betas" in group else group["momentum"])
        w.grad = torch.tensor(g)
        opt.step()
        sched.step()
    p = jnp.asarray(w0)
    state = tx.init(p)
    for g in grads:
        u, state = tx.update(jnp.asarray(g), state, p)
        p = optax.apply_updates(p, u)
    return np.asarray(p), w.detach().numpy(), np.array(moms)


@pytest.mark.parametrize("three_phase", [False, True])
def test_one_cycle_with_cycled_momentum_follows_torch(three_phase):
    kw = dict(total_steps=80, pct_start=0.25, three_phase=three_phase)
    lr = J.one_cycle_lr(0.5, **kw)
    mom = J.one_cycle_momentum(**kw)
    got, ref, moms = _cycled_run(
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
        lambda o: T.OneCycleLR(o, 0.5, **kw),
        optim.sgd(lr, momentum=mom, nesterov=True),
    )
    np.testing.assert_allclose(_jax_lrs(mom, 79), moms, rtol=1e-13)
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-14)
    got, ref, moms = _cycled_run(
        lambda ps: torch.optim.AdamW(ps, lr=0.1, weight_decay=0.1),
        lambda o: T.OneCycleLR(o, 0.05, **kw),
        optim.adamw(J.one_cycle_lr(0.05, **kw), betas=(mom, 0.999), weight_decay=0.1),
    )
    assert moms.max() - moms.min() > 0.05  # torch did cycle beta1
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-14)


CYCLED = {  # every other torch optimizer OneCycleLR cycles: momentum, or betas[0]
    # name: (torch class, jaxreg factory, torch-only kwargs, jaxreg-only kwargs, what, shape)
    "rmsprop": (torch.optim.RMSprop, optim.rmsprop, {"momentum": 0.9}, {}, "momentum", (6,)),
    "muon": (torch.optim.Muon, optim.muon, {}, {}, "momentum", (4, 3)),
    "adamax": (torch.optim.Adamax, optim.adamax, {}, {}, "betas", (6,)),
    "nadam": (torch.optim.NAdam, optim.nadam, {}, {"torch_scalar_dtype": "float32"}, "betas", (6,)),
    "radam": (torch.optim.RAdam, optim.radam, {}, {}, "betas", (6,)),
}


@pytest.mark.parametrize("name", list(CYCLED))
def test_one_cycle_momentum_cycles_every_optimizer_that_has_one(name):
    torch_cls, factory, torch_only, jax_only, key, shape = CYCLED[name]
    kw = dict(total_steps=60, pct_start=0.3)
    mom = J.one_cycle_momentum(**kw)
    extra = {"betas": (mom, 0.999)} if key == "betas" else {"momentum": mom}
    got, ref, moms = _cycled_run(
        lambda ps: torch_cls(ps, lr=0.01, **torch_only),
        lambda o: T.OneCycleLR(o, 0.02, **kw),
        factory(J.one_cycle_lr(0.02, **kw), **extra, **jax_only),
        n=59,
        shape=shape,
    )
    assert moms.max() - moms.min() > 0.05  # torch did cycle it
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-14)


def test_cyclic_with_cycled_momentum_follows_torch():
    kw = dict(step_size_up=6, step_size_down=10, mode="triangular2")
    got, ref, moms = _cycled_run(
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
        lambda o: T.CyclicLR(o, 0.01, 0.2, base_momentum=0.7, max_momentum=0.95, **kw),
        optim.sgd(
            J.cyclic_lr(0.01, 0.2, **kw),
            momentum=J.cyclic_momentum(base_momentum=0.7, max_momentum=0.95, **kw),
        ),
    )
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-14)
