"""The mask language, widened: multipliers, globs, module types, presets, used_by,
torch parameter groups, skip_unused.

References: PyTorch itself (parameter groups with their own ``weight_decay``; params
whose ``.grad`` is None are skipped by every optimizer), timm's
``param_groups_weight_decay`` rule transcribed on the torch side (``param.ndim <= 1 or
name.endswith(".bias")``, read from timm 1.0.31's ``timm/optim/_param_groups.py``),
Python's ``fnmatch`` for globs, hand-computed sums for multiplied penalties.
Float64 throughout; trajectories must agree to 1e-12 (round-off, as everywhere).
"""

from __future__ import annotations

import fnmatch

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import linen as nn
from flax import nnx
from helpers import (
    assert_equals_torch_named,
    named_problem,
    run_jax_steps,
    run_torch_groups,
)

import jaxreg
from jaxreg import masks, optim
from jaxreg._tree import leaf_paths
from parity.models import FlaxCNN, FlaxMLP, TorchCNN, TorchMLP
from parity.tolerances import F64_SAME

F64 = F64_SAME


def _tree():
    r = np.random.default_rng(0)
    return {
        "enc": {
            "kernel": jnp.asarray(r.normal(size=(3, 4))),
            "bias": jnp.asarray(r.normal(size=4)),
        },
        "norm": {"scale": jnp.asarray(r.normal(size=4)), "bias": jnp.asarray(r.normal(size=4))},
        "head": {
            "kernel": jnp.asarray(r.normal(size=(4, 2))),
            "bias": jnp.asarray(r.normal(size=2)),
        },
        "step": jnp.zeros((), jnp.int32),
    }


# ------------------------------------------------------------------------- multipliers


def test_multipliers_first_rule_wins_and_default():
    t = _tree()
    m = masks.multipliers(
        (masks.glob("head/*"), 0.1),
        (masks.min_ndim(2), 1.0),
        (masks.glob("norm/**"), 0.0),
        default=0.5,
    )
    names = [
        "enc/bias",
        "enc/kernel",
        "head/bias",
        "head/kernel",
        "norm/bias",
        "norm/scale",
        "step",
    ]
    assert ["/".join(p) for p in leaf_paths(t)] == names
    factors = dict(zip(names, masks.resolve_factors(m, t)))
    assert factors == {
        "enc/bias": 0.5,
        "enc/kernel": 1.0,
        "head/bias": 0.1,
        "head/kernel": 0.1,
        "norm/bias": 0.0,
        "norm/scale": 0.0,
        "step": 0.0,  # int leaves: never
    }
    # restricting by a selector multiplies; | and ~ of multipliers are refused
    r = masks.resolve_factors(m & masks.exclude_names("bias"), t)
    assert r == [0.0, 1.0, 0.0, 0.1, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="ambiguous"):
        masks.resolve_factors(m | masks.min_ndim(2), t)
    with pytest.raises(ValueError, match="ambiguous"):
        masks.resolve_factors(~m, t)


def test_multiplier_tree_prefix_and_errors():
    t = _tree()
    tree_mask = {"enc": 2.0, "norm": False, "head": {"kernel": 0.25, "bias": 0}, "step": True}
    # leaves: enc/bias, enc/kernel, head/bias, head/kernel, norm/bias, norm/scale, step (int)
    assert masks.resolve_factors(tree_mask, t) == [2.0, 2.0, 0.0, 0.25, 0.0, 0.0, 0.0]
    for bad, match in [
        ({"enc": -1.0, "norm": True, "head": True, "step": True}, "finite and >= 0"),
        ({"enc": float("nan"), "norm": True, "head": True, "step": True}, "finite and >= 0"),
        ({"enc": "x", "norm": True, "head": True, "step": True}, "bool or a multiplier"),
    ]:
        with pytest.raises(ValueError, match=match):
            masks.resolve_factors(bad, t)
    with pytest.raises(ValueError, match="finite and >= 0"):
        masks.multipliers((masks.min_ndim(2), -0.5))
    with pytest.raises(ValueError, match=r"\(mask, factor\) pair"):
        masks.multipliers(masks.min_ndim(2))


