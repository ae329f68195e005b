"""L1, L2 and elastic-net penalties: pure functions of a parameter pytree."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxreg._masked import scaled
from jaxreg._validate import check_nonnegative, concrete_float
from jaxreg.masks import MaskLike, resolve_factors

__all__ = ["l1_penalty", "l2_penalty", "elastic_net_penalty", "regularized"]


@jax.custom_jvp
def _abs(x: jax.Array) -> jax.Array:
    return jnp.abs(x)


@_abs.defjvp
def _abs_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    # d|x|/dx = sign(x), with sign(0) = 0 as in torch autograd (jax.grad(jnp.abs)(0.) is 1.0).
    return jnp.abs(x), jnp.sign(x) * t


def _acc_dtype(leaf: jax.Array) -> jnp.dtype:
    """Accumulation dtype: the leaf's float dtype, at least float32."""
    return jnp.promote_types(jnp.asarray(leaf).dtype, jnp.float32)


def _selected(params: Any, mask: MaskLike) -> list[tuple[jax.Array, float]]:
    """``(leaf, multiplier)`` of every selected leaf (multiplier != 0)."""
    leaves = jax.tree.leaves(params)
    return [(jnp.asarray(x), f) for x, f in zip(leaves, resolve_factors(mask, params)) if f]


def _total(terms: list[jax.Array]) -> jax.Array:
    """The sum of scalar terms in their widest dtype; ``0.0`` (float32) for none."""
    if not terms:
        return jnp.zeros((), jnp.float32)
    dtype = functools.reduce(jnp.promote_types, [t.dtype for t in terms])
    return functools.reduce(jnp.add, [t.astype(dtype) for t in terms])


def _sum_over(params: Any, mask: MaskLike, fn: Callable[[jax.Array], jax.Array]) -> jax.Array:
    return _total(
        [scaled(jnp.sum(fn(x.astype(_acc_dtype(x)))), f) for x, f in _selected(params, mask)]
    )


def l1_penalty(params: Any, mask: MaskLike = None) -> jax.Array:
    r"""Sum of absolute values of the selected leaves, :math:`\sum_i |w_i|`.

    The gradient is :math:`\operatorname{sign}(w)` with :math:`\operatorname{sign}(0) = 0`,
    exactly PyTorch autograd's gradient of ``p.abs().sum()`` -- so zero-initialised
    biases stay at zero as in torch (``jax.grad(jnp.abs)(0.0)`` would be 1).

    Args:
      params: a pytree of arrays (Flax linen dict, ``flax.nnx.State``, plain tree).
      mask: which leaves to include, and their multipliers; see :mod:`jaxreg.masks`.
        Non-float leaves are always skipped.

    Returns:
      A scalar. Its dtype is the widest of float32 and the selected leaves' dtypes
      (bf16/f16 leaves are accumulated in float32); ``0.0`` (float32) if nothing is
      selected.

    Example:
      >>> import jax.numpy as jnp, jaxreg
      >>> float(jaxreg.l1_penalty({"w": jnp.array([-1.0, 0.0, 2.0])}))
      3.0
    """
    return _sum_over(params, mask, _abs)


def _l2_factor(convention: str) -> float:
    """1 for ``"sum"`` (Σw²), 1/2 for ``"half"`` (½Σw²); ValueError otherwise."""
    if convention not in ("sum", "half"):
        raise ValueError(f"convention must be 'sum' or 'half', got {convention!r}")
    return 1.0 if convention == "sum" else 0.5


def l2_penalty(params: Any, mask: MaskLike = None, *, convention: str = "sum") -> jax.Array:
    r"""Plain sum of squares of the selected leaves, :math:`\sum_i w_i^2` (no :math:`\tfrac12`).

    This is ``sum(p.pow(2).sum() for p in model.parameters())`` in PyTorch. Its
    gradient is :math:`2w`, so adding :math:`\lambda \cdot` ``l2_penalty`` to the loss
    of plain SGD is the same as SGD ``weight_decay`` :math:`= 2\lambda` (see
    :func:`jaxreg.add_weight_decay`). For momentum or adaptive optimizers the two
    differ, and neither equals decoupled decay.

    Args:
      params: a pytree of arrays (Flax linen dict, ``flax.nnx.State``, plain tree).
      mask: which leaves to include, and their multipliers; see :mod:`jaxreg.masks`.
      convention: ``"sum"`` (default) for :math:`\sum w^2`, ``"half"`` for
        :math:`\tfrac12 \sum w^2` (gradient :math:`w`; see
        :func:`jaxreg.equivalent_weight_decay`).

    Returns:
      A scalar of dtype ``promote(float32, leaf dtypes)``; ``0.0`` if nothing is selected.

    Raises:
      ValueError: unknown ``convention``.

    Example:
      >>> import jax.numpy as jnp, jaxreg
      >>> float(jaxreg.l2_penalty({"w": jnp.array([-1.0, 0.0, 2.0])}))
      5.0
      >>> float(jaxreg.l2_penalty({"w": jnp.array([-1.0, 0.0, 2.0])}, convention="half"))
      2.5
    """
    return _l2_factor(convention) * _sum_over(params, mask, lambda x: x * x)


