"""Step-level parity of every jaxreg.optim optimizer with torch.optim, over a flag grid.

Reference: torch.optim itself, driven by the same gradients (100 steps of random
float64 gradients with exact zeros, on a tree with a matrix, a vector, a scalar leaf
and parameters that start at exactly zero).

Tolerances:
* float64 -- max |Δp| / max |p| ≤ 1e-12 (F64_REL). Both sides do the same arithmetic
  in a possibly different order; measured deviations are ≤ 2e-15, and any semantic
  difference measured so far shows at ≥ 1e-8.
* float32 -- principled, not hand-picked: the jaxreg-vs-torch float32 error must be at
  most F32_NOISE_FACTOR × torch's own float32 error (torch-f32 vs torch-f64 on the same
  case), i.e. within float32's own noise for that optimizer. Measured ratios are ≤ 1.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import float32_mode, optax_trajectory, random_grads, rel_err, torch_trajectory

from parity.registry import grid_points
from parity.tolerances import F32_NOISE_FACTOR, F64_OPTIMIZER_TOL
from parity.trajectories import params0

F64_REL = F64_OPTIMIZER_TOL
STEPS = 100

POINTS = list(grid_points())
IDS = [p[2] for p in POINTS]

# Measured deviations, filled by the tests, printed by the table generator (docs/optim.md).
MEASURED: dict[str, dict[str, float]] = {}


def _run(spec, kwargs, dtype):
    p0, grads = params0(spec.grid.shapes), random_grads(spec.grid.shapes, STEPS)
    ref, _ = torch_trajectory(lambda ps: spec.torch_cls(ps, **kwargs), p0, grads, dtype=dtype)
    out, _ = optax_trajectory(spec.make_jax(**kwargs), p0, grads, dtype=dtype)
    return out, ref


@pytest.mark.parametrize("spec,kwargs,pid", POINTS, ids=IDS)
def test_float64_trajectory_equals_torch(spec, kwargs, pid):
    out, ref = _run(spec, kwargs, "float64")
    err = rel_err(out, ref)
    MEASURED.setdefault(pid, {})["float64"] = err
    assert err <= F64_REL, f"{pid}: float64 relative deviation {err:.3g}"
    assert all(o.dtype == np.float64 for o in out)


@pytest.mark.slow
@pytest.mark.parametrize("spec,kwargs,pid", POINTS, ids=IDS)
def test_float32_trajectory_within_float32_noise(spec, kwargs, pid):
    p0, grads = params0(spec.grid.shapes), random_grads(spec.grid.shapes, STEPS)
    ref64, _ = torch_trajectory(lambda ps: spec.torch_cls(ps, **kwargs), p0, grads, "float64")
    ref32, _ = torch_trajectory(lambda ps: spec.torch_cls(ps, **kwargs), p0, grads, "float32")
    with float32_mode():
        out32, _ = optax_trajectory(spec.make_jax(**kwargs), p0, grads, dtype="float32")
    assert all(o.dtype == np.float32 for o in out32)
    noise = rel_err(ref32, ref64)  # torch's own float32 error on this case
    err = rel_err(out32, ref32)
    MEASURED.setdefault(pid, {})["float32"] = err
    assert err <= F32_NOISE_FACTOR * noise, (
        f"{pid}: jaxreg-f32 vs torch-f32 {err:.3g} > {F32_NOISE_FACTOR} x torch f32 noise "
        f"{noise:.3g}"
    )