def test_penalties_scale_each_leaf_by_its_multiplier():
    t = _tree()
    m = masks.multipliers((masks.glob("head/**"), 0.1), (masks.glob("enc/kernel"), 3.0))
    f = {"head/kernel": 0.1, "head/bias": 0.1, "enc/kernel": 3.0}
    leaf = {"/".join(k): np.asarray(v) for k, v in zip(leaf_paths(t), jax.tree.leaves(t))}
    want_l2 = sum(w * np.sum(leaf[p] ** 2) for p, w in f.items())
    want_l1 = sum(w * np.sum(np.abs(leaf[p])) for p, w in f.items())
    want_gl = sum(w * np.linalg.norm(leaf[p]) for p, w in f.items())
    np.testing.assert_allclose(float(jaxreg.l2_penalty(t, m)), want_l2, rtol=1e-14)
    np.testing.assert_allclose(float(jaxreg.l1_penalty(t, m)), want_l1, rtol=1e-14)
    np.testing.assert_allclose(float(jaxreg.group_lasso_penalty(t, mask=m)), want_gl, rtol=1e-14)
    ref = jax.tree.map(jnp.zeros_like, t)
    np.testing.assert_allclose(
        float(jaxreg.l2_to_reference_penalty(t, ref, m)), want_l2, rtol=1e-14
    )
    np.testing.assert_allclose(
        float(jaxreg.elastic_net_penalty(t, 0.3, 0.7, m)), 0.3 * want_l1 + 0.7 * want_l2, rtol=1e-14
    )
    enc = masks.glob("enc/kernel")  # orthogonal_penalty itself is checked against Keras' formula
    np.testing.assert_allclose(
        float(jaxreg.orthogonal_penalty(t, mask=masks.multipliers((enc, 3.0)))),
        3.0 * float(jaxreg.orthogonal_penalty(t, mask=enc)),
        rtol=1e-15,
    )
    # gradient: 2 * multiplier * w
    g = jax.grad(lambda p: jaxreg.l2_penalty(p, m))({k: v for k, v in t.items() if k != "step"})
    np.testing.assert_allclose(
        np.asarray(g["head"]["kernel"]), 0.2 * leaf["head/kernel"], rtol=1e-15
    )
    np.testing.assert_array_equal(np.asarray(g["norm"]["scale"]), 0.0)


def test_describe_shows_multipliers():
    t = _tree()
    text = masks.describe(masks.multipliers((masks.glob("head/kernel"), 0.1), default=1.0), t)
    rows = {line.split()[0]: line.split()[-2:] for line in text.splitlines()[1:-1]}
    assert rows["head/kernel"] == ["yes", "0.1"]
    assert rows["enc/kernel"] == ["yes", "1"]
    assert rows["step"] == ["no", "0"]
    assert text.splitlines()[-1] == "6 of 7 leaves selected (34 of 35 elements)"


# ------------------------------------------------------------------ torch param groups


