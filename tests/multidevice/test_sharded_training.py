"""Parity models trained on sharded devices equal the single-device run (float64).

50 steps of the parity suite's Flax MLP and CNN on the digits data, with jaxreg
penalties, decay transforms and optimizers, under three layouts on 8 simulated CPU
devices (automatic/GSPMD sharding, ``jax.sharding.Mesh`` with Auto axes):

- data parallel: parameters and optimizer state replicated, batch split over 8;
- FSDP: each parameter (and its optimizer state) split along its first dimension
  divisible by 8, batch split over the same axis;
- tensor parallel: kernels split along their output dimension over ``model`` (2),
  batch split over ``data`` (4).

Also: the compiled step's HLO shows that penalties and weight decay add no all-gather
of parameters, only scalar all-reduces for the penalty value.
"""

from __future__ import annotations

import contextlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxreg
from jaxreg import optim
from parity import models
from parity.data import batch_indices, load_digits
from parity.tolerances import F64_SAME

STEPS = 50
BATCH = 128
TOL = F64_SAME  # float64; measured differences are ~1e-15 (reductions split over devices)
AUTO2 = (AxisType.Auto, AxisType.Auto)


def _mesh(layout):
    if layout == "tp":
        return jax.make_mesh((4, 2), ("data", "model"), axis_types=AUTO2)
    return jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))


def _param_spec(layout, leaf):
    if layout == "dp":
        return P()
    if layout == "fsdp":  # first dimension divisible by 8
        for d, n in enumerate(leaf.shape):
            if n % 8 == 0:
                return P(*([None] * d), "data")
        return P()
    # tensor parallel: the output (last) dimension over "model"
    if leaf.ndim >= 1 and leaf.shape[-1] % 2 == 0:
        return P(*([None] * (leaf.ndim - 1)), "model")
    return P()


