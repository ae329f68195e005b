"""Skipping what PyTorch's optimizers skip: non-finite steps, unused parameters."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxreg.masks import MaskLike, resolve

_NEVER = 2**31 - 1  # int32 max: optax's counter saturates there, so it never gives up


def skip_nonfinite(
    inner: optax.GradientTransformation, max_consecutive_skips: int | None = None
) -> optax.GradientTransformationExtraArgs:
    r"""Skip (and count) every step whose incoming gradients hold a NaN or an infinity.

    By default jaxreg behaves as PyTorch: a non-finite gradient flows into the update,
    the optimizer state and the parameters (``optimizer.step()`` has no check). Wrap the
    optimizer in ``skip_nonfinite`` to get what ``torch.amp.GradScaler`` does instead::

        if all(isfinite(g) for g in grads):  updates, state = inner.update(grads, state, params)
        else:                                updates = 0; state unchanged (step count too)

    Built on :func:`optax.apply_if_finite`; its state (an ``ApplyIfFiniteState``) counts
    the skipped steps in ``total_notfinite`` and the current run of them in
    ``notfinite_count``. The check is one scalar reduction over all leaves, so it adds
    only a scalar all-reduce on sharded parameters.

    Args:
      inner: the optimizer (any Optax transformation) to guard.
      max_consecutive_skips: ``None`` (default) skips every non-finite step, forever.
        An integer ``n`` gives up after ``n`` consecutive skips and applies the
        non-finite update (Optax's ``max_consecutive_errors``), so a run that cannot
        recover shows NaNs rather than silently standing still.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Raises:
      ValueError: ``max_consecutive_skips`` negative or not an integer.

    Example:
      >>> import jax.numpy as jnp, jaxreg
      >>> tx = jaxreg.skip_nonfinite(jaxreg.optim.sgd(0.1))
      >>> params = {"w": jnp.ones(2)}
      >>> state = tx.init(params)
      >>> updates, state = tx.update({"w": jnp.array([jnp.nan, 1.0])}, state, params)
      >>> updates["w"].tolist(), int(state.total_notfinite)
      ([0.0, 0.0], 1)
    """
    if max_consecutive_skips is None:
        limit = _NEVER
    else:
        if isinstance(max_consecutive_skips, bool) or not isinstance(max_consecutive_skips, int):
            raise ValueError(
                f"max_consecutive_skips must be an int or None, got {max_consecutive_skips!r}"
            )
        if max_consecutive_skips < 0:
            raise ValueError(f"max_consecutive_skips must be >= 0, got {max_consecutive_skips}")
        limit = max_consecutive_skips
    return optax.apply_if_finite(inner, max_consecutive_errors=limit)


def skip_unused(
    inner: optax.GradientTransformation, used: MaskLike
) -> optax.GradientTransformation:
    r"""Run ``inner`` only on the leaves ``used`` selects; leave the others untouched.

    PyTorch's optimizers skip every parameter whose ``.grad`` is ``None`` -- one the loss
    never touched: no weight decay, no momentum, no state, no change. JAX has no
    ``None`` gradient (an unused leaf gets zeros), so without this wrapper weight decay
    still shrinks such a leaf and momentum keeps moving it. Pass
    ``used=jaxreg.masks.used_by(loss_fn, params, *batch)`` (found by tracing the loss) or
    any other mask::

        θ_i ← θ_i + inner_update_i   if used_i     else   θ_i  (zero update, no state)

    Built on :func:`optax.masked`: ``inner`` sees the params and gradients of the used
    leaves only, so masks given to ``inner`` must be path or shape rules (any
    :mod:`jaxreg.masks` helper), not bool trees of the full structure.

    Args:
      inner: the optimizer (any Optax transformation).
      used: a mask (any form of :mod:`jaxreg.masks`) of the leaves to optimize.

    Returns:
      An ``optax.GradientTransformation``; the update of every other leaf is zero.

    Example:
      >>> import jax.numpy as jnp, optax, jaxreg
      >>> loss = lambda p, x: jnp.sum(p["w"] * x)
      >>> params = {"w": jnp.ones(2), "head": jnp.ones(2)}  # "head" is never used
      >>> used = jaxreg.masks.used_by(loss, params, jnp.ones(2))
      >>> tx = jaxreg.skip_unused(jaxreg.optim.adamw(0.1, weight_decay=0.5), used)
      >>> g = {"w": jnp.ones(2), "head": jnp.zeros(2)}
      >>> u, _ = tx.update(g, tx.init(params), params)
      >>> u["head"].tolist()  # adamw alone would decay it: -0.05
      [0.0, 0.0]
    """

    def masked(params: Any) -> tuple[optax.GradientTransformation, list[bool]]:
        selected = resolve(used, params)  # once per call: it also zeroes the others below
        tree = jax.tree.unflatten(jax.tree.structure(params), selected)
        return optax.masked(inner, tree), selected

    def init_fn(params: Any) -> Any:
        return masked(params)[0].init(params)

    def update_fn(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        if params is None:
            raise ValueError("skip_unused needs the params: call update(updates, state, params)")
        tx, selected = masked(params)
        new_updates, state = tx.update(updates, state, params)
        leaves, treedef = jax.tree.flatten(new_updates)
        leaves = [u if s else jnp.zeros_like(u) for u, s in zip(leaves, selected)]
        return jax.tree.unflatten(treedef, leaves), state

    return optax.GradientTransformation(init_fn, update_fn)