@pytest.mark.parametrize("opt", ["adamw", "sgd"])
def test_multipliers_equal_torch_param_groups(opt):
    params, grads = named_problem()
    base = 0.1
    m = masks.multipliers(
        (masks.glob("fc2/*"), 0.25), (masks.glob("emb/**"), 3.0), (masks.no_bias_no_norm(), 1.0)
    )
    groups = optim.to_param_groups(m, params, weight_decay=base)
    got = sorted((g["weight_decay"], sorted(g["params"])) for g in groups)
    want = [
        (0.0, ["fc1.bias", "ln.bias", "ln.weight"]),
        (0.025, ["fc2.bias", "fc2.weight"]),
        (0.1, ["fc1.weight"]),
        (0.3, ["emb.weight"]),
    ]
    assert [n for _, n in got] == [n for _, n in want]
    np.testing.assert_allclose([w for w, _ in got], [w for w, _ in want], rtol=1e-15)
    if opt == "adamw":
        tx = jaxreg.optim.adamw(1e-2, weight_decay=base, weight_decay_mask=m)
        ref = run_torch_groups(
            lambda g: torch.optim.AdamW(g, lr=1e-2, weight_decay=base), groups, params, grads
        )
    else:
        tx = jaxreg.optim.sgd(1e-2, momentum=0.9, weight_decay=base, weight_decay_mask=m)
        ref = run_torch_groups(
            lambda g: torch.optim.SGD(g, lr=1e-2, momentum=0.9, weight_decay=base),
            groups,
            params,
            grads,
        )
    assert_equals_torch_named(run_jax_steps(tx, params, grads), ref)
    # the groups matter: one group with the base decay for everything ends elsewhere
    flat = run_torch_groups(
        lambda g: torch.optim.AdamW(g, lr=1e-2, weight_decay=base),
        [{"params": [n for g in groups for n in g["params"]]}],
        params,
        grads,
    )
    assert max(np.max(np.abs(flat[k] - ref[k])) for k in ref) > 1e-4


def test_from_param_groups_round_trip_and_transforms():
    params, grads = named_problem(1)
    groups = [
        {"params": ["fc1.weight", "fc2.weight"], "weight_decay": 0.05},
        {"params": ["emb.weight"]},  # torch's default: the optimizer's weight_decay
        {"params": ["fc1.bias", "fc2.bias", "ln.weight", "ln.bias"], "weight_decay": 0.0},
    ]
    m = optim.from_param_groups(groups, params, weight_decay=0.1)
    # leaves: emb/embedding, fc1/bias, fc1/kernel, fc2/bias, fc2/kernel, ln/bias, ln/scale
    assert masks.resolve_factors(m, params) == [1.0, 0.0, 0.5, 0.0, 0.5, 0.0, 0.0]
    back = optim.to_param_groups(m, params, weight_decay=0.1)
    assert sorted((g["weight_decay"], sorted(g["params"])) for g in back) == sorted(
        (g.get("weight_decay", 0.1), sorted(g["params"])) for g in groups
    )
    # decoupled decay transform with the multiplier mask == torch AdamW with the groups
    tx = optax.chain(jaxreg.optim.adam(1e-2), jaxreg.decoupled_weight_decay(0.1, 1e-2, mask=m))
    ref = run_torch_groups(
        lambda g: torch.optim.AdamW(g, lr=1e-2, weight_decay=0.1), groups, params, grads
    )
    assert_equals_torch_named(run_jax_steps(tx, params, grads), ref)


def test_param_group_errors():
    params, _ = named_problem()
    ok = [{"params": [optim.torch_name(p) for p in leaf_paths(params)]}]
    optim.from_param_groups(ok, params, weight_decay=0.1)
    cases = [
        ([{"params": ["fc1.weight", "nope"]}], "no leaf is called 'nope'"),
        (ok + [{"params": ["fc1.weight"]}], "more than one group"),
        ([{"params": ["fc1.weight"]}], "is in no group"),
        ([{"params": [1, 2]}], "must list parameter names"),
    ]
    for groups, match in cases:
        with pytest.raises(ValueError, match=match):
            optim.from_param_groups(groups, params, weight_decay=0.1)
    with pytest.raises(ValueError, match="base weight_decay is 0"):
        optim.from_param_groups([{**ok[0], "weight_decay": 0.1}], params, weight_decay=0.0)
    clash = {"a": {"kernel": jnp.ones(2), "weight": jnp.ones(2)}}
    with pytest.raises(ValueError, match="both map to torch name 'a.weight'"):
        optim.to_param_groups(None, clash, weight_decay=0.1)
    # a from_param_groups mask refuses params it was not built for
    m = optim.from_param_groups(ok, params, weight_decay=0.1)
    with pytest.raises(ValueError, match="no entry for leaf 'x'"):
        masks.resolve_factors(m, {"x": jnp.ones(2)})


