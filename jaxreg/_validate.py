"""Eager validation of hyperparameters (floats, scalar arrays or schedules)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

#: A hyperparameter: a Python float, a scalar array, or an Optax schedule ``count -> value``.
ScalarOrSchedule = float | jax.Array | Callable[[jax.Array], jax.Array]
"""A hyperparameter: a float, a scalar array, or an Optax schedule (step count -> value)."""


def concrete_float(value: Any) -> float | None:
    """``float(value)`` for a concrete scalar; ``None`` for a tracer (cannot be checked)."""
    if isinstance(value, jax.core.Tracer):
        return None
    if isinstance(value, (str, bytes)) or not _is_number(value):
        raise ValueError(f"expected a number, got {type(value).__name__} {value!r}")
    if np.ndim(value) != 0:
        raise ValueError(f"expected a scalar, got an array of shape {np.shape(value)}")
    return float(value)


def _is_number(value: Any) -> bool:
    """A Python/numpy number or a numeric (bool, int, float) array -- not a string."""
    if isinstance(value, (bool, int, float, np.number, np.bool_)):
        return True
    dtype = getattr(value, "dtype", None)
    try:
        return dtype is not None and np.dtype(dtype).kind in "biuf"
    except TypeError:  # extended dtypes (PRNG keys)
        return False


def check_nonnegative(name: str, value: Any) -> None:
    """Raise ``ValueError`` if a concrete hyperparameter is negative or not finite.

    Schedules (callables) and traced values (e.g. under ``optax.inject_hyperparams``
    inside ``jit``) cannot be inspected at construction and are accepted.
    """
    if callable(value):
        return
    try:
        x = concrete_float(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a non-negative float or a schedule; {e}") from None
    if x is None:
        return
    if not math.isfinite(x):
        raise ValueError(f"{name} must be finite, got {x}")
    if x < 0:
        raise ValueError(f"{name} must be non-negative, got {x}")


def check_nonnegative_tree(name: str, value: Any) -> None:
    """:func:`check_nonnegative` for every concrete scalar leaf of ``value`` (a scalar or
    a pytree of per-leaf values); arrays and traced leaves are accepted unchecked."""
    for leaf in jax.tree.leaves(value):
        if not isinstance(leaf, jax.core.Tracer) and jnp.ndim(leaf) == 0:
            check_nonnegative(name, leaf)


def constant_float(name: str, value: Any, who: str) -> float:
    """``float(value)`` of a hyperparameter that must be a constant, not a schedule.

    Raises:
      ValueError: ``value`` is a schedule (naming ``who`` and ``name``).
    """
    if callable(value):
        raise ValueError(f"{who} take a constant {name}, not a schedule")
    return float(value)


def default_float_dtype() -> jnp.dtype:
    """JAX's default float dtype right now: float64 under x64, else float32."""
    return jnp.zeros((), float).dtype


def at_count(value: ScalarOrSchedule, count: jax.Array | None) -> Any:
    """The hyperparameter's value at step ``count`` (schedules are evaluated).

    A schedule is called with the count as a *float* of JAX's default float dtype
    (float64 under x64). Optax's schedules accept it, and it keeps them from silently
    computing in float32: ``optax.exponential_decay`` evaluates ``count / steps`` in
    float32 for an int32 count, rounding the lr itself (5e-9 relative) where torch's
    schedulers compute it in Python double.
    """
    if not callable(value):
        return value
    return value(jnp.asarray(count).astype(default_float_dtype()))
