"""PyTorch models and their Flax twins, side by side.

Each twin is written as its framework's users write it. Where Flax's stock layer has
different semantics from torch's (BatchNorm's running variance), the Flax side uses a
small module with torch's semantics, and the difference is a mutation the suite must
catch (see :mod:`parity.run`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import torch
import torch.nn.functional as F
from flax import nnx

import jaxreg.nn
from parity.convert import BatchNorm, Conv2d, LayerNorm, Linear

HIDDEN = 32
CONV1, CONV2 = 8, 16
D_MODEL, HEADS, FF = 64, 4, 128  # the transformer block (the benchmark's third model)


# --- torch ----------------------------------------------------------------------------


class TorchMLP(torch.nn.Module):
    def __init__(self, layernorm: bool = False):
        super().__init__()
        self.fc1 = torch.nn.Linear(64, HIDDEN)
        self.ln = torch.nn.LayerNorm(HIDDEN) if layernorm else None
        self.fc2 = torch.nn.Linear(HIDDEN, 10)

    def forward(self, x):
        x = self.fc1(x.flatten(1))
        if self.ln is not None:
            x = self.ln(x)
        return self.fc2(F.relu(x))


class TorchCNN(torch.nn.Module):
    def __init__(self, batchnorm: bool = False):
        super().__init__()
        # A conv feeding BatchNorm has no bias (BN removes it; its gradient is exactly zero,
        # so both frameworks would feed pure round-off noise to Adam, which normalizes it).
        self.conv1 = torch.nn.Conv2d(1, CONV1, 3, padding=1, bias=not batchnorm)
        self.bn1 = torch.nn.BatchNorm2d(CONV1) if batchnorm else None
        self.conv2 = torch.nn.Conv2d(CONV1, CONV2, 3, padding=1)
        self.fc = torch.nn.Linear(CONV2 * 4 * 4, 10)

    def forward(self, x):  # x: (N, 1, 8, 8)
        x = self.conv1(x)
        if self.bn1 is not None:
            x = self.bn1(x)
        x = F.max_pool2d(F.relu(x), 2)
        x = self.conv2(x)
        return self.fc(x.flatten(1))  # flattens C, H, W


class TorchTBlock(torch.nn.Module):
    """One transformer encoder block on digits: the 8 rows of an image are 8 tokens of 8
    pixels, embedded, through ``nn.TransformerEncoderLayer`` (post-norm, ReLU, dropout
    0), mean-pooled, classified."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Linear(8, D_MODEL)
        self.block = torch.nn.TransformerEncoderLayer(
            D_MODEL, HEADS, FF, dropout=0.0, batch_first=True
        )
        self.head = torch.nn.Linear(D_MODEL, 10)

    def forward(self, x):  # x: (N, 8, 8)
        return self.head(self.block(self.embed(x)).mean(1))


def torch_model(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return {
        "mlp": lambda: TorchMLP(),
        "mlp_ln": lambda: TorchMLP(layernorm=True),
        "cnn": lambda: TorchCNN(),
        "cnn_bn": lambda: TorchCNN(batchnorm=True),
        "tblock": lambda: TorchTBlock(),
    }[name]()


# --- Flax (linen) ---------------------------------------------------------------------


class TorchBatchNorm(nn.Module):
    """BatchNorm over NHWC with torch's semantics.

    Training normalizes with the biased batch variance but updates the running
    variance with the *unbiased* one; ``momentum`` is the weight of the new batch
    (torch's 0.1; Flax's ``momentum=0.99`` is the weight of the old value and its
    running variance is biased).
    """

    features: int
    momentum: float = 0.1
    epsilon: float = 1e-5
    unbiased_running_var: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        scale = self.param("scale", nn.initializers.ones, (self.features,), self.dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.dtype)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (self.features,), self.dtype)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (self.features,), self.dtype)
        axes = tuple(range(x.ndim - 1))
        if train:
            mean = jnp.mean(x, axes)
            var = jnp.mean(jnp.square(x - mean), axes)
            n = x.size // self.features
            run_var = var * (n / (n - 1)) if self.unbiased_running_var else var
            if not self.is_initializing():
                m = self.momentum
                ra_mean.value = (1 - m) * ra_mean.value + m * mean
                ra_var.value = (1 - m) * ra_var.value + m * run_var
        else:
            mean, var = ra_mean.value, ra_var.value
        return (x - mean) * (1 / jnp.sqrt(var + self.epsilon)) * scale + bias


