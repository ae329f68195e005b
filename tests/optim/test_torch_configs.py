"""torch's own optimizer test configurations (``optim_db``: every ``optim_inputs_func`` on
CPU) through :func:`jaxreg.optim.from_torch`, float64, against torch itself.

A peer check written by torch, not by us: the configurations include Tensor learning rates,
``maximize``, ``amsgrad``, ``nesterov``, ``decoupled_weight_decay``, ``capturable``, ``foreach``
and the like, on the optimizers jaxreg.optim mirrors.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from jaxreg import optim
from parity.tolerances import F64_OPTIMIZER_TOL

pytestmark = pytest.mark.slow


def _configs():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.testing._internal.common_optimizers import optim_db
    for info in optim_db:
        name = info.optim_cls.__name__
        if hasattr(optim, name.lower()):
            for oi in info.optim_inputs_func(device="cpu", dtype=torch.float64):
                yield name, info.optim_cls, dict(oi.kwargs), oi.desc


def test_torchs_own_optimizer_configurations_match_to_float64_round_off():
    rng = np.random.default_rng(0)
    results = {}
    for name, cls, kwargs, desc in _configs():
        shapes = [(4, 3), (3, 5)] if name == "Muon" else [(4, 3), (3,), (5, 2)]
        p0 = [rng.standard_normal(s) for s in shapes]
        grads = [[rng.standard_normal(s) for s in shapes] for _ in range(30)]
        ps = [torch.tensor(p, requires_grad=True) for p in p0]
        opt = cls(ps, **kwargs)
        tx = optim.from_torch(opt, [jnp.asarray(p) for p in p0])  # before torch's steps
        for g in grads:
            for p, gi in zip(ps, g):
                p.grad = torch.tensor(gi)
            opt.step()

        @jax.jit
        def step(p, s, g, tx=tx):
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s

        jp = [jnp.asarray(p) for p in p0]
        state = tx.init(jp)
        for g in grads:
            jp, state = step(jp, state, [jnp.asarray(x) for x in g])
        diff = max(
            float(np.max(np.abs(np.asarray(a) - b.detach().numpy()))) for a, b in zip(jp, ps)
        )
        results[f"{name}: {desc}"] = diff
    # 12 optimizers; torch 2.14 has 79 CPU configurations for them
    assert len({k.split(":")[0] for k in results}) == 12
    assert len(results) >= 79
    bad = {k: v for k, v in results.items() if not v <= F64_OPTIMIZER_TOL}
    assert not bad, bad
