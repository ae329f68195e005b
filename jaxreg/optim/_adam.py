"""The Adam family: torch.optim.Adam, AdamW, Adamax, NAdam, RAdam."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxreg._validate import ScalarOrSchedule
from jaxreg.masks import MaskLike
from jaxreg.optim import _common as c


class AdamState(NamedTuple):
    """State of the Adam core; field names are torch's ``optimizer.state`` keys."""

    count: jax.Array  # shape=(), dtype=int32 -- torch 'step'
    exp_avg: Any  # params-shaped
    exp_avg_sq: Any  # params-shaped
    max_exp_avg_sq: Any  # params-shaped if amsgrad else ()


def _moments(g, m, v, b1, b2):
    """torch: ``exp_avg.lerp_(grad, 1 - beta1)``;
    ``exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)``."""
    m = c.lerp(m, g, 1 - b1)
    v = v * c.cast(b2, v) + c.cast(1 - b2, g) * g * g
    return m, v


def _init_moments(params: Any, amsgrad: bool = False) -> AdamState:
    z = c.zeros_like_tree
    return AdamState(jnp.zeros([], jnp.int32), z(params), z(params), z(params) if amsgrad else ())


def adam_step_scalars(lr, b1, b2, count):
    """torch Adam's per-step scalars: ``(lr_t, lr_t / (1 - b1**t), sqrt(1 - b2**t))``.

    ``step_size = lr / bias_correction1`` is a tensor of the lr's dtype for a Tensor lr
    (see :func:`jaxreg.optim._common.tensor_lr_dtype`), as in torch."""
    step = c.step_of(count)
    lr_t = c.lr_at(lr, count)
    step_size = c.tensor_div(lr_t, c.one_minus_pow(b1, step), c.tensor_lr_dtype(lr))
    return lr_t, step_size, jnp.sqrt(c.one_minus_pow(b2, step))


def scale_by_torch_adam(lr, betas, eps, amsgrad) -> optax.GradientTransformation:
    """torch Adam's moments, bias correction and ``-lr`` step (no decay)."""
    beta1, b2 = betas

    def update_fn(updates, state, params=None):
        # betas[0] may be a schedule (OneCycleLR/CyclicLR cycle it in torch): its value now
        b1 = c.at_count(beta1, state.count)
        _, step_size, bc2_sqrt = adam_step_scalars(lr, b1, b2, state.count)

        def leaf(g, m, v, vmax=None):
            m, v = _moments(g, m, v, b1, b2)
            if amsgrad:
                vmax = jnp.maximum(vmax, v)
            denom = jnp.sqrt(vmax if amsgrad else v) / c.cast(bc2_sqrt, g) + c.cast(eps, g)
            out = (-c.cast(step_size, g)) * (m / denom)
            return (out, m, v, vmax) if amsgrad else (out, m, v)

        trees = [updates, state.exp_avg, state.exp_avg_sq]
        res = c.map_leaves(leaf, *trees, *([state.max_exp_avg_sq] if amsgrad else []))
        vmax = res[3] if amsgrad else ()
        return res[0], AdamState(optax.safe_increment(state.count), res[1], res[2], vmax)

    return optax.GradientTransformation(lambda p: _init_moments(p, amsgrad), update_fn)


def _check_adam_args(lr, betas, eps, weight_decay, flags):
    c.check_kernel_flags(flags)
    c.check_lr(lr)
    c.nonneg("epsilon", eps, f"Invalid epsilon value: {eps}")
    c.check_betas(betas)
    c.nonneg("weight_decay", weight_decay)


def _with_decay(core, maximize, weight_decay, decoupled, lr, mask):
    if decoupled:
        return c.chain(c.prelude(maximize, 0.0, None), core, c.decoupled(weight_decay, lr, mask))
    return c.chain(c.prelude(maximize, weight_decay, mask), core)


