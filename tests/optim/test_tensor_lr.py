"""torch's Tensor lr and its default dtype: the two places where torch computes an
optimizer's step scalars in float32 for float64 parameters -- each against torch itself."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from helpers import (
    assert_trees_close,
    max_abs_diff,
    optax_trajectory,
    random_grads,
    torch_trajectory,
)

from jaxreg import optim
from parity.registry import GRID, grid_points
from parity.tolerances import F64_OPTIMIZER_TOL
from parity.trajectories import params0

SPEC = {s.name: s for s in GRID}
STEPS = 40
# Every grid point of every optimizer (maximize included): the lr enters each optimizer's
# step differently (a multiplier, lr / bias_correction, 1 - lr * weight_decay, ASGD's eta).
POINTS = list(grid_points())


def _refused(spec, kwargs):  # ASGD's alpha=0.5: torch's float32 sqrt kernel is not reproduced
    return spec.name == "asgd" and kwargs.get("alpha") == 0.5


@pytest.mark.parametrize("spec,kwargs", [p[:2] for p in POINTS], ids=[p[2] for p in POINTS])
def test_a_float32_array_lr_is_torchs_tensor_lr(spec, kwargs):
    """float64 parameters, torch with ``lr=torch.tensor(lr)`` (float32) vs jaxreg with
    ``lr=jnp.float32(lr)``: the same arithmetic (float32 scalars, float64 parameter
    updates), so float64 round-off, 1e-12."""
    lr = kwargs["lr"]
    if _refused(spec, kwargs):
        with pytest.raises(ValueError, match=r"alpha=0.5.*float32 sqrt kernel"):
            spec.make_jax(**{**kwargs, "lr": jnp.float32(lr)})
        return
    grads = random_grads(spec.grid.shapes, STEPS)
    ref, _ = torch_trajectory(
        lambda ps: spec.torch_cls(ps, **{**kwargs, "lr": torch.tensor(lr)}),
        params0(spec.grid.shapes),
        grads,
    )
    out, _ = optax_trajectory(
        spec.make_jax(**{**kwargs, "lr": jnp.float32(lr)}), params0(spec.grid.shapes), grads
    )
    assert_trees_close(out, ref, atol=F64_OPTIMIZER_TOL)


@pytest.mark.parametrize("alpha", [1.0, 2.0, 3.0, -1.0, -2.0, -0.5, 0.25, 1.5])
def test_asgd_tensor_lr_eta_for_torchs_special_exponents(alpha):
    """torch computes ``x ** alpha`` for 2, 3, -1, -2, -0.5 as float32 products and
    reciprocals, other exponents correctly rounded; eta (float32 state) equal bit for bit,
    so the float64 trajectory to round-off. lambd=0.5 makes eta move by many ulps a step."""
    spec = SPEC["asgd"]
    kwargs = {"lr": 0.05, "lambd": 0.5, "alpha": alpha, "t0": 10.0}
    grads = random_grads(spec.grid.shapes, STEPS)
    ref, opt = torch_trajectory(
        lambda ps: spec.torch_cls(ps, **{**kwargs, "lr": torch.tensor(0.05)}),
        params0(spec.grid.shapes),
        grads,
    )
    out, state = optax_trajectory(
        spec.make_jax(**{**kwargs, "lr": jnp.float32(0.05)}), params0(spec.grid.shapes), grads
    )
    assert float(state.eta) == opt.state[opt.param_groups[0]["params"][0]]["eta"].item()
    assert_trees_close(out, ref, atol=F64_OPTIMIZER_TOL)


def test_the_tensor_lr_changes_torchs_numbers_where_the_docs_say():
    """Power of the test above: for these optimizers torch's Tensor-lr run is not its run
    with the float32-rounded lr as a float (so treating the array as a float would fail
    the 1e-12 test), measured on torch itself."""
    differ = set()
    for spec, kwargs, _ in POINTS:
        lr = torch.tensor(kwargs["lr"])
        grads = random_grads(spec.grid.shapes, STEPS)

        def run(lr, spec=spec, kwargs=kwargs, grads=grads):
            return torch_trajectory(
                lambda ps: spec.torch_cls(ps, **{**kwargs, "lr": lr}),
                params0(spec.grid.shapes),
                grads,
            )[0]

        if not _refused(spec, kwargs) and max_abs_diff(run(lr), run(lr.item())) > 1e-10:
            differ.add(spec.name)
    assert {"adam", "adamw", "adamax", "adagrad", "nadam", "radam", "asgd", "muon"} <= differ
    assert "adafactor" in differ


def test_from_torch_reproduces_a_tensor_lr():
    """torch's own configurations use ``lr=torch.tensor(0.001)``; from_torch passes it on
    as a float32 array (AdamW and Muon, the two the peer check found 1e-6 apart)."""
    for cls, shapes in ((torch.optim.AdamW, [(6,), (3, 2)]), (torch.optim.Muon, [(4, 3)])):
        p0 = params0(shapes)
        grads = random_grads(shapes, 30)
        ref, opt = torch_trajectory(
            lambda ps, cls=cls: cls(ps, lr=torch.tensor(0.001), weight_decay=0.1), p0, grads
        )
        tx = optim.from_torch(opt, [jnp.asarray(p) for p in p0])
        out, _ = optax_trajectory(tx, p0, grads)
        assert_trees_close(out, ref, atol=F64_OPTIMIZER_TOL)


def test_from_torch_takes_a_float64_tensor_lr_as_a_float():
    """torch computes a float64 Tensor lr's scalars in float64, as a float lr's."""
    p0, grads = params0([(6,)]), random_grads([(6,)], 20)
    lr = torch.tensor(0.01, dtype=torch.float64)
    ref, opt = torch_trajectory(lambda ps: torch.optim.AdamW(ps, lr=lr), p0, grads)
    out, _ = optax_trajectory(optim.from_torch(opt, [jnp.asarray(p0[0])]), p0, grads)
    assert_trees_close(out, ref, atol=F64_OPTIMIZER_TOL)


def test_a_tensor_lr_with_a_scheduler_is_refused():
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.AdamW([w], lr=torch.tensor(0.01))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2)
    with pytest.raises(ValueError, match="Tensor lr and a scheduler"):
        optim.from_torch(opt, [jnp.zeros(3)], scheduler=sched)


def test_fused_adamw_refuses_a_tensor_lr():
    pytest.importorskip("numba")
    with pytest.raises(ValueError, match="fused_adamw takes a float lr"):
        optim.fused_adamw(lr=jnp.float32(1e-3))


def test_an_array_lr_of_the_scalar_dtype_is_a_float_lr():
    """Only a narrower dtype means "torch Tensor lr": a float64 array lr under x64 gives the
    float lr's numbers exactly (torch: a float64 Tensor lr computes in float64 too)."""
    grads = random_grads(SPEC["adamw"].grid.shapes, 20)
    p0 = params0(SPEC["adamw"].grid.shapes)
    a, _ = optax_trajectory(optim.adamw(lr=jnp.float64(0.01)), p0, grads)
    b, _ = optax_trajectory(optim.adamw(lr=0.01), p0, grads)
    assert_trees_close(a, b, atol=0.0)


