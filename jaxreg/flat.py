r"""Flat parameter buffers: a whole parameter tree as one 1-D array per group.

A jitted step pays a fixed cost for every array it takes and returns (about 2 µs each on
the CPU here, measured: an identity ``jit`` over 3,000 donated arrays takes 9.8 ms). A
model with thousands of small tensors therefore spends more time passing its parameters
and optimizer state in and out than updating them. :func:`ravel` packs the tree into a
:class:`FlatParams`: one contiguous buffer per *group* -- leaves of one dtype and one
regularization multiplier -- so the step takes a handful of arrays, whatever the number of
tensors. Inside the step the model sees its usual tree through :meth:`FlatParams.unravel`
(slices of the buffers); the gradient with respect to a ``FlatParams`` is again a
``FlatParams`` (the per-leaf gradients, concatenated), so every elementwise optimizer runs
on it unchanged and its state is flat too.

Grouping by the mask's multiplier keeps per-parameter-group weight decay exact: pass
:attr:`FlatParams.multipliers` as the optimizer's ``weight_decay_mask``. A buffer of
``n`` parameters plus padding (``pad_to``) holds zeros in the padding; gradients there are
zero, and every optimizer in :mod:`jaxreg.optim` keeps a zero parameter with zero gradient
at zero, so the padding never leaks into the parameters.

Only elementwise updates give the same result on a flat buffer as on the tree: SGD,
Adam, AdamW, Adamax, NAdam, RAdam, RMSprop, Adagrad, Adadelta, ASGD (and their fused
steps), decoupled/coupled/L1 decay, ``proximal_l1``/``proximal_elastic_net``, global-norm
clipping. Shape-dependent ones -- Adafactor's factored moments, Muon, group lasso,
orthogonal penalties, per-leaf trust ratios -- are not; the jaxreg ones raise on a
``FlatParams``. Compute penalties on ``flat.unravel()`` inside the loss.

The buffers are ordinary arrays: they can be donated, checkpointed, or sharded along their
one axis (each device then holds a slice of every parameter and optimizer state, as in
ZeRO; ``pad_to`` = the number of devices makes them divide evenly).

Example:
  >>> import jax, jax.numpy as jnp
  >>> from jaxreg import flat, masks
  >>> f32 = jnp.float32
  >>> params = {"dense": {"kernel": jnp.ones((2, 3), f32), "bias": jnp.zeros(3, f32)}}
  >>> fp = flat.ravel(params, mask=masks.min_ndim(2))
  >>> fp.multipliers
  {'float32@0': 0.0, 'float32': 1.0}
  >>> [b.shape for b in fp.buffers]
  [(3,), (6,)]
  >>> jax.tree.map(jnp.shape, fp.unravel())
  {'dense': {'bias': (3,), 'kernel': (2, 3)}}
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg._tree import contains_flat, is_flat_params, is_float_leaf
from jaxreg.masks import resolve_factors

__all__ = ["FlatParams", "Layout", "Slot", "ravel", "unravel_all", "is_flat"]


class Slot(NamedTuple):
    """Where one leaf lives: buffer ``group``, elements ``offset`` to ``offset + prod(shape)``."""

    group: int  # index of the buffer
    offset: int  # first element in the buffer
    shape: tuple[int, ...]


class Layout(NamedTuple):
    """Where every leaf lives; static (hashable), so a ``FlatParams`` is a valid jit input."""

    treedef: Any  # the original tree's structure
    names: tuple[str, ...]  # one per buffer: dtype, "@multiplier" when it is not 1
    dtypes: tuple[str, ...]  # one per buffer
    factors: tuple[float, ...]  # one per buffer: the mask's multiplier
    lengths: tuple[int, ...]  # one per buffer, padding included
    slots: tuple[Slot, ...]  # one per leaf, in ``jax.tree.leaves`` order


@jax.tree_util.register_pytree_with_keys_class
class FlatParams:
    """A parameter tree stored as one contiguous 1-D buffer per group.

    Build one with :func:`ravel`. It is a pytree whose leaves are the buffers (paths: the
    group names, e.g. ``"float32"``, ``"float32@0"``), so it can be passed to ``jit``,
    differentiated, donated, given to any Optax transform and checkpointed.

    Attributes:
      buffers: tuple of 1-D arrays, one per group.
      layout: the static :class:`Layout` that maps leaves to buffer slices.
    """

    __slots__ = ("buffers", "layout")
    _jaxreg_flat_params = True  # how the modules beneath jaxreg.flat recognise one

    def __init__(self, buffers: tuple[Any, ...], layout: Layout):
        self.buffers = tuple(buffers)
        self.layout = layout

    def tree_flatten_with_keys(self):
        keys = [jax.tree_util.DictKey(n) for n in self.layout.names]
        return list(zip(keys, self.buffers)), self.layout

    @classmethod
    def tree_unflatten(cls, layout: Layout, buffers):
        return cls(tuple(buffers), layout)

    @property
    def multipliers(self) -> dict[str, float]:
        """``{group name: multiplier}`` -- a jaxreg mask for this ``FlatParams``.

        Pass it as ``weight_decay_mask`` (or any transform's ``mask``) so each group
        decays with the multiplier its leaves had in :func:`ravel`'s ``mask``.
        """
        return dict(zip(self.layout.names, self.layout.factors))

    @property
    def size(self) -> int:
        """Number of parameters (padding excluded)."""
        return sum(int(np.prod(s.shape, dtype=np.int64)) for s in self.layout.slots)

    def unravel(self) -> Any:
        """The original tree: every leaf a slice of its buffer, reshaped.

        Inside ``jit`` these are slices of the buffers (XLA fuses them into their users
        where it can); outside, one compiled call (per layout) makes them.

        Returns:
          A pytree with the structure, shapes and dtypes given to :func:`ravel`.

        Raises:
          ValueError: a buffer's shape or dtype is not its layout's (naming the group),
            e.g. after a cast that would otherwise change every leaf's dtype silently.
        """
        if any(isinstance(b, jax.core.Tracer) for b in self.buffers):
            return _unravel(self.buffers, self.layout)
        return _unravel_jit(self.buffers, self.layout)

    def ravel_like(self, tree: Any) -> FlatParams:
        """Pack another tree of this layout (e.g. per-leaf optimizer state) the same way.

        Args:
          tree: a pytree with the structure, shapes and dtypes of the original params.

        Returns:
          A ``FlatParams`` with this layout.

        Raises:
          ValueError: if the structure, a shape or a dtype differs (naming the leaf).
        """
        leaves = _check_like(tree, self.layout)
        return FlatParams(_pack(leaves, self.layout), self.layout)

    def __repr__(self) -> str:
        groups = ", ".join(f"{n}: {ln}" for n, ln in zip(self.layout.names, self.layout.lengths))
        return f"FlatParams({len(self.layout.slots)} leaves in {{{groups}}})"


def _group_name(dtype: str, factor: float, floating: bool, masked: bool) -> str:
    if not floating or not masked or factor == 1.0:
        return dtype
    return f"{dtype}@{factor:g}"


def ravel(params: Any, mask: Any = None, *, pad_to: int = 1) -> FlatParams:
    r"""Pack a parameter tree into one 1-D buffer per (dtype, multiplier) group.

    Leaves keep their ``jax.tree.leaves`` order inside a group; groups are ordered by
    their first leaf. ``ravel(params).unravel()`` equals ``params`` bit for bit.

    Args:
      params: a pytree of arrays (Flax linen dict, ``flax.nnx.State``, plain tree).
        Python scalars become 0-d arrays. PRNG keys are not accepted.
      mask: a jaxreg mask (:mod:`jaxreg.masks`, multipliers included) over ``params``;
        leaves with different multipliers go to different buffers, so that
        :attr:`FlatParams.multipliers` reproduces the mask exactly. ``None``: one buffer
        per dtype.
      pad_to: round every buffer's length up to a multiple of this (zeros), e.g. the
        number of devices the buffers will be sharded over.

    Returns:
      A :class:`FlatParams`.

    Raises:
      ValueError: for an empty tree, a PRNG-key or non-array leaf, a nested
        ``FlatParams``, or ``pad_to < 1``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxreg import flat
      >>> fp = flat.ravel({"a": jnp.ones(3), "b": jnp.zeros((2, 2))}, pad_to=4)
      >>> fp.buffers[0].shape, fp.size
      ((8,), 7)
    """

    if not isinstance(pad_to, (int, np.integer)) or isinstance(pad_to, bool) or pad_to < 1:
        raise ValueError(f"pad_to must be an int >= 1, got {pad_to!r}")
    if contains_flat(params):
        raise ValueError("ravel: params already holds a FlatParams; ravel the per-leaf tree")
    leaves, treedef = jax.tree.flatten(params)
    if not leaves:
        raise ValueError("ravel: params has no leaves")
    arrays = []
    for path, x in zip(_paths(params), leaves):
        if isinstance(x, (int, float, bool, complex)):
            x = jnp.asarray(x)
        dtype = getattr(x, "dtype", None)
        if dtype is None or not isinstance(dtype, np.dtype):
            raise ValueError(
                f"ravel: leaf {path!r} is {type(x).__name__} with dtype {dtype!r}; only "
                "numeric arrays can be packed (keep PRNG keys and other state out of params)"
            )
        arrays.append(x)
    factors = resolve_factors(mask, params) if mask is not None else [1.0] * len(arrays)
    groups: dict[str, int] = {}
    names, dtypes, gfactors, fill = [], [], [], []
    slots = []
    for x, f in zip(arrays, factors):
        dtype = str(np.dtype(x.dtype))
        name = _group_name(dtype, f, is_float_leaf(x), mask is not None)
        if name not in groups:
            groups[name] = len(names)
            names.append(name)
            dtypes.append(dtype)
            gfactors.append(float(f) if is_float_leaf(x) else 0.0)
            fill.append(0)
        g = groups[name]
        shape = tuple(int(d) for d in np.shape(x))
        slots.append(Slot(g, fill[g], shape))
        fill[g] += int(np.prod(shape, dtype=np.int64))
    lengths = tuple(-(-n // pad_to) * pad_to for n in fill)
    layout = Layout(treedef, tuple(names), tuple(dtypes), tuple(gfactors), lengths, tuple(slots))
    return FlatParams(_pack(arrays, layout), layout)


def _paths(tree: Any) -> list[str]:
    from jaxreg._tree import leaf_paths, path_str

    return [path_str(p) for p in leaf_paths(tree)]


def _pack(leaves: list[Any], layout: Layout) -> tuple[Any, ...]:
    if all(isinstance(x, np.ndarray | np.generic) for x in leaves):  # host data: no compile
        return tuple(jnp.asarray(b) for b in _concat(np, leaves, layout))
    if any(isinstance(x, jax.core.Tracer) for x in leaves):
        return _concat(jnp, leaves, layout)
    return _pack_jit(list(leaves), layout)


def _concat(xp, leaves: list[Any], layout: Layout) -> tuple[Any, ...]:
    parts: list[list[Any]] = [[] for _ in layout.names]
    for x, slot in zip(leaves, layout.slots):
        parts[slot.group].append(xp.reshape(xp.asarray(x, layout.dtypes[slot.group]), (-1,)))
    out = []
    for g, p in enumerate(parts):
        pad = layout.lengths[g] - sum(int(np.size(x)) for x in p)
        if pad:
            p.append(xp.zeros((pad,), layout.dtypes[g]))
        out.append(xp.concatenate(p) if len(p) > 1 else p[0])
    return tuple(out)


@partial(jax.jit, static_argnums=1)
def _pack_jit(leaves: list[Any], layout: Layout) -> tuple[Any, ...]:
    return _concat(jnp, leaves, layout)


def _unravel(buffers: tuple[Any, ...], layout: Layout) -> Any:
    bad = []
    for b, n, name, dtype in zip(buffers, layout.lengths, layout.names, layout.dtypes):
        have = str(np.dtype(b.dtype if hasattr(b, "dtype") else np.asarray(b).dtype))
        if tuple(np.shape(b)) != (n,) or have != dtype:
            bad.append(f"{name!r} is {have}{list(np.shape(b))}, the layout has {dtype}[{n}]")
    if bad:
        raise ValueError("FlatParams buffers do not fit their layout: " + "; ".join(bad))
    leaves = []
    for slot in layout.slots:
        size = int(np.prod(slot.shape, dtype=np.int64))
        piece = jax.lax.slice_in_dim(buffers[slot.group], slot.offset, slot.offset + size)
        leaves.append(piece.reshape(slot.shape))
    return jax.tree.unflatten(layout.treedef, leaves)


_unravel_jit = jax.jit(_unravel, static_argnums=1)


def _check_like(tree: Any, layout: Layout) -> list[Any]:
    leaves, treedef = jax.tree.flatten(tree)
    if treedef != layout.treedef:
        raise ValueError(f"ravel_like: tree structure {treedef} differs from {layout.treedef}")
    for path, x, slot in zip(_paths(tree), leaves, layout.slots):
        dtype = str(np.dtype(getattr(x, "dtype", np.asarray(x).dtype)))
        if tuple(np.shape(x)) != slot.shape or dtype != layout.dtypes[slot.group]:
            raise ValueError(
                f"ravel_like: leaf {path!r} is {dtype}{list(np.shape(x))}, the layout has "
                f"{layout.dtypes[slot.group]}{list(slot.shape)}"
            )
    return leaves


def is_flat(x: Any) -> bool:
    """True for a :class:`FlatParams`."""
    return is_flat_params(x)


def unravel_all(tree: Any) -> Any:
    """``tree`` with every :class:`FlatParams` in it replaced by its per-leaf tree.

    For optimizer states (whose moments are ``FlatParams`` when the params are) before a
    checkpoint in per-leaf form or :func:`jaxreg.optim.state_to_torch`.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxreg import flat
      >>> fp = flat.ravel({"w": jnp.ones(2, jnp.float32)})
      >>> flat.unravel_all({"params": fp, "step": 3})
      {'params': {'w': Array([1., 1.], dtype=float32)}, 'step': 3}
    """
    return jax.tree.map(lambda x: x.unravel() if is_flat(x) else x, tree, is_leaf=is_flat)