def test_torch_name_rules():
    assert optim.torch_name("conv1/kernel") == "conv1.weight"
    assert optim.torch_name("bn1/scale") == "bn1.weight"
    assert optim.torch_name("tok/embedding") == "tok.weight"
    assert optim.torch_name(("blocks", "0", "bias")) == "blocks.0.bias"
    ren = {"Dense_0": "fc1", "encoder/layers_0": "encoder.layers.0", "encoder": "enc"}
    assert optim.torch_name("Dense_0/kernel", ren) == "fc1.weight"
    assert optim.torch_name("encoder/layers_0/kernel", ren) == "encoder.layers.0.weight"
    assert optim.torch_name("encoder/proj/bias", ren) == "enc.proj.bias"


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["mlp_ln", "cnn_bn"])
def test_timm_rule_round_trips_through_torch_names(arch):
    """timm's rule on torch named_parameters() == masks.timm_1d() on the Flax params."""
    torch_model = TorchMLP(layernorm=True) if arch == "mlp_ln" else TorchCNN(batchnorm=True)
    flax_model = FlaxMLP(layernorm=True) if arch == "mlp_ln" else FlaxCNN(batchnorm=True)
    x = jnp.zeros((1, 8, 8, 1)) if arch == "cnn_bn" else jnp.zeros((1, 64))
    params = flax_model.init(jax.random.key(0), x)["params"]
    # timm/optim/_param_groups.py: no decay if param.ndim <= 1 or name.endswith(".bias")
    # or fnmatch(name, pattern) for a no_weight_decay_list pattern.
    nwd = ["fc2.*"] if arch == "mlp_ln" else ["conv2.*"]
    decay, no_decay = [], []
    for name, p in torch_model.named_parameters():
        excluded = (
            p.ndim <= 1 or name.endswith(".bias") or any(fnmatch.fnmatch(name, q) for q in nwd)
        )
        (no_decay if excluded else decay).append(name)
    torch_groups = [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": 0.05},
    ]
    rule = masks.timm_1d([q.replace(".", "/") for q in nwd])
    back = optim.to_param_groups(rule, params, weight_decay=0.05)
    assert sorted((g["weight_decay"], sorted(g["params"])) for g in back) == sorted(
        (g["weight_decay"], sorted(g["params"])) for g in torch_groups
    )
    from_torch = optim.from_param_groups(torch_groups, params, weight_decay=0.05)
    assert masks.resolve(from_torch, params) == masks.resolve(rule, params)


# ------------------------------------------------------------------------------ globs


@pytest.mark.parametrize(
    "pattern",
    [
        "enc/*",
        "*/bias",
        "**/kernel",
        "norm/**",
        "**",
        "h?ad/kernel",
        "[eh]*/b*",
        "[!e]*/kernel",
        "enc/kernel",
    ],
)
def test_glob_matches_like_fnmatch_per_component(pattern):
    """Reference: fnmatch, applied component by component (``**`` = any components)."""
    t = _tree()
    got = masks.selected_paths(masks.glob(pattern), t)

    def ref_match(path: list[str], pat: list[str]) -> bool:
        if not pat:
            return not path
        if pat[0] == "**":
            return any(ref_match(path[i:], pat[1:]) for i in range(len(path) + 1))
        return bool(path) and fnmatch.fnmatchcase(path[0], pat[0]) and ref_match(path[1:], pat[1:])

    want = [p for p in masks.selected_paths(None, t) if ref_match(p.split("/"), pattern.split("/"))]
    assert got == want
    assert got  # every pattern here matches something


def test_glob_errors():
    with pytest.raises(ValueError, match="non-empty strings"):
        masks.glob()
    with pytest.raises(ValueError, match="unclosed"):
        masks.glob("enc/[ab")
    t = {"^a": jnp.ones(1), "b": jnp.ones(1)}  # [^a] is a class of '^' and 'a', as in fnmatch
    assert masks.selected_paths(masks.glob("[^a]a"), t) == ["^a"]
    assert fnmatch.fnmatchcase("^a", "[^a]a") and not fnmatch.fnmatchcase("b", "[^a]")


