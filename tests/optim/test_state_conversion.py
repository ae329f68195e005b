"""from_torch and the optimizer-state converters: a run moves between frameworks mid-way
and stays on the same trajectory (reference: the uninterrupted torch run)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from helpers import assert_trees_close, random_grads

from jaxreg import optim
from parity.registry import MATRIX_SHAPES, SHAPES

CASES = [
    (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.1}),
    (torch.optim.SGD, {"lr": 0.05, "weight_decay": 0.1}),
    (torch.optim.Adam, {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True}),
    (torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.3}),
    (torch.optim.RMSprop, {"lr": 0.01, "momentum": 0.5, "centered": True, "weight_decay": 0.1}),
    (torch.optim.Adagrad, {"lr": 0.05, "lr_decay": 0.01, "initial_accumulator_value": 0.1}),
    (torch.optim.Adadelta, {"lr": 0.5, "weight_decay": 0.1}),
    (torch.optim.Adamax, {"lr": 0.01, "weight_decay": 0.1}),
    (torch.optim.NAdam, {"lr": 0.01, "weight_decay": 0.1}),
    (torch.optim.RAdam, {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True}),
    (torch.optim.ASGD, {"lr": 0.05, "t0": 10.0, "weight_decay": 0.1}),
    (torch.optim.Adafactor, {"lr": 0.01, "weight_decay": 0.1}),
    (torch.optim.Muon, {"lr": 0.01}),
]
IDS = [f"{cls.__name__}-{i}" for i, (cls, _) in enumerate(CASES)]
N = 20


def _setup(cls, two_groups):
    shapes = MATRIX_SHAPES if cls is torch.optim.Muon else SHAPES
    rng = np.random.default_rng(1)
    p0 = [rng.normal(size=s) for s in shapes]
    grads = random_grads(shapes, 2 * N)
    return shapes, p0, grads


def _torch_opt(cls, kwargs, ts, two_groups):
    if not two_groups:
        return cls(ts, **kwargs)
    return cls([{"params": ts[:2]}, {"params": ts[2:], "weight_decay": 0.0}], **kwargs)


def _torch_steps(opt, ts, grads):
    for gs in grads:
        for t, g in zip(ts, gs):
            t.grad = torch.tensor(g)
        opt.step()


def _jax_steps(tx, params, state, grads):
    step = jax.jit(
        lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(*tx.update(g, s, p))
    )
    for gs in grads:
        params, state = step(params, state, [jnp.asarray(g) for g in gs])
    return params, state


@pytest.mark.slow
@pytest.mark.parametrize("two_groups", [False, True], ids=["one-group", "two-groups"])
@pytest.mark.parametrize("cls,kwargs", CASES, ids=IDS)
def test_torch_to_jax_mid_run(cls, kwargs, two_groups):
    shapes, p0, grads = _setup(cls, two_groups)
    # Reference: 2N torch steps.
    ref_ts = [torch.tensor(p, requires_grad=True) for p in p0]
    _torch_steps(_torch_opt(cls, kwargs, ref_ts, two_groups), ref_ts, grads)
    # N torch steps, convert, N jaxreg steps.
    ts = [torch.tensor(p, requires_grad=True) for p in p0]
    opt = _torch_opt(cls, kwargs, ts, two_groups)
    _torch_steps(opt, ts, grads[:N])
    params = [jnp.asarray(t.detach().numpy()) for t in ts]
    tx = optim.from_torch(opt, params)
    state = optim.state_from_torch(opt, tx, params, step=N)
    params, state = _jax_steps(tx, params, state, grads[N:])
    assert_trees_close(params, [t.detach().numpy() for t in ref_ts])
    # The optimizer state agrees too, not only the parameters.
    ref_opt = _torch_opt(cls, kwargs, ref_ts, two_groups)
    ref_ts2 = [torch.tensor(p, requires_grad=True) for p in p0]
    ref_opt = _torch_opt(cls, kwargs, ref_ts2, two_groups)
    _torch_steps(ref_opt, ref_ts2, grads)
    ref_state = optim.state_from_torch(ref_opt, tx, params, step=2 * N)
    assert_trees_close(state, ref_state)


@pytest.mark.slow
@pytest.mark.parametrize("cls,kwargs", CASES, ids=IDS)
def test_jax_to_torch_mid_run(cls, kwargs):
    shapes, p0, grads = _setup(cls, False)
    ref_ts = [torch.tensor(p, requires_grad=True) for p in p0]
    _torch_steps(cls(ref_ts, **kwargs), ref_ts, grads)
    # N jaxreg steps, convert to a fresh torch optimizer, N torch steps.
    ts = [torch.tensor(p, requires_grad=True) for p in p0]
    opt = cls(ts, **kwargs)
    tx = optim.from_torch(opt, [jnp.asarray(p) for p in p0])
    params, state = _jax_steps(tx, [jnp.asarray(p) for p in p0], tx.init(p0), grads[:N])
    with torch.no_grad():
        for t, p in zip(ts, params):
            t.copy_(torch.tensor(np.asarray(p)))
    optim.state_to_torch(state, opt, params)
    _torch_steps(opt, ts, grads[N:])
    assert_trees_close([t.detach().numpy() for t in ts], [t.detach().numpy() for t in ref_ts])


def test_from_torch_reads_every_group_and_hyperparameter():
    ts = [
        torch.zeros(2, 2, dtype=torch.float64, requires_grad=True),
        torch.zeros(3, dtype=torch.float64, requires_grad=True),
    ]
    opt = torch.optim.AdamW(
        [{"params": [ts[0]], "lr": 0.1, "betas": (0.8, 0.9)}, {"params": [ts[1]], "eps": 1e-3}],
        lr=0.01,
        weight_decay=0.2,
        amsgrad=True,
    )
    params = {"w": jnp.zeros((2, 2)), "b": jnp.zeros(3)}
    tx = optim.from_torch(opt, params, paths=["w", "b"])
    grads = random_grads([(2, 2), (3,)], 10)
    for gs in grads:
        for t, g in zip(ts, gs):
            t.grad = torch.tensor(g)
        opt.step()
    state = tx.init(params)
    for gs in grads:
        u, state = tx.update({"w": jnp.asarray(gs[0]), "b": jnp.asarray(gs[1])}, state, params)
        params = optax.apply_updates(params, u)
    assert_trees_close([params["w"], params["b"]], [t.detach().numpy() for t in ts])


def test_leaves_outside_the_optimizer_are_frozen():
    ts = [torch.zeros(2, requires_grad=True)]
    opt = torch.optim.SGD(ts, lr=0.1, weight_decay=0.5)
    params = {"a": jnp.ones(2), "frozen": jnp.ones(3)}
    tx = optim.from_torch(opt, params, paths=["a"])
    u, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    assert float(jnp.abs(u["frozen"]).sum()) == 0.0
    assert float(jnp.abs(u["a"]).sum()) > 0.0


def test_converted_state_does_not_alias_torch_memory():
    ts = [torch.ones(3, dtype=torch.float64, requires_grad=True)]
    opt = torch.optim.Adam(ts, lr=0.1)
    ts[0].grad = torch.ones(3, dtype=torch.float64)
    opt.step()
    params = [jnp.ones(3)]
    tx = optim.from_torch(opt, params)
    state = optim.state_from_torch(opt, tx, params)
    before = np.asarray(state.exp_avg[0]).copy()
    opt.step()  # torch updates its buffers in place
    np.testing.assert_array_equal(np.asarray(state.exp_avg[0]), before)


def test_bridge_errors():
    ts = [torch.zeros(2, 2, requires_grad=True)]
    with pytest.raises(ValueError, match="has 1 parameters but params has 2 leaves"):
        optim.from_torch(torch.optim.SGD(ts), [jnp.zeros((2, 2)), jnp.zeros(2)])
    with pytest.raises(ValueError, match=r"w: jax \(2, 3\) vs torch \(2, 2\)"):
        optim.from_torch(torch.optim.SGD(ts), {"w": jnp.zeros((2, 3))})
    with pytest.raises(ValueError, match="paths not found in params"):
        optim.from_torch(torch.optim.SGD(ts), {"w": jnp.zeros((2, 2))}, paths=["v"])
    with pytest.raises(ValueError, match="no jaxreg.optim equivalent for LBFGS"):
        optim.from_torch(torch.optim.LBFGS(ts), [jnp.zeros((2, 2))])


def test_state_with_equals_state_from_torch():
    """state_with (buffers already in JAX layout) builds the same state as the converter."""
    ts = [
        torch.tensor(np.ones((2, 3)), requires_grad=True),
        torch.tensor(np.ones(3), requires_grad=True),
    ]
    opt = torch.optim.NAdam(ts, lr=0.1, weight_decay=0.1)
    for g in random_grads([(2, 3), (3,)], 3):
        for t, gi in zip(ts, g):
            t.grad = torch.tensor(gi)
        opt.step()
    params = [jnp.asarray(t.detach().numpy().copy()) for t in ts]
    tx = optim.nadam(lr=0.1, weight_decay=0.1)
    ref = optim.state_from_torch(opt, tx, params)
    fields = {k: [opt.state[t][k].numpy() for t in ts] for k in ("exp_avg", "exp_avg_sq")}
    got = optim.state_with(
        tx, params, 3, fields, {"mu_product": float(opt.state[ts[0]]["mu_product"])}
    )
    assert_trees_close(got, ref, atol=0.0)


# --- what from_torch and the state converters refuse ------------------------------------


def test_from_torch_matches_the_class_not_its_name():
    ts = [torch.zeros(3, requires_grad=True)]

    class SGD(torch.optim.Optimizer):  # a third-party optimizer that happens to be named SGD
        def __init__(self, params, lr=0.1):
            super().__init__(params, {"lr": lr})

        def step(self, closure=None):
            return None

    with pytest.raises(ValueError, match=r"no jaxreg.optim equivalent for .*SGD \(from "):
        optim.from_torch(SGD(ts), [jnp.zeros(3)])

    class MySGD(torch.optim.SGD):  # a subclass may change the step
        pass

    with pytest.raises(ValueError, match=r"subclasses torch.optim.SGD.*jaxreg.optim.sgd"):
        optim.from_torch(MySGD(ts, lr=0.1), [jnp.zeros(3)])


def test_from_torch_refuses_a_path_named_twice():
    ts = [torch.zeros(3, requires_grad=True), torch.zeros(3, requires_grad=True)]
    params = {"a": jnp.zeros(3), "b": jnp.zeros(3)}
    with pytest.raises(ValueError, match=r"more than once: \['a'\]"):
        optim.from_torch(torch.optim.SGD(ts, lr=0.1), params, paths=["a", "a"])


def test_from_torch_freezes_parameters_without_requires_grad():
    # torch skips a parameter whose .grad stays None; requires_grad=False never gets one.
    w0, b0 = np.linspace(-1, 1, 6).reshape(2, 3), np.array([0.5, -0.5])
    w = torch.tensor(w0, requires_grad=True)
    b = torch.tensor(b0, requires_grad=False)
    opt = torch.optim.AdamW([w, b], lr=0.1, weight_decay=0.5)
    grads = random_grads([(2, 3)], 5)
    for (g,) in grads:
        w.grad = torch.tensor(g)
        opt.step()
    params = {"w": jnp.asarray(w0), "b": jnp.asarray(b0)}
    tx = optim.from_torch(opt, params, paths=["w", "b"])
    state = tx.init(params)
    for (g,) in grads:  # jaxreg gets a gradient for b too (as jax.grad would give one)
        u, state = tx.update({"w": jnp.asarray(g), "b": jnp.ones(2)}, state, params)
        params = optax.apply_updates(params, u)
    np.testing.assert_array_equal(params["b"], b0)  # torch: untouched, not decayed
    np.testing.assert_allclose(params["w"], w.detach().numpy(), rtol=1e-13)


def test_from_torch_refuses_to_freeze_an_attached_scheduler():
    ts = [torch.zeros(3, requires_grad=True)]
    opt = torch.optim.SGD(ts, lr=0.1)
    torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.25, total_iters=4)  # warm-up
    with pytest.raises(ValueError, match=r"initial_lr.*LR scheduler is attached.*0.025"):
        optim.from_torch(opt, [jnp.zeros(3)])
    optim.from_torch(opt, [jnp.zeros(3)], lr=optax.linear_schedule(0.025, 0.1, 4))  # fine


def test_state_from_torch_checks_shapes_and_the_optimizer_kind():
    ts = [torch.ones(2, 3, dtype=torch.float64, requires_grad=True)]
    opt = torch.optim.Adam(ts, lr=0.1)
    ts[0].grad = torch.ones(2, 3, dtype=torch.float64)
    opt.step()
    params = {"w": jnp.ones((2, 3))}
    tx = optim.adam(lr=0.1)
    opt.state[ts[0]]["exp_avg"] = torch.zeros(3, 2, dtype=torch.float64)  # right size, wrong shape
    with pytest.raises(ValueError, match=r"w \(torch parameter 0 of group 0\) field 'exp_avg'"):
        optim.state_from_torch(opt, tx, params)
    opt.state[ts[0]]["exp_avg"] = torch.zeros(5, dtype=torch.float64)  # wrong size
    with pytest.raises(ValueError, match=r"'exp_avg': torch \(5,\) vs jaxreg \(2, 3\)"):
        optim.state_from_torch(opt, tx, params)
    # an SGD state read with an Adam transform (every Adam field would silently be zero)
    sgd = torch.optim.SGD(ts, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"AdamState but the torch optimizer is torch.optim.SGD"):
        optim.state_from_torch(sgd, tx, params)
    # an Adam state written into a torch SGD
    with pytest.raises(ValueError, match=r"AdamState but the torch optimizer is torch.optim.SGD"):
        optim.state_to_torch(tx.init(params), sgd, params)
    assert not sgd.state  # nothing was written


@pytest.mark.parametrize("name", ["NAdam", "ASGD"])
def test_from_torch_follows_torchs_default_dtype(name):
    # torch keeps NAdam's mu_product and ASGD's eta/mu in its default dtype.
    grads = random_grads([(2, 3)], 30)
    w0 = np.linspace(-1, 1, 6).reshape(2, 3)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        w = torch.tensor(w0, requires_grad=True)
        opt = getattr(torch.optim, name)([w], lr=0.05, weight_decay=0.1)
        tx = optim.from_torch(opt, [jnp.asarray(w0)])
        for (g,) in grads:
            w.grad = torch.tensor(g)
            opt.step()
    finally:
        torch.set_default_dtype(previous)
    params = [jnp.asarray(w0)]
    state = tx.init(params)
    for (g,) in grads:
        u, state = tx.update([jnp.asarray(g)], state, params)
        params = optax.apply_updates(params, u)
    np.testing.assert_allclose(params[0], w.detach().numpy(), rtol=1e-13, atol=1e-15)


@pytest.mark.slow
def test_from_torch_pairs_a_flax_model_by_module_name():
    """AdamW with a no-decay group on a torch CNN; the Flax twin's leaves are in alphabetical
    order and transposed layouts: pairing by position cannot work, by name it does."""
    from parity import convert, models

    torch.manual_seed(0)
    tm = models.torch_model("cnn_bn").double()
    decay = [p for p in tm.parameters() if p.ndim >= 2]
    rest = [p for p in tm.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay}, {"params": rest, "weight_decay": 0.0}], lr=0.01)
    fm = models.flax_model("cnn_bn", jnp.float64)
    x = np.zeros((1, 8, 8))
    tmpl = fm.init(jax.random.key(0), jnp.asarray(models.flax_input(x)), train=False)
    variables = convert.from_torch(tm, tmpl, example_input=torch.tensor(models.torch_input(x)))
    params = variables["params"]
    with pytest.raises(ValueError, match="parameter shapes do not fit"):
        optim.from_torch(opt, params)  # by position: alphabetical leaves, transposed kernels
    tx = optim.from_torch(opt, params, module=tm)
    # one step on the same gradients (converted to Flax's layout) == torch's step
    rng = np.random.default_rng(0)
    for p in tm.parameters():
        p.grad = torch.tensor(rng.standard_normal(p.shape))
    grads = convert.from_torch(
        _grads_as_module(tm), tmpl, example_input=torch.tensor(models.torch_input(x))
    )["params"]
    u, _ = tx.update(grads, tx.init(params), params)
    opt.step()
    ref = convert.from_torch(tm, tmpl, example_input=torch.tensor(models.torch_input(x)))
    got = optax.apply_updates(params, u)
    assert_trees_close(got, ref["params"], atol=1e-14)
    with pytest.raises(ValueError, match="paths= or module="):
        optim.from_torch(opt, params, paths=["a"], module=tm)


def _grads_as_module(tm):
    """A copy of the module whose parameters hold its .grad values (for the converter)."""
    import copy

    g = copy.deepcopy(tm)
    with torch.no_grad():
        for p, q in zip(tm.parameters(), g.parameters()):
            q.copy_(p.grad)
    return g


@pytest.mark.slow
def test_state_moves_between_torch_and_a_flax_layout_model():
    """AdamW on the BatchNorm CNN: 3 torch steps, its state into JAX (kernels transposed, the
    Linear's rows permuted), 3 JAX steps, back into torch, 3 torch steps == 9 torch steps."""
    from parity import convert, models

    x = np.zeros((1, 8, 8))
    ex = torch.tensor(models.torch_input(x))
    fm = models.flax_model("cnn_bn", jnp.float64)
    tmpl = fm.init(jax.random.key(0), jnp.asarray(models.flax_input(x)), train=False)
    rng = np.random.default_rng(1)
    shapes = [tuple(p.shape) for p in models.torch_model("cnn_bn").parameters()]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(9)]

    def torch_steps(tm, opt, gs):
        for g in gs:
            for p, gi in zip(tm.parameters(), g):
                p.grad = torch.tensor(gi)
            opt.step()

    def make():
        torch.manual_seed(0)
        tm = models.torch_model("cnn_bn").double()
        return tm, torch.optim.AdamW(tm.parameters(), lr=0.01, weight_decay=0.1)

    ref_tm, ref_opt = make()
    torch_steps(ref_tm, ref_opt, grads)

    tm, opt = make()
    torch_steps(tm, opt, grads[:3])
    mm = convert.module_map(tm, tmpl, example_input=ex)
    params = convert.from_torch(tm, tmpl, example_input=ex)["params"]
    tx = optim.from_torch(opt, params, module=tm)
    state = optim.state_from_torch(opt, tx, params, module=tm, to_jax=mm.state_to_jax)
    for g in grads[3:6]:
        for p, gi in zip(tm.parameters(), g):
            p.grad = torch.tensor(gi)
        gtree = convert.from_torch(_grads_as_module(tm), tmpl, example_input=ex)["params"]
        u, state = tx.update(gtree, state, params)
        params = optax.apply_updates(params, u)
    convert.to_torch({**tmpl, "params": params}, tm, example_input=ex)
    optim.state_to_torch(state, opt, params, module=tm, to_torch=mm.state_to_torch)
    torch_steps(tm, opt, grads[6:])
    for (k, a), b in zip(tm.state_dict().items(), ref_tm.state_dict().values()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12, atol=1e-14, err_msg=k)
    with pytest.raises(ValueError, match="layout converter"):
        optim.state_from_torch(opt, tx, params, module=tm)


