"""Parameter trees of every kind jaxreg accepts, built from the same float64 arrays."""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """Random float64 arrays of several shapes, with exact zeros and a scalar."""
    rng = np.random.default_rng(seed)
    out = {
        "kernel": rng.normal(size=(4, 3)),
        "bias": rng.normal(size=(3,)),
        "scale": rng.normal(size=(3,)),
        "scalar": np.array(rng.normal()),
    }
    out["kernel"][0, :2] = 0.0
    out["bias"][1] = 0.0
    return out


class _Linen(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Dense(3, param_dtype=jnp.float64, name="dense")(x)
        return nn.LayerNorm(param_dtype=jnp.float64, name="norm")(x)


class _Nnx(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.dense = nnx.Linear(4, 3, param_dtype=jnp.float64, rngs=rngs)
        self.norm = nnx.LayerNorm(3, param_dtype=jnp.float64, rngs=rngs)


def _fill(a: dict[str, np.ndarray]) -> dict:
    return {
        "dense": {"kernel": jnp.asarray(a["kernel"]), "bias": jnp.asarray(a["bias"])},
        "norm": {"scale": jnp.asarray(a["scale"]), "bias": jnp.zeros(3, jnp.float64)},
    }


def linen_params(seed: int = 0) -> dict:
    """A real linen param dict (``init`` output) with our arrays swapped in."""
    variables = _Linen().init(jax.random.key(0), jnp.ones((1, 4), jnp.float64))
    filled = _fill(arrays(seed))
    return jax.tree.map(lambda _, new: new, variables["params"], filled)


def nnx_state(seed: int = 0) -> nnx.State:
    """A real ``nnx.State`` of ``nnx.Param`` variables holding the same arrays."""
    state = nnx.state(_Nnx(nnx.Rngs(0)), nnx.Param)
    filled = _fill(arrays(seed))
    nnx.replace_by_pure_dict(state, filled)
    return state


class Layer(NamedTuple):
    kernel: jax.Array
    bias: jax.Array


def plain_tree(seed: int = 0) -> list:
    """Lists, tuples and a NamedTuple, plus an int counter that must never be penalized."""
    a = arrays(seed)
    return [
        Layer(jnp.asarray(a["kernel"]), jnp.asarray(a["bias"])),
        (jnp.asarray(a["scale"]), jnp.asarray(a["scalar"])),
        {"step": jnp.array(7, jnp.int32)},
    ]


ALL_KINDS = {"linen": linen_params, "nnx": nnx_state, "plain": plain_tree}
