"""torch.optim.Adafactor (torch's variant, not optax.adafactor)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxreg._tree import reject_flat, reject_module
from jaxreg._validate import ScalarOrSchedule
from jaxreg.masks import MaskLike
from jaxreg.optim import _common as c

_EMPTY = (0,)  # placeholder shape for a state entry torch keeps as None


class AdafactorState(NamedTuple):
    count: jax.Array  # shape=(), dtype=int32 -- torch 'step'
    row_var: Any  # per leaf: (..., R, 1) for ndim >= 2, else shape (0,) (torch: None)
    col_var: Any  # per leaf: (..., 1, C) for ndim >= 2, else shape (0,) (torch: None)
    variance: Any  # per leaf: params-shaped for ndim < 2, else shape (0,) (torch: None)


def _norm(x: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.sum(x * x))


def adafactor(
    lr: ScalarOrSchedule = 1e-2,
    beta2_decay: float = -0.8,
    eps: tuple[float | None, float] = (None, 1e-3),
    d: float = 1.0,
    weight_decay: ScalarOrSchedule = 0.0,
    *,
    foreach: bool | None = None,
    maximize: bool = False,
    weight_decay_mask: MaskLike = None,
) -> optax.GradientTransformation:
    r"""``torch.optim.Adafactor``, argument for argument (torch ≥ 2.5's variant).

    torch's update (``torch/optim/_adafactor.py``, ``_single_tensor_adafactor``)::

        g = -grad if maximize else grad
        beta2_t = t ** beta2_decay;  rho_t = min(lr, 1 / sqrt(t))
        alpha = max(eps2, ||p||_2 / sqrt(numel(p))) * rho_t     # before the decay
        p = p * (1 - lr * weight_decay)                          # decoupled
        if ndim(g) >= 2:   # factored second moment over the last two dims
            R = R.lerp(mean(g**2, -1), beta2_t);  C = C.lerp(mean(g**2, -2), beta2_t)
            var = (R @ C) / max(mean(R, -2), eps1)
        else:
            V = V.lerp(g**2, beta2_t);  var = V
        u = g / sqrt(max(var, eps1**2))
        p = p - alpha / max(1, ||u||_2 / (sqrt(numel(u)) * d)) * u

    with ``eps1 = finfo(p.dtype).eps`` when ``eps[0]`` is None. Unlike
    ``optax.adafactor`` there is no first moment, the decay is relative-step style
    ``t**beta2_decay`` and the step is scaled by the parameter RMS.

    Other arguments: torch.optim.Adafactor's, same names, defaults and meaning; kernel flags
    (``foreach``, ``fused``, ``capturable``, ``differentiable``) are ignored.

    Args:
      lr: learning rate: a float, an Optax schedule of the step count, or a 0-d
        float32 array -- torch's ``lr=torch.tensor(...)``, whose step scalars torch computes
        in float32 (see :ref:`tensor-lr`).
      weight_decay_mask: which leaves get ``weight_decay`` (jaxreg masks; multipliers scale it).

    Returns:
      An ``optax.GradientTransformation``.

    Raises:
      ValueError: on the values torch.optim.Adafactor rejects, with torch's message.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxreg import optim
      >>> tx = optim.adafactor(lr=0.01)
      >>> p = {"w": jnp.ones((2, 2))}
      >>> u, _ = tx.update({"w": jnp.ones((2, 2))}, tx.init(p), p)
      >>> round(float(u["w"][0, 0]), 6)
      -0.01
    """
    c.check_kernel_flags(dict(foreach=foreach))
    c.check_lr(lr, "Learning rate should be >= 0 but is: {lr}")
    c.check(0.0 >= beta2_decay, f"beta2_decay should be <= 0 but is: {beta2_decay}")
    eps1, eps2 = eps
    c.check(eps1 is None or 0.0 <= eps1, f"epsilon1 should be >= 0 but is: {eps1}")
    c.check(0.0 <= eps2, f"epsilon2 should be >= 0 but is: {eps2}")
    c.check(1.0 <= d, f"Clipping threshold d should be >= 1 but is: {d}")
    c.nonneg("weight_decay", weight_decay, f"weight_decay should be >= 0 but is: {weight_decay}")

    def init_leaf(p):
        empty = jnp.zeros(_EMPTY, p.dtype)
        if p.ndim >= 2:
            # Shaped (and, on sharded parameters, sharded) like the reductions that update
            # them: a row factor follows the parameter's leading dims, never a replicated copy.
            row = c.full_like(jnp.sum(p, axis=-1, keepdims=True), 0)
            col = c.full_like(jnp.sum(p, axis=-2, keepdims=True), 0)
            return row, col, empty
        return empty, empty, c.full_like(p, 0)

    t = c.tensor_lr_dtype(lr)  # torch's Tensor lr: the step's lr scalars in its dtype

    def init_fn(params):
        reject_flat(params, "adafactor (factored second moments)")
        reject_module(params, "jaxreg.optim.adafactor")
        leaves, treedef = jax.tree.flatten(params)
        per_leaf = [init_leaf(p) for p in leaves]
        row, col, var = (treedef.unflatten([f[i] for f in per_leaf]) for i in range(3))
        return AdafactorState(jnp.zeros([], jnp.int32), row, col, var)

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("adafactor needs params: call update(updates, state, params)")
        step = c.step_of(state.count)
        lr_t = c.lr_at(lr, state.count)
        beta2_t = jnp.power(step, beta2_decay)
        rho_t = jnp.minimum(lr_t, 1 / jnp.sqrt(step))
        # torch: rho_t = min(lr, 1 / step**0.5) -- the lr tensor itself when it is the smaller
        # for a Tensor lr, and then alpha and alpha / denom are tensors of its dtype
        lr_is_rho = None if t is None else c.as_tensor(1 / jnp.sqrt(step), t) >= lr_t

        def leaf(g, p, row, col, var):
            e1 = jnp.finfo(p.dtype).eps if eps1 is None else eps1
            size = max(p.size, 1)
            rms = jnp.maximum(eps2, _norm(p).astype(step.dtype) / size**0.5)
            alpha = rms * rho_t
            if g.ndim >= 2:
                row_mean = jnp.sqrt(jnp.sum(g * g, axis=-1, keepdims=True)) ** 2 / g.shape[-1]
                row = c.lerp(row, row_mean, beta2_t)
                col_mean = jnp.sqrt(jnp.sum(g * g, axis=-2, keepdims=True)) ** 2 / g.shape[-2]
                col = c.lerp(col, col_mean, beta2_t)
                var_est = jnp.matmul(row, col, precision="highest")
                var_est = var_est / jnp.maximum(jnp.mean(row, axis=-2, keepdims=True), e1)
            else:
                var = c.lerp(var, g * g, beta2_t)
                var_est = var
            u = jax.lax.rsqrt(jnp.maximum(var_est, e1 * e1)) * g
            denom = jnp.maximum(1.0, _norm(u).astype(step.dtype) / (size**0.5 * d))
            scale = alpha / denom
            if t is not None:  # alpha = rms * lr and alpha / denom as tensors of the lr's dtype
                alpha_t = c.tensor_mul(rms, lr_t, t)
                scale = jnp.where(lr_is_rho, c.tensor_div(alpha_t, denom, t), scale)
            return (-c.cast(scale, g)) * u, row, col, var

        out, row, col, var = c.map_leaves(
            leaf, updates, params, state.row_var, state.col_var, state.variance, state_from=2
        )
        return out, AdafactorState(optax.safe_increment(state.count), row, col, var)

    core = optax.GradientTransformation(init_fn, update_fn)
    return c.chain(
        c.prelude(maximize, 0.0, None), core, c.decoupled(weight_decay, lr, weight_decay_mask)
    )
