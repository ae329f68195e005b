"""Flax layers with PyTorch's semantics, where Flax's own layers compute something else.

A ported model matches torch only if every layer does. Flax's ``BatchNorm`` does not:
its ``momentum`` is the weight of the *old* running value (0.99; torch's 0.1 is the
weight of the *new* batch) and it keeps the *biased* batch variance as the running
variance (torch keeps the unbiased one, ``n / (n - 1)`` times larger). This module
provides torch's BatchNorm for linen (:class:`BatchNorm`) and nnx (:class:`NnxBatchNorm`).
The other layers differ only in defaults, which arguments fix:

===================  ================================  ======================================
layer                torch default                     Flax equivalent
===================  ================================  ======================================
LayerNorm            ``eps=1e-5``; var = E[(x-μ)²]     ``nn.LayerNorm(epsilon=1e-5,
                                                       use_fast_variance=False)``
GroupNorm            ``eps=1e-5``; var = E[(x-μ)²]     ``nn.GroupNorm(num_groups=G,
                                                       epsilon=1e-5, use_fast_variance=False)``
RMSNorm              ``eps=None`` (finfo.eps)          ``nn.RMSNorm(epsilon=jnp.finfo(dtype).eps)``
GELU                 exact (``approximate='none'``)    ``jax.nn.gelu(x, approximate=False)``
Conv2d               ``padding=0`` ("VALID")           explicit ``padding=((p, p), (p, p))``
Linear init          Kaiming-uniform                   irrelevant once weights are converted
Dropout              its own RNG stream                out of scope: no two frameworks draw the
                                                       same mask; compare with dropout off
MultiheadAttention   softmax in the input dtype        with dropout 0 Flax calls
                                                       ``jax.nn.dot_product_attention``, whose
                                                       softmax runs in float32 (1e-7 off in a
                                                       float64 run): pass ``attention_fn=``
                                                       :func:`dot_product_attention`
===================  ================================  ======================================

(Flax's ``use_fast_variance=True`` computes E[x²] − E[x]², which cancels badly in
float32; torch's kernels compute E[(x − μ)²].)
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["BatchNorm", "NnxBatchNorm", "dot_product_attention", "torch_batch_norm"]

#: torch's ``num_batches_tracked`` is int64; JAX's default int (int64 under x64).
_COUNT = int


def torch_batch_norm(
    x: jax.Array,
    scale: jax.Array | None,
    bias: jax.Array | None,
    running_mean: jax.Array | None,
    running_var: jax.Array | None,
    num_batches_tracked: jax.Array | None,
    *,
    training: bool,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
) -> tuple[jax.Array, jax.Array | None, jax.Array | None, jax.Array | None]:
    r"""``torch.nn.functional.batch_norm`` with the running-statistics update of
    ``torch.nn.BatchNorm*d``, over every axis but the last (features last, NHWC).

    torch (``_BatchNorm.forward`` and the CPU kernel)::

        if training:                        # batch statistics
            mean = x.mean(axes); var = ((x - mean) ** 2).mean(axes)      # biased
            num_batches_tracked += 1
            m = momentum if momentum is not None else 1 / num_batches_tracked
            running_mean = (1 - m) * running_mean + m * mean
            running_var  = (1 - m) * running_var  + m * var * n / (n - 1)  # unbiased
        else:
            mean, var = running_mean, running_var
        y = (x - mean) * (1 / sqrt(var + eps)) * weight + bias

    Running statistics given as ``None`` (torch's ``track_running_stats=False``) are
    not updated, and batch statistics are used in eval mode too.

    Args:
      x: input, features on the last axis.
      scale, bias: the affine parameters, or ``None`` (``affine=False``).
      running_mean, running_var, num_batches_tracked: the buffers, or ``None``.
      training: torch's ``module.training``.
      momentum: weight of the new batch (torch's convention); ``None``: cumulative.
      eps: added to the variance.

    Returns:
      ``(y, running_mean, running_var, num_batches_tracked)`` after this call.
    """
    axes = tuple(range(x.ndim - 1))
    use_batch = training or running_mean is None
    if use_batch:
        mean = jnp.mean(x, axes)
        var = jnp.mean(jnp.square(x - mean), axes)
    else:
        mean, var = running_mean, running_var
    if training and running_mean is not None:
        if num_batches_tracked is not None:
            num_batches_tracked = num_batches_tracked + 1
        if momentum is None:
            if num_batches_tracked is None:
                raise ValueError("momentum=None (cumulative average) needs num_batches_tracked")
            m = 1.0 / num_batches_tracked.astype(mean.dtype)
        else:
            m = momentum
        n = x.size // x.shape[-1]
        unbiased = var * (n / (n - 1)) if n > 1 else var
        running_mean = ((1 - m) * running_mean + m * mean).astype(running_mean.dtype)
        running_var = ((1 - m) * running_var + m * unbiased).astype(running_var.dtype)
    y = (x - mean) * (1 / jnp.sqrt(var + eps))
    if scale is not None:
        y = y * scale
    if bias is not None:
        y = y + bias
    return y, running_mean, running_var, num_batches_tracked


class BatchNorm(nn.Module):
    """``torch.nn.BatchNorm1d/2d/3d`` as a linen module (features last).

    Variables: ``params/scale``, ``params/bias`` (torch ``weight``, ``bias``) and
    ``batch_stats/mean``, ``batch_stats/var``, ``batch_stats/num_batches_tracked``
    (torch's buffers, same names but the first two), so ``parity.convert`` maps a torch
    BatchNorm onto it one to one. Call with ``train=True`` and
    ``mutable=["batch_stats"]`` for torch's training mode.

    Attributes:
      features: torch's ``num_features``.
      momentum, eps, affine, track_running_stats: torch's arguments and defaults.
      param_dtype: dtype of the parameters and running statistics.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxreg.nn import BatchNorm
      >>> bn = BatchNorm(3)
      >>> v = bn.init(jax.random.key(0), jnp.ones((4, 3)), train=False)
      >>> y, upd = bn.apply(v, jnp.arange(12.0).reshape(4, 3), train=True, mutable=["batch_stats"])
      >>> # 0.9 * 1 + 0.1 * 15: 15 is the unbiased variance of each column (0, 3, 6, 9)
      >>> [round(float(x), 4) for x in upd["batch_stats"]["var"]]
      [2.4, 2.4, 2.4]
    """

    features: int
    momentum: float | None = 0.1
    eps: float = 1e-5
    affine: bool = True
    track_running_stats: bool = True
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        shape, dt = (self.features,), self.param_dtype
        scale = bias = mean = var = count = None
        if self.affine:
            scale = self.param("scale", nn.initializers.ones, shape, dt)
            bias = self.param("bias", nn.initializers.zeros, shape, dt)
        if self.track_running_stats:
            mean = self.variable("batch_stats", "mean", jnp.zeros, shape, dt)
            var = self.variable("batch_stats", "var", jnp.ones, shape, dt)
            count = self.variable(
                "batch_stats", "num_batches_tracked", jnp.zeros, (), _COUNT
            )
        training = train and not self.is_initializing()
        y, m, v, n = torch_batch_norm(
            x, scale, bias,
            mean.value if mean is not None else None,
            var.value if var is not None else None,
            count.value if count is not None else None,
            training=training, momentum=self.momentum, eps=self.eps,
        )  # fmt: skip
        if training and mean is not None:
            mean.value, var.value, count.value = m, v, n
        return y


class NnxBatchNorm(nnx.Module):
    """``torch.nn.BatchNorm1d/2d/3d`` as an ``nnx`` module (features last).

    ``model.train()`` / ``model.eval()`` switch it like torch's (through
    ``use_running_average``, as ``nnx.BatchNorm``). Attributes: ``scale``, ``bias``
    (``nnx.Param``), ``mean``, ``var``, ``num_batches_tracked`` (``nnx.BatchStat``).

    Args:
      num_features, eps, momentum, affine, track_running_stats: torch's arguments.
      param_dtype: dtype of parameters and statistics.
      use_running_average: eval mode (``True``) or training mode.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxreg.nn import NnxBatchNorm
      >>> bn = NnxBatchNorm(3)
      >>> _ = bn(jnp.arange(12.0).reshape(4, 3))
      >>> [round(float(x), 4) for x in bn.var.get_value()]
      [2.4, 2.4, 2.4]
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        param_dtype: Any = jnp.float32,
        use_running_average: bool = False,
    ):
        shape = (num_features,)
        self.eps, self.momentum = eps, momentum
        self.use_running_average = use_running_average
        self.scale = nnx.Param(jnp.ones(shape, param_dtype)) if affine else None
        self.bias = nnx.Param(jnp.zeros(shape, param_dtype)) if affine else None
        if track_running_stats:
            self.mean = nnx.BatchStat(jnp.zeros(shape, param_dtype))
            self.var = nnx.BatchStat(jnp.ones(shape, param_dtype))
            self.num_batches_tracked = nnx.BatchStat(jnp.zeros((), _COUNT))
        else:
            self.mean = self.var = self.num_batches_tracked = None

    def __call__(self, x: jax.Array) -> jax.Array:
        def val(v):
            return None if v is None else v.get_value()

        training = not self.use_running_average
        y, m, v, n = torch_batch_norm(
            x, val(self.scale), val(self.bias), val(self.mean), val(self.var),
            val(self.num_batches_tracked),
            training=training, momentum=self.momentum, eps=self.eps,
        )  # fmt: skip
        if training and self.mean is not None:
            self.mean.set_value(m)
            self.var.set_value(v)
            self.num_batches_tracked.set_value(n)
        return y


def dot_product_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    bias: jax.Array | None = None,
    mask: jax.Array | None = None,
    *,
    dropout_rate: float = 0.0,
    dtype: Any = None,
    precision: Any = None,
    **unused: Any,
) -> jax.Array:
    r"""Attention as torch's ``scaled_dot_product_attention`` computes it, in the inputs'
    dtype: ``softmax(q k^T / sqrt(d) + bias, masked) v``.

    An ``attention_fn`` for Flax's ``MultiHeadDotProductAttention`` /
    ``nnx.MultiHeadAttention``. Their default, with dropout 0, is
    ``jax.nn.dot_product_attention``, which computes the softmax in float32 whatever
    the inputs' dtype (measured: 1e-7 away from torch in a float64 run); this one keeps
    float64 float64 (Flax's ``dot_product_attention_weights`` and an ``einsum``).

    Args:
      query, key, value: ``(..., length, heads, head_dim)``.
      bias, mask: as Flax's attention functions take them.
      dropout_rate: must be 0 (dropout is not reproducible across frameworks).
      dtype, precision: as Flax's.
      **unused: the other arguments Flax passes (``dropout_rng``, ``deterministic``, ...).

    Returns:
      ``(..., length, heads, head_dim)``.

    Raises:
      ValueError: ``dropout_rate`` is not 0.
    """
    if dropout_rate:
        raise ValueError("jaxreg.nn.dot_product_attention: dropout_rate must be 0")
    weights = nn.dot_product_attention_weights(
        query, key, bias, mask, dtype=dtype, precision=precision
    )
    return jnp.einsum("...hqk,...khd->...qhd", weights, value, precision=precision)
