"""jaxreg.flat: parameter trees packed into one buffer per (dtype, multiplier) group.

References: numpy's own concatenation of the leaves (the buffer layout); the per-leaf tree
(round trips are bit-exact); torch optimizers with the same parameter groups (training on
a FlatParams equals torch to float64 round-off, F64_ATOL in helpers.py); the per-leaf
jaxreg run of every elementwise optimizer (the flat run does the same arithmetic on the
same numbers, so the two agree to round-off).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as F
from flax import nnx
from helpers import (
    assert_equals_torch_named,
    assert_trees_close,
    named_problem,
    run_jax_steps,
    run_torch_groups,
)

import jaxreg
from jaxreg import flat, masks, optim
from parity import convert, models
from parity.data import load_digits


def _mixed_tree():
    r = np.random.default_rng(0)
    return {
        "a": {"kernel": jnp.asarray(r.normal(size=(3, 4))), "bias": jnp.asarray(r.normal(size=4))},
        "b": jnp.asarray(r.normal(size=(2, 2)), jnp.float32),
        "count": jnp.arange(5, dtype=jnp.int32),
        "half": jnp.asarray(r.normal(size=3), jnp.bfloat16),
        "scalar": jnp.asarray(2.5),
    }


def _assert_bitwise(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_layout_is_numpys_concatenation_per_group_and_round_trips():
    t = _mixed_tree()
    fp = flat.ravel(t, pad_to=8)
    # groups in order of first leaf (jax.tree.leaves order: a/bias, a/kernel, b, count, ...)
    assert list(fp.multipliers) == ["float64", "float32", "int32", "bfloat16"]
    leaves = jax.tree.leaves(t)
    by_dtype: dict[str, list[np.ndarray]] = {}
    for x in leaves:
        by_dtype.setdefault(str(x.dtype), []).append(np.asarray(x).ravel())
    for name, buf in zip(fp.layout.names, fp.buffers):
        want = np.concatenate(by_dtype[name])
        assert buf.shape[0] % 8 == 0 and buf.shape[0] - len(want) < 8
        np.testing.assert_array_equal(np.asarray(buf)[: len(want)], want)
        np.testing.assert_array_equal(np.asarray(buf)[len(want) :], 0)
    assert fp.size == sum(x.size for x in leaves)
    _assert_bitwise(fp.unravel(), t)
    _assert_bitwise(jax.jit(lambda f: f.unravel())(fp), t)  # traced: plain slices
    _assert_bitwise(flat.ravel(jax.tree.map(np.asarray, t)).unravel(), t)  # host input
    assert fp.buffers[3].dtype == ml_dtypes.bfloat16


def test_nnx_state_round_trip_and_mask_groups():
    model = nnx.Sequential(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), nnx.LayerNorm(4, rngs=nnx.Rngs(1)))
    state = nnx.state(model, nnx.Param)
    fp = flat.ravel(state, mask=masks.no_bias_no_norm(model))
    back = fp.unravel()
    assert isinstance(back, nnx.State)
    _assert_bitwise(back, state)
    # the kernel decays, the bias and the norm's scale/bias do not
    assert fp.multipliers == {"float32@0": 0.0, "float32": 1.0}
    sizes = dict(zip(fp.layout.names, (b.shape[0] for b in fp.buffers)))
    assert sizes == {"float32": 12, "float32@0": 4 + 4 + 4}
    nnx.update(model, back)  # the unravelled state fits the model again


@pytest.mark.slow
def test_gradient_wrt_flat_params_is_the_per_leaf_gradient_packed():
    net = models.flax_model("mlp_ln", jnp.float64)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 8, 8, 1)))
    y = jnp.arange(16) % 10
    params = net.init(jax.random.key(0), x)["params"]

    def loss(p):
        return optax.softmax_cross_entropy_with_integer_labels(
            net.apply({"params": p}, x), y
        ).mean()

    fp = flat.ravel(params, mask=masks.no_bias_no_norm(), pad_to=4)
    g_flat = jax.jit(jax.grad(lambda f: loss(f.unravel())))(fp)
    assert isinstance(g_flat, flat.FlatParams) and g_flat.layout == fp.layout
    g_tree = jax.grad(loss)(params)
    assert_trees_close(g_flat.unravel(), g_tree)
    for b, length in zip(g_flat.buffers, _used(fp)):  # the padding gets zero gradient
        assert b.shape[0] > length or b.shape[0] % 4 == 0
        np.testing.assert_array_equal(np.asarray(b)[length:], 0)


def _flat_run(tx, fp, grads):
    state = tx.init(fp)

    @jax.jit
    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    for g in grads:
        fp, state = step(fp, state, fp.ravel_like(g))
    return fp, state


def _fused_flat_run(fo, fp, grads):
    state = fo.init(fp)
    step = jax.jit(fo.step, donate_argnums=(0, 2))
    for g in grads:
        fp, state = step(fp, fp.ravel_like(g), state)
    return fp, state


@pytest.mark.parametrize("opt", ["adamw", "sgd", "fused_adamw", "fused_sgd"])
def test_training_on_flat_params_equals_torch_param_groups(opt):
    params, grads = named_problem(2)
    base = 0.1
    m = masks.multipliers(
        (masks.glob("fc2/*"), 0.25), (masks.glob("emb/**"), 3.0), (masks.no_bias_no_norm(), 1.0)
    )
    fp = flat.ravel(params, mask=m, pad_to=8)
    assert sorted(fp.multipliers.values()) == [0.0, 0.25, 1.0, 3.0]
    groups = optim.to_param_groups(m, params, weight_decay=base)
    wd = {"weight_decay": base, "weight_decay_mask": fp.multipliers}
    if opt.endswith("adamw"):
        make = optim.fused_adamw if opt.startswith("fused") else optim.adamw
        tx = make(1e-2, **wd)

        def make_torch(g):
            return torch.optim.AdamW(g, lr=1e-2, weight_decay=base)
    else:
        make = optim.fused_sgd if opt.startswith("fused") else optim.sgd
        tx = make(1e-2, momentum=0.9, nesterov=True, **wd)

        def make_torch(g):
            return torch.optim.SGD(g, lr=1e-2, momentum=0.9, nesterov=True, weight_decay=base)

    run = _fused_flat_run if opt.startswith("fused") else _flat_run
    out, state = run(tx, fp, grads)
    ref = run_torch_groups(make_torch, groups, params, grads)
    assert_equals_torch_named(out.unravel(), ref)
    for b, length in zip(out.buffers, _used(fp)):
        np.testing.assert_array_equal(np.asarray(b)[length:], 0)  # the padding stayed zero
    # the optimizer state is flat too; unravel_all gives it per leaf
    per_leaf = flat.unravel_all(state)
    assert not any(flat.is_flat(x) for x in jax.tree.leaves(per_leaf, is_leaf=flat.is_flat))
    moments = [x for x in jax.tree.leaves(state, is_leaf=flat.is_flat) if flat.is_flat(x)]
    assert moments and all(x.layout == fp.layout for x in moments)


OPTIMIZERS = {
    "sgd": lambda m: optim.sgd(0.05, momentum=0.9, weight_decay=0.1, weight_decay_mask=m),
    "adam": lambda m: optim.adam(0.01, weight_decay=0.1, weight_decay_mask=m),
    "adamw": lambda m: optim.adamw(0.01, weight_decay=0.1, amsgrad=True, weight_decay_mask=m),
    "adamax": lambda m: optim.adamax(0.01, weight_decay=0.1, weight_decay_mask=m),
    "nadam": lambda m: optim.nadam(0.01, weight_decay=0.1, weight_decay_mask=m),
    "radam": lambda m: optim.radam(0.01, weight_decay=0.1, weight_decay_mask=m),
    "rmsprop": lambda m: optim.rmsprop(
        0.01, momentum=0.5, centered=True, weight_decay=0.1, weight_decay_mask=m
    ),
    "adagrad": lambda m: optim.adagrad(0.05, weight_decay=0.1, weight_decay_mask=m),
    "adadelta": lambda m: optim.adadelta(1.0, weight_decay=0.1, weight_decay_mask=m),
    "asgd": lambda m: optim.asgd(0.01, t0=3, weight_decay=0.1, weight_decay_mask=m),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_elementwise_optimizer_runs_the_same_on_flat_params(name):
    """Per-leaf run (checked against torch in tests/optim) == the same run on FlatParams."""
    params, grads = named_problem(3, steps=12)
    m = masks.multipliers((masks.glob("fc2/*"), 0.5), (masks.no_bias_no_norm(), 1.0))
    fp = flat.ravel(params, mask=m, pad_to=16)
    out = run_jax_steps(OPTIMIZERS[name](fp.multipliers), fp, [fp.ravel_like(g) for g in grads])
    assert_trees_close(out.unravel(), run_jax_steps(OPTIMIZERS[name](m), params, grads))
    for b, length in zip(out.buffers, _used(fp)):
        np.testing.assert_array_equal(np.asarray(b)[length:], 0)


def _used(fp):
    out = [0] * len(fp.layout.names)
    for s in fp.layout.slots:
        out[s.group] += int(np.prod(s.shape, dtype=np.int64))
    return out


@pytest.mark.slow
def test_train_step_on_digits_equals_torch():
    """A whole jitted, donated train step on the parity MLP+LayerNorm (float64, 15 steps):
    the model reads flat.unravel(), AdamW decays weights only -- as torch with two groups."""
    d = load_digits()
    tm = models.torch_model("mlp_ln", 0).double()
    template = models.flax_model("mlp_ln", jnp.float64).init(
        jax.random.key(0), jnp.zeros((2, 8, 8, 1))
    )
    variables = convert.torch_to_flax(tm.state_dict(), models.layers("mlp_ln"), template)
    net = models.flax_model("mlp_ln", jnp.float64)
    fp = flat.ravel(variables["params"], mask=masks.no_bias_no_norm(), pad_to=8)
    fo = optim.fused_adamw(1e-2, weight_decay=0.05, weight_decay_mask=fp.multipliers)

    def train_step(fp, state, x, y):
        def loss(f):
            logits = net.apply({"params": f.unravel()}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        value, g = jax.value_and_grad(loss)(fp)
        fp, state = fo.step(fp, g, state)
        return fp, state, value

    step = jax.jit(train_step, donate_argnums=(0, 1))
    decay = [p for n, p in tm.named_parameters() if n.endswith("weight") and "ln" not in n]
    rest = [p for n, p in tm.named_parameters() if not any(p is q for q in decay)]
    topt = torch.optim.AdamW(
        [{"params": decay}, {"params": rest, "weight_decay": 0.0}], lr=1e-2, weight_decay=0.05
    )
    state = fo.init(fp)
    for i in range(15):
        x, y = d.x_train[32 * i : 32 * (i + 1)], d.y_train[32 * i : 32 * (i + 1)]
        fp, state, jloss = step(fp, state, jnp.asarray(models.flax_input(x)), jnp.asarray(y))
        tloss = F.cross_entropy(tm(torch.tensor(models.torch_input(x))), torch.tensor(y))
        topt.zero_grad()
        tloss.backward()
        topt.step()
        np.testing.assert_allclose(float(jloss), tloss.item(), rtol=1e-12)
    back = convert.torch_to_flax(tm.state_dict(), models.layers("mlp_ln"), template)["params"]
    assert_trees_close(fp.unravel(), back)


def test_errors():
    params, _ = named_problem()
    fp = flat.ravel(params)
    with pytest.raises(ValueError, match="pad_to"):
        flat.ravel(params, pad_to=0)
    with pytest.raises(ValueError, match="no leaves"):
        flat.ravel({})
    with pytest.raises(ValueError, match="only numeric arrays"):
        flat.ravel({"w": jnp.ones(2), "key": jax.random.key(0)})
    with pytest.raises(ValueError, match="FlatParams"):
        flat.ravel({"inner": fp})
    with pytest.raises(ValueError, match="fc1/bias"):
        fp.ravel_like(jax.tree.map(lambda x: x[..., :1] if x.ndim == 1 else x, params))
    with pytest.raises(ValueError, match="structure"):
        fp.ravel_like({"fc1": params["fc1"]})
    with pytest.raises(ValueError, match=r"'float64' is float64\[[0-9]+\], the layout has"):
        flat.FlatParams((fp.buffers[0][:-1],), fp.layout).unravel()
    # shape-dependent code refuses a FlatParams instead of silently doing something else
    with pytest.raises(ValueError, match="adafactor"):
        optim.adafactor(1e-2).init(fp)
    with pytest.raises(ValueError, match="group_lasso_penalty"):
        jaxreg.group_lasso_penalty(fp)
    with pytest.raises(ValueError, match="orthogonal_penalty"):
        jaxreg.orthogonal_penalty(fp)
    with pytest.raises(ValueError, match="Muon only supports 2D parameters"):
        optim.muon(1e-2).init(fp)
    # a name/shape mask would see the buffers, not the parameters: refused
    tx = optim.adamw(1e-2, weight_decay_mask=masks.no_bias_no_norm())
    with pytest.raises(ValueError, match="flat.ravel"):
        tx.update(fp, tx.init(fp), fp)
    with pytest.raises(ValueError, match="flat.ravel"):
        jaxreg.l2_penalty(fp, mask=masks.min_ndim(2))
    with pytest.raises(ValueError, match="flat.ravel"):  # also as an optax.masked mask function
        optax.masked(optax.add_decayed_weights(0.1), masks.min_ndim(2)).init(fp)
    # ...while the group multipliers (a tree matched by path) and None are fine
    assert float(jaxreg.l2_penalty(fp, mask=fp.multipliers)) == pytest.approx(
        float(jaxreg.l2_penalty(params)), rel=1e-14
    )


def test_checkpoint_round_trip_of_flat_params_and_state(tmp_path):
    """jaxreg.checkpoint saves a FlatParams and its flat optimizer state; restoring into
    the same layout and continuing equals the uninterrupted run bit for bit."""
    from jaxreg.checkpoint import Checkpointer

    params, grads = named_problem(4, steps=10)
    fp = flat.ravel(params, mask=masks.no_bias_no_norm(), pad_to=4)
    tx = optim.adamw(1e-2, weight_decay=0.1, weight_decay_mask=fp.multipliers)
    flat_grads = [fp.ravel_like(g) for g in grads]
    straight = run_jax_steps(tx, fp, flat_grads)
    half, state = _flat_run(tx, fp, grads[:5])
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(5, {"params": half, "opt": state})
    with Checkpointer(tmp_path) as ckpt:
        like = {"params": fp, "opt": tx.init(fp)}
        restored, _ = ckpt.restore(like)
    assert isinstance(restored["params"], flat.FlatParams)
    p, s = restored["params"], restored["opt"]

    @jax.jit
    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    for g in flat_grads[5:]:
        p, s = step(p, s, g)
    _assert_bitwise(p.unravel(), straight.unravel())


def test_unravel_checks_buffer_dtypes_and_shapes():
    fp = flat.ravel({"w": jnp.ones((2, 3)), "n": jnp.arange(4)})
    cast = flat.FlatParams(tuple(b.astype(jnp.float32) for b in fp.buffers), fp.layout)
    with pytest.raises(ValueError, match=r"'float64' is float32\[6\], the layout has float64\[6\]"):
        cast.unravel()
    short = flat.FlatParams((fp.buffers[0], fp.buffers[1][:3]), fp.layout)
    with pytest.raises(ValueError, match=r"do not fit their layout"):
        short.unravel()
