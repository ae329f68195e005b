"""Penalties against PyTorch autograd on the same float64 arrays (zeros included)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from helpers import F64_ATOL, assert_trees_close
from hypothesis import given, settings
from hypothesis import strategies as st
from trees import ALL_KINDS

import jaxreg

KINDS = list(ALL_KINDS)


def _torch_reference(tree, kind_l1: float, kind_l2: float):
    """Value and gradient of l1*Σ|p| + l2*Σp² by torch autograd, leaf by leaf (float leaves)."""
    leaves = jax.tree.leaves(tree)
    ts = [
        torch.tensor(np.asarray(x), dtype=torch.float64, requires_grad=True)
        if jnp.issubdtype(x.dtype, jnp.floating)
        else None
        for x in leaves
    ]
    params = [t for t in ts if t is not None]
    loss = kind_l1 * sum(p.abs().sum() for p in params) + kind_l2 * sum(
        p.pow(2).sum() for p in params
    )
    loss.backward()
    grads = [np.zeros(np.shape(x)) if t is None else t.grad.numpy() for x, t in zip(leaves, ts)]
    return loss.item(), grads


def _grad(fn, tree):
    return jax.tree.leaves(jax.grad(fn, allow_int=True)(tree))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "name,l1,l2",
    [("l1", 1.0, 0.0), ("l2", 0.0, 1.0), ("elastic", 0.3, 0.7)],
)
def test_value_and_grad_match_torch_autograd(kind, name, l1, l2):
    tree = ALL_KINDS[kind]()
    fn = {
        "l1": jaxreg.l1_penalty,
        "l2": jaxreg.l2_penalty,
        "elastic": lambda p: jaxreg.elastic_net_penalty(p, 0.3, 0.7),
    }[name]
    value = jax.jit(fn)(tree)
    grads = _grad(jax.jit(fn), tree)
    ref_value, ref_grads = _torch_reference(tree, l1, l2)
    assert value.dtype == jnp.float64
    np.testing.assert_allclose(float(value), ref_value, rtol=1e-14)
    for g, r in zip(grads, ref_grads):
        if g.dtype == jax.dtypes.float0:  # int leaves: no gradient at all
            continue
        np.testing.assert_allclose(np.asarray(g), r, rtol=0, atol=F64_ATOL)


def test_l1_gradient_at_zero_is_zero_like_torch():
    x = jnp.zeros(3, jnp.float64)
    assert jax.grad(lambda p: jnp.abs(p).sum())(x).tolist() == [1.0, 1.0, 1.0]  # the pitfall
    assert jax.grad(jaxreg.l1_penalty)(x).tolist() == [0.0, 0.0, 0.0]
    t = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    t.abs().sum().backward()
    assert t.grad.tolist() == [0.0, 0.0, 0.0]


def test_linen_and_nnx_give_same_values_and_paths():
    lin, st = ALL_KINDS["linen"](), ALL_KINDS["nnx"]()
    assert float(jaxreg.l2_penalty(lin)) == float(jaxreg.l2_penalty(st))
    m = jaxreg.masks.exclude_names("bias")
    assert jaxreg.masks.selected_paths(m, lin) == jaxreg.masks.selected_paths(m, st)
    assert float(jaxreg.l1_penalty(lin, m)) == float(jaxreg.l1_penalty(st, m))


def test_nnx_grad_through_module():
    """With nnx.grad on a module, the penalty's gradient is 2w / sign(w) per Param."""
    state = ALL_KINDS["nnx"]()
    g = jax.grad(jaxreg.l2_penalty)(state)
    assert isinstance(g, nnx.State)
    assert_trees_close(g, jax.tree.map(lambda w: 2 * w, state))


def test_masked_penalty_skips_leaves():
    tree = ALL_KINDS["linen"]()
    mask = {"dense": {"kernel": True, "bias": False}, "norm": False}
    expected = float(np.sum(np.asarray(tree["dense"]["kernel"]) ** 2))
    assert float(jaxreg.l2_penalty(tree, mask)) == pytest.approx(expected, rel=1e-15)
    g = jax.grad(jaxreg.l2_penalty)(tree, mask)
    assert not np.any(np.asarray(g["dense"]["bias"]))
    assert not np.any(np.asarray(g["norm"]["scale"]))