def adam(
    lr: ScalarOrSchedule = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: ScalarOrSchedule = 0,
    amsgrad: bool = False,
    *,
    foreach: bool | None = None,
    maximize: bool = False,
    capturable: bool = False,
    differentiable: bool = False,
    fused: bool | None = None,
    decoupled_weight_decay: bool = False,
    weight_decay_mask: MaskLike = None,
) -> optax.GradientTransformation:
    r"""``torch.optim.Adam``, argument for argument.

    torch's update (``torch/optim/adam.py``, ``_single_tensor_adam``), step t ≥ 1::

        g = -grad if maximize else grad
        if decoupled_weight_decay: p = p * (1 - lr * weight_decay)
        else:                      g = g + weight_decay * p
        m = m.lerp(g, 1 - beta1);  v = beta2 * v + (1 - beta2) * g * g
        if amsgrad: v_max = max(v_max, v)                 # of the *raw* v
        denom = sqrt(v_max if amsgrad else v) / sqrt(1 - beta2**t) + eps
        p = p - lr / (1 - beta1**t) * m / denom

    Differences from stock Optax: ``optax.amsgrad`` takes the max of the bias-corrected
    v (torch: raw v, then corrects); ``optax.adamw`` is the decoupled variant (use
    :func:`adamw`); Optax computes ``1 - beta**t`` in the state dtype -- here it is
    computed as torch's Python-double scalar (accurately in float32 too).

    Args:
      lr: learning rate: a float, an Optax schedule of the step count, or a 0-d
        float32 array -- torch's ``lr=torch.tensor(...)``, whose step scalars torch computes
        in float32 (see :ref:`tensor-lr`).
      betas, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay: as in torch;
        ``betas[0]`` may be a schedule of the step count (what ``OneCycleLR``/``CyclicLR``
        with ``cycle_momentum=True`` set in torch: ``lr_scheduler.one_cycle_momentum``).
      foreach, capturable, fused: torch kernel choices; accepted, ignored.
      differentiable: refused when True (torch's numbers change on that path).
      weight_decay_mask: which leaves get ``weight_decay`` (jaxreg masks; multipliers scale it).

    Returns:
      An ``optax.GradientTransformation``.

    Raises:
      ValueError: on the values torch rejects (lr, eps, weight_decay < 0; betas outside
        [0, 1)).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxreg import optim
      >>> tx = optim.adam(lr=0.1)
      >>> p = {"w": jnp.array([1.0])}
      >>> u, _ = tx.update({"w": jnp.array([2.0])}, tx.init(p), p)
      >>> round(float(u["w"][0]), 6)  # first Adam step is -lr * sign(g)
      -0.1
    """
    _check_adam_args(
        lr,
        betas,
        eps,
        weight_decay,
        dict(foreach=foreach, capturable=capturable, differentiable=differentiable, fused=fused),
    )
    c.refuse_differentiable(differentiable, "adamw" if decoupled_weight_decay else "adam")
    core = scale_by_torch_adam(lr, tuple(betas), eps, amsgrad)
    return _with_decay(core, maximize, weight_decay, decoupled_weight_decay, lr, weight_decay_mask)


def adamw(
    lr: ScalarOrSchedule = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: ScalarOrSchedule = 1e-2,
    amsgrad: bool = False,
    *,
    maximize: bool = False,
    foreach: bool | None = None,
    capturable: bool = False,
    differentiable: bool = False,
    fused: bool | None = None,
    weight_decay_mask: MaskLike = None,
) -> optax.GradientTransformation:
    r"""``torch.optim.AdamW``: :func:`adam` with ``decoupled_weight_decay=True``.

    ``p = p * (1 - lr * weight_decay)`` before the Adam step (Loshchilov & Hutter), with
    torch's default ``weight_decay=1e-2`` (``optax.adamw`` defaults to 1e-4). The decay
    follows a scheduled ``lr``. See :func:`adam` for the update and arguments.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxreg import optim
      >>> tx = optim.adamw(lr=0.1, weight_decay=0.5)
      >>> p = {"w": jnp.array([1.0])}
      >>> u, _ = tx.update({"w": jnp.array([0.0])}, tx.init(p), p)
      >>> round(float(u["w"][0]), 6)  # zero gradient: only the decay, -lr * wd * p
      -0.05
    """
    return adam(
        lr,
        betas,
        eps,
        weight_decay,
        amsgrad,
        foreach=foreach,
        maximize=maximize,
        capturable=capturable,
        differentiable=differentiable,
        fused=fused,
        decoupled_weight_decay=True,
        weight_decay_mask=weight_decay_mask,
    )


class AdamaxState(NamedTuple):
    count: jax.Array  # shape=(), dtype=int32 -- torch 'step'
    exp_avg: Any  # params-shaped
    exp_inf: Any  # params-shaped


