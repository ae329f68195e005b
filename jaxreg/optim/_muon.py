"""torch.optim.Muon (torch's variant)."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxreg._tree import leaf_paths, path_str
from jaxreg._validate import ScalarOrSchedule
from jaxreg.masks import MaskLike
from jaxreg.optim import _common as c


class MuonState(NamedTuple):
    count: jax.Array  # shape=(), dtype=int32 -- steps taken (torch Muon keeps no 'step')
    momentum_buffer: Any  # params-shaped


def _addmm(bias, a, b, beta, alpha):
    """torch's CPU bf16 ``addmm(bias, a, b, beta=, alpha=)``, bit for bit.

    Measured against torch 2.14: the product accumulates in float32, then
    ``fma(beta, bias, alpha * acc)`` in float32, then one rounding to bfloat16.
    """
    f32 = jnp.float32
    acc = jnp.matmul(a.astype(f32), b.astype(f32), precision="highest")
    if alpha != 1.0:
        acc = jnp.asarray(alpha, f32) * acc
    beta32 = jnp.full(acc.shape, beta, f32)
    return c.fma(beta32, bias.astype(f32), acc).astype(jnp.bfloat16)


def zeropower_via_newtonschulz(
    grad: jax.Array, ns_coefficients: tuple[float, float, float], ns_steps: int, eps: float
) -> jax.Array:
    r"""torch's ``_zeropower_via_newtonschulz``: quintic Newton-Schulz in bfloat16.

    ``X = G / max(||G||_F, eps)`` (transposed so rows ≤ cols), then ``ns_steps`` times
    ``A = X Xᵀ; B = b A + c A A; X = a X + B X``. Returns a bfloat16 matrix.
    """
    a, b, cc = ns_coefficients
    x = grad.astype(jnp.bfloat16)
    transpose = grad.shape[0] > grad.shape[1]
    if transpose:
        x = x.T
    norm = jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)))).astype(jnp.bfloat16)
    x = (x.astype(jnp.float32) / jnp.maximum(norm, jnp.bfloat16(eps)).astype(jnp.float32)).astype(
        jnp.bfloat16
    )
    for _ in range(ns_steps):
        gram = jnp.matmul(
            x.astype(jnp.float32), x.T.astype(jnp.float32), precision="highest"
        ).astype(jnp.bfloat16)
        gram_update = _addmm(gram, gram, gram, b, cc)
        x = _addmm(x, gram_update, x, a, 1.0)
    return x.T if transpose else x


def _explicitly_sharded(x: jax.Array) -> bool:
    """Whether ``x``'s type carries a sharding over explicit mesh axes (``jax.set_mesh``)."""
    sharding = jax.typeof(x).sharding
    spec = getattr(sharding, "spec", None)
    return bool(spec is not None and getattr(sharding.mesh, "explicit_axes", ()) and any(spec))


def orthogonalize(
    grad: jax.Array, ns_coefficients: tuple[float, float, float], ns_steps: int, eps: float
) -> jax.Array:
    """Newton-Schulz on the whole matrix, returned on ``grad``'s sharding.

    Under explicit sharding the matrix is gathered first (``jax.sharding.reshard`` to
    replicated) and the result resharded back, as distributed Muon implementations do:
    the iteration's products ``X Xᵀ`` need the whole matrix. With automatic (GSPMD)
    sharding XLA chooses the collectives itself.
    """
    if not _explicitly_sharded(grad):
        return zeropower_via_newtonschulz(grad, ns_coefficients, ns_steps, eps)
    spec = jax.typeof(grad).sharding.spec
    whole = jax.sharding.reshard(grad, jax.sharding.PartitionSpec())
    out = zeropower_via_newtonschulz(whole, ns_coefficients, ns_steps, eps)
    return jax.sharding.reshard(out, spec)


def _adjust_lr(lr, adjust_lr_fn, shape, t=None):
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        ratio = math.sqrt(max(1, rows / cols))
    elif adjust_lr_fn == "match_rms_adamw":
        ratio = 0.2 * math.sqrt(max(rows, cols))
    elif adjust_lr_fn == "spectral_unclamped":
        ratio = math.sqrt(rows / cols)
    else:  # pragma: no cover - rejected at construction
        ratio = 1.0
    return c.tensor_mul(lr, ratio, t)  # a tensor of the lr's dtype for a Tensor lr, as torch