class FlaxMLP(nn.Module):
    layernorm: bool = False
    ln_epsilon: float = 1e-5  # torch's default; Flax's is 1e-6
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = True):
        kw = dict(dtype=self.dtype, param_dtype=self.dtype)
        x = nn.Dense(HIDDEN, name="fc1", **kw)(x.reshape((x.shape[0], -1)))
        if self.layernorm:
            # torch computes the variance as E[(x - mean)^2]; Flax's default "fast variance"
            # E[x^2] - E[x]^2 cancels catastrophically in float32.
            x = nn.LayerNorm(epsilon=self.ln_epsilon, use_fast_variance=False, name="ln", **kw)(x)
        return nn.Dense(10, name="fc2", **kw)(nn.relu(x))


class FlaxCNN(nn.Module):
    batchnorm: bool = False
    unbiased_running_var: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = True):  # x: (N, 8, 8, 1)
        kw = dict(dtype=self.dtype, param_dtype=self.dtype)
        pad = ((1, 1), (1, 1))  # torch padding=1; never "SAME"
        x = nn.Conv(CONV1, (3, 3), padding=pad, use_bias=not self.batchnorm, name="conv1", **kw)(x)
        if self.batchnorm:
            x = TorchBatchNorm(
                CONV1, unbiased_running_var=self.unbiased_running_var, dtype=self.dtype, name="bn1"
            )(x, train)
        x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
        x = nn.Conv(CONV2, (3, 3), padding=pad, name="conv2", **kw)(x)
        return nn.Dense(10, name="fc", **kw)(x.reshape((x.shape[0], -1)))  # flattens H, W, C


class NnxEncoderLayer(nnx.Module):
    """``torch.nn.TransformerEncoderLayer`` (post-norm, ReLU, dropout 0) in nnx, torch's
    attention arithmetic (``jaxreg.nn.dot_product_attention``) and LayerNorm."""

    def __init__(self, d: int, heads: int, ff: int, dtype, rngs: nnx.Rngs):
        kw = dict(param_dtype=dtype, dtype=dtype, rngs=rngs)
        self.self_attn = nnx.MultiHeadAttention(
            heads, d, decode=False, attention_fn=jaxreg.nn.dot_product_attention, **kw
        )
        self.linear1 = nnx.Linear(d, ff, **kw)
        self.linear2 = nnx.Linear(ff, d, **kw)
        ln = dict(epsilon=1e-5, use_fast_variance=False, **kw)
        self.norm1, self.norm2 = nnx.LayerNorm(d, **ln), nnx.LayerNorm(d, **ln)

    def __call__(self, x):
        x = self.norm1(x + self.self_attn(x))
        return self.norm2(x + self.linear2(jax.nn.relu(self.linear1(x))))


class NnxTBlock(nnx.Module):
    """:class:`TorchTBlock`'s nnx twin (weights loaded with ``parity.convert.from_torch``)."""

    def __init__(self, dtype=jnp.float32, rngs: nnx.Rngs | None = None):
        rngs = rngs or nnx.Rngs(0)
        kw = dict(param_dtype=dtype, dtype=dtype, rngs=rngs)
        self.embed = nnx.Linear(8, D_MODEL, **kw)
        self.block = NnxEncoderLayer(D_MODEL, HEADS, FF, dtype, rngs)
        self.head = nnx.Linear(D_MODEL, 10, **kw)

    def __call__(self, x):  # x: (N, 8, 8)
        return self.head(self.block(self.embed(x)).mean(1))


def flax_model(name: str, dtype=jnp.float32, **overrides) -> nn.Module:
    if name in ("mlp", "mlp_ln"):
        return FlaxMLP(layernorm=name == "mlp_ln", dtype=dtype, **overrides)
    return FlaxCNN(batchnorm=name == "cnn_bn", dtype=dtype, **overrides)


def layers(name: str):
    """The converter spec of a model: (kind, torch prefix, flax path, extra)."""
    if name in ("mlp", "mlp_ln"):
        spec = [Linear("fc1", "fc1")]
        if name == "mlp_ln":
            spec.append(LayerNorm("ln", "ln"))
        return spec + [Linear("fc2", "fc2")]
    spec = [Conv2d("conv1", "conv1", bias=name != "cnn_bn")]
    if name == "cnn_bn":
        spec.append(BatchNorm("bn1", "bn1"))
    return spec + [Conv2d("conv2", "conv2"), Linear("fc", "fc", chw=(CONV2, 4, 4))]


def torch_input(x, model: str = "cnn"):
    """(N, 8, 8) images -> torch NCHW (the transformer block: (N, 8 tokens, 8))."""
    return x if model == "tblock" else x[:, None, :, :]


def flax_input(x):
    """(N, 8, 8) images -> Flax NHWC."""
    return x[..., None]
