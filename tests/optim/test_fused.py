"""fused_sgd / fused_adamw: one-pass CPU steps against torch's own ``fused=True`` kernels.

Reference: ``torch.optim.SGD(..., fused=True)`` and ``AdamW(..., fused=True)`` on CPU,
driven by the same gradients (fixed random float64 gradients with exact zeros, 30 steps,
leaves of several shapes including a 0-d one and one of 40,000 elements so the kernel's
chunking across leaves is exercised).

Tolerances, as for the other optimizers (tests/optim/test_optim_parity.py): float64
max |Δp| / max |p| ≤ 1e-12 (same arithmetic, round-off only); float32 within
F32_NOISE_FACTOR × torch's own float32 error (torch-f32 vs torch-f64) on the same case.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from helpers import float32_mode, random_grads, rel_err, run_jax_steps, torch_trajectory

from jaxreg import masks, optim
from jaxreg.optim import _fused
from parity.tolerances import F32_NOISE_FACTOR, F64_SAME
from parity.trajectories import params0

F64_REL = F64_SAME
STEPS = 30
SHAPES = [(5, 4), (40_000,), (), (3, 2, 2), (17,)]

SGD = [
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.1, momentum=0.9, weight_decay=0.05),
    dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.01),
    dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    dict(lr=0.05, momentum=0.9, weight_decay=0.01, maximize=True),
]
ADAMW = [
    dict(lr=1e-2),
    dict(lr=1e-2, weight_decay=0.1),
    dict(lr=3e-3, betas=(0.5, 0.9), eps=1e-6, weight_decay=0.05),
    dict(lr=1e-2, betas=(0.95, 0.99), weight_decay=0.2, maximize=True),
]
POINTS = [("sgd", kw) for kw in SGD] + [("adamw", kw) for kw in ADAMW]
IDS = [f"{n}-" + ",".join(f"{k}={v}" for k, v in kw.items()) for n, kw in POINTS]


def _torch(name, kw, dtype):
    cls = torch.optim.SGD if name == "sgd" else torch.optim.AdamW
    p0, grads = params0(SHAPES), random_grads(SHAPES, STEPS)
    out, _ = torch_trajectory(lambda ps: cls(ps, fused=True, **kw), p0, grads, dtype=dtype)
    return out


def _fused_run(name, kw, dtype, steps=STEPS, donate=True):
    opt = (optim.fused_sgd if name == "sgd" else optim.fused_adamw)(**kw)
    p = [jnp.asarray(x, dtype) for x in params0(SHAPES)]
    grads = random_grads(SHAPES, STEPS)[:steps]
    s = opt.init(p)
    step = jax.jit(opt.step, donate_argnums=(0, 2) if donate else ())
    for g in grads:
        p, s = step(p, [jnp.asarray(x, dtype) for x in g], s)
    return [np.asarray(x) for x in p], s, opt


@pytest.mark.parametrize("name,kw", POINTS, ids=IDS)
def test_float64_equals_torch_fused(name, kw):
    out, _, _ = _fused_run(name, kw, "float64")
    err = rel_err(out, _torch(name, kw, "float64"))
    assert err <= F64_REL, f"float64 relative deviation {err:.3g}"
    assert all(o.dtype == np.float64 for o in out)


@pytest.mark.slow
@pytest.mark.parametrize("name,kw", POINTS, ids=IDS)
def test_float32_within_float32_noise_of_torch_fused(name, kw):
    ref64, ref32 = _torch(name, kw, "float64"), _torch(name, kw, "float32")
    with float32_mode():
        out, _, _ = _fused_run(name, kw, "float32")
    assert all(o.dtype == np.float32 for o in out)
    noise = rel_err(ref32, ref64)
    err = rel_err(out, ref32)
    assert err <= F32_NOISE_FACTOR * noise, f"{err:.3g} vs torch's own f32 noise {noise:.3g}"


@pytest.mark.parametrize("name,kw", [POINTS[1], POINTS[6]], ids=[IDS[1], IDS[6]])
def test_state_is_the_unfused_optimizers(name, kw):
    """10 fused steps, then 10 unfused ones on the same state == 20 unfused steps."""
    p_f, s_f, opt = _fused_run(name, kw, "float64", steps=10)
    grads = random_grads(SHAPES, STEPS)
    p, s = [jnp.asarray(x) for x in p_f], s_f
    p_ref = [jnp.asarray(x) for x in params0(SHAPES)]
    s_ref = opt.tx.init(p_ref)
    for i, g in enumerate(grads[:20]):
        g = [jnp.asarray(x) for x in g]
        u, s_ref = opt.tx.update(g, s_ref, p_ref)
        p_ref = optax.apply_updates(p_ref, u)
        if i >= 10:
            u, s = opt.tx.update(g, s, p)
            p = optax.apply_updates(p, u)
    assert jax.tree.structure(s) == jax.tree.structure(s_ref)
    assert rel_err(p, p_ref) <= F64_REL


def test_multipliers_mixed_dtypes_non_float_leaves_and_schedules():
    """Per-leaf decay multipliers, float32 and float64 leaves in one tree (one call per
    dtype), an integer leaf (given the unfused update), a scheduled lr: == unfused. The
    float32 leaf is held to float32 noise: its error against the same run in float64 is
    at most F32_NOISE_FACTOR x the unfused float32 run's."""
    rng = np.random.default_rng(3)
    params = {
        "k": jnp.asarray(rng.normal(size=(30, 20))),
        "b": jnp.asarray(rng.normal(size=20)),
        "h": jnp.asarray(rng.normal(size=(20, 3)), jnp.float32),
        "n": jnp.arange(3),
    }
    grads = []
    for _ in range(8):
        g = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), params)
        grads.append({**g, "n": jnp.zeros(3, int)})
    m = masks.multipliers((masks.glob("h"), 0.25), (masks.min_ndim(2), 1.0))
    lr = optax.cosine_decay_schedule(0.05, 10)
    for make in (
        lambda: optim.fused_sgd(lr, momentum=0.9, weight_decay=0.1, weight_decay_mask=m),
        lambda: optim.fused_adamw(lr, weight_decay=0.1, weight_decay_mask=m),
    ):
        opt = make()
        unfused = functools.partial(run_jax_steps, opt.tx)
        p1, s1 = params, opt.init(params)
        step = jax.jit(opt.step)
        for g in grads:
            p1, s1 = step(p1, g, s1)
        p2 = unfused(params, grads)
        as64 = lambda t: {**t, "h": t["h"].astype(jnp.float64)}  # noqa: E731
        p64 = unfused(as64(params), [as64(g) for g in grads])
        for k in ("k", "b"):
            np.testing.assert_allclose(p1[k], p2[k], rtol=1e-13, atol=1e-15, err_msg=k)
        noise = rel_err([p2["h"]], [p64["h"]])
        assert rel_err([p1["h"]], [p64["h"]]) <= F32_NOISE_FACTOR * noise
        np.testing.assert_array_equal(p1["n"], p2["n"])  # what the unfused step does
        assert p1["h"].dtype == jnp.float32 and p1["k"].dtype == jnp.float64