def adamax(
    lr: ScalarOrSchedule = 2e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: ScalarOrSchedule = 0,
    *,
    foreach: bool | None = None,
    maximize: bool = False,
    differentiable: bool = False,
    capturable: bool = False,
    weight_decay_mask: MaskLike = None,
) -> optax.GradientTransformation:
    r"""``torch.optim.Adamax``, argument for argument.

    torch's update (``_single_tensor_adamax``)::

        g = (-grad if maximize else grad) + weight_decay * p
        m = m.lerp(g, 1 - beta1)
        u = max(beta2 * u, |g| + eps)
        p = p - lr / (1 - beta1**t) * m / u

    Same as ``optax.adamax`` up to rounding, with torch's defaults and eps placement.

    Other arguments: torch.optim.Adamax's, same names, defaults and meaning; kernel flags
    (``foreach``, ``fused``, ``capturable``, ``differentiable``) are ignored.

    Args:
      lr: learning rate: a float, an Optax schedule of the step count, or a 0-d
        float32 array -- torch's ``lr=torch.tensor(...)``, whose step scalars torch computes
        in float32 (see :ref:`tensor-lr`).
      betas: as in torch; ``betas[0]`` may also be a schedule of the step count (what
        ``OneCycleLR``/``CyclicLR`` cycle in torch: ``lr_scheduler.one_cycle_momentum``).
      weight_decay_mask: which leaves get ``weight_decay`` (jaxreg masks; multipliers scale it).

    Returns:
      An ``optax.GradientTransformation``.

    Raises:
      ValueError: on the values torch.optim.Adamax rejects, with torch's message.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxreg import optim
      >>> tx = optim.adamax(lr=0.1)
      >>> p = {"w": jnp.array([1.0])}
      >>> round(float(tx.update({"w": jnp.array([2.0])}, tx.init(p), p)[0]["w"][0]), 6)
      -0.1
    """
    _check_adam_args(
        lr,
        betas,
        eps,
        weight_decay,
        dict(foreach=foreach, differentiable=differentiable, capturable=capturable),
    )
    beta1, b2 = betas
    t = c.tensor_lr_dtype(lr)  # torch's Tensor lr: the step's lr scalars in its dtype

    def init_fn(params):
        z = c.zeros_like_tree
        return AdamaxState(jnp.zeros([], jnp.int32), z(params), z(params))

    def update_fn(updates, state, params=None):
        # betas[0] may be a schedule (OneCycleLR/CyclicLR cycle it in torch): its value now
        b1 = c.at_count(beta1, state.count)
        step = c.step_of(state.count)
        clr = c.tensor_div(c.lr_at(lr, state.count), c.one_minus_pow(b1, step), t)

        def leaf(g, m, u):
            m = c.lerp(m, g, 1 - b1)
            u = jnp.maximum(u * c.cast(b2, u), jnp.abs(g) + c.cast(eps, g))
            return (-c.cast(clr, g)) * (m / u), m, u

        out, m, u = c.map_leaves(leaf, updates, state.exp_avg, state.exp_inf)
        return out, AdamaxState(optax.safe_increment(state.count), m, u)

    core = optax.GradientTransformation(init_fn, update_fn)
    return c.chain(c.prelude(maximize, weight_decay, weight_decay_mask), core)


class NAdamState(NamedTuple):
    count: jax.Array  # shape=(), dtype=int32 -- torch 'step'
    mu_product: jax.Array  # shape=(), dtype=torch_scalar_dtype -- torch 'mu_product'
    exp_avg: Any
    exp_avg_sq: Any


