"""Gradient clipping against torch.nn.utils.clip_grad_norm_ / clip_grad_value_ themselves."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxreg import optim

SHAPES = [(4, 3), (3,), (), (2, 2, 2)]
# float64: the same operations in the same order, so round-off only; float32: torch sums
# in its own (vectorized, pairwise) order, so a few float32 ulps of the norm.
RTOL = {"float64": 1e-14, "float32": 4e-7}


def _grads(scale, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s) * scale for s in SHAPES]


def _torch_clip(grads, dtype, fn, *args, **kwargs):
    ps = [torch.zeros(g.shape, dtype=getattr(torch, dtype), requires_grad=True) for g in grads]
    for p, g in zip(ps, grads):
        p.grad = torch.tensor(g, dtype=getattr(torch, dtype))
    ret = fn(ps, *args, **kwargs)
    return [p.grad.numpy() for p in ps], (None if ret is None else float(ret))


def _jax_clip(tx, grads, dtype):
    g = [jnp.asarray(x, dtype) for x in grads]
    out, state = jax.jit(lambda g: tx.update(g, tx.init(g)))(g)
    return [np.asarray(x) for x in out], state


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf, 3.0, 0.5, 0.0])
@pytest.mark.parametrize("scale", [0.01, 1.0, 10.0])  # below, around and above max_norm
def test_clip_grad_norm_matches_torch(dtype, norm_type, scale):
    grads = _grads(scale)
    ref, ref_total = _torch_clip(
        grads, dtype, torch.nn.utils.clip_grad_norm_, 1.5, norm_type=norm_type
    )
    got, state = _jax_clip(optim.clip_grad_norm(1.5, norm_type=norm_type), grads, dtype)
    np.testing.assert_allclose(float(state.total_norm), ref_total, rtol=RTOL[dtype])
    for a, b in zip(got, ref):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=RTOL[dtype], atol=0)


def test_the_1e6_in_torchs_coefficient_is_kept():
    # total norm exactly max_norm: torch still scales by max_norm / (max_norm + 1e-6).
    grads = [np.array([3.0, 4.0])]
    ref, _ = _torch_clip(grads, "float64", torch.nn.utils.clip_grad_norm_, 5.0)
    got, _ = _jax_clip(optim.clip_grad_norm(5.0), grads, "float64")
    np.testing.assert_array_equal(got[0], ref[0])
    assert got[0][0] < 3.0  # optax.clip_by_global_norm would leave it at 3.0


@pytest.mark.parametrize(
    "bad", [[np.array([1.0, np.nan])], [np.array([1.0, np.inf])], [np.zeros(3)]]
)
def test_nonfinite_and_zero_gradients_behave_as_torch(bad):
    grads = [*bad, np.array([0.5, -2.0])]
    ref, ref_total = _torch_clip(grads, "float64", torch.nn.utils.clip_grad_norm_, 1.0)
    got, state = _jax_clip(optim.clip_grad_norm(1.0), grads, "float64")
    np.testing.assert_array_equal(float(state.total_norm), ref_total)
    for a, b in zip(got, ref):
        np.testing.assert_array_equal(a, b)  # NaN where torch has NaN, 0 where it has 0


def test_error_if_nonfinite_raises_eagerly_and_under_jit():
    grads = {"w": jnp.array([1.0, jnp.inf])}
    tx = optim.clip_grad_norm(1.0, error_if_nonfinite=True)
    with pytest.raises(RuntimeError, match="non-finite"):  # torch's own
        _torch_clip([np.array([1.0, np.inf])], "float64", torch.nn.utils.clip_grad_norm_, 1.0,
                    error_if_nonfinite=True)  # fmt: skip
    with pytest.raises(FloatingPointError, match="non-finite"):
        tx.update(grads, tx.init(grads))
    with pytest.raises(Exception, match="FloatingPointError"):
        jax.block_until_ready(jax.jit(lambda g: tx.update(g, tx.init(g)))(grads))
    finite = {"w": jnp.array([3.0, 4.0])}
    out, _ = jax.jit(lambda g: tx.update(g, tx.init(g)))(finite)
    np.testing.assert_allclose(out["w"], np.array([3.0, 4.0]) / (5.0 + 1e-6), rtol=1e-15)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_clip_grad_value_matches_torch(dtype):
    grads = _grads(2.0)
    grads[0][0, 0] = np.nan
    ref, _ = _torch_clip(grads, dtype, torch.nn.utils.clip_grad_value_, 0.7)
    got, _ = _jax_clip(optim.clip_grad_value(0.7), grads, dtype)
    for a, b in zip(got, ref):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def test_integer_leaves_pass_and_bad_arguments_raise():
    g = {"w": jnp.array([30.0, 40.0]), "n": jnp.array([7, 8])}
    out, _ = optim.clip_grad_norm(1.0).update(g, optim.clip_grad_norm(1.0).init(g))
    np.testing.assert_array_equal(out["n"], [7, 8])
    np.testing.assert_allclose(out["w"], np.array([30.0, 40.0]) / (50 + 1e-6), rtol=1e-15)
    for build in (
        lambda: optim.clip_grad_norm(-1.0),
        lambda: optim.clip_grad_norm(float("nan")),
        lambda: optim.clip_grad_norm(1.0, norm_type=float("nan")),
        lambda: optim.clip_grad_value(-0.5),
        lambda: optim.clip_grad_value("0.5"),
    ):
        with pytest.raises(ValueError):
            build()