# ------------------------------------------------------------------------ module types


class _NnxNet(nnx.Module):
    def __init__(self, rngs):
        self.stem = nnx.Linear(3, 4, rngs=rngs)
        self.blocks = nnx.List(
            [
                nnx.Sequential(nnx.Linear(4, 4, rngs=rngs), nnx.LayerNorm(4, rngs=rngs)),
                nnx.BatchNorm(4, rngs=rngs),
            ]
        )
        self.post = nnx.RMSNorm(4, rngs=rngs)
        self.head = nnx.Linear(4, 2, rngs=rngs)


class _LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Dense(4, name="proj")(x)
        x = nn.LayerNorm(name="weird_name")(x)  # found by type, not by name
        x = nn.Dense(4)(x)
        x = nn.GroupNorm(num_groups=2)(x)
        return nn.Dense(2, use_bias=False, name="head")(x)


def test_inside_norm_layers_nnx():
    net = _NnxNet(nnx.Rngs(0))
    state = nnx.state(net, nnx.Param)
    got = masks.selected_paths(masks.inside(masks.NORM_LAYERS, net), state)
    assert got == [
        "blocks/0/layers/1/bias",
        "blocks/0/layers/1/scale",
        "blocks/1/bias",
        "blocks/1/scale",
        "post/scale",
    ]
    assert masks.selected_paths(masks.inside(nnx.BatchNorm, net), state) == [
        "blocks/1/bias",
        "blocks/1/scale",
    ]
    by_type = masks.resolve(masks.no_bias_no_norm(net), state)
    by_name = masks.resolve(masks.no_bias_no_norm(), state)
    assert by_type == by_name  # Flax's own norm layers hold only scale and bias
    assert masks.selected_paths(masks.no_bias_no_norm(net), state) == [
        "blocks/0/layers/0/kernel",
        "head/kernel",
        "stem/kernel",
    ]


def test_inside_norm_layers_linen():
    x = jnp.ones((2, 3))
    params = _LinenNet().init(jax.random.key(0), x)["params"]
    got = masks.selected_paths(masks.inside(masks.NORM_LAYERS, _LinenNet(), x), params)
    assert got == ["GroupNorm_0/bias", "GroupNorm_0/scale", "weird_name/bias", "weird_name/scale"]
    assert masks.selected_paths(masks.kernels_only(), params) == [
        "Dense_0/kernel",
        "head/kernel",
        "proj/kernel",
    ]
    with pytest.raises(ValueError, match="needs example inputs"):
        masks.inside(masks.NORM_LAYERS, _LinenNet())
    with pytest.raises(ValueError, match="module classes"):
        masks.inside("LayerNorm", _LinenNet(), x)
    with pytest.raises(ValueError, match="expected a flax"):
        masks.inside(nn.LayerNorm, object())


# ---------------------------------------------------------------- used_by, skip_unused


def test_used_by_is_structural():
    params = {"a": jnp.ones((2, 2)), "b": jnp.ones(2), "zero": jnp.ones(3), "c": jnp.ones(2)}

    def loss(p, x):
        unused_branch = jnp.sum(p["c"])  # computed, but not part of the loss
        del unused_branch
        return jnp.sum(x @ p["a"]) + 0.0 * jnp.sum(p["zero"]), {"aux": p["b"]}

    got = masks.selected_paths(masks.used_by(loss, params, jnp.ones((1, 2))), params)
    assert got == ["a", "zero"]  # 0 * w still has a gradient in torch; aux does not count

    # torch agrees: which .grad are None after backward of the same loss
    tp = {k: torch.tensor(np.asarray(v), requires_grad=True) for k, v in params.items()}
    out = (torch.ones(1, 2, dtype=torch.float64) @ tp["a"]).sum() + 0.0 * tp["zero"].sum()
    torch.sum(tp["c"])
    out.backward()
    assert sorted(k for k, v in tp.items() if v.grad is not None) == got
    with pytest.raises(ValueError, match="argnum"):
        masks.used_by(loss, params, argnum=3)


