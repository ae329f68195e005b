"""Bad inputs get a named error at construction (or at the first call that can see them),
never a later unrelated JAX message or a silent misreading."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import jaxreg
from jaxreg import masks, optim


def _loss(p):
    return jnp.sum(p["w"])


@pytest.mark.parametrize(
    "build",
    [
        lambda: jaxreg.regularized(_loss, l2="0.5"),
        lambda: jaxreg.regularized(_loss, l1=b"1"),
        lambda: jaxreg.add_weight_decay("0.1"),
        lambda: jaxreg.decoupled_weight_decay(0.1, "0.01"),
        lambda: optim.sgd(lr="0.1"),
        lambda: optim.adamw(1e-3, weight_decay="0.01"),
        lambda: optim.adam(1e-3, betas=("0.9", 0.999)),
        lambda: masks.multipliers((masks.min_ndim(2), "2")),
    ],
)
def test_string_hyperparameters_are_refused_at_construction(build):
    with pytest.raises(ValueError, match=r"str|bytes|must be a float"):
        build()


def test_numpy_and_0d_array_multipliers_are_numbers():
    params = {"a": jnp.array([1.0, 2.0]), "b": jnp.array([3.0])}
    for half in (np.float32(0.5), np.float64(0.5), jnp.asarray(0.5), np.array(0.5)):
        got = jaxreg.l2_penalty(params, mask={"a": half, "b": np.int64(2)})
        np.testing.assert_allclose(float(got), 0.5 * 5.0 + 2 * 9.0, rtol=1e-12)


@pytest.mark.parametrize(
    "tx", [optim.sgd(0.1, weight_decay=0.1), optim.adam(0.1), jaxreg.add_weight_decay(0.1)]
)
def test_a_none_leaf_against_an_array_gradient_is_named(tx):
    params = {"w": jnp.ones(2), "layer": {"b": None}}
    grads = {"w": jnp.ones(2), "layer": {"b": jnp.ones(2)}}
    with pytest.raises(ValueError, match=r"arrays at layer/b where .*None"):
        tx.update(grads, tx.init(params), params)
