"""One place for tolerances and for comparing trees with the failing path in the message."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from jaxreg._tree import leaf_paths, path_str
from parity.tolerances import F64_SAME
from parity.trajectories import (  # noqa: F401
    optax_trajectory,
    random_grads,
    rel_err,
    torch_trajectory,
)

# float64: every test compares the same arithmetic done by two implementations -- the
# reason and measured basis are in parity.tolerances.TOLERANCES["float64", "same_arithmetic"].
# float32 tolerances are set where used, from measured drift, and say so.
F64_ATOL = F64_SAME


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


class float32_mode:
    """Context: JAX with x64 off, as a float32 user runs it (restores x64 after)."""

    def __enter__(self):
        self._old = jax.config.jax_enable_x64
        jax.config.update("jax_enable_x64", False)

    def __exit__(self, *exc):
        jax.config.update("jax_enable_x64", self._old)


BLOCK_TORCH = (  # an environment without torch: its import fails, as when not installed
    "import sys\n"
    "class _NoTorch:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] == 'torch':\n"
    "            raise ImportError(\"No module named 'torch'\")\n"
    "sys.meta_path.insert(0, _NoTorch())\n"
)


# --- a named problem for torch parameter-group comparisons -------------------------------


def named_problem(seed: int = 0, steps: int = 20):
    """Named leaves (Flax paths) and fixed random float64 gradients for ``steps`` steps."""
    import jax.numpy as jnp

    r = np.random.default_rng(seed)
    shapes = {
        ("fc1", "kernel"): (5, 4),
        ("fc1", "bias"): (4,),
        ("ln", "scale"): (4,),
        ("ln", "bias"): (4,),
        ("fc2", "kernel"): (4, 3),
        ("fc2", "bias"): (3,),
        ("emb", "embedding"): (6, 2),
    }
    params: dict = {}
    for (a, b), s in shapes.items():
        params.setdefault(a, {})[b] = jnp.asarray(r.normal(size=s))
    grads = [
        jax.tree.map(lambda x: jnp.asarray(r.normal(size=x.shape)), params) for _ in range(steps)
    ]
    return params, grads


def run_jax_steps(tx, params, grads):
    """Apply ``tx`` (jitted) once per gradient in ``grads``; return the params."""
    import optax

    state = tx.init(params)
    step = jax.jit(
        lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(*tx.update(g, s, p))
    )
    for g in grads:
        params, state = step(params, state, g)
    return params


def _get(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def run_torch_groups(make_opt, groups, params, grads, rename=None):
    """torch: the optimizer ``make_opt(param_groups)`` over tensors named by
    ``optim.torch_name``, fed ``grads``; returns ``{torch name: array}``."""
    import torch

    from jaxreg import optim

    names = {optim.torch_name(p, rename): p for p in leaf_paths(params)}
    tensors = {
        n: torch.tensor(np.asarray(_get(params, p)), requires_grad=True) for n, p in names.items()
    }
    opt = make_opt([{**g, "params": [tensors[n] for n in g["params"]]} for g in groups])
    for g in grads:
        for n, p in names.items():
            tensors[n].grad = torch.tensor(np.asarray(_get(g, p)))
        opt.step()
    return {n: tensors[n].detach().numpy() for n in names}


def assert_equals_torch_named(jax_params, torch_params, rename=None, atol=F64_ATOL):
    """Each leaf of ``jax_params`` equals the torch tensor of its ``optim.torch_name``."""
    from jaxreg import optim

    for path in leaf_paths(jax_params):
        a = np.asarray(_get(jax_params, path))
        b = torch_params[optim.torch_name(path, rename)]
        np.testing.assert_allclose(a, b, rtol=0, atol=atol, err_msg=path_str(path))