COMBOS = {  # name: (penalty-wrapped loss kwargs, optimizer)
    "sgd_momentum+l2": ({"l2": 1e-3}, lambda: optim.sgd(0.05, momentum=0.9)),
    "adam+l1": ({"l1": 1e-4}, lambda: optim.adam(1e-3)),
    "adamw_masked": (
        {},
        lambda: optim.adamw(
            1e-3, weight_decay=0.05, weight_decay_mask=jaxreg.masks.exclude_names("bias")
        ),
    ),
    "rmsprop_wd": ({}, lambda: optim.rmsprop(1e-3, weight_decay=1e-3)),
    "sgd+prox_l1": ({}, lambda: optax.chain(optim.sgd(0.05), jaxreg.proximal_l1(0.05 * 1e-4))),
    "adafactor+elastic": ({"l1": 1e-5, "l2": 1e-4}, lambda: optim.adafactor(1e-2)),
}
CASES = [(m, c, lay) for m in ("mlp",) for c in COMBOS for lay in ("dp", "fsdp", "tp")] + [
    ("cnn", c, lay) for c in ("sgd_momentum+l2", "adamw_masked") for lay in ("dp", "fsdp", "tp")
]


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def _setup(model_name, combo):
    model = models.flax_model(model_name, jnp.float64)
    params = model.init(jax.random.key(0), jnp.zeros((2, 8, 8, 1)), train=False)["params"]
    reg, make_tx = COMBOS[combo]
    tx = make_tx()

    def data_loss(p, x, y):
        logits = model.apply({"params": p}, x, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss_fn = jaxreg.regularized(data_loss, **reg) if reg else data_loss

    def step(p, s, x, y):
        loss, g = jax.value_and_grad(loss_fn)(p, x, y)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    return params, tx, step


def _train(digits, model_name, combo, layout=None):
    params, tx, step = _setup(model_name, combo)
    x_all = models.flax_input(digits.x_train)
    idx = batch_indices(len(digits.y_train), BATCH, STEPS)
    if layout is None:
        put_p = put_b = lambda a: jax.device_put(a, jax.devices()[0])
        jstep = jax.jit(step)
    else:
        mesh = _mesh(layout)
        put_p = lambda t: jax.tree.map(
            lambda a: jax.device_put(a, NamedSharding(mesh, _param_spec(layout, a))), t
        )
        put_b = lambda a: jax.device_put(a, NamedSharding(mesh, P("data")))
        jstep = jax.jit(step, donate_argnums=(0, 1))
    p = put_p(params)
    p_in = jax.tree.map(lambda a: a.sharding, p)
    with jax.set_mesh(mesh) if layout else contextlib.nullcontext():
        s = jax.jit(tx.init)(p)  # the mesh in context puts even the step count on it
        s_in = jax.tree.map(lambda a: a.sharding, s)
        losses = []
        for b in idx:
            p, s, loss = jstep(p, s, put_b(x_all[b]), put_b(digits.y_train[b]))
            losses.append(float(loss))
    return p, s, np.array(losses), p_in, s_in


@pytest.fixture(scope="module")
def reference(digits):
    cache = {}

    def get(model_name, combo):
        if (model_name, combo) not in cache:
            cache[model_name, combo] = _train(digits, model_name, combo)
        return cache[model_name, combo]

    return get


@pytest.mark.parametrize("model_name,combo,layout", CASES)
def test_sharded_training_equals_single_device(digits, reference, model_name, combo, layout):
    p_ref, s_ref, loss_ref, _, _ = reference(model_name, combo)
    p, s, losses, p_in, s_in = _train(digits, model_name, combo, layout)
    np.testing.assert_allclose(losses, loss_ref, rtol=TOL, atol=0)
    scale = max(float(np.max(np.abs(a))) for a in jax.tree.leaves(p_ref))
    for path, a, r in zip(
        jaxreg.masks.selected_paths(None, p), jax.tree.leaves(p), jax.tree.leaves(p_ref)
    ):
        err = float(np.max(np.abs(np.asarray(a) - np.asarray(r)))) / scale
        assert err <= TOL, f"{path}: {err:.2e} after {STEPS} steps"
    for a, r in zip(jax.tree.leaves(s), jax.tree.leaves(s_ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(r), rtol=TOL, atol=TOL * scale)
    # Shardings out == shardings in: nothing replicated or regathered along the way.
    for what, out, inp in (("param", p, p_in), ("state", s, s_in)):
        for a, sh in zip(jax.tree.leaves(out), jax.tree.leaves(inp)):
            assert a.sharding.is_equivalent_to(sh, a.ndim), (
                f"{what} leaf {a.shape}: {a.sharding} after {STEPS} steps, {sh} at the start"
            )


# --- HLO: the regularization adds no all-gather -----------------------------------------


def _collectives(hlo: str, op: str) -> list[str]:
    return [line for line in hlo.splitlines() if re.search(rf"\b{op}(-start)?\(", line)]


def _fsdp_inputs(tx):
    params, _, _ = _setup("mlp", "adamw_masked")
    mesh = _mesh("fsdp")
    put = lambda t: jax.tree.map(
        lambda a: jax.device_put(a, NamedSharding(mesh, _param_spec("fsdp", a))), t
    )
    p = put(params)
    g = put(jax.tree.map(lambda a: a * 0.5 + 0.1, params))
    return p, g, jax.jit(tx.init)(p), mesh


def test_regularization_alone_compiles_without_all_gather():
    tx = optax.chain(
        jaxreg.add_weight_decay(1e-3),
        jaxreg.decoupled_weight_decay(1e-2, 1e-3),
        jaxreg.add_l1_decay(1e-4),
        jaxreg.proximal_l1(1e-5),
    )
    p, g, s, _ = _fsdp_inputs(tx)

    def reg_only(p, g, s):
        value, pen_grad = jax.value_and_grad(
            lambda q: jaxreg.l1_penalty(q) * 1e-4 + jaxreg.l2_penalty(q) * 1e-3
        )(p)
        u, s = tx.update(jax.tree.map(jnp.add, g, pen_grad), s, p)
        return value, optax.apply_updates(p, u), s

    hlo = jax.jit(reg_only).lower(p, g, s).compile().as_text()
    assert _collectives(hlo, "all-gather") == [], "regularization gathers parameters"
    reduces = _collectives(hlo, "all-reduce")
    assert reduces, "the penalty value needs a cross-device sum; HLO shows none"
    for line in reduces:  # only scalars (the partial penalty sums) cross devices
        shapes = re.findall(r"[fs]\d+\[([\d,]*)\]", line.split("=", 1)[1].split("all-reduce")[0])
        assert all(s == "" for s in shapes), f"non-scalar all-reduce: {line.strip()}"


def test_penalty_and_decay_add_no_collectives_to_the_training_step(digits):
    x = jnp.asarray(models.flax_input(digits.x_train[:BATCH]))
    y = jnp.asarray(digits.y_train[:BATCH])
    model = models.flax_model("mlp", jnp.float64)

    def compiled(reg, tx):
        def loss(p, x, y):
            logits = model.apply({"params": p}, x, train=True)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss_fn = jaxreg.regularized(loss, **reg) if reg else loss

        def step(p, s, x, y):
            g = jax.grad(loss_fn)(p, x, y)
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s

        p, _, s, mesh = _fsdp_inputs(tx)
        xs = jax.device_put(x, NamedSharding(mesh, P("data")))
        ys = jax.device_put(y, NamedSharding(mesh, P("data")))
        return jax.jit(step).lower(p, s, xs, ys).compile().as_text()

    plain = compiled({}, optim.sgd(0.1, momentum=0.9))
    regd = compiled({"l1": 1e-4, "l2": 1e-3}, optim.sgd(0.1, momentum=0.9, weight_decay=1e-3))
    adamw = compiled({}, optim.adamw(1e-3, weight_decay=0.05))
    adam_plain = compiled({}, optim.adamw(1e-3, weight_decay=0.0))
    assert len(_collectives(regd, "all-gather")) == len(_collectives(plain, "all-gather"))
    assert len(_collectives(adamw, "all-gather")) == len(_collectives(adam_plain, "all-gather"))


# --- a flat parameter buffer sharded along its one axis (ZeRO-style) ---------------------


@pytest.mark.parametrize("fused", [False, True], ids=["adamw", "fused_adamw"])
def test_flat_buffer_sharded_equals_per_leaf_single_device(digits, fused):
    """jaxreg.flat with pad_to=8, each buffer split over 8 devices: every device holds an
    eighth of every parameter and optimizer moment. 20 steps of the CNN with AdamW (no
    decay on biases) equal the per-leaf single-device run; the buffers keep their
    sharding; the optimizer update alone has no collective (the model's unravel gathers)."""
    steps = 20
    model = models.flax_model("cnn", jnp.float64)
    params = model.init(jax.random.key(0), jnp.zeros((2, 8, 8, 1)), train=False)["params"]
    nobias = jaxreg.masks.exclude_names("bias")

    def loss(p, x, y):
        logits = model.apply({"params": p}, x, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    tx = optim.adamw(1e-3, weight_decay=0.05, weight_decay_mask=nobias)
    x_all = models.flax_input(digits.x_train)
    idx = batch_indices(len(digits.y_train), BATCH, steps)

    @jax.jit
    def ref_step(p, s, x, y):
        g = jax.grad(loss)(p, x, y)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    p_ref, s_ref = params, tx.init(params)
    for b in idx:
        p_ref, s_ref = ref_step(p_ref, s_ref, x_all[b], digits.y_train[b])

    mesh = _mesh("fsdp")
    fp = jaxreg.flat.ravel(params, mask=nobias, pad_to=8)
    kw = dict(weight_decay=0.05, weight_decay_mask=fp.multipliers)
    opt = optim.fused_adamw(1e-3, **kw) if fused else optim.adamw(1e-3, **kw)

    def apply(fp, g, s):
        if fused:
            return opt.step(fp, g, s)
        u, s = opt.update(g, s, fp)
        return optax.apply_updates(fp, u), s

    def step(fp, s, x, y):
        g = jax.grad(lambda f: loss(f.unravel(), x, y))(fp)
        return apply(fp, g, s)

    row = NamedSharding(mesh, P("data"))
    fp = jax.device_put(fp, row)
    s = jax.jit(opt.init)(fp)
    jstep = jax.jit(step, donate_argnums=(0, 1))
    hlo = jax.jit(apply).lower(fp, fp, s).compile().as_text()
    for op in ("all-gather", "all-reduce", "all-to-all", "collective-permute"):
        assert not _collectives(hlo, op), f"{op} in the optimizer update of a sharded buffer"
    for b in idx:
        fp, s = jstep(fp, s, jax.device_put(x_all[b], row), jax.device_put(digits.y_train[b], row))
    scale = max(float(np.max(np.abs(a))) for a in jax.tree.leaves(p_ref))
    got = fp.unravel()
    for path, a, r in zip(
        jaxreg.masks.selected_paths(None, got), jax.tree.leaves(got), jax.tree.leaves(p_ref)
    ):
        err = float(np.max(np.abs(np.asarray(a) - np.asarray(r)))) / scale
        assert err <= TOL, f"{path}: {err:.2e} after {steps} steps"
    for buf in jax.tree.leaves((fp, s)):
        if buf.ndim == 1:
            assert buf.sharding.is_equivalent_to(row, 1), f"buffer now {buf.sharding}"
