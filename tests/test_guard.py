"""Non-finite gradients: torch's behaviour by default, and the opt-in skip guard."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxreg
from tests.helpers import F64_ATOL, optax_trajectory, random_grads, torch_trajectory

SHAPES = [(4, 3), (3,)]
P0 = [np.linspace(-1, 1, 12).reshape(4, 3), np.array([0.5, -0.2, 0.0])]


def _grads_with_nonfinite(bad_steps, steps=10):
    grads = random_grads(SHAPES, steps, seed=3)
    for i, (leaf, value) in bad_steps.items():
        grads[i][leaf] = grads[i][leaf].copy()
        grads[i][leaf][0, ...] = value
    return grads


def _torch_adamw(ps):
    return torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1)


def test_default_propagates_nan_like_torch():
    grads = _grads_with_nonfinite({4: (1, np.nan)})
    ref, _ = torch_trajectory(_torch_adamw, P0, grads)
    out, _ = optax_trajectory(jaxreg.optim.adamw(lr=0.01, weight_decay=0.1), P0, grads)
    for o, r in zip(out, ref):
        np.testing.assert_array_equal(np.isnan(o), np.isnan(r))
    assert np.isnan(ref[1][0]) and not np.isnan(ref[0]).any()  # only the poisoned leaf
    np.testing.assert_allclose(out[0], ref[0], rtol=0, atol=F64_ATOL)


def _torch_skipping(grads, max_consecutive=None):
    """torch with GradScaler's rule: optimizer.step() only when every gradient is finite."""
    ps = [torch.tensor(p, requires_grad=True) for p in P0]
    opt = _torch_adamw(ps)
    run = skipped = 0
    for gs in grads:
        finite = all(np.isfinite(g).all() for g in gs)
        run = 0 if finite else run + 1
        if finite or (max_consecutive is not None and run > max_consecutive):
            for p, g in zip(ps, gs):
                p.grad = torch.tensor(g)
            opt.step()
        skipped += not finite
    return [p.detach().numpy() for p in ps], skipped


def test_skip_nonfinite_matches_torch_skipping_steps():
    grads = _grads_with_nonfinite({2: (0, np.nan), 6: (1, np.inf), 7: (0, -np.inf)})
    ref, n_skipped = _torch_skipping(grads)
    tx = jaxreg.skip_nonfinite(jaxreg.optim.adamw(lr=0.01, weight_decay=0.1))
    out, state = optax_trajectory(tx, P0, grads)
    for o, r in zip(out, ref):
        assert np.isfinite(o).all()
        np.testing.assert_allclose(o, r, rtol=0, atol=F64_ATOL)
    assert int(state.total_notfinite) == n_skipped == 3
    # The inner step count (bias correction, schedules) advanced only on applied steps.
    assert int(state.inner_state[0].count) == len(grads) - n_skipped


def test_skip_nonfinite_gives_up_after_max_consecutive_skips():
    grads = _grads_with_nonfinite({3: (0, np.nan), 4: (0, np.nan), 5: (0, np.nan)})
    ref, _ = _torch_skipping(grads, max_consecutive=2)
    tx = jaxreg.skip_nonfinite(jaxreg.optim.adamw(lr=0.01, weight_decay=0.1), 2)
    out, state = optax_trajectory(tx, P0, grads)
    assert np.isnan(ref[0]).any()  # the third consecutive NaN step was applied
    for o, r in zip(out, ref):
        np.testing.assert_array_equal(np.isnan(o), np.isnan(r))
    assert int(state.total_notfinite) == 3


def test_skip_nonfinite_under_vmap_is_per_member():
    tx = jaxreg.skip_nonfinite(jaxreg.optim.sgd(0.1, weight_decay=0.01))
    params = {"w": jnp.ones((2, 3))}  # two ensemble members
    g = {"w": jnp.array([[1.0, jnp.nan, 0.0], [1.0, 2.0, 3.0]])}

    def step(p, g):
        u, s = tx.update(g, tx.init(p), p)
        return u, s.total_notfinite

    u, skipped = jax.vmap(step)(params, g)
    assert skipped.tolist() == [1, 0]
    np.testing.assert_array_equal(np.asarray(u["w"][0]), 0.0)
    np.testing.assert_allclose(np.asarray(u["w"][1]), -0.1 * (np.array([1, 2, 3]) + 0.01))


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3"])
def test_skip_nonfinite_rejects_bad_limits(bad):
    with pytest.raises(ValueError, match="max_consecutive_skips"):
        jaxreg.skip_nonfinite(jaxreg.optim.sgd(0.1), bad)
