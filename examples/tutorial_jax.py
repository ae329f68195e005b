"""The tutorial's training loop ported to JAX with jaxreg (Flax nnx).

The same MLP (layers named as in ``tutorial_torch.py``, so ``parity.convert`` pairs them),
the same L2 term -- ``jaxreg.regularized(loss, l2=L2_LAMBDA)`` is ``l2_lambda * sum of
p**2`` over every parameter, biases included -- and ``jaxreg.optim.sgd``, torch's SGD
argument for argument. ``python examples/tutorial_jax.py`` trains it.
"""

from __future__ import annotations

import digits
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from tqdm import tqdm

import jaxreg

L2_LAMBDA = 0.001
LR, MOMENTUM = 0.05, 0.9


class Net(nnx.Module):
    def __init__(self, dtype=jnp.float64, rngs=None):
        rngs = rngs or nnx.Rngs(0)
        self.fc1 = nnx.Linear(64, 32, param_dtype=dtype, rngs=rngs)
        self.fc2 = nnx.Linear(32, 10, param_dtype=dtype, rngs=rngs)

    def __call__(self, x):
        return self.fc2(jax.nn.relu(self.fc1(x.reshape((x.shape[0], -1)))))


def make(model=None):
    """``(state, train_step, graphdef)``: ``train_step(state, batch) -> (state, loss)``;
    ``state = (params, opt_state, correct)``."""
    model = model or Net()
    graphdef, params = nnx.split(model, nnx.Param)
    tx = jaxreg.optim.sgd(lr=LR, momentum=MOMENTUM)

    def data_loss(params, x, y):
        logits = nnx.merge(graphdef, params)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits

    loss_fn = jaxreg.regularized(data_loss, l2=L2_LAMBDA)  # + l2_lambda * sum(p ** 2)

    @jax.jit
    def train_step(state, batch):
        params, opt_state, correct = state
        x, y = batch
        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        correct = correct + jnp.sum(jnp.argmax(logits, -1) == y)
        return (params, opt_state, correct), loss

    return (params, tx.init(params), jnp.asarray(0)), train_step, graphdef


def main(epochs=3):
    jax.config.update("jax_enable_x64", True)
    x_train, y_train, _, _ = digits.load()
    state, train_step, _ = make()
    for epoch in range(epochs):
        print(f"\nEpoch : {epoch}")
        state = (*state[:2], jnp.asarray(0))
        batches = digits.batches(x_train, y_train, epochs=1, seed=epoch)
        losses = []
        for b in tqdm(batches):
            state, loss = train_step(state, b)
            losses.append(float(loss))
        accu = 100.0 * int(state[2]) / (len(batches) * len(batches[0][1]))
        print(f"Train Loss: {sum(losses) / len(losses):.3f} | Accuracy: {accu:.3f}")


if __name__ == "__main__":
    main()
