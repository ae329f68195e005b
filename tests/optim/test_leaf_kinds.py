"""jaxreg.optim on parameter trees torch would not optimize: integer leaves, empty trees,
complex leaves. Each case once wiped a leaf, crashed, or computed something torch does not."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import jaxreg
from jaxreg import flat, optim

ALL = [
    "sgd", "adam", "adamw", "rmsprop", "adagrad", "adadelta", "adamax", "nadam", "radam",
    "asgd", "adafactor",
]  # fmt: skip
KW = {"sgd": {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.1}}


def _make(name):
    return getattr(optim, name)(**KW.get(name, {"lr": 1e-2}))


def _steps(tx, params, grads, n=3):
    state = tx.init(params)
    for _ in range(n):
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params


@pytest.mark.parametrize("name", ALL)
def test_integer_leaf_is_left_alone(name):
    # Reference: the integer leaf keeps its value (torch never optimizes an int tensor) and
    # the float leaf moves exactly as it does in a tree without the integer leaf.
    w = jnp.linspace(-1.0, 1.0, 6).reshape(2, 3)
    gw = jnp.full((2, 3), 0.3)
    n = jnp.arange(1, 5)
    got = _steps(_make(name), {"w": w, "n": n}, {"w": gw, "n": jnp.zeros(4, n.dtype)})
    ref = _steps(_make(name), {"w": w}, {"w": gw})
    np.testing.assert_array_equal(got["n"], [1, 2, 3, 4])
    assert got["n"].dtype == n.dtype
    np.testing.assert_array_equal(got["w"], ref["w"])


@pytest.mark.parametrize("name", ["adamw", "adagrad", "asgd"])
def test_integer_group_of_flat_params_is_left_alone(name):
    params = {"w": jnp.linspace(-1.0, 1.0, 5), "n": jnp.arange(1, 5)}
    fp = flat.ravel(params)
    grads = jax.tree.map(lambda b: jnp.full_like(b, 0.5 if b.dtype.kind == "f" else 0), fp)
    out = _steps(_make(name), fp, grads).unravel()
    np.testing.assert_array_equal(out["n"], [1, 2, 3, 4])
    ref = _steps(_make(name), {"w": params["w"]}, {"w": jnp.full(5, 0.5)})
    np.testing.assert_array_equal(out["w"], ref["w"])


@pytest.mark.parametrize("name", [*ALL, "muon"])
def test_empty_tree_is_a_no_op(name):
    tx = getattr(optim, name)()
    state = tx.init({})
    updates, _ = tx.update({}, state, {})
    assert updates == {}


def test_unused_label_of_multi_transform_and_skip_unused_with_nothing_used():
    params = {"a": jnp.ones(3), "b": jnp.ones(2)}
    grads = {"a": jnp.full(3, 0.5), "b": jnp.full(2, 0.5)}
    # "c" labels no leaf: its optimizer sees an empty tree (stock optax.adamw works there).
    tx = optax.multi_transform(
        {"a": optim.adamw(0.1), "b": optim.sgd(0.1), "c": optim.adam(0.1)}, {"a": "a", "b": "b"}
    )
    out = _steps(tx, params, grads, n=1)
    np.testing.assert_allclose(out["b"], 1 - 0.1 * 0.5)
    # skip_unused with no used leaf: nothing moves.
    tx = jaxreg.skip_unused(optim.adamw(0.1), {"a": False, "b": False})
    out = _steps(tx, params, grads, n=2)
    np.testing.assert_array_equal(out["a"], params["a"])
    np.testing.assert_array_equal(out["b"], params["b"])


@pytest.mark.parametrize("name", ALL)
def test_complex_leaf_raises_naming_it(name):
    params = {"layer": {"z": jnp.ones(3, jnp.complex128)}, "w": jnp.ones(3)}
    tx = _make(name)
    with pytest.raises(ValueError, match=r"complex parameters \(layer/z\).*view_as_real"):
        tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)


@pytest.mark.slow
def test_complex_as_real_pair_matches_torch_complex():
    # The workaround the error names is exact: torch's Adam on a complex tensor equals
    # jaxreg's adam on its (..., 2) real view.
    z0 = np.array([1.0 + 2.0j, -0.5 + 0.25j, 3.0 - 1.0j])
    gs = [np.array([0.1 - 0.3j, 0.2 + 0.0j, -1.0 + 0.5j]) * (k + 1) for k in range(4)]
    tp = torch.tensor(z0, dtype=torch.complex128, requires_grad=True)
    opt = torch.optim.Adam([tp], lr=0.1, weight_decay=0.05)
    for g in gs:
        tp.grad = torch.tensor(g, dtype=torch.complex128)
        opt.step()
    ref = torch.view_as_real(tp.detach()).numpy()

    def real(x):
        return jnp.stack([jnp.real(x), jnp.imag(x)], -1)

    tx = optim.adam(lr=0.1, weight_decay=0.05)
    p = real(jnp.asarray(z0))
    state = tx.init(p)
    for g in gs:
        u, state = tx.update(real(jnp.asarray(g)), state, p)
        p = optax.apply_updates(p, u)
    np.testing.assert_allclose(p, ref, rtol=1e-13, atol=0)