# --- NAdam / ASGD: torch's default dtype --------------------------------------------------


class torch_default_float64:
    def __enter__(self):
        self._old = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)

    def __exit__(self, *exc):
        torch.set_default_dtype(self._old)


@pytest.mark.parametrize(
    "name,kwargs", [("nadam", {"lr": 0.01}), ("asgd", {"lr": 0.05, "t0": 5.0})]
)
def test_nadam_asgd_default_scalars_follow_the_parameters(name, kwargs):
    """A float64 run sets torch's default dtype to float64 (its 0-d NAdam/ASGD state is then
    float64); jaxreg's default follows the float64 parameters and matches it, 1e-12. With
    torch's float32 default the run differs (the power of the check), and
    ``torch_scalar_dtype="float32"`` reproduces that one."""
    spec = SPEC[name]
    grads = random_grads(spec.grid.shapes, 60)
    p0 = params0(spec.grid.shapes)
    with torch_default_float64():
        ref64, _ = torch_trajectory(lambda ps: spec.torch_cls(ps, **kwargs), p0, grads)
    ref32, _ = torch_trajectory(lambda ps: spec.torch_cls(ps, **kwargs), p0, grads)
    assert max_abs_diff(ref64, ref32) > 1e-11

    tx = getattr(optim, name)(**kwargs)
    out, _ = optax_trajectory(tx, p0, grads)
    assert_trees_close(out, ref64, atol=F64_OPTIMIZER_TOL)
    out32, _ = optax_trajectory(
        getattr(optim, name)(**kwargs, torch_scalar_dtype="float32"), p0, grads
    )
    assert_trees_close(out32, ref32, atol=F64_OPTIMIZER_TOL)

    state = tx.init([jnp.asarray(p) for p in p0])
    scalars = [state.mu_product] if name == "nadam" else [state.eta, state.mu]
    assert {x.dtype for x in scalars} == {np.dtype("float64")}
    state32 = tx.init([jnp.asarray(p, jnp.float32) for p in p0])
    scalars = [state32.mu_product] if name == "nadam" else [state32.eta, state32.mu]
    assert {x.dtype for x in scalars} == {np.dtype("float32")}
