"""Square-average optimizers: torch.optim.RMSprop, Adagrad, Adadelta."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxreg._validate import ScalarOrSchedule
from jaxreg.masks import MaskLike
from jaxreg.optim import _common as c


class RMSpropState(NamedTuple):
    count: jax.Array  # shape=(), dtype=int32 -- torch 'step'
    square_avg: Any  # params-shaped
    momentum_buffer: Any  # params-shaped if momentum > 0 else ()
    grad_avg: Any  # params-shaped if centered else ()


def rmsprop(
    lr: ScalarOrSchedule = 1e-2,
    alpha: float = 0.99,
    eps: float = 1e-8,
    weight_decay: ScalarOrSchedule = 0,
    momentum: ScalarOrSchedule = 0,
    centered: bool = False,
    *,
    capturable: bool = False,
    foreach: bool | None = None,
    maximize: bool = False,
    differentiable: bool = False,
    weight_decay_mask: MaskLike = None,
) -> optax.GradientTransformation:
    r"""``torch.optim.RMSprop``, argument for argument.

    torch's update (``_single_tensor_rmsprop``)::

        g = (-grad if maximize else grad) + weight_decay * p
        v = alpha * v + (1 - alpha) * g * g
        if centered: gbar = gbar.lerp(g, 1 - alpha); avg = sqrt(v - gbar**2) + eps
        else:        avg = sqrt(v) + eps                # eps *outside* the sqrt
        if momentum > 0: buf = momentum * buf + g / avg;  p = p - lr * buf
        else:            p = p - lr * g / avg

    Stock ``optax.rmsprop`` defaults to decay 0.9 and puts eps inside the sqrt
    (``eps_in_sqrt=True``); torch uses 0.99 and eps outside.

    Other arguments: torch.optim.RMSprop's, same names, defaults and meaning; kernel flags
    (``foreach``, ``fused``, ``capturable``, ``differentiable``) are ignored.

    Args:
      lr: learning rate: a float, an Optax schedule of the step count, or a 0-d
        float32 array -- torch's ``lr=torch.tensor(...)``, whose step scalars torch computes
        in float32 (see :ref:`tensor-lr`).
      momentum: as in torch; may also be a schedule of the step count (what ``OneCycleLR``/
        ``CyclicLR`` cycle in torch: ``lr_scheduler.one_cycle_momentum``/``cyclic_momentum``).
      weight_decay_mask: which leaves get ``weight_decay`` (jaxreg masks; multipliers scale it).

    Returns:
      An ``optax.GradientTransformation``.

    Raises:
      ValueError: on the values torch.optim.RMSprop rejects, with torch's message.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxreg import optim
      >>> tx = optim.rmsprop(lr=0.01)
      >>> p = {"w": jnp.array([1.0])}
      >>> round(float(tx.update({"w": jnp.array([1.0])}, tx.init(p), p)[0]["w"][0]), 6)
      -0.1
    """
    c.check_kernel_flags(
        dict(capturable=capturable, foreach=foreach, differentiable=differentiable)
    )
    c.check_lr(lr)
    c.nonneg("epsilon", eps, f"Invalid epsilon value: {eps}")
    c.nonneg("momentum", momentum)
    c.nonneg("weight_decay", weight_decay)
    c.nonneg("alpha", alpha)
    # momentum may be a schedule (OneCycleLR/CyclicLR cycle it in torch)
    scheduled = callable(momentum)
    use_buf = scheduled or momentum > 0

    def init_fn(params):
        z = c.zeros_like_tree
        return RMSpropState(
            jnp.zeros([], jnp.int32),
            z(params),
            z(params) if use_buf else (),
            z(params) if centered else (),
        )

    def update_fn(updates, state, params=None):
        lr_t = c.lr_at(lr, state.count)
        m_t = c.at_count(momentum, state.count)

        def leaf(g, v, buf, gbar):
            v = v * c.cast(alpha, v) + c.cast(1 - alpha, g) * g * g
            if centered:
                gbar = c.lerp(gbar, g, 1 - alpha)
                avg = jnp.sqrt(v + (-1.0) * gbar * gbar)
            else:
                avg = jnp.sqrt(v)
            avg = avg + c.cast(eps, avg)
            if scheduled:  # torch tests ``momentum > 0`` at every step
                on = m_t > 0
                new_buf = buf * c.cast(m_t, buf) + g / avg
                out = -c.cast(lr_t, g) * jnp.where(on, new_buf, g / avg)
                buf = jnp.where(on, new_buf, buf)
            elif momentum > 0:
                buf = buf * c.cast(momentum, buf) + g / avg
                out = -c.cast(lr_t, g) * buf
            else:
                out = -c.cast(lr_t, g) * (g / avg)
            return out, v, buf, gbar

        # Unused buffers ride along as the updates tree and are dropped again below.
        bufs = state.momentum_buffer if use_buf else updates
        gbars = state.grad_avg if centered else updates
        out, v, buf, gbar = c.map_leaves(leaf, updates, state.square_avg, bufs, gbars)
        new = RMSpropState(
            optax.safe_increment(state.count),
            v,
            buf if use_buf else (),
            gbar if centered else (),
        )
        return out, new

    core = optax.GradientTransformation(init_fn, update_fn)
    return c.chain(c.prelude(maximize, weight_decay, weight_decay_mask), core)


class AdagradState(NamedTuple):
    count: jax.Array  # shape=(), dtype=int32 -- torch 'step'
    sum: Any  # params-shaped, starts at initial_accumulator_value


def adagrad(
    lr: ScalarOrSchedule = 1e-2,
    lr_decay: float = 0,
    weight_decay: ScalarOrSchedule = 0,
    initial_accumulator_value: float = 0,
    eps: float = 1e-10,
    *,
    foreach: bool | None = None,
    maximize: bool = False,
    differentiable: bool = False,
    fused: bool | None = None,
    weight_decay_mask: MaskLike = None,
) -> optax.GradientTransformation:
    r"""``torch.optim.Adagrad``, argument for argument.

    torch's update (``_single_tensor_adagrad``), step t ≥ 1::

        g = (-grad if maximize else grad) + weight_decay * p
        clr = lr / (1 + (t - 1) * lr_decay)
        s = s + g * g                       # s starts at initial_accumulator_value
        p = p - clr * g / (sqrt(s) + eps)    # eps outside the sqrt

    ``optax.adagrad`` puts eps inside the sqrt, defaults the accumulator to 0.1 and
    has no ``lr_decay``.

    Other arguments: torch.optim.Adagrad's, same names, defaults and meaning; kernel flags
    (``foreach``, ``fused``, ``capturable``, ``differentiable``) are ignored.

    Args:
      lr: learning rate: a float, an Optax schedule of the step count, or a 0-d
        float32 array -- torch's ``lr=torch.tensor(...)``, whose step scalars torch computes
        in float32 (see :ref:`tensor-lr`).
      weight_decay_mask: which leaves get ``weight_decay`` (jaxreg masks; multipliers scale it).

    Returns:
      An ``optax.GradientTransformation``.

    Raises:
      ValueError: on the values torch.optim.Adagrad rejects, with torch's message.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxreg import optim
      >>> tx = optim.adagrad(lr=0.1)
      >>> p = {"w": jnp.array([1.0])}
      >>> round(float(tx.update({"w": jnp.array([2.0])}, tx.init(p), p)[0]["w"][0]), 6)
      -0.1
    """
    c.check_kernel_flags(dict(foreach=foreach, differentiable=differentiable, fused=fused))
    c.check_lr(lr)
    c.nonneg("lr_decay", lr_decay, f"Invalid lr_decay value: {lr_decay}")
    c.nonneg("weight_decay", weight_decay)
    c.nonneg(
        "initial_accumulator_value",
        initial_accumulator_value,
        f"Invalid initial_accumulator_value value: {initial_accumulator_value}",
    )
    c.nonneg("epsilon", eps, f"Invalid epsilon value: {eps}")

    t = c.tensor_lr_dtype(lr)

    def init_fn(params):
        acc = jax.tree.map(lambda p: c.full_like(p, initial_accumulator_value), params)
        return AdagradState(jnp.zeros([], jnp.int32), acc)

    def update_fn(updates, state, params=None):
        step = c.step_of(state.count)
        # torch: clr = lr / (1 + (step - 1) * lr_decay), a tensor of the lr's dtype for a Tensor lr
        clr = c.tensor_div(c.lr_at(lr, state.count), 1 + (step - 1) * lr_decay, t)

        def leaf(g, s):
            s = s + g * g
            return (-c.cast(clr, g)) * (g / (jnp.sqrt(s) + c.cast(eps, s))), s

        out, s = c.map_leaves(leaf, updates, state.sum)
        return out, AdagradState(optax.safe_increment(state.count), s)

    core = optax.GradientTransformation(init_fn, update_fn)
    return c.chain(c.prelude(maximize, weight_decay, weight_decay_mask), core)


class AdadeltaState(NamedTuple):
    count: jax.Array  # shape=(), dtype=int32 -- torch 'step'
    square_avg: Any  # params-shaped
    acc_delta: Any  # params-shaped


def adadelta(
    lr: ScalarOrSchedule = 1.0,
    rho: float = 0.9,
    eps: float = 1e-6,
    weight_decay: ScalarOrSchedule = 0,
    *,
    foreach: bool | None = None,
    capturable: bool = False,
    maximize: bool = False,
    differentiable: bool = False,
    weight_decay_mask: MaskLike = None,
) -> optax.GradientTransformation:
    r"""``torch.optim.Adadelta``, argument for argument.

    torch's update (``_single_tensor_adadelta``)::

        g = (-grad if maximize else grad) + weight_decay * p
        v = rho * v + (1 - rho) * g * g
        delta = sqrt(a + eps) / sqrt(v + eps) * g
        a = rho * a + (1 - rho) * delta * delta
        p = p - lr * delta

    Same algorithm as ``optax.adadelta`` (which defaults to ``learning_rate=None``).

    Other arguments: torch.optim.Adadelta's, same names, defaults and meaning; kernel flags
    (``foreach``, ``fused``, ``capturable``, ``differentiable``) are ignored.

    Args:
      lr: learning rate: a float, an Optax schedule of the step count, or a 0-d
        float32 array -- torch's ``lr=torch.tensor(...)``, whose step scalars torch computes
        in float32 (see :ref:`tensor-lr`).
      weight_decay_mask: which leaves get ``weight_decay`` (jaxreg masks; multipliers scale it).

    Returns:
      An ``optax.GradientTransformation``.

    Raises:
      ValueError: on the values torch.optim.Adadelta rejects, with torch's message.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxreg import optim
      >>> tx = optim.adadelta()
      >>> p = {"w": jnp.array([1.0])}
      >>> bool(tx.update({"w": jnp.array([1.0])}, tx.init(p), p)[0]["w"][0] < 0)
      True
    """
    c.check_kernel_flags(
        dict(foreach=foreach, capturable=capturable, differentiable=differentiable)
    )
    c.check_lr(lr)
    v_rho = c.value_of(rho)
    c.check(v_rho is None or 0.0 <= v_rho <= 1.0, f"Invalid rho value: {rho}")
    c.nonneg("epsilon", eps, f"Invalid epsilon value: {eps}")
    c.nonneg("weight_decay", weight_decay)

    def init_fn(params):
        z = c.zeros_like_tree
        return AdadeltaState(jnp.zeros([], jnp.int32), z(params), z(params))

    def update_fn(updates, state, params=None):
        lr_t = c.lr_at(lr, state.count)

        def leaf(g, v, a):
            v = v * c.cast(rho, v) + c.cast(1 - rho, g) * g * g
            std = jnp.sqrt(v + c.cast(eps, v))
            delta = jnp.sqrt(a + c.cast(eps, a)) / std * g
            a = a * c.cast(rho, a) + c.cast(1 - rho, delta) * delta * delta
            return -c.cast(lr_t, g) * delta, v, a

        out, v, a = c.map_leaves(leaf, updates, state.square_avg, state.acc_delta)
        return out, AdadeltaState(optax.safe_increment(state.count), v, a)

    core = optax.GradientTransformation(init_fn, update_fn)
    return c.chain(c.prelude(maximize, weight_decay, weight_decay_mask), core)