def test_non_float_leaves_are_never_penalized():
    tree = {
        "w": jnp.array([1.0, -2.0]),
        "count": jnp.array(5, jnp.int32),
        "flag": jnp.array(True),
        "key": jax.random.key(0),
    }
    assert float(jaxreg.l1_penalty(tree)) == 3.0
    assert float(jaxreg.l2_penalty(tree, mask=True)) == 5.0


@pytest.mark.parametrize(
    "dtype,expected",
    [
        (jnp.bfloat16, jnp.float32),
        (jnp.float16, jnp.float32),
        (jnp.float32, jnp.float32),
        (jnp.float64, jnp.float64),
    ],
)
def test_result_dtype_accumulates_in_at_least_float32(dtype, expected):
    # 300 copies of 0.1 in bf16 summed in bf16 would be far off; in float32 it is exact-ish.
    x = jnp.full((3000,), 0.1, dtype)
    out = jaxreg.l1_penalty({"w": x})
    assert out.dtype == expected
    ref = 3000 * float(jnp.asarray(0.1, dtype))
    assert float(out) == pytest.approx(ref, rel=1e-6)
    g = jax.grad(jaxreg.l2_penalty)({"w": x})["w"]
    assert g.dtype == dtype


def test_mixed_dtypes_promote():
    tree = {"a": jnp.ones(2, jnp.bfloat16), "b": jnp.ones(2, jnp.float64)}
    assert jaxreg.l2_penalty(tree).dtype == jnp.float64
    assert jaxreg.l2_penalty({}).dtype == jnp.float32
    assert float(jaxreg.l2_penalty({})) == 0.0


def test_vmap_over_a_batch_of_parameter_trees():
    batch = {"w": jnp.arange(12.0).reshape(3, 4) - 5.0}
    out = jax.vmap(jaxreg.l1_penalty)(batch)
    np.testing.assert_array_equal(np.asarray(out), np.abs(np.asarray(batch["w"])).sum(1))


def test_regularized_adds_penalty_and_keeps_aux():
    def loss(params, x):
        pred = x @ params["w"]
        return jnp.mean(pred**2), {"pred": pred}

    params = {"w": jnp.array([1.0, -2.0, 0.0])}
    x = jnp.array([[1.0, 2.0, 3.0]])
    reg = jaxreg.regularized(loss, l1=0.1, l2=0.01)
    (val, aux), g = jax.value_and_grad(reg, has_aux=True)(params, x)
    base = 9.0
    assert float(val) == pytest.approx(base + 0.1 * 3.0 + 0.01 * 5.0, rel=1e-15)
    assert aux["pred"].shape == (1,)
    # torch reference for the same expression, gradient included.
    tw = torch.tensor([1.0, -2.0, 0.0], dtype=torch.float64, requires_grad=True)
    tx = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    tl = (tx @ tw).pow(2).mean() + 0.1 * tw.abs().sum() + 0.01 * tw.pow(2).sum()
    tl.backward()
    np.testing.assert_allclose(np.asarray(g["w"]), tw.grad.numpy(), atol=F64_ATOL, rtol=0)


def test_regularized_argnum():
    loss = lambda x, params: jnp.sum(x) * 0.0 + 1.0
    reg = jaxreg.regularized(loss, l2=2.0, argnum=1)
    assert float(reg(jnp.ones(2), {"w": jnp.array([3.0])})) == 19.0
    with pytest.raises(ValueError, match="argnum=1"):
        reg(jnp.ones(2))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"l1": -1.0}, "l1 must be non-negative"),
        ({"l2": float("nan")}, "l2 must be finite"),
        ({"l2": float("inf")}, "l2 must be finite"),
        ({"l1": jnp.ones(2)}, "l1 must be a non-negative float"),
        ({"argnum": "params"}, "argnum must be an int"),
    ],
)
def test_regularized_rejects_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        jaxreg.regularized(lambda p: 0.0, **kwargs)