def muon(
    lr: ScalarOrSchedule = 1e-3,
    weight_decay: ScalarOrSchedule = 0.1,
    momentum: ScalarOrSchedule = 0.95,
    nesterov: bool = True,
    ns_coefficients: tuple[float, float, float] = (3.4445, -4.7750, 2.0315),
    eps: float = 1e-7,
    ns_steps: int = 5,
    adjust_lr_fn: str | None = None,
    *,
    weight_decay_mask: MaskLike = None,
) -> optax.GradientTransformation:
    r"""``torch.optim.Muon``, argument for argument (2-D parameters only, as torch).

    torch's update (``torch/optim/_muon.py``)::

        buf = buf.lerp(g, 1 - momentum)
        u = g.lerp(buf, momentum) if nesterov else buf
        u = newton_schulz(u)                    # in bfloat16, see zeropower_via_newtonschulz
        p = p * (1 - lr * weight_decay)
        p = p - adjust(lr, shape) * u           # "original": lr * sqrt(max(1, rows/cols))

    The orthogonalization runs in bfloat16 in torch; jaxreg reproduces its float32
    accumulation and bfloat16 roundings, so results agree to bfloat16 round-off of the
    orthogonalized update (not to float64 round-off: the algorithm itself is bf16).
    Use ``optax.multi_transform`` to give non-matrix parameters another optimizer.
    On parameters sharded over explicit mesh axes (``jax.set_mesh``) the iteration
    gathers each update matrix and reshards the result to the parameter's sharding
    (``orthogonalize`` in ``jaxreg/optim/_muon.py``); with automatic sharding XLA places the
    collectives.

    Raises:
      ValueError: as torch: negative lr/momentum/weight_decay, unknown ``adjust_lr_fn``,
        ``ns_steps >= 100``, ``ns_coefficients`` not 3 values; and at ``init``, a
        parameter that is not 2-D (naming its path).

    Other arguments: torch.optim.Muon's, same names, defaults and meaning; kernel flags
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
      ValueError: on the values torch.optim.Muon rejects, with torch's message.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxreg import optim
      >>> tx = optim.muon(lr=0.1, weight_decay=0.0)
      >>> p = {"w": jnp.zeros((2, 2))}
      >>> u, _ = tx.update({"w": jnp.eye(2)}, tx.init(p), p)
      >>> u["w"].shape
      (2, 2)
    """
    c.check_lr(lr, "Learning rate should be >= 0 but is: {lr}")
    c.nonneg("momentum", momentum, f"momentum should be >= 0 but is: {momentum}")
    c.nonneg("weight_decay", weight_decay, f"weight decay should be >= 0 but is: {weight_decay}")
    c.check(
        adjust_lr_fn in (None, "original", "match_rms_adamw", "spectral_unclamped"),
        f"Adjust learning rate function {adjust_lr_fn} is not supported",
    )
    c.check(ns_steps < 100, "Number of steps must be less than 100 for computational efficiency")
    c.check(len(tuple(ns_coefficients)) == 3, "Coefficients must be a tuple of exactly 3 values")

    def init_fn(params):
        for path, leaf in zip(leaf_paths(params), jax.tree.leaves(params)):
            c.check(
                jnp.ndim(leaf) == 2,
                f"Muon only supports 2D parameters whereas we found a parameter with size: "
                f"{tuple(jnp.shape(leaf))} at {path_str(path)!r}",
            )
        return MuonState(jnp.zeros([], jnp.int32), c.zeros_like_tree(params))

    t = c.tensor_lr_dtype(lr)  # torch's Tensor lr: the step's lr scalars in its dtype

    def update_fn(updates, state, params=None):
        lr_t = c.lr_at(lr, state.count)
        # momentum may be a schedule (OneCycleLR/CyclicLR cycle it in torch): its value now
        m_t = c.at_count(momentum, state.count)

        def leaf(g, buf):
            c.check(g.ndim == 2, "Param gradient must be a 2D matrix")
            # Bit-exact torch lerp: a 1-ulp difference here flips bfloat16 roundings below.
            buf = c.lerp_fma(buf, g, 1 - m_t)
            u = c.lerp_fma(g, buf, m_t) if nesterov else buf
            u = orthogonalize(u, tuple(ns_coefficients), ns_steps, eps)
            adjusted = _adjust_lr(lr_t, adjust_lr_fn, g.shape, t)
            return (-c.cast(adjusted, g)) * u.astype(g.dtype), buf

        out, buf = c.map_leaves(leaf, updates, state.momentum_buffer)
        return out, MuonState(optax.safe_increment(state.count), buf)

    core = optax.GradientTransformation(init_fn, update_fn)
    return c.chain(core, c.decoupled(weight_decay, lr, weight_decay_mask))