def nadam(
    lr: ScalarOrSchedule = 2e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: ScalarOrSchedule = 0,
    momentum_decay: float = 4e-3,
    decoupled_weight_decay: bool = False,
    *,
    foreach: bool | None = None,
    maximize: bool = False,
    capturable: bool = False,
    differentiable: bool = False,
    weight_decay_mask: MaskLike = None,
    torch_scalar_dtype: Any = None,
) -> optax.GradientTransformation:
    r"""``torch.optim.NAdam`` (Dozat's momentum-decay schedule), argument for argument.

    torch's update (``_single_tensor_nadam``), step t ≥ 1::

        mu_t      = beta1 * (1 - 0.5 * 0.96 ** (t * momentum_decay))
        mu_{t+1}  = beta1 * (1 - 0.5 * 0.96 ** ((t + 1) * momentum_decay))
        mu_product = mu_product * mu_t
        m = m.lerp(g, 1 - beta1);  v = beta2 * v + (1 - beta2) * g * g
        denom = sqrt(v / (1 - beta2**t)) + eps
        p = p - lr * (1 - mu_t) / (1 - mu_product) * g / denom
              - lr * mu_{t+1} / (1 - mu_product * mu_{t+1}) * m / denom

    ``optax.nadam`` has no momentum-decay schedule (differs by ~1e-2 after 100 steps).
    torch keeps ``mu_product`` as a tensor of its default dtype -- float32 unless
    ``torch.set_default_dtype(torch.float64)`` -- whatever the parameters' dtype;
    ``torch_scalar_dtype`` (a jaxreg extension) says which. The default, ``None``, follows
    the parameters: float64 for float64 parameters (torch with its default dtype set to
    float64, as a float64 run has), else float32. For float64 parameters under torch's
    float32 default (``model.double()`` alone) pass ``torch_scalar_dtype=jnp.float32``;
    :func:`from_torch` reads ``torch.get_default_dtype()`` and does so.

    Other arguments: torch.optim.NAdam's, same names, defaults and meaning; kernel flags
    (``foreach``, ``fused``, ``capturable``, ``differentiable``) are ignored.

    Args:
      lr: learning rate: a float, an Optax schedule of the step count, or a 0-d
        float32 array -- torch's ``lr=torch.tensor(...)``, whose step scalars torch computes
        in float32 (see :ref:`tensor-lr`).
      betas: as in torch; ``betas[0]`` may also be a schedule of the step count (what
        ``OneCycleLR``/``CyclicLR`` cycle in torch: ``lr_scheduler.one_cycle_momentum``).
      weight_decay_mask: which leaves get ``weight_decay`` (jaxreg masks; multipliers scale it).

    Returns:
      An ``optax.GradientTransformation``.

    Raises:
      ValueError: on the values torch.optim.NAdam rejects, with torch's message.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxreg import optim
      >>> tx = optim.nadam()
      >>> p = {"w": jnp.array([1.0])}
      >>> bool(tx.update({"w": jnp.array([2.0])}, tx.init(p), p)[0]["w"][0] < 0)
      True
    """
    _check_adam_args(
        lr,
        betas,
        eps,
        weight_decay,
        dict(foreach=foreach, capturable=capturable, differentiable=differentiable),
    )
    c.refuse_differentiable(differentiable, "nadam")
    c.nonneg("momentum_decay", momentum_decay, f"Invalid momentum_decay value: {momentum_decay}")
    beta1, b2 = betas
    t = c.tensor_lr_dtype(lr)  # torch's Tensor lr: the step's lr scalars in its dtype

    def init_fn(params):
        z = c.zeros_like_tree
        one = jnp.ones([], c.torch_scalar_dtype_of(params, torch_scalar_dtype))
        return NAdamState(jnp.zeros([], jnp.int32), one, z(params), z(params))

    def update_fn(updates, state, params=None):
        # betas[0] may be a schedule (OneCycleLR/CyclicLR cycle it in torch): its value now
        b1 = c.at_count(beta1, state.count)
        step = c.step_of(state.count)
        lr_t = c.lr_at(lr, state.count)
        bc2 = c.one_minus_pow(b2, step)
        mu = b1 * (1.0 - 0.5 * jnp.power(0.96, step * momentum_decay))
        mu_next = b1 * (1.0 - 0.5 * jnp.power(0.96, (step + 1) * momentum_decay))
        sd = state.mu_product.dtype  # torch_scalar_dtype, as init resolved it
        mu_product = (state.mu_product * mu.astype(sd)).astype(sd)
        mp = mu_product.astype(step.dtype)
        # torch: value=-lr * (1 - mu) / (1 - mu_product), then -lr * mu_next / (1 - mu_product
        # * mu_next); Python doubles, or tensors of the lr's dtype for a Tensor lr
        c_grad = c.tensor_div(c.tensor_mul(-lr_t, 1.0 - mu, t), 1.0 - mp, t)
        c_avg = c.tensor_div(c.tensor_mul(-lr_t, mu_next, t), 1.0 - mp * mu_next, t)

        def leaf(g, m, v):
            m, v = _moments(g, m, v, b1, b2)
            denom = jnp.sqrt(v / c.cast(bc2, v)) + c.cast(eps, v)
            out = c.cast(c_grad, g) * (g / denom) + c.cast(c_avg, g) * (m / denom)
            return out, m, v

        out, m, v = c.map_leaves(leaf, updates, state.exp_avg, state.exp_avg_sq)
        return out, NAdamState(optax.safe_increment(state.count), mu_product, m, v)

    core = optax.GradientTransformation(init_fn, update_fn)
    return _with_decay(core, maximize, weight_decay, decoupled_weight_decay, lr, weight_decay_mask)