def test_elastic_net_rejects_bad_weights():
    with pytest.raises(ValueError, match="l1 must be non-negative"):
        jaxreg.elastic_net_penalty({"w": jnp.ones(1)}, -0.1, 0.0)
    with pytest.raises(ValueError, match="l2 must be finite"):
        jaxreg.elastic_net_penalty({"w": jnp.ones(1)}, 0.0, float("nan"))


# --- property-based: random pytrees, masks and dtypes -------------------------------------

_DTYPES = [np.float32, np.float64, np.float16, np.int32]


@st.composite
def random_trees(draw):
    """A random nested dict/list tree of arrays (some with zeros, some integer) and a bool mask."""
    n = draw(st.integers(1, 5))
    tree, mask = {}, {}
    for i in range(n):
        shape = tuple(draw(st.lists(st.integers(1, 3), max_size=3)))
        dtype = draw(st.sampled_from(_DTYPES))
        seed = draw(st.integers(0, 2**16))
        arr = np.random.default_rng(seed).normal(size=shape)
        arr[np.random.default_rng(seed + 1).random(shape) < 0.3] = 0.0
        leaf = jnp.asarray(arr.astype(dtype))
        if draw(st.booleans()):
            tree[f"n{i}"] = [leaf, {"inner": leaf}]
            mask[f"n{i}"] = (
                draw(st.booleans())
                if draw(st.booleans())
                else [
                    draw(st.booleans()),
                    {"inner": draw(st.booleans())},
                ]
            )
        else:
            tree[f"n{i}"] = leaf
            mask[f"n{i}"] = draw(st.booleans())
    return tree, mask


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(random_trees())
def test_property_penalties_match_numpy_over_selected_float_leaves(tm):
    tree, mask = tm
    selected = jaxreg.masks.resolve(mask, tree)
    leaves = jax.tree.leaves(tree)
    ref_l1 = ref_l2 = 0.0
    for x, s in zip(leaves, selected):
        if s:
            v = np.asarray(x, np.float64)
            ref_l1 += np.abs(v).sum()
            ref_l2 += (v * v).sum()
    # float16/float32 leaves accumulate in float32: relative error ~1e-6 at most here.
    np.testing.assert_allclose(float(jaxreg.l1_penalty(tree, mask)), ref_l1, rtol=1e-5)
    np.testing.assert_allclose(float(jaxreg.l2_penalty(tree, mask)), ref_l2, rtol=1e-5)
    g = jax.tree.leaves(jax.grad(jaxreg.l1_penalty, allow_int=True)(tree, mask))
    for x, s, gx in zip(leaves, selected, g):
        if gx.dtype == jax.dtypes.float0:
            assert not jnp.issubdtype(x.dtype, jnp.floating)
            continue
        expected = np.sign(np.asarray(x, np.float64)) if s else np.zeros(x.shape)
        np.testing.assert_array_equal(np.asarray(gx, np.float64), expected)


def test_an_nnx_module_is_refused_where_params_are_expected():
    # A module's pytree holds its BatchNorm statistics too: they would be penalized/decayed.
    from flax import nnx

    model = nnx.Sequential(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.BatchNorm(3, rngs=nnx.Rngs(0)))
    hint = r"nnx.Module \(Sequential\).*nnx.state\(model, nnx.Param\)"
    with pytest.raises(ValueError, match=hint):
        jaxreg.l2_penalty(model)
    with pytest.raises(ValueError, match=hint):
        jaxreg.add_weight_decay(0.1).update(model, (), model)
    with pytest.raises(ValueError, match=hint):
        jaxreg.optim.adam(0.1).init(model)
    with pytest.raises(ValueError, match=r"nnx.Module at net"):
        jaxreg.optim.adamw(0.1).init({"net": model})
    params = nnx.state(model, nnx.Param)  # what to pass: the parameters only
    expected = sum(float(jnp.sum(x**2)) for x in jax.tree.leaves(params))
    np.testing.assert_allclose(float(jaxreg.l2_penalty(params)), expected, rtol=1e-12)
