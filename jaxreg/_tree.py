"""Leaf paths and leaf filters shared by masks, penalties and transforms.

Paths are "/"-joined strings of the keys leading to a leaf. A ``flax.nnx``
``Variable`` (e.g. ``nnx.Param``) is transparent: the ``.value`` level it adds to
an ``nnx.State`` does not show, so a linen dict and the matching ``nnx.State``
give the same paths.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

try:  # flax is a runtime dependency, but keep the helpers usable without it.
    from flax import nnx as _nnx

    _VARIABLE_TYPES: tuple[type, ...] = (_nnx.Variable,)
    _MODULE_TYPES: tuple[type, ...] = (_nnx.Module,)
except Exception:  # pragma: no cover - flax missing or broken
    _VARIABLE_TYPES = ()
    _MODULE_TYPES = ()


def is_variable(x: Any) -> bool:
    """True for a ``flax.nnx.Variable`` (``nnx.Param`` and friends)."""
    return bool(_VARIABLE_TYPES) and isinstance(x, _VARIABLE_TYPES)


def key_str(key: Any) -> str:
    """The path component of one pytree key, as a string."""
    if isinstance(key, jax.tree_util.DictKey):
        return str(key.key)
    if isinstance(key, jax.tree_util.SequenceKey):
        return str(key.idx)
    if isinstance(key, jax.tree_util.GetAttrKey):
        return key.name
    if isinstance(key, jax.tree_util.FlattenedIndexKey):
        return str(key.key)
    return str(key)


def leaf_paths(tree: Any) -> list[tuple[str, ...]]:
    """Path of every leaf of ``tree``, in ``jax.tree.leaves`` order.

    Each path is a tuple of string components; nnx ``Variable`` levels are hidden.
    """
    out: list[tuple[str, ...]] = []
    nodes = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_variable)[0]
    for path, node in nodes:
        components = tuple(key_str(k) for k in path)
        if is_variable(node):
            out.extend([components] * len(jax.tree.leaves(node)))
        else:
            out.append(components)
    return out


def path_str(path: tuple[str, ...]) -> str:
    """A path tuple as the "/"-joined string used in messages and regexes."""
    return "/".join(path)


def is_float_leaf(leaf: Any) -> bool:
    """True for real floating-point leaves: the only ones jaxreg regularizes.

    Integers, booleans, PRNG keys and complex numbers are never regularized.
    """
    if isinstance(leaf, float):
        return True
    dtype = getattr(leaf, "dtype", None)
    if dtype is None:
        return False
    try:
        return bool(jnp.issubdtype(dtype, jnp.floating))
    except TypeError:  # extended dtypes (PRNG keys) are not numpy dtypes
        return False


def leaf_ndim(leaf: Any) -> int:
    return int(np.ndim(leaf)) if not hasattr(leaf, "ndim") else int(leaf.ndim)


def reject_module(tree: Any, who: str) -> None:
    """Raise if ``tree`` is or holds a ``flax.nnx.Module`` where parameters are expected.

    A module is a pytree of *all* its state: BatchNorm running statistics, RNG counters
    and other ``nnx.Variable`` kinds would be penalized and decayed like weights.

    Raises:
      ValueError: naming where the module sits and what to pass instead.
    """
    if not _MODULE_TYPES:  # pragma: no cover
        return
    if isinstance(tree, _MODULE_TYPES):
        where = f"an nnx.Module ({type(tree).__name__})"
    else:
        found = [
            path
            for path, x in jax.tree_util.tree_flatten_with_path(
                tree, is_leaf=lambda x: isinstance(x, _MODULE_TYPES)
            )[0]
            if isinstance(x, _MODULE_TYPES)
        ]
        if not found:
            return
        paths = [path_str(tuple(key_str(k) for k in p)) for p in found]
        where = "an nnx.Module at " + ", ".join(paths)
    raise ValueError(
        f"{who} got {where} where parameters are expected: a module's pytree holds all its "
        "state (BatchNorm running statistics, RNG counts), which would be treated as "
        "weights. Pass nnx.state(model, nnx.Param) instead"
    )


def torch_name_candidates(parts: list[str] | tuple[str, ...]) -> list[tuple[str, ...]]:
    """Flax module paths a torch module name may have, most likely first.

    ``"a.0.b"`` (torch's ``named_modules()`` name, split) -> ``a/0/b`` (nnx lists, nested
    dicts), ``a/layers/0/b`` (nnx ``Sequential``), ``a/layers_0/b`` (linen
    ``Sequential``), ``a_0/b`` (a linen list attribute).
    """
    options: list[tuple[str, ...]] = [()]
    for p in parts:
        step = []
        for prefix in options:
            if p.isdigit():
                step += [(*prefix, p), (*prefix, "layers", p), (*prefix, f"layers_{p}")]
                if prefix:
                    step.append((*prefix[:-1], f"{prefix[-1]}_{p}"))
            else:
                step.append((*prefix, p))
        options = step
    return list(dict.fromkeys(options))


# ---------------------------------------------------------------- FlatParams, seen from below
# jaxreg.flat imports jaxreg.masks, so the modules beneath it recognise a FlatParams by the
# class attribute it carries rather than by importing the class.


def is_flat_params(x: Any) -> bool:
    """True for a :class:`jaxreg.flat.FlatParams`."""
    return getattr(type(x), "_jaxreg_flat_params", False) is True


def contains_flat(tree: Any) -> bool:
    """Whether any node of ``tree`` is a ``FlatParams``."""
    return any(is_flat_params(n) for n in jax.tree.leaves(tree, is_leaf=is_flat_params))


SHAPE_DEPENDENT = (
    "depends on each parameter's shape and cannot run on a FlatParams (its leaves are 1-D "
    "buffers of many parameters): use the per-leaf tree (flat.unravel()) or an elementwise "
    "optimizer"
)


def reject_flat(tree: Any, who: str, reason: str = SHAPE_DEPENDENT) -> None:
    """Raise ``ValueError(f"{who} {reason}")`` if ``tree`` holds a ``FlatParams`` (by
    default: for shape-dependent code)."""
    if contains_flat(tree):
        raise ValueError(f"{who} {reason}")
