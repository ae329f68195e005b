"""jaxreg.optim beyond the flag grid: schedules, masks/param groups, multi_transform,
argument validation -- each against torch.optim."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from helpers import assert_trees_close, optax_trajectory, random_grads, torch_trajectory

from jaxreg import masks, optim
from parity.registry import GRID, MATRIX_SHAPES, SHAPES
from parity.tolerances import F64_OPTIMIZER_TOL
from parity.trajectories import params0

SPEC = {s.name: s for s in GRID}


# --- schedules --------------------------------------------------------------------------

SCHEDULES = {
    # torch StepLR(step_size=30, gamma=0.1) <-> staircase exponential decay
    "steplr": (
        lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=30, gamma=0.1),
        lambda lr: optax.exponential_decay(lr, 30, 0.1, staircase=True),
    ),
    # torch CosineAnnealingLR(T_max, eta_min) <-> cosine decay to alpha = eta_min / lr. Past
    # T_max torch's schedule is periodic (it rises again) and Optax's stays flat, so the run
    # (120 steps) stays within T_max.
    "cosine": (
        lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=120, eta_min=1e-3),
        lambda lr: optax.cosine_decay_schedule(lr, decay_steps=120, alpha=1e-3 / lr),
    ),
}

SCHEDULED = [
    ("sgd", {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.1}),  # coupled decay
    ("adam", {"lr": 0.01, "weight_decay": 0.1}),  # coupled decay
    ("adamw", {"lr": 0.01, "weight_decay": 0.5}),  # decoupled decay follows the lr
    ("nadam", {"lr": 0.01, "weight_decay": 0.5, "decoupled_weight_decay": True}),
    ("adafactor", {"lr": 0.01, "weight_decay": 0.5}),
    ("asgd", {"lr": 0.01, "weight_decay": 0.1, "t0": 10.0}),
    ("adagrad", {"lr": 0.01, "weight_decay": 0.1, "lr_decay": 0.01}),
]


@pytest.mark.parametrize("sched", list(SCHEDULES))
@pytest.mark.parametrize("name,kwargs", SCHEDULED, ids=[n for n, _ in SCHEDULED])
def test_schedule_matches_torch_lr_scheduler(name, kwargs, sched):
    spec = SPEC[name]
    torch_sched, optax_sched = SCHEDULES[sched]
    grads = random_grads(spec.grid.shapes, 120)
    ref, _ = torch_trajectory(
        lambda ps: spec.torch_cls(ps, **kwargs),
        params0(spec.grid.shapes),
        grads,
        scheduler=torch_sched,
    )
    jkw = {**kwargs, "lr": optax_sched(kwargs["lr"])}
    out, _ = optax_trajectory(spec.make_jax(**jkw), params0(spec.grid.shapes), grads)
    assert_trees_close(out, ref, atol=F64_OPTIMIZER_TOL)


# --- masks as torch parameter groups ----------------------------------------------------

MASKED = [s for s in GRID if s.name != "muon"]


@pytest.mark.parametrize("spec", MASKED, ids=[s.name for s in MASKED])
def test_weight_decay_mask_matches_torch_param_groups(spec):
    kwargs = {**spec.grid.base, **spec.grid.points[-1], "weight_decay": 0.3}
    grads = random_grads(SHAPES, 60)

    def make(ps):  # matrices decay; the vector and the scalar are a weight_decay=0 group
        return spec.torch_cls(
            [{"params": [ps[0], ps[3]]}, {"params": [ps[1], ps[2]], "weight_decay": 0.0}],
            **kwargs,
        )

    ref, _ = torch_trajectory(make, params0(SHAPES), grads)
    tx = spec.make_jax(**kwargs, weight_decay_mask=masks.min_ndim(2))
    out, _ = optax_trajectory(tx, params0(SHAPES), grads)
    assert_trees_close(out, ref)
    # ... and the mask matters: decaying everything ends elsewhere.
    everything, _ = optax_trajectory(spec.make_jax(**kwargs), params0(SHAPES), grads)
    assert max(np.max(np.abs(a - b)) for a, b in zip(everything, ref)) > 1e-6


def test_muon_weight_decay_mask_with_prefix_bool_list():
    grads = random_grads(MATRIX_SHAPES, 30)
    kw = {"lr": 0.01, "weight_decay": 0.3}
    ref, _ = torch_trajectory(
        lambda ps: torch.optim.Muon(
            [{"params": [ps[0], ps[2]]}, {"params": [ps[1]], "weight_decay": 0.0}], **kw
        ),
        params0(MATRIX_SHAPES),
        grads,
    )
    out, _ = optax_trajectory(
        optim.muon(**kw, weight_decay_mask=[True, False, True]), params0(MATRIX_SHAPES), grads
    )
    assert_trees_close(out, ref)


def test_multi_transform_matches_two_torch_optimizers():
    """AdamW on matrices and SGD+momentum on the rest == two torch optimizers."""
    grads = random_grads(SHAPES, 50)
    p0 = params0(SHAPES)
    ts = [torch.tensor(p, requires_grad=True) for p in p0]
    opt_a = torch.optim.AdamW([ts[0], ts[3]], lr=0.01, weight_decay=0.2)
    opt_b = torch.optim.SGD([ts[1], ts[2]], lr=0.05, momentum=0.9)
    for gs in grads:
        for t, g in zip(ts, gs):
            t.grad = torch.tensor(g)
        opt_a.step()
        opt_b.step()
    tx = optax.multi_transform(
        {"mat": optim.adamw(lr=0.01, weight_decay=0.2), "rest": optim.sgd(lr=0.05, momentum=0.9)},
        ["mat", "rest", "rest", "mat"],
    )
    out, _ = optax_trajectory(tx, p0, grads)
    assert_trees_close(out, [t.detach().numpy() for t in ts])


def test_works_on_nnx_state_and_linen_dicts():
    from trees import ALL_KINDS

    for kind in ("linen", "nnx"):
        params = ALL_KINDS[kind]()
        tx = optim.adamw(lr=0.1, weight_decay_mask=masks.exclude_names("bias", "scale"))
        grads = jax.tree.map(jnp.ones_like, params)
        u, state = jax.jit(tx.update)(grads, tx.init(params), params)
        new = optax.apply_updates(params, u)
        assert jax.tree.structure(new) == jax.tree.structure(params)


# --- arguments --------------------------------------------------------------------------

BAD = [
    ("sgd", {"lr": -1.0}),
    ("sgd", {"momentum": -0.1}),
    ("sgd", {"weight_decay": -1e-4}),
    ("sgd", {"nesterov": True}),
    ("sgd", {"nesterov": True, "momentum": 0.9, "dampening": 0.1}),
    ("adam", {"lr": -1e-3}),
    ("adam", {"eps": -1e-8}),
    ("adam", {"betas": (1.0, 0.999)}),
    ("adam", {"betas": (0.9, -0.1)}),
    ("adam", {"weight_decay": -0.1}),
    ("adamw", {"betas": (0.9, 1.0)}),
    ("adamw", {"weight_decay": -1.0}),
    ("rmsprop", {"alpha": -0.5}),
    ("rmsprop", {"eps": -1.0}),
    ("rmsprop", {"momentum": -1.0}),
    ("rmsprop", {"weight_decay": -1.0}),
    ("adagrad", {"lr_decay": -1.0}),
    ("adagrad", {"initial_accumulator_value": -1.0}),
    ("adagrad", {"eps": -1.0}),
    ("adagrad", {"weight_decay": -1.0}),
    ("adadelta", {"rho": 1.5}),
    ("adadelta", {"eps": -1.0}),
    ("adadelta", {"lr": -1.0}),
    ("adamax", {"betas": (-0.1, 0.9)}),
    ("adamax", {"eps": -1.0}),
    ("nadam", {"momentum_decay": -1.0}),
    ("nadam", {"betas": (0.9, 1.5)}),
    ("radam", {"eps": -1.0}),
    ("radam", {"weight_decay": -1.0}),
    ("asgd", {"lr": -1.0}),
    ("asgd", {"weight_decay": -1.0}),
    ("adafactor", {"beta2_decay": 0.5}),
    ("adafactor", {"eps": (-1.0, 1e-3)}),
    ("adafactor", {"eps": (None, -1.0)}),
    ("adafactor", {"d": 0.5}),
    ("adafactor", {"weight_decay": -1.0}),
    ("adafactor", {"lr": -1.0}),
    ("muon", {"lr": -1.0}),
    ("muon", {"momentum": -1.0}),
    ("muon", {"weight_decay": -1.0}),
    ("muon", {"adjust_lr_fn": "bogus"}),
]


@pytest.mark.parametrize("name,bad", BAD, ids=[f"{n}-{b}" for n, b in BAD])
def test_bad_arguments_rejected_like_torch(name, bad):
    spec = SPEC[name]
    with pytest.raises(ValueError) as torch_err:
        spec.torch_cls([torch.zeros((2, 2), requires_grad=True)], **bad)
    with pytest.raises(ValueError) as ours:
        spec.jax_fn(**bad)
    # Same condition, and the message names the argument the way torch's does.
    assert str(ours.value).split(":")[0] == str(torch_err.value).split(":")[0]


@pytest.mark.parametrize(
    "bad,match",
    [({"ns_steps": 100}, "less than 100"), ({"ns_coefficients": (1.0, 2.0)}, "exactly 3")],
)
def test_muon_newton_schulz_arguments(bad, match):
    # torch raises these at the first step; jaxreg at construction.
    opt = torch.optim.Muon([torch.zeros((2, 2), requires_grad=True)], **bad)
    opt.param_groups[0]["params"][0].grad = torch.ones(2, 2)
    with pytest.raises(ValueError, match=match):
        opt.step()
    with pytest.raises(ValueError, match=match):
        optim.muon(**bad)


def test_muon_rejects_non_matrix_params_naming_the_path():
    tx = optim.muon()
    with pytest.raises(ValueError, match="Muon only supports 2D parameters.*'bias'"):
        tx.init({"bias": jnp.zeros(3), "kernel": jnp.zeros((3, 2))})


@pytest.mark.parametrize("spec", GRID, ids=[s.name for s in GRID])
def test_defaults_match_torch(spec):
    """Every default of torch's constructor is jaxreg's default (names included)."""
    import inspect

    t_sig = inspect.signature(spec.torch_cls.__init__).parameters
    j_sig = inspect.signature(spec.jax_fn).parameters
    for name, p in t_sig.items():
        if name in ("self", "params"):
            continue
        assert name in j_sig, f"{spec.name}: torch argument {name!r} missing"
        tdef, jdef = p.default, j_sig[name].default
        assert tdef == jdef or (tdef is None and jdef is None), (
            f"{spec.name}.{name}: torch default {tdef!r} vs jaxreg {jdef!r}"
        )


@pytest.mark.parametrize("name", ["adam", "adamw", "nadam"])
def test_differentiable_is_refused_where_it_changes_torchs_numbers(name):
    # The reason, measured on torch itself: its differentiable path computes the bias
    # corrections as float32 tensors, away from the default path beyond float64 round-off.
    torch_cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "nadam": torch.optim.NAdam}
    grads = random_grads(SHAPES, 20)

    def run(differentiable):
        # requires_grad=False: torch's differentiable step updates the params in place
        ps = [torch.tensor(np.asarray(p)) for p in params0(SHAPES)]
        opt = torch_cls[name](ps, lr=0.01, differentiable=differentiable)
        for g in grads:
            for p, gi in zip(ps, g):
                p.grad = torch.tensor(np.asarray(gi))
            opt.step()
        return [p.numpy() for p in ps]

    gap = max(float(np.max(np.abs(a - b))) for a, b in zip(run(False), run(True)))
    assert gap > 1e-10
    with pytest.raises(ValueError, match=rf"{name}\(differentiable=True\)"):
        getattr(optim, name)(lr=0.01, differentiable=True)


@pytest.mark.parametrize("flag", ["foreach", "fused", "capturable", "differentiable"])
def test_kernel_flags_are_accepted_and_change_nothing(flag):
    if flag == "differentiable":  # refused by adam (above); sgd's numbers do not change
        grads = random_grads(SHAPES, 20)
        base, _ = optax_trajectory(optim.sgd(lr=0.01, momentum=0.9), params0(SHAPES), grads)
        flagged, _ = optax_trajectory(
            optim.sgd(lr=0.01, momentum=0.9, differentiable=True), params0(SHAPES), grads
        )
        assert_trees_close(flagged, base, atol=0.0)
        return
    grads = random_grads(SHAPES, 20)
    base, _ = optax_trajectory(optim.adam(lr=0.01), params0(SHAPES), grads)
    flagged, _ = optax_trajectory(optim.adam(lr=0.01, **{flag: True}), params0(SHAPES), grads)
    assert_trees_close(flagged, base, atol=0.0)
