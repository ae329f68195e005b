"""Gradient clipping with torch's formulas: ``torch.nn.utils.clip_grad_norm_`` and
``clip_grad_value_`` as Optax transforms (chain them before the optimizer)."""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxreg._tree import is_float_leaf
from jaxreg.optim import _common as c


class ClipGradNormState(NamedTuple):
    """``total_norm``: what ``clip_grad_norm_`` returned for the last update (for logging)."""

    total_norm: jax.Array  # shape=()


def _vector_norm(x: jax.Array, p: float) -> jax.Array:
    """``torch.linalg.vector_norm(x, p)``: inf/-inf = max/min |x|, 0 = non-zero count."""
    a = jnp.abs(x)
    if p == math.inf:
        return jnp.max(a, initial=0.0)
    if p == -math.inf:
        return jnp.min(a, initial=jnp.inf)
    if p == 0:
        return jnp.sum(a != 0).astype(x.dtype)
    if p == 1:
        return jnp.sum(a)
    if p == 2:
        return jnp.sqrt(jnp.sum(a * a))
    return jnp.sum(a**p) ** (1.0 / p)


def _check_finite(total: jax.Array, norm_type: float) -> jax.Array:
    def check(value):
        if not np.isfinite(value):
            raise FloatingPointError(
                f"The total norm of order {norm_type} for gradients is non-finite "
                f"({float(value)}), so it cannot be clipped (clip_grad_norm with "
                "error_if_nonfinite=True, as torch.nn.utils.clip_grad_norm_)"
            )
        return value

    if not isinstance(total, jax.core.Tracer):
        return jnp.asarray(check(np.asarray(total)))
    return jax.pure_callback(check, jax.ShapeDtypeStruct(total.shape, total.dtype), total)


def get_total_norm(grads: Any, norm_type: float = 2.0) -> jax.Array:
    """``torch.nn.utils.get_total_norm``: the ``norm_type``-norm of the per-leaf norms.

    torch: ``vector_norm(stack([vector_norm(g, p) for g in grads]), p)``, over the real
    floating-point leaves, in their widest dtype (``0.0`` for none).

    Args:
      grads: a pytree of gradients.
      norm_type: the p of the p-norm (``float("inf")``: max ``|g|``; 0: non-zero count).

    Returns:
      A 0-d array.
    """
    leaves = [x for x in jax.tree.leaves(grads) if is_float_leaf(x)]
    if not leaves:
        return jnp.zeros((), jnp.float32)
    dtype = functools.reduce(jnp.promote_types, [jnp.asarray(x).dtype for x in leaves])
    norms = jnp.stack([_vector_norm(jnp.asarray(x), norm_type).astype(dtype) for x in leaves])
    return _vector_norm(norms, norm_type)


def clip_grad_norm(
    max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False
) -> optax.GradientTransformation:
    r"""``torch.nn.utils.clip_grad_norm_`` as an Optax transform.

    torch (``torch/nn/utils/clip_grad.py``)::

        norms = [vector_norm(g, norm_type) for g in grads]
        total_norm = vector_norm(stack(norms), norm_type)
        if error_if_nonfinite and (total_norm.isnan() or total_norm.isinf()): raise
        clip_coef = max_norm / (total_norm + 1e-6)
        g = g * clamp(clip_coef, max=1.0)          # for every gradient, always

    so the gradients are scaled by ``min(max_norm / (total_norm + 1e-6), 1)`` (the
    ``+ 1e-6`` means a norm just above ``max_norm`` is still scaled slightly), the
    coefficient is cast to each gradient's dtype, a NaN norm makes every gradient NaN
    and an infinite one makes them 0 (NaN where a gradient is itself infinite) -- all
    as torch. ``norm_type`` may be any float, ``inf`` (max ``|g|``) included.

    Differences from ``optax.clip_by_global_norm``: Optax scales by ``max_norm / norm``
    only when ``norm > max_norm`` (no ``1e-6``), and its norm is one sum of squares over
    all leaves rather than the norm of the per-leaf norms.

    Args:
      max_norm: the largest total norm to allow (non-negative).
      norm_type: the p of the p-norm (``float("inf")`` for the max norm).
      error_if_nonfinite: raise if the total norm is NaN or infinite, as torch does.
        Eagerly the ``update`` call raises ``FloatingPointError``; under ``jit`` the
        check runs on the host and the error surfaces when the step's result is
        computed (as a ``JaxRuntimeError`` naming the ``FloatingPointError``).

    Returns:
      An ``optax.GradientTransformation``; its state's ``total_norm`` is what torch's
      function returns, for the last update.

    Raises:
      ValueError: ``max_norm`` is negative or not finite (torch would flip or zero every
        gradient), or ``norm_type`` is NaN.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxreg import optim
      >>> tx = optim.clip_grad_norm(1.0)
      >>> g = {"w": jnp.array([3.0, 4.0])}
      >>> u, state = tx.update(g, tx.init(g))
      >>> float(state.total_norm), [round(float(x), 6) for x in u["w"]]
      (5.0, [0.6, 0.8])
    """
    c.nonneg("max_norm", max_norm)
    norm_type = float(norm_type)
    c.check(not math.isnan(norm_type), "norm_type must not be NaN")

    def init_fn(params):
        return ClipGradNormState(jnp.zeros((), jax.eval_shape(get_total_norm, params).dtype))

    def update_fn(updates, state, params=None):
        del params
        total = get_total_norm(updates, norm_type)
        if error_if_nonfinite:
            total = _check_finite(total, norm_type)
        coef = jnp.minimum(max_norm / (total + 1e-6), 1.0)
        out = jax.tree.map(lambda g: g * coef.astype(g.dtype) if is_float_leaf(g) else g, updates)
        return out, ClipGradNormState(total.astype(state.total_norm.dtype))

    return optax.GradientTransformation(init_fn, update_fn)


def clip_grad_value(clip_value: float) -> optax.GradientTransformation:
    r"""``torch.nn.utils.clip_grad_value_`` as an Optax transform.

    torch: ``g.clamp_(min=-clip_value, max=clip_value)`` for every gradient (NaN stays
    NaN); ``clip_value`` is cast to each gradient's dtype. Same as
    ``optax.clip(clip_value)``, which it is built like; provided so that a port names
    what it mirrors. It refuses a negative ``clip_value``: torch's ``clamp`` with
    ``min > max`` would silently set every gradient to that negative value.

    Args:
      clip_value: the largest absolute gradient value to allow (non-negative).

    Returns:
      A stateless ``optax.GradientTransformation``.

    Raises:
      ValueError: ``clip_value`` is negative or not finite.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxreg import optim
      >>> u, _ = optim.clip_grad_value(0.5).update({"w": jnp.array([-2.0, 0.1])}, None)
      >>> [round(float(x), 6) for x in u["w"]]
      [-0.5, 0.1]
    """
    c.nonneg("clip_value", clip_value)

    def update_fn(updates, state, params=None):
        del params

        def clip(g):
            if not is_float_leaf(g):
                return g
            v = jnp.asarray(clip_value, g.dtype)
            return jnp.minimum(jnp.maximum(g, -v), v)

        return jax.tree.map(clip, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)
