"""jaxopt-compatible proximal operators and the proximal/FISTA transform.

References (never jaxopt itself):
* each operator is the *minimizer* of its stated objective
  ½‖x − y‖² + scaling·g(y): checked against a closed form where one exists and
  against scipy's numerical minimizer of the objective (the operator's value must be
  at least as low, and equal to scipy's point to 1e-6, scipy's own accuracy);
* as solvers, chained after ``optax.sgd``: scikit-learn's ``Lasso`` (also
  ``positive=True``), ``ElasticNet``, ``MultiTaskLasso`` (group lasso over rows),
  ``Ridge``, and scipy's ``nnls`` (non-negative ridge, projection onto the
  non-negative orthant) and ``lsq_linear`` (box projection), on scikit-learn's bundled
  diabetes and Linnerud data. Tolerance 1e-7 (absolute; coefficients are ~1-40) on the
  coefficients: both sides are iterative solvers (sklearn ``tol=1e-12``; ours a fixed
  number of FISTA steps), so the difference is convergence, measured at ≤ 2e-10
  (Lasso α=0.5) and ≤ 1.3e-11 everywhere else; a wrong convention (a missing ½, λ vs
  γ) shows at ≥ 1e-2.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import optimize
from sklearn import datasets, linear_model

import jaxreg
from jaxreg import prox as P

RNG = np.random.default_rng(0)
COEF_TOL = 1e-7


# ----------------------------------------------------------------- operators = argmin


def _objective(g, x, s):
    return lambda y: 0.5 * np.sum((x - y) ** 2) + s * g(y)


CASES = {
    "lasso": (lambda x, s: P.prox_lasso(x, 0.7, s), lambda y: 0.7 * np.sum(np.abs(y))),
    "non_negative_lasso": (
        lambda x, s: P.prox_non_negative_lasso(x, 0.7, s),
        lambda y: 0.7 * np.sum(np.abs(y)),
    ),
    "elastic_net": (
        lambda x, s: P.prox_elastic_net(x, (0.7, 0.4), s),
        lambda y: 0.7 * (np.sum(np.abs(y)) + 0.4 / 2 * np.sum(y**2)),
    ),
    "group_lasso": (lambda x, s: P.prox_group_lasso(x, 0.7, s), lambda y: 0.7 * np.linalg.norm(y)),
    "ridge": (lambda x, s: P.prox_ridge(x, 0.7, s), lambda y: 0.7 / 2 * np.sum(y**2)),
    "non_negative_ridge": (
        lambda x, s: P.prox_non_negative_ridge(x, 0.7, s),
        lambda y: 0.7 / 2 * np.sum(y**2),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("scaling", [0.3, 1.0, 2.5])
def test_operator_is_the_minimizer_of_its_stated_objective(name, scaling):
    op, g = CASES[name]
    x = RNG.normal(size=6) * 1.5
    ours = np.asarray(op(jnp.asarray(x), scaling))
    f = _objective(g, x, scaling)
    nonneg = name.startswith("non_negative")  # the indicator of y >= 0: scipy's bounds
    bounds = [(0, None)] * 6 if nonneg else None
    start = np.maximum(x, 0) if nonneg else x
    res = optimize.minimize(
        f, start, method="Powell", bounds=bounds, options={"xtol": 1e-12, "ftol": 1e-15}
    )
    assert f(ours) <= res.fun + 1e-12
    np.testing.assert_allclose(ours, res.x, atol=1e-6)
    for _ in range(20):  # and no nearby (feasible) point is lower
        near = ours + 1e-4 * RNG.normal(size=6)
        assert f(ours) <= f(np.maximum(near, 0) if nonneg else near) + 1e-15


def test_closed_forms_and_jaxopt_conventions():
    x = jnp.array([-2.0, 0.3, 1.0, 4.0])
    np.testing.assert_allclose(P.prox_lasso(x, 0.5, 2.0), [-1.0, 0.0, 0.0, 3.0])
    np.testing.assert_allclose(P.prox_non_negative_lasso(x, 0.5, 2.0), [0.0, 0.0, 0.0, 3.0])
    # (λ, γ) = (0.5, 2): soft(x, s·λ) / (1 + s·λ·γ)
    np.testing.assert_allclose(P.prox_elastic_net(x, (0.5, 2.0), 2.0), [-1 / 3, 0, 0, 1.0])
    # ridge has the ½: x / (1 + s·λ)
    np.testing.assert_allclose(P.prox_ridge(x, 0.5, 2.0), x / 2.0)
    np.testing.assert_allclose(P.prox_non_negative_ridge(x, 0.5, 2.0), [0, 0.15, 0.5, 2.0])
    n = float(jnp.linalg.norm(x))
    np.testing.assert_allclose(P.prox_group_lasso(x, 0.5, 2.0), (1 - 1.0 / n) * x, rtol=1e-15)
    np.testing.assert_allclose(P.prox_group_lasso(x, 10.0, 1.0), 0.0)
    assert P.prox_none(x, 3.0, 9.0) is x
    # a pytree is one group; coordinate-wise l1 weights as a pytree
    tree = {"a": jnp.array([3.0]), "b": jnp.array([4.0])}
    out = P.prox_group_lasso(tree, 1.0)
    np.testing.assert_allclose([out["a"][0], out["b"][0]], [3 * 0.8, 4 * 0.8])
    out = P.prox_lasso(tree, {"a": 1.0, "b": 3.5})
    np.testing.assert_allclose([out["a"][0], out["b"][0]], [2.0, 0.5])
    # defaults as in jaxopt: l1reg 1, (1, 1), l2reg 1
    np.testing.assert_allclose(P.prox_lasso(x), P.prox_lasso(x, 1.0, 1.0))
    np.testing.assert_allclose(P.prox_elastic_net(x), P.prox_elastic_net(x, (1.0, 1.0)))
    # a jnp scalar hyperparameter is a scalar (jaxopt's elastic net took it for a pytree)
    np.testing.assert_allclose(
        P.prox_elastic_net(x, (jnp.float64(0.5), jnp.float64(2.0)), 2.0), [-1 / 3, 0, 0, 1.0]
    )


def test_group_lasso_gradient_is_finite_at_zero():
    g = jax.grad(lambda x: jnp.sum(P.prox_group_lasso(x, 0.5)))(jnp.zeros(3))
    assert np.all(np.isfinite(np.asarray(g)))


def test_operator_errors():
    x = jnp.ones(3)
    with pytest.raises(ValueError, match="non-negative"):
        P.prox_lasso(x, -1.0)
    with pytest.raises(ValueError, match="finite"):
        P.prox_ridge(x, float("inf"))
    with pytest.raises(ValueError, match="non-negative"):
        P.prox_elastic_net(x, (0.1, -2.0))
    with pytest.raises(ValueError, match="scalar or a pytree like x"):
        P.prox_lasso({"a": x}, {"b": 1.0})
    with pytest.raises(ValueError, match="callable"):
        P.make_prox_from_projection(3)
    with pytest.raises(ValueError, match="callable prox"):
        jaxreg.proximal("lasso")
    with pytest.raises(ValueError, match="non-negative"):
        jaxreg.proximal(P.prox_lasso, 1.0, scaling=-0.1)


# ---------------------------------------------------------------- solvers vs sklearn


def _diabetes():
    X, y = datasets.load_diabetes(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    return X, y - y.mean()


def _solve(X, Y, prox, hp, *, steps, accelerate=True, w0=None):
    """Minimise 1/(2n)‖Y − XW‖² + g(W) with (F)ISTA: sgd(1/L) then the prox."""
    n = X.shape[0]
    lr = 1.0 / (np.linalg.norm(X, 2) ** 2 / n)
    tx = optax.chain(optax.sgd(lr), jaxreg.proximal(prox, hp, scaling=lr, accelerate=accelerate))
    Xj, Yj = jnp.asarray(X), jnp.asarray(Y)
    w = {"w": jnp.zeros((X.shape[1],) + Y.shape[1:]) if w0 is None else w0}
    loss = lambda p: jnp.sum((Yj - Xj @ p["w"]) ** 2) / (2 * n)  # noqa: E731

    def step(carry, _):
        p, s = carry
        u, s = tx.update(jax.grad(loss)(p), s, p)
        return (optax.apply_updates(p, u), s), None

    (p, s), _ = jax.lax.scan(step, (w, tx.init(w)), None, length=steps)
    if accelerate:
        return np.asarray(optax.tree_utils.tree_get(s, "iterate")["w"])
    return np.asarray(p["w"])


def test_lasso_and_non_negative_lasso_equal_sklearn():
    X, y = _diabetes()
    for alpha, positive in [(0.5, False), (3.0, False), (0.5, True)]:
        ref = linear_model.Lasso(
            alpha=alpha, fit_intercept=False, positive=positive, tol=1e-12, max_iter=100_000
        ).fit(X, y)
        op = P.prox_non_negative_lasso if positive else P.prox_lasso
        ours = _solve(X, y, op, alpha, steps=20_000)
        np.testing.assert_allclose(ours, ref.coef_, atol=COEF_TOL, rtol=0)
        assert np.sum(ours == 0.0) == np.sum(ref.coef_ == 0.0) > 0  # exact zeros, as sklearn


def test_elastic_net_equals_sklearn():
    X, y = _diabetes()
    alpha, rho = 1.0, 0.3
    ref = linear_model.ElasticNet(
        alpha=alpha, l1_ratio=rho, fit_intercept=False, tol=1e-12, max_iter=100_000
    ).fit(X, y)
    ours = _solve(X, y, P.prox_elastic_net, (alpha * rho, (1 - rho) / rho), steps=20_000)
    np.testing.assert_allclose(ours, ref.coef_, atol=COEF_TOL, rtol=0)


def test_group_lasso_over_rows_equals_multitask_lasso():
    X, Y = datasets.load_linnerud(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    Y = Y - Y.mean(0)
    rows = jax.vmap(P.prox_group_lasso, in_axes=(0, None, None))
    for alpha in (2.0, 8.0):
        ref = linear_model.MultiTaskLasso(
            alpha=alpha, fit_intercept=False, tol=1e-12, max_iter=100_000
        ).fit(X, Y)
        ours = _solve(X, Y, rows, alpha, steps=20_000)
        np.testing.assert_allclose(ours, ref.coef_.T, atol=COEF_TOL, rtol=0)
    assert np.any(np.all(ours == 0.0, axis=1))  # alpha=8 removes a whole feature (row)


def test_ridge_and_non_negative_ridge():
    X, y = _diabetes()
    n, alpha = X.shape[0], 50.0
    # sklearn Ridge: ‖y − Xw‖² + α‖w‖² = 2n·(f + ½(α/n)‖w‖²): prox_ridge with l2reg = α/n
    ref = linear_model.Ridge(alpha=alpha, fit_intercept=False, tol=1e-14).fit(X, y)
    ours = _solve(X, y, P.prox_ridge, alpha / n, steps=5_000)
    np.testing.assert_allclose(ours, ref.coef_, atol=COEF_TOL, rtol=0)
    # non-negative: nnls on the augmented system [X; √α I] w ≈ [y; 0]
    A = np.vstack([X, np.sqrt(alpha) * np.eye(X.shape[1])])
    ref_nn, _ = optimize.nnls(A, np.concatenate([y, np.zeros(X.shape[1])]))
    ours_nn = _solve(X, y, P.prox_non_negative_ridge, alpha / n, steps=5_000)
    np.testing.assert_allclose(ours_nn, ref_nn, atol=COEF_TOL, rtol=0)
    assert np.sum(ours_nn == 0) == np.sum(ref_nn == 0) > 0


def test_prox_from_projection_equals_constrained_least_squares():
    X, y = _diabetes()
    nonneg = P.make_prox_from_projection(lambda x, _: optax.projections.projection_non_negative(x))
    ref, _ = optimize.nnls(X, y)
    np.testing.assert_allclose(_solve(X, y, nonneg, None, steps=20_000), ref, atol=COEF_TOL)
    box = P.make_prox_from_projection(lambda x, hp: optax.projections.projection_box(x, *hp))
    ref_box = optimize.lsq_linear(X, y, bounds=(-5.0, 5.0), tol=1e-14).x
    ours = _solve(X, y, box, (-5.0, 5.0), steps=20_000)
    np.testing.assert_allclose(ours, ref_box, atol=COEF_TOL)
    assert np.isclose(np.max(np.abs(ours)), 5.0)  # a bound is active


# ------------------------------------------------------------------- transform details


def test_fista_recursion_by_hand_and_faster_than_ista():
    X, y = _diabetes()
    n = X.shape[0]
    lr = 1.0 / (np.linalg.norm(X, 2) ** 2 / n)
    grad = lambda w: -X.T @ (y - X @ w) / n  # noqa: E731
    soft = lambda v, t: np.sign(v) * np.maximum(np.abs(v) - t, 0)  # noqa: E731
    x_prev, yk, t = np.zeros(10), np.zeros(10), 1.0
    for _ in range(7):  # Beck & Teboulle's FISTA, written out
        x_new = soft(yk - lr * grad(yk), lr * 0.5)
        t_next = (1 + np.sqrt(1 + 4 * t * t)) / 2
        yk = x_new + (t - 1) / t_next * (x_new - x_prev)
        x_prev, t = x_new, t_next
    np.testing.assert_allclose(_solve(X, y, P.prox_lasso, 0.5, steps=7), x_prev, rtol=1e-13)
    ref = linear_model.Lasso(alpha=0.5, fit_intercept=False, tol=1e-12, max_iter=100_000).fit(X, y)
    err = lambda w: np.max(np.abs(w - ref.coef_))  # noqa: E731
    fista = err(_solve(X, y, P.prox_lasso, 0.5, steps=300))
    ista = err(_solve(X, y, P.prox_lasso, 0.5, steps=300, accelerate=False))
    assert fista < ista / 10


def test_proximal_equals_prox_l1_and_honours_mask_multipliers():
    p = {"a": jnp.array([2.0, -0.3, 1.0]), "b": jnp.array([2.0, -0.3, 1.0]), "n": jnp.arange(2)}
    g = {"a": jnp.array([0.5, 0.1, -0.2]), "b": jnp.array([0.5, 0.1, -0.2]), "n": jnp.zeros(2, int)}
    m = jaxreg.masks.multipliers((jaxreg.masks.glob("b"), 3.0), default=1.0)
    tx = optax.chain(optax.sgd(0.1), jaxreg.proximal(P.prox_lasso, 2.0, scaling=0.1, mask=m))
    u, _ = tx.update(g, tx.init(p), p)
    new = optax.apply_updates(p, u)
    base = {k: np.asarray(p[k] - 0.1 * g[k]) for k in ("a", "b")}
    np.testing.assert_allclose(new["a"], np.asarray(P.prox_lasso(base["a"], 0.2)), rtol=1e-15)
    np.testing.assert_allclose(new["b"], np.asarray(P.prox_lasso(base["b"], 0.6)), rtol=1e-15)
    np.testing.assert_array_equal(new["n"], p["n"])
    tx_l1 = optax.chain(optax.sgd(0.1), jaxreg.proximal_l1(0.2, mask=jaxreg.masks.glob("a")))
    u1, _ = tx_l1.update(g, tx_l1.init(p), p)
    np.testing.assert_array_equal(optax.apply_updates(p, u1)["a"], new["a"])


def test_proximal_under_jit_with_a_schedule():
    sched = optax.linear_schedule(0.2, 0.0, 4)
    tx = jaxreg.proximal(P.prox_lasso, 1.0, scaling=sched)
    p = {"w": jnp.array([1.0, -1.0])}
    s = tx.init(p)
    step = jax.jit(tx.update)
    for k in range(3):
        u, s = step({"w": jnp.zeros(2)}, s, p)
        want = np.asarray(P.prox_lasso(p["w"], float(sched(k))))
        p = optax.apply_updates(p, u)
        np.testing.assert_allclose(p["w"], want, rtol=1e-15)
    with pytest.raises(ValueError, match="needs the params"):
        tx.update({"w": jnp.zeros(2)}, s)
