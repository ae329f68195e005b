"""``python -m parity.optim_table``: the table of jaxreg.optim vs torch.optim in docs/optim.md.

For every optimizer, the worst relative deviation over its flag grid (100 steps of
random gradients): jaxreg-f64 vs torch-f64, jaxreg-f32 vs torch-f32, and torch's own
float32 noise (torch-f32 vs torch-f64) for scale.
"""

from __future__ import annotations

import jax

from parity.registry import grid_points
from parity.trajectories import (
    optax_trajectory,
    params0,
    random_grads,
    rel_err,
    torch_trajectory,
)

STEPS = 100


def measure() -> dict[str, dict[str, float]]:
    jax.config.update("jax_enable_x64", True)
    rows: dict[str, dict[str, float]] = {}
    for spec, kwargs, _pid in grid_points():
        p0, grads = params0(spec.grid.shapes), random_grads(spec.grid.shapes, STEPS)
        make = lambda ps, spec=spec, kwargs=kwargs: spec.torch_cls(ps, **kwargs)  # noqa: E731
        t64, _ = torch_trajectory(make, p0, grads, "float64")
        t32, _ = torch_trajectory(make, p0, grads, "float32")
        j64, _ = optax_trajectory(spec.make_jax(**kwargs), p0, grads, "float64")
        jax.config.update("jax_enable_x64", False)
        try:
            j32, _ = optax_trajectory(spec.make_jax(**kwargs), p0, grads, "float32")
        finally:
            jax.config.update("jax_enable_x64", True)
        row = rows.setdefault(
            spec.name,
            {"points": 0, "f64": 0.0, "f32": 0.0, "noise": 0.0, "torch": spec.torch_cls.__name__},
        )
        row["points"] += 1
        row["f64"] = max(row["f64"], rel_err(j64, t64))
        row["f32"] = max(row["f32"], rel_err(j32, t32))
        row["noise"] = max(row["noise"], rel_err(t32, t64))
    return rows


def table(rows) -> str:
    lines = [
        "| torch.optim | jaxreg.optim | grid points | max rel. Δp float64 | "
        "max rel. Δp float32 | torch's own float32 noise |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| `{r['torch']}` | `{name}` | {r['points']} | {r['f64']:.1e} | {r['f32']:.1e} "
            f"| {r['noise']:.1e} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(measure()))
