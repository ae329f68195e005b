"""One place for tolerances and for comparing trees with the failing path in the message."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from jaxreg._tree import leaf_paths, path_str

# Tolerances, per dtype. float64: every test compares the same arithmetic done by two
# implementations, so differences are a few ULPs of the values compared (eps64 ~ 2.2e-16);
# 1e-12 leaves room for ~1e3 ULP of accumulated rounding over 100 steps, while any
# semantic difference shows up at >= 1e-8. float32 tolerances are set where used, from
# measured drift, and say so.
F64_ATOL = 1e-12


def to_numpy_leaves(tree: Any) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def assert_trees_close(actual: Any, expected: Any, *, atol: float = F64_ATOL, rtol: float = 0.0):
    """Assert two trees (same leaf order) are close leaf by leaf; name the first bad path."""
    a_leaves = jax.tree.leaves(actual)
    e_leaves = jax.tree.leaves(expected)
    assert len(a_leaves) == len(e_leaves), f"{len(a_leaves)} leaves vs {len(e_leaves)}"
    paths = leaf_paths(actual)
    for path, a, e in zip(paths, a_leaves, e_leaves):
        a, e = np.asarray(a), np.asarray(e)
        assert a.shape == e.shape, f"{path_str(path)}: shape {a.shape} vs {e.shape}"
        err = np.abs(a.astype(np.float64) - e.astype(np.float64))
        bound = atol + rtol * np.abs(e.astype(np.float64))
        if not np.all(err <= bound):
            i = np.unravel_index(np.argmax(err - bound), err.shape) if err.ndim else ()
            raise AssertionError(
                f"leaf {path_str(path)!r} differs at {i}: {a[i]!r} vs {e[i]!r} "
                f"(|diff| {err[i]:.3g} > {bound[i] if np.ndim(bound) else bound:.3g})"
            )


def max_abs_diff(a: Any, b: Any) -> float:
    return max(
        (
            float(np.max(np.abs(np.asarray(x) - np.asarray(y)), initial=0.0))
            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
        ),
        default=0.0,
    )


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


class float32_mode:
    """Context: JAX with x64 off, as a float32 user runs it (restores x64 after)."""

    def __enter__(self):
        self._old = jax.config.jax_enable_x64
        jax.config.update("jax_enable_x64", False)

    def __exit__(self, *exc):
        jax.config.update("jax_enable_x64", self._old)


def rel_err(out: list, ref: list) -> float:
    """max |Δp| over all leaves, relative to the parameter scale max |p_ref|."""
    scale = max(float(np.max(np.abs(np.asarray(r, np.float64)), initial=0.0)) for r in ref)
    diff = max(
        float(np.max(np.abs(np.asarray(o, np.float64) - np.asarray(r, np.float64)), initial=0.0))
        for o, r in zip(out, ref)
    )
    return diff / max(scale, 1e-300)
