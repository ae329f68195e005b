"""The mask language: which leaves of a parameter tree are regularized.

Every jaxreg function that takes ``mask`` accepts the same forms:

* ``None`` -- every floating-point leaf;
* a pytree of bools with the params' structure, or a prefix of it (``True`` at
  ``"encoder"`` selects every leaf below ``encoder``);
* a callable ``params -> bool pytree`` (such as an ``optax.masked`` mask function);
* a :class:`Mask` from this module, combinable with ``&``, ``|`` and ``~``.

Paths are the "/"-joined keys of a leaf, e.g. ``"encoder/layers_0/kernel"``; they
are the same for a Flax linen dict and the matching ``flax.nnx.State`` (the nnx
``.value`` level does not show). Whatever the mask says, leaves that are not real
floating-point arrays (integer counters, booleans, PRNG keys) are never selected.

A mask whose structure does not fit the params raises ``ValueError`` naming the
first path that does not fit -- it is never broadcast silently.

Example:
  >>> import jax.numpy as jnp
  >>> from jaxreg import masks
  >>> params = {"dense": {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(3)},
  ...           "norm": {"scale": jnp.ones(3)}}
  >>> m = masks.min_ndim(2) | masks.path_regex("^norm/")
  >>> masks.selected_paths(m, params)
  ['dense/kernel', 'norm/scale']
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jaxreg._tree import is_float_leaf, is_variable, key_str, leaf_ndim, leaf_paths, path_str

__all__ = [
    "Mask",
    "exclude_names",
    "min_ndim",
    "path_regex",
    "resolve",
    "selected_paths",
    "describe",
]

MaskLike = Any  # None | bool pytree | Callable[[params], bool pytree] | Mask


class Mask:
    """A path- and shape-aware leaf selector, combinable with ``&``, ``|``, ``~``.

    Calling a mask on a params tree returns a bool pytree of the same structure,
    so a :class:`Mask` also works wherever Optax expects a mask function
    (e.g. ``optax.masked(tx, mask)``).
    """

    def __init__(self, select: Callable[[tuple[str, ...], Any], bool], name: str):
        self._select = select
        self._name = name

    def select(self, params: Any) -> list[bool]:
        """One bool per leaf of ``params`` (in ``jax.tree.leaves`` order)."""
        leaves = jax.tree.leaves(params)
        return [bool(self._select(p, x)) for p, x in zip(leaf_paths(params), leaves)]

    def __call__(self, params: Any) -> Any:
        treedef = jax.tree.structure(params)
        return jax.tree.unflatten(treedef, self.select(params))

    def __and__(self, other: MaskLike) -> Mask:
        other = _as_mask(other)
        return _Combined(self, other, lambda a, b: a and b, f"({self!r} & {other!r})")

    def __or__(self, other: MaskLike) -> Mask:
        other = _as_mask(other)
        return _Combined(self, other, lambda a, b: a or b, f"({self!r} | {other!r})")

    __rand__ = __and__
    __ror__ = __or__

    def __invert__(self) -> Mask:
        inner = self
        return _Mapped(inner, lambda sel: [not s for s in sel], f"~{self!r}")

    def __repr__(self) -> str:
        return self._name


class _Combined(Mask):
    def __init__(self, a: Mask, b: Mask, op: Callable[[bool, bool], bool], name: str):
        self._a, self._b, self._op, self._name = a, b, op, name

    def select(self, params: Any) -> list[bool]:
        return [self._op(x, y) for x, y in zip(self._a.select(params), self._b.select(params))]


class _Mapped(Mask):
    def __init__(self, inner: Mask, fn: Callable[[list[bool]], list[bool]], name: str):
        self._inner, self._fn, self._name = inner, fn, name

    def select(self, params: Any) -> list[bool]:
        return self._fn(self._inner.select(params))


class _FromSpec(Mask):
    """Wraps any other mask form (bool tree, callable) so it combines with ``&``/``|``."""

    def __init__(self, spec: Any):
        self._spec = spec
        self._name = f"mask({spec!r})"

    def select(self, params: Any) -> list[bool]:
        return resolve(self._spec, params, float_only=False)


def _as_mask(obj: MaskLike) -> Mask:
    return obj if isinstance(obj, Mask) else _FromSpec(obj)


def exclude_names(*names: str) -> Mask:
    """Select leaves none of whose path components equals one of ``names``.

    Example: ``exclude_names("bias", "scale", "embedding")`` -- no decay on biases,
    normalization scales and embeddings.
    """
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"exclude_names needs one or more non-empty strings, got {names!r}")
    excluded = frozenset(names)
    return Mask(
        lambda path, leaf: not excluded.intersection(path),
        f"exclude_names({', '.join(map(repr, names))})",
    )


def min_ndim(n: int) -> Mask:
    """Select leaves with ``ndim >= n`` (``min_ndim(2)``: kernels, not biases or norm scales)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"min_ndim needs a non-negative int, got {n!r}")
    return Mask(lambda path, leaf: leaf_ndim(leaf) >= n, f"min_ndim({n})")


