"""Weight decay as Optax gradient transformations: coupled L2, decoupled, L1.

Shared machinery for every regularizing transform lives here too: the per-leaf
application of a masked rule and the step counter used by schedules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxreg._masked import aligned
from jaxreg._masked import scaled as scaled_by
from jaxreg._validate import ScalarOrSchedule, at_count, check_nonnegative, concrete_float
from jaxreg.masks import MaskLike, resolve, resolve_factors

__all__ = [
    "ScheduleState",
    "add_weight_decay",
    "decoupled_weight_decay",
    "add_l1_decay",
]


class ScheduleState(NamedTuple):
    """State of a regularizing transform whose hyperparameter is a schedule."""

    count: jax.Array  # shape=(), dtype=int32 -- updates applied so far


def map_selected(
    rule: Callable[..., jax.Array],
    mask: MaskLike,
    updates: Any,
    params: Any,
    *hparams: Any,
    scaled: tuple[bool, ...] | None = None,
) -> Any:
    """Apply ``rule(update, param, *hparams)`` where ``mask`` selects; pass other leaves through.

    Hyperparameters are cast to each leaf's dtype, so updates keep their dtypes. Where
    the mask carries a multiplier other than 1, the hyperparameters flagged in
    ``scaled`` (default: all) are multiplied by it.
    """
    treedef, u_leaves, p_leaves = aligned(updates, params)
    factors = resolve_factors(mask, params)
    scaled = (True,) * len(hparams) if scaled is None else scaled
    out = []
    for u, p, f in zip(u_leaves, p_leaves, factors):
        if f:
            hp = [jnp.asarray(scaled_by(h, f) if sc else h, dtype=u.dtype)
                  for h, sc in zip(hparams, scaled)]  # fmt: skip
            u = rule(u, p, *hp).astype(u.dtype)
        out.append(u)
    return jax.tree.unflatten(treedef, out)


def regularizing_transform(
    rule: Callable[..., jax.Array],
    hparams: dict[str, ScalarOrSchedule],
    mask: MaskLike,
    unscaled: tuple[str, ...] = ("learning_rate",),
) -> optax.GradientTransformation:
    """Build a transform applying ``rule(update, param, *hparam_values)`` on masked leaves.

    A mask multiplier scales every hyperparameter except those named in ``unscaled``.

    Stateless (``optax.EmptyState``) when no hyperparameter is a schedule; otherwise
    keeps a :class:`ScheduleState` and evaluates schedules at the current count
    (the first update sees ``schedule(0)``, as ``optax.scale_by_learning_rate``).
    """
    for name, value in hparams.items():
        check_nonnegative(name, value)
    values = list(hparams.values())
    scaled = tuple(name not in unscaled for name in hparams)
    scheduled = any(callable(v) for v in values)

    def init_fn(params: Any) -> Any:
        resolve(mask, params)  # a mask that does not fit fails here, at init
        if scheduled:
            return ScheduleState(count=jnp.zeros([], jnp.int32))
        return optax.EmptyState()

    def update_fn(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        count = state.count if scheduled else None
        current = [at_count(v, count) for v in values]
        updates = map_selected(rule, mask, updates, params, *current, scaled=scaled)
        if scheduled:
            state = ScheduleState(count=optax.safe_increment(count))
        return updates, state

    return optax.GradientTransformation(init_fn, update_fn)


def add_weight_decay(
    weight_decay: ScalarOrSchedule, mask: MaskLike = None
) -> optax.GradientTransformation:
    r"""Coupled L2 weight decay: :math:`g \leftarrow g + \lambda\,\theta`.

    This is PyTorch's ``weight_decay=`` in ``SGD``, ``Adam``, ``RMSprop``, ``Adagrad``, ...
    (``grad = grad.add(param, alpha=weight_decay)``): the decay enters the gradient
    *before* momentum or adaptive scaling. Put it first in an ``optax.chain``. With
    plain SGD it equals :math:`\tfrac{\lambda}{2}` ``* l2_penalty`` in the loss.

    Args:
      weight_decay: :math:`\lambda \ge 0`; a float, scalar array or schedule.
      mask: which leaves decay, and their multipliers; see :mod:`jaxreg.masks`. Non-float
        leaves never decay.

    Returns:
      An ``optax.GradientTransformation`` (needs ``params`` in ``update``).

    Raises:
      ValueError: on a negative or non-finite ``weight_decay`` (at construction), or
        a mask that does not fit the params (at ``init``/``update``).

    Example:
      >>> import jax.numpy as jnp, optax, jaxreg
      >>> tx = optax.chain(jaxreg.add_weight_decay(0.5), optax.sgd(1.0))
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> updates, _ = tx.update({"w": jnp.zeros(2)}, tx.init(params), params)
      >>> updates["w"].tolist()
      [-0.5, 1.0]
    """
    return regularizing_transform(lambda g, p, wd: g + wd * p, {"weight_decay": weight_decay}, mask)


_MODES = ("lr", "schedule", "fixed", "corrected", "lr_power")


def decoupled_weight_decay(
    weight_decay: ScalarOrSchedule,
    learning_rate: ScalarOrSchedule,
    mask: MaskLike = None,
    *,
    mode: str = "lr",
    max_learning_rate: float | None = None,
    power: float = 1.0,
) -> optax.GradientTransformation:
    r"""Decoupled weight decay: :math:`u \leftarrow u - \lambda\, f(\eta_t)\, \theta_{t-1}`.

    Chained *after* a base optimizer, the step becomes
    :math:`\theta_t = \theta_{t-1}(1 - \lambda f(\eta_t)) + \text{base update}`, with
    :math:`\eta_t` the learning rate at this step. ``learning_rate`` may be a schedule,
    evaluated on this transform's own count, which advances once per update exactly as
    the count of the optimizer it is chained with. ``mode`` picks :math:`f`, i.e. which
    library's convention the decay follows:

    - ``"lr"`` (default): :math:`f(\eta) = \eta` -- PyTorch ``AdamW``'s
      ``param.mul_(1 - lr * weight_decay)``, Optax's ``adamw``, Keras.
    - ``"schedule"``: :math:`f(\eta) = \eta / \eta_{\max}` -- the schedule multiplier
      only, as in Loshchilov & Hutter's Algorithm 2 (:math:`\theta \leftarrow \theta -
      \eta_t\lambda\theta` with :math:`\eta_t` the multiplier) and big_vision.
    - ``"fixed"``: :math:`f = 1` -- a constant decay per step (t5x's ``weight_decay_rate``,
      TF-Addons' ``DecoupledWeightDecayExtension``).
    - ``"corrected"``: :math:`f(\eta) = \eta^2 / \eta_{\max}` -- timm's corrected weight
      decay (decay strength proportional to the current lr, independent of the peak lr).
    - ``"lr_power"``: :math:`f(\eta) = \eta^{k}` with ``power`` :math:`k` (t5x's
      ``weight_decay`` scaled by ``lr**k``).

    Args:
      weight_decay: :math:`\lambda \ge 0`; float, scalar array or schedule.
      learning_rate: :math:`\eta_t \ge 0`; float, scalar array or schedule.
      mask: which leaves decay, and their multipliers; see :mod:`jaxreg.masks`.
      mode: one of ``"lr"``, ``"schedule"``, ``"fixed"``, ``"corrected"``, ``"lr_power"``.
      max_learning_rate: :math:`\eta_{\max} > 0` for ``"schedule"`` and ``"corrected"``;
        defaults to ``learning_rate`` when that is a constant (required for a schedule).
      power: :math:`k \ge 0` for ``"lr_power"``.

    Returns:
      An ``optax.GradientTransformation``.

    Raises:
      ValueError: on negative or non-finite hyperparameters, an unknown ``mode``, a
        missing ``max_learning_rate`` for a scheduled learning rate, or a mask that does
        not fit.

    Example:
      >>> import jax.numpy as jnp, optax, jaxreg
      >>> tx = optax.chain(optax.adam(1e-3), jaxreg.decoupled_weight_decay(1e-2, 1e-3))
      >>> params = {"w": jnp.ones(2)}
      >>> u, _ = tx.update({"w": jnp.zeros(2)}, tx.init(params), params)
      >>> [round(x, 9) for x in u["w"].tolist()]  # Adam's update of a zero gradient is 0
      [-1e-05, -1e-05]

    References:
      Loshchilov & Hutter, *Decoupled Weight Decay Regularization*, ICLR 2019.
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if mode in ("schedule", "corrected"):
        if max_learning_rate is None:
            if callable(learning_rate):
                raise ValueError(
                    f"mode={mode!r} with a learning-rate schedule needs max_learning_rate"
                )
            max_learning_rate = concrete_float(learning_rate)
        check_nonnegative("max_learning_rate", max_learning_rate)
        if not max_learning_rate > 0:
            raise ValueError(f"max_learning_rate must be > 0, got {max_learning_rate}")
    check_nonnegative("power", power)
    factor = {
        "lr": lambda lr: lr,
        "schedule": lambda lr: lr / max_learning_rate,
        "fixed": lambda lr: jnp.ones_like(lr),
        "corrected": lambda lr: lr * lr / max_learning_rate,
        "lr_power": lambda lr: lr**power,
    }[mode]
    return regularizing_transform(
        lambda u, p, wd, lr: u - factor(lr) * wd * p,
        {"weight_decay": weight_decay, "learning_rate": learning_rate},
        mask,
    )


def add_l1_decay(alpha: ScalarOrSchedule, mask: MaskLike = None) -> optax.GradientTransformation:
    r"""L1 decay in the gradient: :math:`g \leftarrow g + \alpha\,\operatorname{sign}(\theta)`.

    The gradient of :math:`\alpha` ``* l1_penalty``, with the same convention
    :math:`\operatorname{sign}(0) = 0` (PyTorch autograd's). It does not produce exact
    zeros; use :func:`jaxreg.proximal_l1` for that.

    Args:
      alpha: :math:`\alpha \ge 0`; float, scalar array or schedule.
      mask: which leaves decay, and their multipliers; see :mod:`jaxreg.masks`.

    Returns:
      An ``optax.GradientTransformation``.

    Raises:
      ValueError: on a negative or non-finite ``alpha``, or a mask that does not fit.

    Example:
      >>> import jax.numpy as jnp, jaxreg
      >>> tx = jaxreg.add_l1_decay(0.5)
      >>> p = {"w": jnp.array([-3.0, 0.0, 2.0])}
      >>> tx.update({"w": jnp.zeros(3)}, tx.init(p), p)[0]["w"].tolist()
      [-0.5, 0.0, 0.5]
    """
    return regularizing_transform(lambda g, p, a: g + a * jnp.sign(p), {"alpha": alpha}, mask)
