"""Proximal steps (soft-thresholding) applied after a base update."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxreg._decay import regularizing_transform
from jaxreg._validate import ScalarOrSchedule
from jaxreg.masks import MaskLike

__all__ = ["proximal_l1", "proximal_elastic_net", "soft_threshold"]


def soft_threshold(x: jax.Array, threshold: jax.Array) -> jax.Array:
    r"""Soft-thresholding, the proximal operator of :math:`t\|x\|_1`:
    :math:`\operatorname{sign}(x)\max(|x| - t, 0)`.

    Example:
      >>> import jax.numpy as jnp, jaxreg
      >>> jaxreg.soft_threshold(jnp.array([-2.0, 0.5, 3.0]), 1.0).tolist()
      [-1.0, 0.0, 2.0]
    """
    return jnp.sign(x) * jnp.maximum(jnp.abs(x) - threshold, 0)


def _prox_update(u: jax.Array, p: jax.Array, l1: jax.Array, l2: jax.Array) -> jax.Array:
    # The step the base optimizer proposes, then the prox; returned as an update.
    proposed = p + u
    return soft_threshold(proposed, l1) / (1 + 2 * l2) - p


def proximal_l1(threshold: ScalarOrSchedule, mask: MaskLike = None) -> optax.GradientTransformation:
    r"""Proximal L1 step after the base update (ISTA / proximal gradient).

    With :math:`\tilde\theta = \theta + u` the base optimizer's proposed point, the
    new parameters are :math:`\operatorname{sign}(\tilde\theta)\max(|\tilde\theta| - t, 0)`:
    weights reach *exact* zeros. For the objective :math:`f(\theta) + \alpha\|\theta\|_1`
    with step size :math:`\eta_t`, use ``threshold`` :math:`= \eta_t\alpha` (a schedule
    if :math:`\eta_t` is one). Chain it *last*:
    ``optax.chain(optax.sgd(lr), proximal_l1(lr * alpha))``.

    Args:
      threshold: :math:`t \ge 0`; float, scalar array or schedule.
      mask: which leaves are thresholded (multipliers scale the threshold); see :mod:`jaxreg.masks`.

    Returns:
      An ``optax.GradientTransformation`` whose update is ``prox(θ + u) - θ``.

    Raises:
      ValueError: on a negative or non-finite threshold, or a mask that does not fit.

    Example:
      >>> import jax.numpy as jnp, optax, jaxreg
      >>> tx = optax.chain(optax.sgd(1.0), jaxreg.proximal_l1(0.5))
      >>> p = {"w": jnp.array([1.0, 0.2, -2.0])}
      >>> u, _ = tx.update({"w": jnp.zeros(3)}, tx.init(p), p)
      >>> optax.apply_updates(p, u)["w"].tolist()
      [0.5, 0.0, -1.5]
    """
    return regularizing_transform(
        lambda u, p, t: _prox_update(u, p, t, jnp.zeros((), u.dtype)),
        {"threshold": threshold},
        mask,
    )


def proximal_elastic_net(
    l1: ScalarOrSchedule, l2: ScalarOrSchedule, mask: MaskLike = None
) -> optax.GradientTransformation:
    r"""Proximal elastic-net step after the base update.

    The proximal operator of :math:`\ell_1\|\theta\|_1 + \ell_2\|\theta\|_2^2` (jaxreg's
    sum-of-squares convention, as :func:`jaxreg.elastic_net_penalty`):

    .. math:: \operatorname{prox}(\tilde\theta) =
       \frac{\operatorname{sign}(\tilde\theta)\max(|\tilde\theta| - \ell_1, 0)}{1 + 2\ell_2}.

    For the objective :math:`f + \alpha\|\theta\|_1 + \lambda\|\theta\|_2^2` with step
    :math:`\eta_t`, pass ``l1`` :math:`= \eta_t\alpha` and ``l2`` :math:`= \eta_t\lambda`.
    (jaxopt's ``prox_elastic_net`` uses :math:`\tfrac{\ell_2}{2}\|\theta\|^2`, i.e. divides
    by :math:`1 + \ell_2`.)

    Args:
      l1: L1 threshold, ``>= 0``; float, scalar array or schedule.
      l2: L2 weight, ``>= 0``; float, scalar array or schedule.
      mask: which leaves (multipliers scale l1 and l2); see :mod:`jaxreg.masks`.

    Returns:
      An ``optax.GradientTransformation``.

    Raises:
      ValueError: on negative or non-finite hyperparameters, or a mask that does not fit.

    Example:
      >>> import jax.numpy as jnp, optax, jaxreg
      >>> tx = jaxreg.proximal_elastic_net(0.5, 0.25)
      >>> p = {"w": jnp.array([2.0, 0.2])}
      >>> optax.apply_updates(p, tx.update({"w": jnp.zeros(2)}, tx.init(p), p)[0])["w"].tolist()
      [1.0, 0.0]
    """
    return regularizing_transform(_prox_update, {"l1": l1, "l2": l2}, mask)


def _deprecated(new: Callable[..., Any], old: str) -> Callable[..., Any]:
    @functools.wraps(new)
    def alias(*args: Any, **kwargs: Any) -> Any:
        warnings.warn(
            f"jaxreg.{old} is deprecated: use jaxreg.{new.__name__} (same arguments; the "
            f"operators of jaxreg.prox keep their prox_* names)",
            DeprecationWarning,
            stacklevel=2,
        )
        return new(*args, **kwargs)

    alias.__doc__ = f"Deprecated alias of :func:`jaxreg.{new.__name__}`."
    alias.__name__ = alias.__qualname__ = old
    return alias


# The transforms' earlier names; ``prox_elastic_net`` also named jaxopt's operator
# (:func:`jaxreg.prox.prox_elastic_net`, different math), hence the rename.
prox_l1 = _deprecated(proximal_l1, "prox_l1")
prox_elastic_net = _deprecated(proximal_elastic_net, "prox_elastic_net")