def test_used_by_on_an_nnx_state():
    net = _NnxUnused(nnx.Rngs(0))
    graphdef, state = nnx.split(net, nnx.Param)
    used = masks.used_by(lambda s, x: jnp.sum(nnx.merge(graphdef, s)(x)), state, jnp.ones((2, 4)))
    assert masks.selected_paths(used, state) == ["fc/bias", "fc/kernel"]


class _TorchUnused(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)
        self.aux = torch.nn.Linear(4, 3)  # never called in forward

    def forward(self, x):
        return self.fc(x)


class _NnxUnused(nnx.Module):
    def __init__(self, rngs):
        self.fc = nnx.Linear(4, 3, rngs=rngs)
        self.aux = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x):
        return self.fc(x)


@pytest.mark.parametrize("which", ["adamw", "sgd"])
def test_skip_unused_matches_torch(which):
    torch.manual_seed(0)
    tm = _TorchUnused().double()
    sd = {k: v.detach().numpy() for k, v in tm.state_dict().items()}
    params = {
        mod: {"kernel": jnp.asarray(sd[f"{mod}.weight"].T), "bias": jnp.asarray(sd[f"{mod}.bias"])}
        for mod in ("fc", "aux")
    }
    r = np.random.default_rng(0)
    xs = [r.normal(size=(8, 4)) for _ in range(15)]
    ys = [r.normal(size=(8, 3)) for _ in range(15)]

    def loss(p, x, y):
        return jnp.mean((x @ p["fc"]["kernel"] + p["fc"]["bias"] - y) ** 2)

    if which == "adamw":
        tx = jaxreg.optim.adamw(1e-2, weight_decay=0.5)
        opt = torch.optim.AdamW(tm.parameters(), lr=1e-2, weight_decay=0.5)
    else:
        tx = jaxreg.optim.sgd(1e-2, momentum=0.9, weight_decay=0.5)
        opt = torch.optim.SGD(tm.parameters(), lr=1e-2, momentum=0.9, weight_decay=0.5)
    used = masks.used_by(loss, params, xs[0], ys[0])
    assert masks.selected_paths(used, params) == ["fc/bias", "fc/kernel"]

    def train(tx):
        p, s = params, tx.init(params)
        for x, y in zip(xs, ys):
            g = jax.grad(loss)(p, x, y)
            u, s = tx.update(g, s, p)
            p = optax.apply_updates(p, u)
        return p

    for x, y in zip(xs, ys):
        opt.zero_grad(set_to_none=True)
        torch.mean((tm(torch.tensor(x)) - torch.tensor(y)) ** 2).backward()
        opt.step()
    ref = {k: v.detach().numpy() for k, v in tm.state_dict().items()}
    ref_tree = {
        m: {"kernel": ref[f"{m}.weight"].T, "bias": ref[f"{m}.bias"]} for m in ("fc", "aux")
    }
    skipped = train(jaxreg.skip_unused(tx, used))
    for m in ("fc", "aux"):
        for k in ("kernel", "bias"):
            np.testing.assert_allclose(np.asarray(skipped[m][k]), ref_tree[m][k], rtol=0, atol=F64)
    np.testing.assert_array_equal(np.asarray(skipped["aux"]["kernel"]), sd["aux.weight"].T)
    plain = train(tx)  # without skipping, decay moves the unused layer: torch does not
    assert np.max(np.abs(np.asarray(plain["aux"]["kernel"]) - ref_tree["aux"]["kernel"])) > 1e-3


@pytest.mark.parametrize("name", ["torch_name", "to_param_groups", "from_param_groups"])
def test_param_group_helpers_moved_to_optim_old_names_warn(name):
    with pytest.warns(DeprecationWarning, match=f"moved to jaxreg.optim.{name}"):
        old = getattr(masks, name)
    assert old is getattr(optim, name)
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        masks.no_such_name  # noqa: B018
