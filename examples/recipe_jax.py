"""``recipe_torch.py`` ported to JAX (Flax linen) with jaxreg's porting kit.

Each torch piece has its exact counterpart:

=========================================  =================================================
PyTorch                                    here
=========================================  =================================================
``nn.BatchNorm2d``                         ``jaxreg.nn.BatchNorm`` (torch's running stats)
``Conv2d(padding=1)``                      ``nn.Conv(padding=((1, 1), (1, 1)))``
``x.flatten(1)`` after a conv (C, H, W)    ``x.reshape(N, -1)`` (H, W, C); the converter
                                           permutes the Linear's rows
``L1_ALPHA * sum(|conv weights|)``         ``jaxreg.l1_penalty(params, mask=glob("conv*/kernel"))``
``L2_LAMBDA * sum(p.pow(2).sum())``        ``jaxreg.l2_penalty(params)``
``clip_grad_norm_(params, 1.0)``           ``jaxreg.optim.clip_grad_norm(1.0)``
AdamW, no-decay group for 1-D params       ``jaxreg.optim.adamw(weight_decay_mask=min_ndim(2))``
``SequentialLR(LinearLR, CosineAnnealingLR)``  ``lr_scheduler.sequential_lr([...], [WARMUP])``
=========================================  =================================================
"""

from __future__ import annotations

import digits
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from recipe_torch import (
    BATCH,
    EPOCHS,
    L1_ALPHA,
    L2_LAMBDA,
    LR,
    MAX_NORM,
    TOTAL_STEPS,
    WARMUP,
    WEIGHT_DECAY,
)  # fmt: skip
from tqdm import tqdm

import jaxreg
from jaxreg import masks
from jaxreg.optim import lr_scheduler


class CNN(nn.Module):
    dtype: jnp.dtype = jnp.float64

    @nn.compact
    def __call__(self, x, train: bool):  # (N, 8, 8, 1)
        kw = dict(dtype=self.dtype, param_dtype=self.dtype)
        pad = ((1, 1), (1, 1))
        x = nn.Conv(8, (3, 3), padding=pad, use_bias=False, name="conv1", **kw)(x)
        x = jaxreg.nn.BatchNorm(8, param_dtype=self.dtype, name="bn1")(x, train)
        x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
        x = nn.relu(nn.Conv(16, (3, 3), padding=pad, name="conv2", **kw)(x))
        return nn.Dense(10, name="fc", **kw)(x.reshape((x.shape[0], -1)))


def make(variables=None, dtype=jnp.float64):
    """``(state, train_step, model)``; ``state = (variables, opt_state, correct)``."""
    model = CNN(dtype)
    if variables is None:
        variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1), dtype), train=False)
    schedule = lr_scheduler.sequential_lr(
        [
            lr_scheduler.linear_lr(LR, start_factor=0.1, total_iters=WARMUP),
            lr_scheduler.cosine_annealing_lr(LR, T_max=TOTAL_STEPS - WARMUP, eta_min=1e-5),
        ],
        milestones=[WARMUP],
    )
    tx = optax.chain(
        jaxreg.optim.clip_grad_norm(MAX_NORM),
        jaxreg.optim.adamw(
            schedule, weight_decay=WEIGHT_DECAY, weight_decay_mask=masks.min_ndim(2)
        ),
    )

    def loss_fn(params, batch_stats, x, y):
        logits, updates = model.apply(
            {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        loss = loss + L1_ALPHA * jaxreg.l1_penalty(params, mask=masks.glob("conv*/kernel"))
        loss = loss + L2_LAMBDA * jaxreg.l2_penalty(params)
        return loss, (logits, updates["batch_stats"])

    @jax.jit
    def train_step(state, batch):
        variables, opt_state, correct = state
        x, y = batch
        params = variables["params"]
        (loss, (logits, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, variables["batch_stats"], x, y
        )
        updates, opt_state = tx.update(grads, opt_state, params)
        variables = {"params": optax.apply_updates(params, updates), "batch_stats": stats}
        correct = correct + jnp.sum(jnp.argmax(logits, -1) == y)
        return (variables, opt_state, correct), loss

    return (variables, tx.init(variables["params"]), jnp.asarray(0)), train_step, model


def to_jax(batch):
    x, y = batch
    return jnp.asarray(x[..., None]), jnp.asarray(y)


def main():
    jax.config.update("jax_enable_x64", True)
    x_train, y_train, x_test, y_test = digits.load()
    state, train_step, model = make()
    batches = digits.batches(x_train, y_train, BATCH, EPOCHS)
    for b in tqdm(batches):
        state, _ = train_step(state, to_jax(b))
    logits = model.apply(state[0], to_jax((x_test, y_test))[0], train=False)
    test_acc = float(jnp.mean(jnp.argmax(logits, -1) == y_test))
    print(f"train accuracy {100 * int(state[2]) / (len(batches) * BATCH):.2f}%, "
          f"test accuracy {100 * test_acc:.2f}%")  # fmt: skip


if __name__ == "__main__":
    main()
