"""Small numerical guards shared by the penalties and the proximal operators."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def guarded_sqrt(sq: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(sqrt(sq) where sq > 0 else 1, sq > 0)``: a norm from its square that is safe to
    divide by and to differentiate (the 0 branch never reaches ``sqrt``, whose derivative
    at 0 is infinite; a ``where`` over it alone would still give NaN gradients)."""
    positive = sq > 0
    return jnp.sqrt(jnp.where(positive, sq, 1.0)), positive


def safe_norm(sq: jax.Array) -> jax.Array:
    """``sqrt(sq)``, with gradient 0 where ``sq == 0`` (torch's ``vector_norm`` backward
    at 0)."""
    norm, positive = guarded_sqrt(sq)
    return jnp.where(positive, norm, 0.0)