def radam(
    lr: ScalarOrSchedule = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: ScalarOrSchedule = 0,
    decoupled_weight_decay: bool = False,
    *,
    foreach: bool | None = None,
    maximize: bool = False,
    capturable: bool = False,
    differentiable: bool = False,
    weight_decay_mask: MaskLike = None,
) -> optax.GradientTransformation:
    r"""``torch.optim.RAdam``, argument for argument.

    torch's update (``_single_tensor_radam``), step t ≥ 1::

        m = m.lerp(g, 1 - beta1);  v = beta2 * v + (1 - beta2) * g * g
        rho_inf = 2 / (1 - beta2) - 1
        rho_t = rho_inf - 2 t beta2**t / (1 - beta2**t)
        if rho_t > 5:
            rect = sqrt((rho_t-4)(rho_t-2) rho_inf / ((rho_inf-4)(rho_inf-2) rho_t))
            p = p - m / (1 - beta1**t) * lr * sqrt(1 - beta2**t) / (sqrt(v) + eps) * rect
        else:
            p = p - m / (1 - beta1**t) * lr

    ``optax.radam`` uses a different threshold and eps placement (1e-10 to 3e-8 apart).

    Other arguments: torch.optim.RAdam's, same names, defaults and meaning; kernel flags
    (``foreach``, ``fused``, ``capturable``, ``differentiable``) are ignored.

    Args:
      lr: learning rate: a float, an Optax schedule of the step count, or a 0-d
        float32 array -- torch's ``lr=torch.tensor(...)``, whose step scalars torch computes
        in float32 (see :ref:`tensor-lr`).
      betas: as in torch; ``betas[0]`` may also be a schedule of the step count (what
        ``OneCycleLR``/``CyclicLR`` cycle in torch: ``lr_scheduler.one_cycle_momentum``).
      weight_decay_mask: which leaves get ``weight_decay`` (jaxreg masks; multipliers scale it).

    Returns:
      An ``optax.GradientTransformation``.

    Raises:
      ValueError: on the values torch.optim.RAdam rejects, with torch's message.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxreg import optim
      >>> tx = optim.radam(lr=0.1)
      >>> p = {"w": jnp.array([1.0])}
      >>> round(float(tx.update({"w": jnp.array([2.0])}, tx.init(p), p)[0]["w"][0]), 6)
      -0.2
    """
    _check_adam_args(
        lr,
        betas,
        eps,
        weight_decay,
        dict(foreach=foreach, capturable=capturable, differentiable=differentiable),
    )
    beta1, b2 = betas
    rho_inf = 2 / (1 - b2) - 1

    def update_fn(updates, state, params=None):
        # betas[0] may be a schedule (OneCycleLR/CyclicLR cycle it in torch): its value now
        b1 = c.at_count(beta1, state.count)
        step = c.step_of(state.count)
        lr_t = c.lr_at(lr, state.count)
        bc1 = c.one_minus_pow(b1, step)
        bc2 = c.one_minus_pow(b2, step)
        rho_t = rho_inf - 2 * step * jnp.power(b2, step) / bc2
        rect_arg = (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
        rect = jnp.sqrt(jnp.maximum(rect_arg, 0.0))
        rectify = rho_t > 5.0

        def leaf(g, m, v):
            m, v = _moments(g, m, v, b1, b2)
            bcm = m / c.cast(bc1, m)
            adaptive = c.cast(jnp.sqrt(bc2), v) / (jnp.sqrt(v) + c.cast(eps, v))
            lr_c = c.cast(lr_t, g)
            out = jnp.where(rectify, -(bcm * lr_c * adaptive * c.cast(rect, g)), -(bcm * lr_c))
            return out, m, v

        out, m, v = c.map_leaves(leaf, updates, state.exp_avg, state.exp_avg_sq)
        return out, AdamState(optax.safe_increment(state.count), m, v, ())

    core = optax.GradientTransformation(_init_moments, update_fn)
    return _with_decay(core, maximize, weight_decay, decoupled_weight_decay, lr, weight_decay_mask)
