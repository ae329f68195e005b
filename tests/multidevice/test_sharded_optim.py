"""Every jaxreg transform and optimizer on sharded parameters and state (Explicit mesh).

Parameters and gradients are laid out FSDP-style (dim 0 over ``data``), tensor-parallel
(dim 1 over ``model``), both, or replicated, on a 4×2 mesh of simulated CPU devices with
explicit axis types (``jax.make_mesh``'s default: shardings are part of the types). The
sharded jitted run must equal the same run on one device (float64, ≤ 1e-12 relative)
and keep every parameter and state leaf on its input sharding: nothing silently
replicated or gathered.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxreg
from parity.registry import GRID
from parity.tolerances import F64_SAME

STEPS = 5
TOL = F64_SAME  # float64: same arithmetic, partial sums in another order -> a few ULPs

LAYOUT = {  # leaf name: (shape, spec)
    "fsdp": ((8, 6), P("data", None)),
    "tp": ((6, 4), P(None, "model")),
    "both": ((8, 4), P("data", "model")),
    "vec": ((8,), P("data")),
    "rep": ((3,), P()),
    "scalar": ((), P()),
}
MATRICES = ("fsdp", "tp", "both")  # Muon takes 2-D parameters only


@pytest.fixture(scope="module")
def mesh():
    return jax.make_mesh((4, 2), ("data", "model"))


def _trees(names, seed=0):
    rng = np.random.default_rng(seed)
    params = {n: rng.normal(size=LAYOUT[n][0]) for n in names}
    params[names[0]].flat[0] = 0.0  # exact zero: L1 kinks
    grads = [
        {
            n: np.where(rng.random(LAYOUT[n][0]) < 0.1, 0.0, rng.normal(size=LAYOUT[n][0]))
            for n in names
        }
        for _ in range(STEPS)
    ]
    return params, grads


def _shard(tree, mesh):
    return {
        n: jax.device_put(jnp.asarray(v), NamedSharding(mesh, LAYOUT[n][1]))
        for n, v in tree.items()
    }


def _run(tx, params, grads, mesh=None):
    """STEPS jitted steps; with ``mesh``, on sharded inputs. Returns params, states, inits."""

    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    if mesh is None:
        dev = jax.devices()[0]
        put = lambda t: jax.device_put(jax.tree.map(jnp.asarray, t), dev)
        p = put(params)
        s0 = s = jax.jit(tx.init)(p)
        for g in grads:
            p, s = jax.jit(step)(p, s, put(g))
        return p, s0, s
    with jax.set_mesh(mesh):
        p = _shard(params, mesh)
        s0 = s = jax.jit(tx.init)(p)
        for g in grads:
            p, s = jax.jit(step, donate_argnums=(0, 1))(p, s, _shard(g, mesh))
        return p, s0, s


def _assert_params_match(p, p_ref, p_in, names):
    """Sharded result == single-device result (≤ TOL relative), on the input sharding."""
    for n in names:
        ref = np.asarray(p_ref[n])
        err = np.max(np.abs(np.asarray(p[n]) - ref)) / max(np.max(np.abs(ref)), 1e-300)
        assert err <= TOL, f"{n}: sharded vs single device {err:.2e}"
        assert p[n].sharding.is_equivalent_to(p_in[n].sharding, p[n].ndim), (
            f"param {n}: {p[n].sharding.spec} after the step, {p_in[n].sharding.spec} before"
        )


def _check(tx, names, mesh):
    params, grads = _trees(names)
    p_ref, _, s_ref = _run(tx, params, grads)
    p_in = _shard(params, mesh)
    p, s0, s = _run(tx, params, grads, mesh)
    _assert_params_match(p, p_ref, p_in, names)
    for leaf, leaf0, ref in zip(jax.tree.leaves(s), jax.tree.leaves(s0), jax.tree.leaves(s_ref)):
        np.testing.assert_allclose(np.asarray(leaf), np.asarray(ref), rtol=TOL, atol=TOL)
        assert leaf.sharding.is_equivalent_to(leaf0.sharding, leaf.ndim), (
            f"state leaf {leaf.shape}: {leaf.sharding.spec} after, {leaf0.sharding.spec} at init"
        )
    # State that mirrors a parameter lives where the parameter lives (no replicated copy).
    by_shape = {LAYOUT[n][0]: p_in[n].sharding for n in names}
    for leaf in jax.tree.leaves(s0):
        if leaf.ndim >= 1 and leaf.shape in by_shape:
            assert leaf.sharding.is_equivalent_to(by_shape[leaf.shape], leaf.ndim), (
                f"state leaf {leaf.shape} initialised as {leaf.sharding.spec}, "
                f"its parameter is {by_shape[leaf.shape].spec}"
            )


def _optimizer_points():
    for spec in GRID:
        for kw in spec.grid.points:
            yield pytest.param(
                spec,
                {**spec.grid.base, **kw},
                id=f"{spec.name}-" + (",".join(f"{k}={v}" for k, v in kw.items()) or "default"),
            )


@pytest.mark.parametrize("spec,kwargs", list(_optimizer_points()))
def test_optimizer_sharded_equals_single_device(mesh, spec, kwargs):
    names = list(MATRICES) if spec.name == "muon" else list(LAYOUT)
    _check(spec.make_jax(**kwargs), names, mesh)


TRANSFORMS = {
    "add_weight_decay": lambda: jaxreg.add_weight_decay(0.1),
    "decoupled_weight_decay": lambda: optax.chain(
        optax.sgd(0.1), jaxreg.decoupled_weight_decay(0.1, learning_rate=0.1)
    ),
    "add_l1_decay": lambda: jaxreg.add_l1_decay(0.1),
    "prox_l1": lambda: optax.chain(optax.sgd(0.1), jaxreg.proximal_l1(0.05)),
    "prox_elastic_net": lambda: optax.chain(optax.sgd(0.1), jaxreg.proximal_elastic_net(0.05, 0.1)),
    "proximal_fista_group_lasso": lambda: optax.chain(
        optax.sgd(0.1),
        jaxreg.proximal(jaxreg.prox.prox_group_lasso, 0.5, scaling=0.1, accelerate=True),
    ),
    "adamw_multipliers": lambda: jaxreg.optim.adamw(
        1e-2,
        weight_decay=0.1,
        weight_decay_mask=jaxreg.masks.multipliers(
            (jaxreg.masks.glob("fsdp", "both"), 3.0), (jaxreg.masks.min_ndim(1), 0.5)
        ),
    ),
    "skip_unused": lambda: jaxreg.skip_unused(
        jaxreg.optim.sgd(0.1, momentum=0.9, weight_decay=0.1), jaxreg.masks.glob("tp", "vec")
    ),
    "masked_schedule": lambda: optax.chain(
        optax.adam(1e-2),
        jaxreg.decoupled_weight_decay(
            0.1, learning_rate=optax.cosine_decay_schedule(1e-2, 10), mask=jaxreg.masks.min_ndim(2)
        ),
    ),
}


@pytest.mark.parametrize("name", TRANSFORMS)
def test_transform_sharded_equals_single_device(mesh, name):
    _check(TRANSFORMS[name](), list(LAYOUT), mesh)


@pytest.mark.parametrize("penalty", ["l1", "l2", "elastic_net", "multiplied_l2"])
def test_penalty_value_and_grad_sharded(mesh, penalty):
    fn = {
        "l1": lambda p: 0.3 * jaxreg.l1_penalty(p),
        "l2": lambda p: 0.3 * jaxreg.l2_penalty(p, mask=jaxreg.masks.min_ndim(1)),
        "elastic_net": lambda p: jaxreg.elastic_net_penalty(p, l1=0.3, l2=0.2),
        "multiplied_l2": lambda p: jaxreg.l2_penalty(p, {n: i + 0.5 for i, n in enumerate(LAYOUT)}),
    }[penalty]
    params, _ = _trees(list(LAYOUT))
    v_ref, g_ref = jax.jit(jax.value_and_grad(fn))(jax.tree.map(jnp.asarray, params))
    with jax.set_mesh(mesh):
        p = _shard(params, mesh)
        v, g = jax.jit(jax.value_and_grad(fn))(p)
    np.testing.assert_allclose(float(v), float(v_ref), rtol=TOL)
    for n in LAYOUT:
        np.testing.assert_allclose(np.asarray(g[n]), np.asarray(g_ref[n]), rtol=TOL, atol=0)
        assert g[n].sharding.is_equivalent_to(p[n].sharding, g[n].ndim), n


FUSED = {
    "fused_sgd": lambda: jaxreg.optim.fused_sgd(0.1, momentum=0.9, weight_decay=0.1),
    "fused_adamw": lambda: jaxreg.optim.fused_adamw(
        1e-2, weight_decay=0.1, weight_decay_mask=jaxreg.masks.min_ndim(1)
    ),
}


@pytest.mark.parametrize("axis_type", ["explicit", "auto"])
@pytest.mark.parametrize("name", FUSED)
def test_fused_step_sharded_equals_single_device_without_gathers(name, axis_type):
    """The fused kernel runs shard by shard: shard_map under explicit axes,
    custom_partitioning under automatic (GSPMD) sharding. Same result as one device,
    every leaf keeps its sharding, and the compiled step has no collective at all."""
    opt = FUSED[name]()
    names = list(LAYOUT)
    params, grads = _trees(names)
    dev = jax.devices()[0]
    p_ref = jax.device_put(jax.tree.map(jnp.asarray, params), dev)
    s_ref = opt.init(p_ref)
    for g in grads:
        p_ref, s_ref = jax.jit(opt.step)(p_ref, jax.device_put(g, dev), s_ref)
    kind = jax.sharding.AxisType.Explicit if axis_type == "explicit" else jax.sharding.AxisType.Auto
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(kind, kind))

    def run():
        p = _shard(params, mesh)
        s = jax.jit(opt.init)(p)
        step = jax.jit(opt.step, donate_argnums=(0, 2))
        hlo = step.lower(p, _shard(grads[0], mesh), s).compile().as_text()
        for g in grads:
            p, s = step(p, _shard(g, mesh), s)
        return p, hlo

    if axis_type == "explicit":
        with jax.set_mesh(mesh):
            p, hlo = run()
    else:
        p, hlo = run()
    for op in ("all-gather", "all-reduce", "all-to-all", "collective-permute"):
        assert op not in hlo, f"{op} in the fused step"
    assert "jaxreg_fused_" in hlo  # the kernel ran, not the unfused fallback
    _assert_params_match(p, p_ref, _shard(params, mesh), names)
