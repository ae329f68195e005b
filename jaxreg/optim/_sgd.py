"""torch.optim.SGD."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxreg._validate import ScalarOrSchedule
from jaxreg.masks import MaskLike
from jaxreg.optim import _common as c


class SGDState(NamedTuple):
    """State of :func:`sgd`'s core (names follow torch's ``optimizer.state``)."""

    count: jax.Array  # shape=(), dtype=int32 -- steps taken (torch SGD keeps no 'step')
    momentum_buffer: Any  # params-shaped tree, or () when momentum == 0


def scale_by_torch_sgd(
    lr: ScalarOrSchedule, momentum: ScalarOrSchedule, dampening: float, nesterov: bool
) -> optax.GradientTransformation:
    """torch SGD's momentum and ``-lr`` scaling (the gradient prelude runs before it)."""
    has_momentum = callable(momentum) or momentum != 0

    def init_fn(params: Any) -> SGDState:
        buf = c.zeros_like_tree(params) if has_momentum else ()
        return SGDState(count=jnp.zeros([], jnp.int32), momentum_buffer=buf)

    def update_fn(updates: Any, state: SGDState, params: Any = None):
        lr_t = c.lr_at(lr, state.count)
        if not has_momentum:
            out = jax.tree.map(lambda g: -c.cast(lr_t, g) * g, updates)
            return out, SGDState(optax.safe_increment(state.count), ())
        first = state.count == 0
        m_t = c.at_count(momentum, state.count)

        def leaf(g, buf):
            # torch: buf = grad on the first step, else buf.mul_(momentum).add_(grad, 1 - dampening)
            m = c.cast(m_t, g) if callable(momentum) else m_t
            new_buf = jnp.where(first, g, buf * m + (1 - dampening) * g)
            d = g + m * new_buf if nesterov else new_buf
            return (-c.cast(lr_t, g) * d, new_buf)

        out, bufs = c.map_leaves(leaf, updates, state.momentum_buffer)
        return out, SGDState(optax.safe_increment(state.count), bufs)

    return optax.GradientTransformation(init_fn, update_fn)


def sgd(
    lr: ScalarOrSchedule = 1e-3,
    momentum: ScalarOrSchedule = 0,
    dampening: float = 0,
    weight_decay: ScalarOrSchedule = 0,
    nesterov: bool = False,
    *,
    maximize: bool = False,
    foreach: bool | None = None,
    differentiable: bool = False,
    fused: bool | None = None,
    weight_decay_mask: MaskLike = None,
) -> optax.GradientTransformation:
    r"""``torch.optim.SGD``, argument for argument.

    torch's update (``torch/optim/sgd.py``, ``_single_tensor_sgd``)::

        g = -grad if maximize else grad
        g = g + weight_decay * p                      # coupled L2
        if momentum != 0:
            buf = g                          if step == 1
                  momentum * buf + (1 - dampening) * g otherwise
            g = g + momentum * buf if nesterov else buf
        p = p - lr * g

    Differences from stock Optax: ``optax.sgd`` has no ``dampening`` and does not copy
    the first gradient into the buffer undampened; ``maximize`` negates the gradient
    *before* the decay is added (negating the learning rate would negate the decay too).

    Args:
      lr: learning rate: a float, an Optax schedule of the step count, or a 0-d
        float32 array -- torch's ``lr=torch.tensor(...)``, whose step scalars torch computes
        in float32 (see :ref:`tensor-lr`).
      momentum, dampening, weight_decay, nesterov, maximize: as in torch; ``momentum``
        may be a schedule of the step count (what ``OneCycleLR``/``CyclicLR`` with
        ``cycle_momentum=True`` set in torch: ``lr_scheduler.one_cycle_momentum``).
      foreach, differentiable, fused: torch kernel choices; accepted and ignored.
      weight_decay_mask: which leaves get ``weight_decay`` (jaxreg masks; multipliers scale
        it); the others behave like a torch param group with ``weight_decay=0``.

    Returns:
      An ``optax.GradientTransformation``; apply with ``optax.apply_updates``.

    Raises:
      ValueError: on the values torch rejects (negative lr, momentum or weight_decay;
        nesterov without momentum or with dampening).

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from jaxreg import optim
      >>> tx = optim.sgd(lr=0.5, momentum=0.9, weight_decay=0.5)
      >>> p = {"w": jnp.array([1.0])}
      >>> u, s = tx.update({"w": jnp.array([1.0])}, tx.init(p), p)
      >>> optax.apply_updates(p, u)["w"].tolist()  # 1 - 0.5 * (1 + 0.5 * 1)
      [0.25]
    """
    c.check_kernel_flags({"foreach": foreach, "differentiable": differentiable, "fused": fused})
    c.check_lr(lr)
    c.nonneg("momentum", momentum)
    c.nonneg("weight_decay", weight_decay)
    c.check(
        not (nesterov and ((not callable(momentum) and momentum <= 0) or dampening != 0)),
        "Nesterov momentum requires a momentum and zero dampening",
    )
    return c.chain(
        c.prelude(maximize, weight_decay, weight_decay_mask),
        scale_by_torch_sgd(lr, momentum, dampening, nesterov),
    )
