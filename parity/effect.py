"""The regularization effect on digits: train/test accuracy, weight norm and exact zeros.

A jitted Flax MLP trained with jaxreg under no regularization, an L1 penalty, an L2
penalty, decoupled weight decay and a proximal L1 step -- the "what does it buy you"
half of the story (the parity half shows it is the same as PyTorch).
"""

from __future__ import annotations

from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxreg
from parity.data import Digits, batch_indices
from parity.registry import EFFECTS


class _MLP(nn.Module):
    hidden: int = 128

    @nn.compact
    def __call__(self, x):
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(self.hidden)(x))
        return nn.Dense(10)(x)


@dataclass
class EffectResult:
    reg: str
    train_acc: float
    test_acc: float
    weight_norm: float
    zero_fraction: float


def train_effect(
    data: Digits,
    reg: str,
    *,
    steps: int = 1500,
    batch_size: int = 64,
    lr: float = 1e-3,
    strength: float = 1e-3,
    seed: int = 0,
) -> EffectResult:
    """Train one MLP on digits with ``reg`` and measure accuracy, weight norm and sparsity."""
    model = _MLP()
    params = model.init(jax.random.key(seed), jnp.zeros((1, 8, 8), jnp.float32))["params"]
    if reg not in EFFECTS:
        raise ValueError(f"unknown regularization {reg!r}; one of {tuple(EFFECTS)}")
    penalty, tx = EFFECTS[reg].build(lr, strength)
    x_tr = jnp.asarray(data.x_train, jnp.float32)
    y_tr = jnp.asarray(data.y_train)

    def data_loss(p, x, y):
        logits = model.apply({"params": p}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss_fn = jaxreg.regularized(data_loss, **penalty) if penalty else data_loss

    @jax.jit
    def train(params, idx):
        def step(carry, batch):
            p, s = carry
            g = jax.grad(loss_fn)(p, x_tr[batch], y_tr[batch])
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), idx)
        return params

    idx = jnp.asarray(batch_indices(len(data.y_train), batch_size, steps, seed))
    params = train(params, idx)

    def acc(x, y):
        logits = model.apply({"params": params}, jnp.asarray(x, jnp.float32))
        return float(np.mean(np.asarray(jnp.argmax(logits, -1)) == y))

    kern = [np.asarray(k) for k in jax.tree.leaves(params) if np.ndim(k) == 2]
    return EffectResult(
        reg=reg,
        train_acc=acc(data.x_train, data.y_train),
        test_acc=acc(data.x_test, data.y_test),
        weight_norm=float(np.sqrt(sum(float(np.sum(k * k)) for k in kern))),
        zero_fraction=float(sum(np.sum(k == 0.0) for k in kern) / sum(k.size for k in kern)),
    )


REGS = tuple(EFFECTS)


def effect_table(results: list[EffectResult]) -> str:
    lines = [
        "| regularization | train acc | test acc | ‖W‖₂ (kernels) | exact zeros |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.reg} | {r.train_acc:.4f} | {r.test_acc:.4f} | {r.weight_norm:.3f} "
            f"| {100 * r.zero_fraction:.1f}% |"
        )
    return "\n".join(lines)
