"""Regularizing transforms against torch.optim, closed forms and scikit-learn."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from helpers import (
    assert_trees_close,
    max_abs_diff,
    optax_trajectory,
    random_grads,
    torch_trajectory,
)
from sklearn.linear_model import ElasticNet, Lasso
from trees import ALL_KINDS

import jaxreg
from jaxreg import masks

SHAPES = [(4, 3), (3,), (), (5, 2)]


def _params0(seed=1):
    rng = np.random.default_rng(seed)
    ps = [rng.normal(size=s) for s in SHAPES]
    ps[0][0, 0] = 0.0
    return ps


# --- coupled weight decay ------------------------------------------------------------------


@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_add_weight_decay_matches_torch_sgd(momentum, nesterov):
    grads = random_grads(SHAPES, 100)
    ref, _ = torch_trajectory(
        lambda ps: torch.optim.SGD(
            ps, lr=0.05, momentum=momentum, nesterov=nesterov, weight_decay=0.3
        ),
        _params0(),
        grads,
    )
    tx = optax.chain(
        jaxreg.add_weight_decay(0.3),
        optax.sgd(0.05, momentum=momentum or None, nesterov=nesterov),
    )
    out, _ = optax_trajectory(tx, _params0(), grads)
    assert_trees_close(out, ref)


def test_add_weight_decay_with_mask_matches_torch_param_groups():
    grads = random_grads(SHAPES, 60)
    ref, _ = torch_trajectory(
        lambda ps: torch.optim.Adam(
            [
                {"params": [ps[0], ps[3]], "weight_decay": 0.1},
                {"params": [ps[1], ps[2]], "weight_decay": 0.0},
            ],
            lr=0.01,
        ),
        _params0(),
        grads,
    )
    tx = optax.chain(jaxreg.add_weight_decay(0.1, mask=masks.min_ndim(2)), optax.adam(0.01))
    out, _ = optax_trajectory(tx, _params0(), grads)
    # torch returns groups in the order given; reorder to ours.
    assert_trees_close(out, ref)


def test_penalty_in_loss_with_sgd_equals_weight_decay_two_lambda():
    """λ·Σw² in the loss + SGD ≡ add_weight_decay(2λ) + SGD: 50 steps, float64, |Δp| ≤ 1e-12."""
    lam, lr = 0.01, 0.1
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(32, 5)))
    y = jnp.asarray(rng.normal(size=(32, 2)))
    params = {"w": jnp.asarray(rng.normal(size=(5, 2))), "b": jnp.zeros(2)}

    def data_loss(p):
        return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)

    loss_pen = jaxreg.regularized(data_loss, l2=lam)
    tx_pen = optax.sgd(lr)
    tx_dec = optax.chain(jaxreg.add_weight_decay(2 * lam), optax.sgd(lr))

    def step(_, carry):
        p_pen, s_pen, p_dec, s_dec = carry
        u, s_pen = tx_pen.update(jax.grad(loss_pen)(p_pen), s_pen, p_pen)
        p_pen = optax.apply_updates(p_pen, u)
        u, s_dec = tx_dec.update(jax.grad(data_loss)(p_dec), s_dec, p_dec)
        p_dec = optax.apply_updates(p_dec, u)
        return p_pen, s_pen, p_dec, s_dec

    @jax.jit
    def run(p):  # a rolled loop: one step compiled once, not a 50-step unrolled graph
        p_pen, _, p_dec, _ = jax.lax.fori_loop(0, 50, step, (p, tx_pen.init(p), p, tx_dec.init(p)))
        return p_pen, p_dec

    p_pen, p_dec = run(params)
    assert max_abs_diff(p_pen, p_dec) <= 1e-12
    # ... and the decay did something: without it the weights end elsewhere.
    p_plain = params
    for _ in range(50):
        p_plain = jax.tree.map(lambda a, g: a - lr * g, p_plain, jax.grad(data_loss)(p_plain))
    assert max_abs_diff(p_plain, p_dec) > 1e-4


def test_penalty_in_loss_with_momentum_is_not_decoupled_decay():
    """For Adam, coupled L2 and decoupled decay (AdamW) differ -- the reason both exist."""
    grads = random_grads(SHAPES, 50)
    coupled, _ = optax_trajectory(
        optax.chain(jaxreg.add_weight_decay(0.1), optax.adam(0.01)), _params0(), grads
    )
    decoupled, _ = optax_trajectory(
        optax.chain(optax.adam(0.01), jaxreg.decoupled_weight_decay(0.1, 0.01)), _params0(), grads
    )
    assert max_abs_diff(coupled, decoupled) > 1e-3


# --- decoupled weight decay ------------------------------------------------------------------


def _adamw_chain(lr, wd, mask=None):
    return optax.chain(
        optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8),
        optax.scale_by_learning_rate(lr),
        jaxreg.decoupled_weight_decay(wd, lr, mask=mask),
    )


def test_decoupled_weight_decay_matches_torch_adamw():
    grads = random_grads(SHAPES, 100)
    ref, _ = torch_trajectory(
        lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.5), _params0(), grads
    )
    out, _ = optax_trajectory(_adamw_chain(0.01, 0.5), _params0(), grads)
    assert_trees_close(out, ref)


def test_decoupled_weight_decay_follows_schedule_like_torch_steplr():
    grads = random_grads(SHAPES, 100)
    ref, _ = torch_trajectory(
        lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.5),
        _params0(),
        grads,
        scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=30, gamma=0.1),
    )
    step_decay = optax.exponential_decay(0.01, transition_steps=30, decay_rate=0.1, staircase=True)
    # Optax computes `count / transition_steps` in float32 for an int32 count, which rounds
    # the lr itself to float32 (5e-9 relative); torch computes it in Python double.
    sched = lambda count: step_decay(count.astype(jnp.float64))
    out, state = optax_trajectory(_adamw_chain(sched, 0.5), _params0(), grads)
    assert_trees_close(out, ref)
    assert int(state[2].count) == 100


def test_decoupled_weight_decay_masked():
    grads = random_grads(SHAPES, 50)
    ref, _ = torch_trajectory(
        lambda ps: torch.optim.AdamW(
            [{"params": [ps[0], ps[3]]}, {"params": [ps[1], ps[2]], "weight_decay": 0.0}],
            lr=0.01,
            weight_decay=0.5,
        ),
        _params0(),
        grads,
    )
    out, _ = optax_trajectory(_adamw_chain(0.01, 0.5, mask=masks.min_ndim(2)), _params0(), grads)
    assert_trees_close(out, ref)


# --- L1 decay -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["linen", "nnx", "plain"])
def test_add_l1_decay_is_the_gradient_of_the_l1_penalty(kind):
    tree = ALL_KINDS[kind]()
    zeros = jax.tree.map(jnp.zeros_like, tree)
    tx = jaxreg.add_l1_decay(0.3)
    out, _ = jax.jit(tx.update)(zeros, tx.init(tree), tree)
    ref = jax.grad(lambda p: 0.3 * jaxreg.l1_penalty(p), allow_int=True)(tree)
    for o, r, x in zip(jax.tree.leaves(out), jax.tree.leaves(ref), jax.tree.leaves(tree)):
        if jnp.issubdtype(x.dtype, jnp.floating):
            np.testing.assert_array_equal(np.asarray(o), np.asarray(r))
        else:  # integer leaves pass through untouched
            np.testing.assert_array_equal(np.asarray(o), 0)


def test_l1_penalty_in_loss_matches_torch_sgd_trajectory():
    """torch: loss + α·Σ|p| with autograd, SGD+momentum; jaxreg: add_l1_decay(α) + sgd."""
    grads = random_grads(SHAPES, 80)
    alpha = 0.05
    params0 = _params0()
    ts = [torch.tensor(p, requires_grad=True) for p in params0]
    opt = torch.optim.SGD(ts, lr=0.1, momentum=0.9)
    for gs in grads:
        opt.zero_grad()
        loss = sum((t * torch.tensor(g)).sum() for t, g in zip(ts, gs))
        loss = loss + alpha * sum(t.abs().sum() for t in ts)
        loss.backward()
        opt.step()
    out, _ = optax_trajectory(
        optax.chain(jaxreg.add_l1_decay(alpha), optax.sgd(0.1, momentum=0.9)), params0, grads
    )
    assert_trees_close(out, [t.detach().numpy() for t in ts])


# --- proximal steps -----------------------------------------------------------------------


def _lasso_problem(seed=0, n=60, d=12):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    w_true = np.zeros(d)
    w_true[:4] = [3.0, -2.0, 1.5, 0.5]
    y = X @ w_true + 0.3 * rng.normal(size=n)
    return X, y


def _ista(X, y, tx_for_step, steps=8000):
    """Proximal gradient on (1/2n)||y - Xw||² with the given transform chain (jitted scan)."""
    Xj, yj = jnp.asarray(X), jnp.asarray(y)
    n = X.shape[0]
    grad = jax.grad(lambda w: jnp.sum((yj - Xj @ w) ** 2) / (2 * n))
    tx = tx_for_step
    w0 = jnp.zeros(X.shape[1])

    def body(carry, _):
        w, s = carry
        u, s = tx.update(grad(w), s, w)
        return (optax.apply_updates(w, u), s), None

    (w, _), _ = jax.jit(lambda c: jax.lax.scan(body, c, None, length=steps))((w0, tx.init(w0)))
    return np.asarray(w)


def test_prox_l1_reaches_exact_zeros_and_matches_sklearn_lasso():
    X, y = _lasso_problem()
    alpha = 0.2
    lr = 1.0 / np.linalg.eigvalsh(X.T @ X / X.shape[0]).max()
    w = _ista(X, y, optax.chain(optax.sgd(lr), jaxreg.proximal_l1(lr * alpha)))
    ref = Lasso(alpha=alpha, fit_intercept=False, tol=1e-14, max_iter=100_000).fit(X, y).coef_
    assert np.max(np.abs(w - ref)) <= 1e-6
    assert np.sum(w == 0.0) >= 4  # exact zeros, not merely small
    np.testing.assert_array_equal(w == 0.0, ref == 0.0)


def test_prox_l1_with_schedule_threshold():
    X, y = _lasso_problem(seed=3)
    alpha = 0.1
    lr = 1.0 / np.linalg.eigvalsh(X.T @ X / X.shape[0]).max()
    # Warm-up schedule for the step size; the threshold follows it (lr_t · α).
    sched = optax.linear_schedule(0.1 * lr, lr, transition_steps=100)
    w = _ista(X, y, optax.chain(optax.sgd(sched), jaxreg.proximal_l1(lambda c: sched(c) * alpha)))
    ref = Lasso(alpha=alpha, fit_intercept=False, tol=1e-14, max_iter=100_000).fit(X, y).coef_
    assert np.max(np.abs(w - ref)) <= 1e-6


def test_prox_elastic_net_matches_sklearn_elasticnet():
    # sklearn: (1/2n)||y-Xw||² + a·r·||w||₁ + ½·a·(1-r)·||w||²; jaxreg's convention is
    # l1·||w||₁ + l2·||w||² (no ½), so l2 = ½·a·(1-r).
    X, y = _lasso_problem(seed=1)
    a, r = 0.3, 0.6
    lr = 1.0 / np.linalg.eigvalsh(X.T @ X / X.shape[0]).max()
    w = _ista(
        X,
        y,
        optax.chain(optax.sgd(lr), jaxreg.proximal_elastic_net(lr * a * r, lr * 0.5 * a * (1 - r))),
    )
    ref = (
        ElasticNet(alpha=a, l1_ratio=r, fit_intercept=False, tol=1e-14, max_iter=100_000)
        .fit(X, y)
        .coef_
    )
    assert np.max(np.abs(w - ref)) <= 1e-6
    np.testing.assert_array_equal(w == 0.0, ref == 0.0)


def test_prox_closed_form_and_mask():
    p = {"w": jnp.array([[1.0, -0.2], [0.05, -3.0]]), "b": jnp.array([0.1, -0.1])}
    tx = optax.chain(optax.sgd(1.0), jaxreg.proximal_elastic_net(0.1, 0.5, mask=masks.min_ndim(2)))
    u, _ = tx.update(jax.tree.map(jnp.zeros_like, p), tx.init(p), p)
    new = optax.apply_updates(p, u)
    np.testing.assert_allclose(np.asarray(new["w"]), [[0.45, -0.05], [0.0, -1.45]], rtol=1e-15)
    np.testing.assert_array_equal(np.asarray(new["b"]), np.asarray(p["b"]))


# --- composition, state, jit, hyperparameters ----------------------------------------------


@pytest.mark.parametrize(
    "factory",
    [
        lambda: jaxreg.add_weight_decay(0.1),
        lambda: jaxreg.add_l1_decay(0.1),
        lambda: jaxreg.proximal_l1(0.1),
        lambda: jaxreg.proximal_elastic_net(0.1, 0.1),
        lambda: jaxreg.decoupled_weight_decay(0.1, 0.01),
    ],
    ids=["add_weight_decay", "add_l1_decay", "prox_l1", "prox_elastic_net", "decoupled"],
)
@pytest.mark.parametrize("kind", ["linen", "nnx", "plain"])
def test_stateless_transforms_on_every_tree_kind(factory, kind):
    tree = ALL_KINDS[kind]()
    tx = factory()
    state = tx.init(tree)
    assert state == optax.EmptyState()
    zeros = jax.tree.map(jnp.zeros_like, tree)
    out, new_state = jax.jit(tx.update)(zeros, state, tree)
    assert jax.tree.structure(out) == jax.tree.structure(tree)
    for o, x in zip(jax.tree.leaves(out), jax.tree.leaves(tree)):
        assert o.dtype == x.dtype
        if not jnp.issubdtype(x.dtype, jnp.floating):
            assert int(o) == 0  # the int counter is passed through untouched


def test_inject_hyperparams():
    tx = optax.inject_hyperparams(jaxreg.add_weight_decay)(weight_decay=0.25)
    p = {"w": jnp.array([2.0])}
    state = tx.init(p)
    u, state = jax.jit(tx.update)({"w": jnp.zeros(1)}, state, p)
    assert float(u["w"][0]) == 0.5
    state.hyperparams["weight_decay"] = jnp.asarray(1.0)
    u, _ = jax.jit(tx.update)({"w": jnp.zeros(1)}, state, p)
    assert float(u["w"][0]) == 2.0


def test_schedule_state_counts():
    tx = jaxreg.add_weight_decay(lambda c: 0.1 * c)
    p = {"w": jnp.array([1.0])}
    s = tx.init(p)
    assert isinstance(s, jaxreg.ScheduleState) and int(s.count) == 0
    for expected in [0.0, 0.1, 0.2]:
        u, s = tx.update({"w": jnp.zeros(1)}, s, p)
        assert float(u["w"][0]) == pytest.approx(expected)


def test_float32_updates_stay_float32_with_float64_hyperparameters():
    tx = jaxreg.decoupled_weight_decay(jnp.asarray(0.1, jnp.float64), 0.5)
    p = {"w": jnp.ones(2, jnp.float32)}
    u, _ = tx.update({"w": jnp.zeros(2, jnp.float32)}, tx.init(p), p)
    assert u["w"].dtype == jnp.float32


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: jaxreg.add_weight_decay(-0.1), "weight_decay must be non-negative"),
        (lambda: jaxreg.add_weight_decay(float("nan")), "weight_decay must be finite"),
        (lambda: jaxreg.decoupled_weight_decay(0.1, -1.0), "learning_rate must be non-negative"),
        (lambda: jaxreg.decoupled_weight_decay(float("inf"), 1.0), "weight_decay must be finite"),
        (lambda: jaxreg.add_l1_decay(-1), "alpha must be non-negative"),
        (lambda: jaxreg.proximal_l1(-0.5), "threshold must be non-negative"),
        (lambda: jaxreg.proximal_elastic_net(0.1, float("nan")), "l2 must be finite"),
        (lambda: jaxreg.add_weight_decay(jnp.ones(3)), "weight_decay must be a non-negative"),
        (lambda: jaxreg.add_weight_decay("0.1x"), "weight_decay must be a non-negative"),
    ],
)
def test_bad_hyperparameters_raise_at_construction(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_bad_mask_raises_at_init_and_update():
    p = {"w": jnp.ones(2), "b": jnp.ones(1)}
    tx = jaxreg.add_weight_decay(0.1, mask={"w": True})
    with pytest.raises(ValueError, match="params leaf 'b' has no entry in the mask"):
        tx.init(p)
    with pytest.raises(ValueError, match="params leaf 'b' has no entry in the mask"):
        tx.update(p, optax.EmptyState(), p)


def test_update_without_params_raises():
    tx = jaxreg.add_weight_decay(0.1)
    with pytest.raises(ValueError, match="params"):
        tx.update({"w": jnp.ones(1)}, tx.init({"w": jnp.ones(1)}))


@pytest.mark.parametrize(
    "old, new, args",
    [("prox_l1", "proximal_l1", (0.1,)), ("prox_elastic_net", "proximal_elastic_net", (0.1, 0.2))],
)
def test_old_transform_names_warn_and_do_the_same(old, new, args):
    """The transforms were renamed (``prox_elastic_net`` also named jaxopt's operator in
    jaxreg.prox): the old names still work, with a DeprecationWarning naming the new one."""
    params = {"w": jnp.array([0.05, -0.5, 2.0])}
    grads = {"w": jnp.array([0.1, 0.2, -0.3])}
    with pytest.warns(DeprecationWarning, match=f"use jaxreg.{new}"):
        tx_old = getattr(jaxreg, old)(*args)
    tx_new = getattr(jaxreg, new)(*args)
    u_old, _ = tx_old.update(grads, tx_old.init(params), params)
    u_new, _ = tx_new.update(grads, tx_new.init(params), params)
    np.testing.assert_array_equal(u_old["w"], u_new["w"])
    assert not np.array_equal(u_new["w"], grads["w"])  # the step did something
