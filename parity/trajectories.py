"""Fixed-gradient optimizer trajectories in torch and in JAX, and their relative error."""

from __future__ import annotations

import jax
import numpy as np


def random_grads(
    shapes: list[tuple[int, ...]], steps: int, seed: int = 0
) -> list[list[np.ndarray]]:
    """``steps`` lists of float64 gradients, one per shape (exact zeros sprinkled in)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        gs = []
        for s in shapes:
            g = rng.normal(size=s)
            g[rng.random(s) < 0.1] = 0.0
            gs.append(g)
        out.append(gs)
    return out


def torch_trajectory(make_opt, params0, grads_seq, dtype="float64", scheduler=None):
    """Run a torch optimizer on fixed gradients; return the final parameters as numpy.

    ``make_opt(list_of_tensors) -> optimizer``; ``scheduler(opt) -> lr_scheduler`` or None
    (stepped once after every ``optimizer.step()``).
    """
    import torch

    tdtype = getattr(torch, dtype)
    ps = [torch.tensor(np.asarray(p), dtype=tdtype, requires_grad=True) for p in params0]
    opt = make_opt(ps)
    sched = scheduler(opt) if scheduler else None
    for grads in grads_seq:
        for p, g in zip(ps, grads):
            p.grad = torch.tensor(np.asarray(g), dtype=tdtype)
        opt.step()
        if sched is not None:
            sched.step()
    return [p.detach().numpy().copy() for p in ps], opt


def optax_trajectory(tx, params0, grads_seq, dtype="float64"):
    """Run an Optax transform (jitted) on fixed gradients; return the final parameter list."""
    import jax.numpy as jnp
    import optax

    params = [jnp.asarray(p, dtype) for p in params0]
    state = tx.init(params)

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for grads in grads_seq:
        params, state = step(params, state, [jnp.asarray(g, dtype) for g in grads])
    return [np.asarray(p) for p in params], state


def rel_err(out: list, ref: list) -> float:
    """max |Δp| over all leaves, relative to the parameter scale max |p_ref|."""
    scale = max(float(np.max(np.abs(np.asarray(r, np.float64)), initial=0.0)) for r in ref)
    diff = max(
        float(np.max(np.abs(np.asarray(o, np.float64) - np.asarray(r, np.float64)), initial=0.0))
        for o, r in zip(out, ref)
    )
    return diff / max(scale, 1e-300)


def params0(shapes: list[tuple[int, ...]], seed: int = 1) -> list[np.ndarray]:
    """Seeded float64 starting parameters; the first element is exactly zero."""
    rng = np.random.default_rng(seed)
    ps = [rng.normal(size=s) for s in shapes]
    ps[0].flat[0] = 0.0
    return ps