def elastic_net_penalty(
    params: Any,
    l1: float | jax.Array,
    l2: float | jax.Array,
    mask: MaskLike = None,
    *,
    convention: str = "sum",
) -> jax.Array:
    r"""Elastic net, :math:`\ell_1 \sum_i |w_i| + \ell_2 \sum_i w_i^2`.

    Same conventions as :func:`l1_penalty` and :func:`l2_penalty` (no :math:`\tfrac12`).

    Args:
      params: a pytree of arrays.
      l1: weight of the L1 term, ``>= 0``.
      l2: weight of the L2 term, ``>= 0``.
      mask: which leaves to include, and their multipliers; see :mod:`jaxreg.masks`.
      convention: of the L2 term, as in :func:`l2_penalty`.

    Returns:
      A scalar (dtype as for :func:`l2_penalty`).

    Raises:
      ValueError: if ``l1`` or ``l2`` is negative or not finite.

    Example:
      >>> import jax.numpy as jnp, jaxreg
      >>> float(jaxreg.elastic_net_penalty({"w": jnp.array([-1.0, 2.0])}, l1=0.5, l2=0.1))
      2.0
    """
    check_nonnegative("l1", l1)
    check_nonnegative("l2", l2)
    if callable(l1) or callable(l2):
        raise ValueError("elastic_net_penalty takes scalar l1/l2, not schedules")
    total = jnp.zeros((), jnp.float32)
    if concrete_float(l1) != 0.0:
        total = total + l1 * l1_penalty(params, mask)
    if concrete_float(l2) != 0.0:
        total = total + l2 * l2_penalty(params, mask, convention=convention)
    return total


def regularized(
    loss_fn: Callable[..., Any],
    *,
    l1: float = 0.0,
    l2: float = 0.0,
    mask: MaskLike = None,
    argnum: int = 0,
    convention: str = "sum",
) -> Callable[..., Any]:
    r"""Wrap ``loss_fn`` so it returns ``loss + l1 * Σ|w| + l2 * Σw²`` of argument ``argnum``.

    The PyTorch pattern ``loss = loss + l2_lambda * sum(p.pow(2).sum() for p in
    model.parameters())`` becomes ``regularized(loss_fn, l2=l2_lambda)``.

    If ``loss_fn`` returns a tuple ``(loss, aux)`` (the ``has_aux=True`` style of
    ``jax.grad``), the penalty is added to ``loss`` and ``aux`` is passed through.

    Args:
      loss_fn: ``loss_fn(*args, **kwargs) -> loss`` or ``-> (loss, aux)``.
      l1: L1 weight, ``>= 0``.
      l2: L2 weight, ``>= 0`` (sum-of-squares convention: SGD ``weight_decay = 2 * l2``).
      mask: which leaves of the parameters to penalize, and their multipliers; see
        :mod:`jaxreg.masks`.
      argnum: position of the parameters among ``loss_fn``'s positional arguments.
      convention: of the L2 term, as in :func:`l2_penalty` (``"half"``: ½·l2·Σw²).

    Returns:
      A function with ``loss_fn``'s signature.

    Raises:
      ValueError: if ``l1``/``l2`` are negative or not finite, or ``argnum`` is not an int.

    Example:
      >>> import jax, jax.numpy as jnp, jaxreg
      >>> loss = lambda w, x: jnp.sum((x @ w["k"]) ** 2)
      >>> reg_loss = jaxreg.regularized(loss, l2=0.5)
      >>> float(reg_loss({"k": jnp.ones(2)}, jnp.zeros((3, 2))))
      1.0
    """
    check_nonnegative("l1", l1)
    check_nonnegative("l2", l2)
    _l2_factor(convention)
    if isinstance(argnum, bool) or not isinstance(argnum, int):
        raise ValueError(f"argnum must be an int, got {argnum!r}")

    @functools.wraps(loss_fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if not -len(args) <= argnum < len(args):
            raise ValueError(
                f"regularized: argnum={argnum} but the loss was called with "
                f"{len(args)} positional argument(s)"
            )
        out = loss_fn(*args, **kwargs)
        penalty = elastic_net_penalty(args[argnum], l1, l2, mask, convention=convention)
        if isinstance(out, tuple):
            if len(out) != 2:
                raise ValueError(
                    f"regularized: loss_fn returned a tuple of {len(out)}; expected (loss, aux)"
                )
            loss, aux = out
            return loss + penalty, aux
        return out + penalty

    return wrapped
