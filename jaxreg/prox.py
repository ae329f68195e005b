r"""Proximal operators with jaxopt's signatures, and a transform that applies any of them.

Every operator here is ``prox(x, hyperparams, scaling=1.0)`` and returns

.. math:: \operatorname{prox}(x) = \operatorname*{argmin}_y \tfrac12\lVert x - y\rVert_2^2
   + \text{scaling}\cdot g(y)

for its regularizer :math:`g`, on a pytree ``x`` (every leaf at once). Names, argument
names, defaults and results are those of ``jaxopt.prox`` (jaxopt 0.8.5, whose source
was read for this; jaxopt is no longer maintained), so code written against jaxopt runs
unchanged. Two places where jaxopt's *docstring* and *code* disagree follow the code,
and the formulas below say what is computed:

* :func:`prox_ridge` / :func:`prox_non_negative_ridge`: :math:`g(y) = \tfrac{\lambda}{2}
  \lVert y\rVert^2` (jaxopt's docstring omits the :math:`\tfrac12`; its code has it).
* :func:`prox_elastic_net`: :math:`g(y) = \lambda(\lVert y\rVert_1 +
  \tfrac{\gamma}{2}\lVert y\rVert^2)` for ``hyperparams = (λ, γ)`` -- γ is *relative*
  to λ, as in jaxopt.

Differences from jaxopt, all on inputs jaxopt mishandles: hyperparameters may be any
scalar (jaxopt's ``prox_elastic_net`` treats a ``jnp`` scalar as a pytree), negative
or non-finite concrete hyperparameters raise ``ValueError``, and
:func:`jaxreg.prox.prox_group_lasso` has a finite gradient at ``x = 0``.

To use one inside training, :func:`jaxreg.proximal` applies it after any Optax
optimizer (proximal gradient / ISTA), optionally with FISTA's acceleration.

Example:
  >>> import jax.numpy as jnp
  >>> from jaxreg import prox
  >>> prox.prox_lasso(jnp.array([-2.0, 0.5, 3.0]), 1.0).tolist()
  [-1.0, 0.0, 2.0]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxreg._masked import aligned, scaled
from jaxreg._numerics import guarded_sqrt
from jaxreg._soft_threshold import soft_threshold
from jaxreg._validate import (
    ScalarOrSchedule,
    at_count,
    check_nonnegative,
    check_nonnegative_tree,
    default_float_dtype,
)
from jaxreg.masks import MaskLike, resolve_factors

__all__ = [
    "prox_none",
    "prox_lasso",
    "prox_non_negative_lasso",
    "prox_elastic_net",
    "prox_group_lasso",
    "prox_ridge",
    "prox_non_negative_ridge",
    "make_prox_from_projection",
    "ProximalState",
    "proximal",
]


def _per_leaf(h: Any, x: Any) -> list[Any]:
    """``h`` (a scalar, or a pytree shaped like ``x``) as one value per leaf of ``x``."""
    leaves = jax.tree.leaves(x)
    if isinstance(h, (int, float)) or getattr(h, "ndim", None) == 0:
        return [h] * len(leaves)
    try:
        return jax.tree.structure(x).flatten_up_to(h)
    except (ValueError, TypeError) as e:
        raise ValueError(f"a hyperparameter must be a scalar or a pytree like x: {e}") from None


def _checked(name: str, value: Any, scaling: Any) -> Any:
    """The hyperparameter (jaxopt's default 1 for ``None``), checked with ``scaling``."""
    value = 1.0 if value is None else value
    check_nonnegative_tree(name, value)
    check_nonnegative_tree("scaling", scaling)
    return value


def prox_none(x: Any, hyperparams: Any = None, scaling: float = 1.0) -> Any:
    r"""The identity, the proximal operator of :math:`g = 0`.

    Args:
      x: input pytree.
      hyperparams: ignored.
      scaling: ignored.

    Returns:
      ``x``.
    """
    del hyperparams, scaling
    return x


def prox_lasso(x: Any, l1reg: Any = None, scaling: float = 1.0) -> Any:
    r"""Soft-thresholding, the proximal operator of :math:`g(y) = \lambda\lVert y\rVert_1`.

    .. math:: \operatorname{prox}(x) = \operatorname{sign}(x)\max(|x| - s\lambda, 0)

    Args:
      x: input pytree.
      l1reg: :math:`\lambda \ge 0` (default 1); a scalar or a pytree like ``x``
        (coordinate-wise weights).
      scaling: :math:`s \ge 0`, typically the step size.

    Returns:
      A pytree like ``x``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxreg.prox import prox_lasso
      >>> prox_lasso(jnp.array([1.5, -0.2]), 0.5, scaling=2.0).tolist()
      [0.5, -0.0]
    """
    l1reg = _checked("l1reg", l1reg, scaling)
    leaves, treedef = jax.tree.flatten(x)
    out = [soft_threshold(u, lam * scaling) for u, lam in zip(leaves, _per_leaf(l1reg, x))]
    return jax.tree.unflatten(treedef, out)


def prox_non_negative_lasso(x: Any, l1reg: Any = None, scaling: float = 1.0) -> Any:
    r"""Proximal operator of :math:`g(y) = \lambda\lVert y\rVert_1 + \iota_{y \ge 0}`.

    .. math:: \operatorname{prox}(x) = \max(x - s\lambda, 0)

    Args:
      x: input pytree.
      l1reg: :math:`\lambda \ge 0` (default 1), scalar or pytree like ``x``.
      scaling: :math:`s \ge 0`.

    Returns:
      A pytree like ``x``, all entries ``>= 0``.
    """
    l1reg = _checked("l1reg", l1reg, scaling)
    leaves, treedef = jax.tree.flatten(x)
    out = [jnp.maximum(u - lam * scaling, 0) for u, lam in zip(leaves, _per_leaf(l1reg, x))]
    return jax.tree.unflatten(treedef, out)


def prox_elastic_net(
    x: Any, hyperparams: tuple[Any, Any] | None = None, scaling: float = 1.0
) -> Any:
    r"""Proximal operator of the elastic net, jaxopt's parametrization.

    For ``hyperparams = (λ, γ)``,
    :math:`g(y) = \lambda\,(\lVert y\rVert_1 + \tfrac{\gamma}{2}\lVert y\rVert_2^2)` and

    .. math:: \operatorname{prox}(x) = \frac{\operatorname{sign}(x)\max(|x| - s\lambda, 0)}
       {1 + s\lambda\gamma}.

    scikit-learn's ``ElasticNet(alpha, l1_ratio=ρ)`` penalty is this :math:`g` with
    :math:`\lambda = \alpha\rho`, :math:`\gamma = (1-\rho)/\rho`.

    Args:
      x: input pytree.
      hyperparams: ``(λ, γ)``, each ``>= 0``, scalars or pytrees like ``x``
        (default ``(1, 1)``).
      scaling: :math:`s \ge 0`.

    Returns:
      A pytree like ``x``.
    """
    lam, gam = (1.0, 1.0) if hyperparams is None else hyperparams
    check_nonnegative_tree("hyperparams[0]", lam)
    check_nonnegative_tree("hyperparams[1]", gam)
    check_nonnegative_tree("scaling", scaling)
    leaves, treedef = jax.tree.flatten(x)
    out = [
        soft_threshold(u, scaling * a) / (1.0 + scaling * a * b)
        for u, a, b in zip(leaves, _per_leaf(lam, x), _per_leaf(gam, x))
    ]
    return jax.tree.unflatten(treedef, out)


def prox_group_lasso(x: Any, l2reg: Any = 1.0, scaling: float = 1.0) -> Any:
    r"""Block soft-thresholding, the proximal operator of :math:`g(y) = \lambda\lVert y\rVert_2`.

    The whole pytree ``x`` is one group (its 2-norm over all leaves):

    .. math:: \operatorname{prox}(x) = \max\Bigl(1 - \frac{s\lambda}{\lVert x\rVert_2}, 0\Bigr)\,x

    (``0`` at ``x = 0``, with a finite gradient). For many groups, ``jax.vmap`` over them:
    rows of a matrix are ``jax.vmap(prox_group_lasso, in_axes=(0, None, None))`` --
    scikit-learn's ``MultiTaskLasso`` penalty.

    Args:
      x: input pytree.
      l2reg: :math:`\lambda \ge 0` (default 1), a scalar.
      scaling: :math:`s \ge 0`.

    Returns:
      A pytree like ``x``.
    """
    l2reg = _checked("l2reg", l2reg, scaling)
    leaves, treedef = jax.tree.flatten(x)
    sq = sum(jnp.sum(jnp.square(u)) for u in leaves)
    norm, pos = guarded_sqrt(sq)
    factor = jnp.where(pos, jnp.maximum(1.0 - l2reg * scaling / norm, 0.0), 0.0)
    return jax.tree.unflatten(treedef, [factor.astype(u.dtype) * u for u in leaves])


def prox_ridge(x: Any, l2reg: Any = 1.0, scaling: float = 1.0) -> Any:
    r"""Proximal operator of :math:`g(y) = \tfrac{\lambda}{2}\lVert y\rVert_2^2`.

    .. math:: \operatorname{prox}(x) = \frac{x}{1 + s\lambda}

    (jaxopt's code; its docstring writes :math:`\lambda\lVert y\rVert^2` without the
    :math:`\tfrac12`, whose prox would be :math:`x / (1 + 2s\lambda)`.) In jaxreg's
    sum-of-squares convention (:func:`jaxreg.l2_penalty`), ``l2 * l2_penalty`` is this
    with :math:`\lambda = 2\,l2`.

    Args:
      x: input pytree.
      l2reg: :math:`\lambda \ge 0` (default 1), a scalar.
      scaling: :math:`s \ge 0`.

    Returns:
      A pytree like ``x``.
    """
    l2reg = _checked("l2reg", l2reg, scaling)
    return jax.tree.map(lambda u: u / (1.0 + scaling * l2reg), x)


def prox_non_negative_ridge(x: Any, l2reg: Any = 1.0, scaling: float = 1.0) -> Any:
    r"""Proximal operator of :math:`g(y) = \tfrac{\lambda}{2}\lVert y\rVert_2^2 + \iota_{y\ge 0}`.

    .. math:: \operatorname{prox}(x) = \frac{\max(x, 0)}{1 + s\lambda}

    Args:
      x: input pytree.
      l2reg: :math:`\lambda \ge 0` (default 1), a scalar.
      scaling: :math:`s \ge 0`.

    Returns:
      A pytree like ``x``, all entries ``>= 0``.
    """
    l2reg = _checked("l2reg", l2reg, scaling)
    return jax.tree.map(lambda u: jnp.maximum(u, 0) / (1.0 + scaling * l2reg), x)


def make_prox_from_projection(projection: Callable[..., Any]) -> Callable[..., Any]:
    r"""The proximal operator of a set's indicator: the projection onto the set.

    ``projection(x, hyperparams)`` -- e.g. ``lambda x, hp: optax.projections.projection_box(
    x, *hp)`` or ``lambda x, _: optax.projections.projection_non_negative(x)``. The result
    ignores ``scaling`` (an indicator scaled is the same indicator), as in jaxopt.

    Args:
      projection: a callable ``(x, hyperparams) -> projected x``.

    Returns:
      ``prox(x, hyperparams=None, scaling=1.0)``.

    Raises:
      ValueError: if ``projection`` is not callable.
    """
    if not callable(projection):
        raise ValueError(f"make_prox_from_projection needs a callable, got {projection!r}")

    def prox(x: Any, hyperparams: Any = None, scaling: float = 1.0) -> Any:
        del scaling
        return projection(x, hyperparams)

    return prox


# ---------------------------------------------------------------------------- transform


class ProximalState(NamedTuple):
    """State of :func:`proximal`."""

    count: jax.Array  # shape=(), int32 -- updates applied so far
    iterate: Any  # FISTA: the last prox output x_k (the params are the extrapolated y_k)
    t: jax.Array  # FISTA's t_k (1.0 at the start)


def proximal(
    prox: Callable[..., Any],
    hyperparams: Any = None,
    scaling: ScalarOrSchedule = 1.0,
    mask: MaskLike = None,
    *,
    accelerate: bool = False,
) -> optax.GradientTransformation:
    r"""Apply a proximal operator after a base optimizer (proximal gradient), optionally FISTA.

    Chained last, ``optax.chain(base, proximal(prox, hp, scaling=η))`` turns the base
    step :math:`\tilde\theta = \theta + u` into

    .. math:: x_{k+1} = \operatorname{prox}(\tilde\theta;\ \text{hp},\ s_k)

    on every selected leaf (each leaf is its own ``x``, so :func:`jaxreg.prox.prox_group_lasso`
    makes each leaf a group); unselected leaves take the base step. With
    ``base = optax.sgd(η)`` and :math:`s_k = \eta` this is ISTA for
    :math:`f + g`. A mask multiplier :math:`m` scales :math:`s_k` on its leaf.

    ``accelerate=True`` adds FISTA's extrapolation (Beck & Teboulle, 2009):

    .. math:: t_{k+1} = \tfrac{1 + \sqrt{1 + 4t_k^2}}{2},\qquad
       y_{k+1} = x_{k+1} + \tfrac{t_k - 1}{t_{k+1}}(x_{k+1} - x_k),\qquad t_0 = 1,

    and the params become :math:`y_{k+1}` (where the next gradient is taken). The
    iterate :math:`x_k` -- the answer -- is ``state.iterate`` of this transform's
    :class:`ProximalState` (``optax.tree_utils.tree_get(opt_state, "iterate")``).

    Args:
      prox: ``prox(x, hyperparams, scaling)``, e.g. from this module.
      hyperparams: passed to ``prox`` as given (scalars; per-leaf strength goes in
        ``mask`` multipliers).
      scaling: :math:`s_k \ge 0` -- normally the learning rate; a float or a schedule.
      mask: which leaves get the prox (and multipliers); see :mod:`jaxreg.masks`.
      accelerate: FISTA's extrapolation (on every float leaf).

    Returns:
      An ``optax.GradientTransformation`` with a :class:`ProximalState`.

    Raises:
      ValueError: ``prox`` not callable, a negative or non-finite ``scaling``, or a
        mask that does not fit.

    Example:
      >>> import jax.numpy as jnp, optax, jaxreg
      >>> from jaxreg.prox import prox_lasso
      >>> tx = optax.chain(optax.sgd(0.5), jaxreg.proximal(prox_lasso, 1.0, scaling=0.5))
      >>> p = {"w": jnp.array([2.0, 0.2])}
      >>> u, _ = tx.update({"w": jnp.zeros(2)}, tx.init(p), p)
      >>> optax.apply_updates(p, u)["w"].tolist()
      [1.5, 0.0]
    """
    if not callable(prox):
        raise ValueError(f"proximal needs a callable prox, got {prox!r}")
    check_nonnegative("scaling", scaling)

    def init_fn(params: Any) -> ProximalState:
        resolve_factors(mask, params)  # a mask that does not fit fails at init
        iterate = jax.tree.map(jnp.array, params) if accelerate else optax.EmptyState()
        return ProximalState(jnp.zeros([], jnp.int32), iterate, jnp.ones([], default_float_dtype()))

    def update_fn(updates: Any, state: ProximalState, params: Any = None) -> tuple[Any, Any]:
        treedef, u_leaves, p_leaves = aligned(updates, params, "proximal")
        s = at_count(scaling, state.count)
        factors = resolve_factors(mask, params)
        x_new = []
        for u, p, f in zip(u_leaves, p_leaves, factors):
            if f:
                scale = jnp.asarray(scaled(s, f), u.dtype)
                x_new.append(prox(p + u, hyperparams, scale))
            else:
                x_new.append(None)  # the base step, passed through
        if not accelerate:
            out = [u if x is None else x - p for u, x, p in zip(u_leaves, x_new, p_leaves)]
            return jax.tree.unflatten(treedef, out), state._replace(
                count=optax.safe_increment(state.count)
            )
        x_new = [p + u if x is None else x for u, x, p in zip(u_leaves, x_new, p_leaves)]
        t = state.t
        t_next = (1.0 + jnp.sqrt(1.0 + 4.0 * t * t)) / 2.0
        beta = (t - 1.0) / t_next
        x_old = treedef.flatten_up_to(state.iterate)
        y = [
            x + beta.astype(x.dtype) * (x - xo) if jnp.issubdtype(x.dtype, jnp.floating) else x
            for x, xo in zip(x_new, x_old)
        ]
        out = [yy - p for yy, p in zip(y, p_leaves)]
        new_state = ProximalState(
            optax.safe_increment(state.count), jax.tree.unflatten(treedef, x_new), t_next
        )
        return jax.tree.unflatten(treedef, out), new_state

    return optax.GradientTransformation(init_fn, update_fn)
