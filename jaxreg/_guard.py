"""Skipping steps whose gradients are not finite."""

from __future__ import annotations

import optax

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