@pytest.mark.slow
def test_many_small_leaves_and_no_donation():
    rng = np.random.default_rng(4)
    params = [jnp.asarray(rng.normal(size=(int(n),))) for n in rng.integers(1, 3000, 120)]
    grads = [jnp.asarray(rng.normal(size=x.shape)) for x in params]
    before = [np.array(x) for x in params]
    opt = optim.fused_adamw(1e-2, weight_decay=0.1)
    s = jax.jit(opt.init)(params)  # (eagerly, each shape would compile)
    p1, _ = jax.jit(opt.step)(params, grads, s)  # not donated: inputs must survive
    u, _ = jax.jit(opt.tx.update)(grads, s, params)
    p2 = optax.apply_updates(params, u)
    assert rel_err(p1, p2) <= F64_REL
    # the inputs are unchanged (the kernel wrote to fresh outputs), the outputs moved
    assert all(np.array_equal(np.asarray(a), b) for a, b in zip(params, before))
    assert not any(np.array_equal(np.asarray(a), b) for a, b in zip(p1, before))


def test_errors_and_momentum_free_sgd():
    with pytest.raises(ValueError, match="constant weight_decay"):
        optim.fused_adamw(1e-3, weight_decay=optax.constant_schedule(0.1))
    with pytest.raises(ValueError, match="Invalid learning rate"):
        optim.fused_sgd(-1.0, momentum=0.9)
    # momentum 0 is one XLA loop already: the unfused update
    opt = optim.fused_sgd(0.1, weight_decay=0.1)
    p = {"w": jnp.ones(3)}
    out, _ = jax.jit(opt.step)(p, {"w": jnp.ones(3)}, opt.init(p))
    np.testing.assert_allclose(out["w"], 1 - 0.1 * (1 + 0.1), rtol=1e-15)


def test_cpu_without_numba_raises(monkeypatch):
    monkeypatch.setattr(_fused, "numba_available", lambda: False)
    with pytest.raises(ImportError, match=r"jaxreg\[fused\]"):
        optim.fused_sgd(0.1, momentum=0.9)


@pytest.mark.slow
def test_single_threaded_kernels_when_numba_has_no_thread_safe_layer(monkeypatch):
    """Without omp/tbb, numba's workqueue layer would abort on concurrent launches: the
    kernels are then compiled without parallelism (a separate FFI target) -- same results."""
    monkeypatch.setattr(_fused, "parallel_kernels", lambda: False)
    for name, kw in (POINTS[1], POINTS[6]):
        out, _, _ = _fused_run(name, kw, "float64")
        assert rel_err(out, _torch(name, kw, "float64")) <= F64_REL
    assert any(not par for _, _, par in _fused._TARGETS)
