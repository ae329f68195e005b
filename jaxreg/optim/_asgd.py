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


def _torch_pow(base: jax.Array, alpha: float, t: Any) -> jax.Array:
    """torch's ``tensor ** alpha`` for a 0-d tensor of dtype ``t`` (values from
    :func:`jaxreg.optim._common.as_tensor`), bit for bit as measured on torch 2.14's CPU
    kernel: its special exponents are products and reciprocals in ``t``, any other exponent
    the correctly rounded power."""
    mul, div = (lambda a, b: c.tensor_mul(a, b, t)), (lambda a, b: c.tensor_div(a, b, t))
    special = {
        1.0: lambda b: b,
        2.0: lambda b: mul(b, b),
        3.0: lambda b: mul(mul(b, b), b),
        -1.0: lambda b: div(1.0, b),
        -2.0: lambda b: div(1.0, mul(b, b)),
        -0.5: lambda b: div(1.0, c.as_tensor(jnp.sqrt(b), t)),
    }
    if float(alpha) in special:
        return special[float(alpha)](base)
    return c.as_tensor(base ** c.as_tensor(alpha, t), t)


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
    torch_scalar_dtype: Any = None,
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
    whatever the parameters' dtype; ``torch_scalar_dtype`` (a jaxreg extension) says which.
    The default, ``None``, follows the parameters: float64 for float64 parameters (torch
    with its default dtype set to float64, as a float64 run has), else float32. For
    float64 parameters under torch's float32 default pass ``torch_scalar_dtype=jnp.float32``;
    :func:`from_torch` reads ``torch.get_default_dtype()`` and does so.
    With an ``lr`` schedule, ``eta`` uses the lr of the step that computes it, as torch
    (which reads ``group['lr']`` then).

    Other arguments: torch.optim.ASGD's, same names, defaults and meaning; kernel flags
    (``foreach``, ``fused``, ``capturable``, ``differentiable``) are ignored.

    Args:
      lr: learning rate: a float, an Optax schedule of the step count, or a 0-d
        float32 array -- torch's ``lr=torch.tensor(...)``, whose step scalars torch computes
        in float32 (see :ref:`tensor-lr`).
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
    t = c.tensor_lr_dtype(lr)  # torch's Tensor lr: the step's lr scalars in its dtype
    if t is not None and alpha == 0.5:
        raise ValueError(
            "asgd(alpha=0.5) with a float32 array lr (torch's Tensor lr): torch computes "
            "eta's (...) ** 0.5 with its float32 sqrt kernel, which is not correctly rounded "
            "(1 ulp apart in ~1% of steps, measured), so jaxreg cannot reproduce it; use a "
            "float lr"
        )

    def init_fn(params):
        lr0 = c.lr_at(lr, jnp.zeros([], jnp.int32))
        sd = c.torch_scalar_dtype_of(params, torch_scalar_dtype)
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
        sd = state.eta.dtype  # torch_scalar_dtype, as init resolved it
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
        if t is None:
            new_eta = (lr_t / (1 + lambd * lr_t * step) ** alpha).astype(sd)
        else:  # torch with a Tensor lr: each operation a tensor of the lr's dtype
            base = c.as_tensor(1 + c.tensor_mul(c.tensor_mul(lambd, lr_t, t), step, t), t)
            new_eta = c.tensor_div(lr_t, _torch_pow(base, alpha, t), t).astype(sd)
        new_mu = (1 / jnp.maximum(1.0, step - t0)).astype(sd)
        return out, ASGDState(optax.safe_increment(state.count), new_eta, new_mu, ax)

    core = optax.GradientTransformation(init_fn, update_fn)
    return c.chain(c.prelude(maximize, weight_decay, weight_decay_mask), core)