SCHEDULED_OPTS = {
    "warmup_cosine_adamw_two_groups": (
        lambda ps: torch.optim.AdamW(
            [{"params": ps[:1]}, {"params": ps[1:], "weight_decay": 0.0, "lr": 0.02}],
            lr=0.05, weight_decay=0.1,
        ),
        lambda o: torch.optim.lr_scheduler.SequentialLR(
            o, [torch.optim.lr_scheduler.LinearLR(o, 0.1, total_iters=5),
                torch.optim.lr_scheduler.CosineAnnealingLR(o, 20, 1e-4)], milestones=[5]
        ),
    ),
    "one_cycle_sgd_momentum": (
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
        lambda o: torch.optim.lr_scheduler.OneCycleLR(o, 0.3, total_steps=30, three_phase=True),
    ),
    "cyclic_adam_betas": (
        lambda ps: torch.optim.Adam(ps, lr=0.01),
        lambda o: torch.optim.lr_scheduler.CyclicLR(o, 0.001, 0.02, 4, 6, mode="triangular2"),
    ),
    "chained": (
        lambda ps: torch.optim.RMSprop(ps, lr=0.01),
        lambda o: torch.optim.lr_scheduler.ChainedScheduler(
            [torch.optim.lr_scheduler.ConstantLR(o, 0.5, 4),
             torch.optim.lr_scheduler.ExponentialLR(o, 0.95)]
        ),
    ),
    "warm_restarts": (
        lambda ps: torch.optim.NAdam(ps, lr=0.01),
        lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, 4, 2, 1e-4),
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(SCHEDULED_OPTS))
def test_from_torch_translates_the_attached_scheduler(name):
    make_opt, make_sched = SCHEDULED_OPTS[name]
    shapes = [(3, 2), (2,)]
    p0 = [np.linspace(-1, 1, 6).reshape(3, 2), np.array([0.5, -0.25])]
    ts = [torch.tensor(p, requires_grad=True) for p in p0]
    opt = make_opt(ts)
    sched = make_sched(opt)
    tx = optim.from_torch(opt, [jnp.asarray(p) for p in p0], scheduler=sched)
    grads = random_grads(shapes, 30)
    for g in grads:
        for t, gi in zip(ts, g):
            t.grad = torch.tensor(gi)
        opt.step()
        sched.step()
    params = [jnp.asarray(p) for p in p0]
    state = tx.init(params)
    for g in grads:
        u, state = tx.update([jnp.asarray(x) for x in g], state, params)
        params = optax.apply_updates(params, u)
    for a, t in zip(params, ts):
        np.testing.assert_allclose(np.asarray(a), t.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_from_torch_refuses_schedulers_it_cannot_translate():
    ts = [torch.zeros(3, requires_grad=True)]
    opt = torch.optim.SGD(ts, lr=0.1)
    lam = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 0.9**e)
    with pytest.raises(ValueError, match="schedule_from_torch"):
        optim.from_torch(opt, [jnp.zeros(3)], scheduler=lam)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
    with pytest.raises(ValueError, match="reduce_lr_on_plateau"):
        optim.from_torch(opt, [jnp.zeros(3)], scheduler=plateau)
    other = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match="another optimizer"):
        optim.from_torch(other, [jnp.zeros(1)], scheduler=lam)