def path_regex(pattern: str) -> Mask:
    """Select leaves whose "/"-joined path matches ``pattern`` (``re.search``; anchor with ^ $)."""
    try:
        compiled = re.compile(pattern)
    except (re.error, TypeError) as e:
        raise ValueError(f"path_regex: invalid pattern {pattern!r}: {e}") from None
    return Mask(
        lambda path, leaf: compiled.search(path_str(path)) is not None,
        f"path_regex({pattern!r})",
    )


def _as_bool(value: Any, where: str) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, jax.core.Tracer):
        raise ValueError(f"mask entry at {where!r} is a traced value; masks must be concrete bools")
    if hasattr(value, "dtype") and np.ndim(value) == 0 and np.dtype(value.dtype) == np.bool_:
        return bool(value)
    raise ValueError(f"mask entry at {where!r} must be a bool, got {value!r}")


def _match_bool_tree(mask_tree: Any, params: Any) -> list[bool]:
    """Match a bool pytree (full structure or prefix) to the params' leaves by path."""
    mask_leaves = jax.tree.leaves(mask_tree, is_leaf=is_variable)
    mask_leaves = [m.value if is_variable(m) else m for m in mask_leaves]
    mask_paths = _variable_level_paths(mask_tree)  # aligned with mask_leaves
    entries: dict[tuple[str, ...], bool] = {}
    for p, v in zip(mask_paths, mask_leaves):
        entries[p] = _as_bool(v, path_str(p) or "<root>")
    used: set[tuple[str, ...]] = set()
    out = []
    for path in leaf_paths(params):
        hit = None
        for k in range(len(path) + 1):
            if path[:k] in entries:
                hit = path[:k]
                break
        if hit is None:
            raise ValueError(
                f"mask does not fit params: params leaf {path_str(path)!r} has no entry in the mask"
            )
        used.add(hit)
        out.append(entries[hit])
    for p in mask_paths:
        if p not in used:
            raise ValueError(
                f"mask does not fit params: mask path {path_str(p) or '<root>'!r} "
                "does not exist in params"
            )
    return out


def _variable_level_paths(tree: Any) -> list[tuple[str, ...]]:
    nodes = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_variable)[0]
    return [tuple(key_str(k) for k in path) for path, _ in nodes]


def resolve(mask: MaskLike, params: Any, *, float_only: bool = True) -> list[bool]:
    """Resolve any mask form to one bool per leaf of ``params`` (``jax.tree.leaves`` order).

    Args:
      mask: ``None``, a bool pytree (full or prefix), a callable, or a :class:`Mask`.
      params: the parameter pytree.
      float_only: also deselect leaves that are not real floating point (default).

    Returns:
      A list of Python bools, one per leaf.

    Raises:
      ValueError: if the mask does not fit the params (the message names the path).
    """
    leaves = jax.tree.leaves(params)
    if mask is None:
        sel = [True] * len(leaves)
    elif isinstance(mask, Mask):
        sel = mask.select(params)
    elif callable(mask):
        sel = _match_bool_tree(mask(params), params)
    else:
        sel = _match_bool_tree(mask, params)
    if float_only:
        sel = [s and is_float_leaf(x) for s, x in zip(sel, leaves)]
    return sel


def selected_paths(mask: MaskLike, params: Any) -> list[str]:
    """The "/"-joined paths of the leaves that ``mask`` selects in ``params``."""
    return [path_str(p) for p, s in zip(leaf_paths(params), resolve(mask, params)) if s]


def describe(mask: MaskLike, params: Any) -> str:
    """A table of every leaf: path, shape, dtype and whether ``mask`` selects it.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxreg import masks
      >>> params = {"b": jnp.zeros(3, jnp.float32), "w": jnp.ones((3, 2), jnp.float32)}
      >>> print(masks.describe(masks.min_ndim(2), params))
      path  shape   dtype    selected
      b     (3,)    float32  no
      w     (3, 2)  float32  yes
      1 of 2 leaves selected (6 of 9 elements)
    """
    leaves = jax.tree.leaves(params)
    sel = resolve(mask, params)
    rows = [("path", "shape", "dtype", "selected")]
    for p, x, s in zip(leaf_paths(params), leaves, sel):
        dtype = str(getattr(x, "dtype", type(x).__name__))
        rows.append((path_str(p), str(tuple(np.shape(x))), dtype, "yes" if s else "no"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    n_el = [int(np.size(x)) for x in leaves]
    lines.append(
        f"{sum(sel)} of {len(leaves)} leaves selected "
        f"({sum(n for n, s in zip(n_el, sel) if s)} of {sum(n_el)} elements)"
    )
    return "\n".join(lines)
