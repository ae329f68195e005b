"""torch.optim.ASGD (averaged SGD)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxreg._validate import ScalarOrSchedule
from jaxreg.masks import MaskLike
from jaxreg.optim import _common as c


class ASGDState(NamedTuple):
    count: jax.Array  # shape=(), dtype=int32 -- torch 'step'
    eta: jax.Array  # shape=(), dtype=torch_scalar_dtype -- current step size
    mu: jax.Array  # shape=(), dtype=torch_scalar_dtype -- averaging coefficient
    ax: Any  # params-shaped -- the running average of the iterates


def asgd(
    lr: ScalarOrSchedule = 1e-2,
    lambd: float = 1e-4,
    alpha: float = 0.75,
    t0: float = 1e6,
    weight_decay: ScalarOrSchedule = 0,
    *,
    foreach: bool | None = None,
    maximize: bool = False,
    differentiable: bool = False,
    capturable: bool = False,
    weight_decay_mask: MaskLike = None,
    torch_scalar_dtype: Any = jnp.float32,
) -> optax.GradientTransformation:
    r"""``torch.optim.ASGD`` (Polyak-Ruppert averaged SGD), argument for argument.

    torch's update (``_single_tensor_asgd``), step t ≥ 1::

        g = (-grad if maximize else grad) + weight_decay * p
        p = p * (1 - lambd * eta)
        p = p - eta * g
        ax = ax + (p - ax) * mu   if mu != 1  else  p
        eta = lr / (1 + lambd * lr * t) ** alpha
        mu = 1 / max(1, t - t0)

    The averaged iterate ``ax`` lives in the state (``state[0].ax`` or via
    :func:`jaxreg.optim.state_to_torch`), as in torch. ``eta`` and ``mu`` are tensors of
    torch's default dtype (float32 unless ``torch.set_default_dtype(torch.float64)``),
    even for float64 parameters; ``torch_scalar_dtype`` (a jaxreg extension) matches it.
    With an ``lr`` schedule, ``eta`` uses the lr of the step that computes it, as torch
    (which reads ``group['lr']`` then).

    Other arguments: torch.optim.ASGD's, same names, defaults and meaning; kernel flags
    (``foreach``, ``fused``, ``capturable``, ``differentiable``) are ignored.

    Args:
      lr: learning rate, a float or an Optax schedule of the step count.
      weight_decay_mask: which leaves get ``weight_decay`` (jaxreg masks; multipliers scale it).

    Returns:
      An ``optax.GradientTransformation``.

    Raises:
      ValueError: on the values torch.optim.ASGD rejects, with torch's message.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxreg import optim
      >>> tx = optim.asgd(lr=0.5, lambd=0.0)
      >>> p = {"w": jnp.array([1.0])}
      >>> float(tx.update({"w": jnp.array([1.0])}, tx.init(p), p)[0]["w"][0])
      -0.5
    """
    c.check_kernel_flags(
        dict(foreach=foreach, differentiable=differentiable, capturable=capturable)
    )
    c.check_lr(lr)
    c.nonneg("weight_decay", weight_decay)
    sd = torch_scalar_dtype

    def init_fn(params):
        lr0 = c.lr_at(lr, jnp.zeros([], jnp.int32))
        return ASGDState(
            jnp.zeros([], jnp.int32),
            jnp.asarray(lr0, sd),
            jnp.ones([], sd),
            c.zeros_like_tree(params),
        )

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("asgd needs params: call update(updates, state, params)")
        step = c.step_of(state.count)
        eta = state.eta.astype(step.dtype)
        decay = 1 - lambd * eta
        mu_is_one = state.mu == 1

        def leaf(g, p, ax):
            new_p = p * c.cast(decay, p)
            new_p = new_p + (-c.cast(eta, g)) * g
            ax = jnp.where(mu_is_one, new_p, ax + (new_p - ax) * c.cast(state.mu, ax))
            return new_p - p, ax

        out, ax = c.map_leaves(leaf, updates, params, state.ax, state_from=2)
        lr_t = c.lr_at(lr, state.count)
        new_eta = (lr_t / (1 + lambd * lr_t * step) ** alpha).astype(sd)
        new_mu = (1 / jnp.maximum(1.0, step - t0)).astype(sd)
        return out, ASGDState(optax.safe_increment(state.count), new_eta, new_mu, ax)

    core = optax.GradientTransformation(init_fn, update_fn)
    return c.chain(c.prelude(maximize, weight_decay, weight_decay_mask), core)
