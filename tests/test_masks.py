"""The mask language: helpers, combinators, prefixes, callables, errors, describe."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from trees import ALL_KINDS

import jaxreg
from jaxreg import masks

ALL = ["dense/bias", "dense/kernel", "norm/bias", "norm/scale"]


@pytest.mark.parametrize("kind", ["linen", "nnx"])
def test_paths_are_the_same_for_linen_and_nnx(kind):
    tree = ALL_KINDS[kind]()
    assert masks.selected_paths(None, tree) == ALL
    assert masks.selected_paths(masks.exclude_names("bias", "scale"), tree) == ["dense/kernel"]
    assert masks.selected_paths(masks.min_ndim(2), tree) == ["dense/kernel"]
    assert masks.selected_paths(masks.path_regex("^norm/"), tree) == ["norm/bias", "norm/scale"]
    assert masks.selected_paths(masks.path_regex("kernel$"), tree) == ["dense/kernel"]


def test_plain_tree_paths_use_indices_and_namedtuple_fields():
    tree = ALL_KINDS["plain"]()
    assert masks.selected_paths(None, tree) == ["0/kernel", "0/bias", "1/0", "1/1"]  # no int
    assert masks.selected_paths(masks.min_ndim(1), tree) == ["0/kernel", "0/bias", "1/0"]


def test_combinators():
    tree = ALL_KINDS["linen"]()
    m = masks.path_regex("^dense") & ~masks.exclude_names("bias")
    assert masks.selected_paths(m, tree) == ["dense/bias"]
    m = masks.min_ndim(2) | masks.path_regex("scale")
    assert masks.selected_paths(m, tree) == ["dense/kernel", "norm/scale"]
    # A Mask combines with the other mask forms too.
    m = masks.min_ndim(1) & {"dense": True, "norm": False}
    assert masks.selected_paths(m, tree) == ["dense/bias", "dense/kernel"]
    m = {"dense": False, "norm": True} | masks.min_ndim(2)
    assert masks.selected_paths(m, tree) == ["dense/kernel", "norm/bias", "norm/scale"]
    assert "min_ndim(2)" in repr(m)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.booleans(), min_size=4, max_size=4), st.lists(st.booleans(), min_size=4, max_size=4)
)
def test_property_mask_algebra_is_set_algebra(a_bits, b_bits):
    tree = ALL_KINDS["linen"]()
    a = masks.Mask(lambda p, x: a_bits[ALL.index("/".join(p))], "a")
    b = masks.Mask(lambda p, x: b_bits[ALL.index("/".join(p))], "b")
    A = {p for p, s in zip(ALL, a_bits) if s}
    B = {p for p, s in zip(ALL, b_bits) if s}
    assert set(masks.selected_paths(a & b, tree)) == A & B
    assert set(masks.selected_paths(a | b, tree)) == A | B
    assert set(masks.selected_paths(~a, tree)) == set(ALL) - A
    assert set(masks.selected_paths(~(a & b), tree)) == set(masks.selected_paths(~a | ~b, tree))


@pytest.mark.parametrize("kind", ["linen", "nnx"])
def test_prefix_bool_tree(kind):
    tree = ALL_KINDS[kind]()
    assert masks.selected_paths({"dense": True, "norm": False}, tree) == [
        "dense/bias",
        "dense/kernel",
    ]
    assert masks.selected_paths(False, tree) == []
    full = {"dense": {"kernel": True, "bias": False}, "norm": {"scale": True, "bias": False}}
    assert masks.selected_paths(full, tree) == ["dense/kernel", "norm/scale"]


def test_callable_mask_and_optax_style_mask_fn():
    tree = ALL_KINDS["linen"]()
    fn = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)
    assert masks.selected_paths(fn, tree) == ["dense/kernel"]
    # A Mask is itself an Optax mask function.
    tx = optax.masked(optax.set_to_zero(), masks.exclude_names("bias"))
    out, _ = tx.update(tree, tx.init(tree))
    assert float(jnp.sum(jnp.abs(out["dense"]["kernel"]))) == 0.0
    assert float(jnp.sum(jnp.abs(out["dense"]["bias"]))) > 0.0


def test_mask_call_returns_same_structure():
    tree = ALL_KINDS["nnx"]()
    out = masks.min_ndim(2)(tree)
    assert jax.tree.structure(out) == jax.tree.structure(tree)


@pytest.mark.parametrize(
    "mask,match",
    [
        ({"dense": True}, "params leaf 'norm/bias' has no entry in the mask"),
        ({"dense": True, "norm": True, "head": True}, "mask path 'head' does not exist"),
        (
            {"dense": {"kernel": True, "bias": True, "extra": False}, "norm": True},
            "mask path 'dense/extra' does not exist",
        ),
        (
            {"dense": {"kernel": {"x": True}, "bias": True}, "norm": True},
            "params leaf 'dense/kernel' has no entry",
        ),
        ({"dense": "yes", "norm": True}, "mask entry at 'dense' must be a bool"),
        ({"dense": jnp.ones(2, bool), "norm": True}, "mask entry at 'dense' must be a bool"),
        (lambda p: {"x": True}, "params leaf 'dense/bias' has no entry"),
    ],
)
def test_mask_that_does_not_fit_names_the_path(mask, match):
    tree = ALL_KINDS["linen"]()
    with pytest.raises(ValueError, match=match):
        masks.resolve(mask, tree)
    with pytest.raises(ValueError, match=match):
        jaxreg.l2_penalty(tree, mask)


def test_bad_helper_arguments():
    with pytest.raises(ValueError, match="non-empty strings"):
        masks.exclude_names()
    with pytest.raises(ValueError, match="non-negative int"):
        masks.min_ndim(-1)
    with pytest.raises(ValueError, match="invalid pattern"):
        masks.path_regex("(")


def test_describe_table():
    tree = ALL_KINDS["linen"]()
    text = masks.describe(masks.exclude_names("bias"), tree)
    lines = text.splitlines()
    assert lines[0].split() == ["path", "shape", "dtype", "selected", "multiplier"]
    rows = {line.split()[0]: line.split()[-2:] for line in lines[1:-1]}
    assert rows == {
        "dense/bias": ["no", "0"],
        "dense/kernel": ["yes", "1"],
        "norm/bias": ["no", "0"],
        "norm/scale": ["yes", "1"],
    }
    assert lines[-1] == "2 of 4 leaves selected (15 of 21 elements)"


def test_masks_work_under_jit():
    tree = ALL_KINDS["linen"]()
    f = jax.jit(lambda p: jaxreg.l2_penalty(p, masks.min_ndim(2)))
    np.testing.assert_allclose(
        float(f(tree)), float(np.sum(np.asarray(tree["dense"]["kernel"]) ** 2)), rtol=1e-15
    )


def test_a_pattern_that_matches_no_leaf_warns_or_raises():
    params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
    with pytest.warns(masks.UnmatchedPatternWarning, match=r"name 'biass' matches no leaf"):
        selected = masks.resolve(masks.exclude_names("biass"), params)
    assert selected == [True, True]  # the typo changed nothing: that is why it warns
    for mask, pat in [
        (masks.path_regex("^dense/kernal$"), "'^dense/kernal$'"),
        (masks.glob("**/kernel", "*/bais"), "'*/bais'"),
    ]:
        msg = f"pattern {re.escape(pat)} matches no leaf"
        with pytest.warns(masks.UnmatchedPatternWarning, match=msg):
            masks.resolve(mask, params)
    strict = masks.exclude_names("bias", "biass", on_unmatched="error")
    with pytest.raises(ValueError, match=r"name 'biass' matches no leaf.*dense/kernel"):
        tx = jaxreg.optim.adamw(0.1, weight_decay_mask=strict)
        tx.update(params, tx.init(params), params)
    # names that match, the presets (a model without norm layers has no "scale") and
    # on_unmatched="ignore" say nothing; filterwarnings=error turns any warning into a failure
    assert masks.resolve(masks.exclude_names("bias"), params) == [False, True]
    assert masks.resolve(masks.no_bias_no_norm(), params) == [False, True]
    assert masks.resolve(masks.exclude_names("scale", on_unmatched="ignore"), params) == [True] * 2
    with pytest.raises(ValueError, match="on_unmatched"):
        masks.glob("*", on_unmatched="loud")
