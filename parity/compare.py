"""``parity.compare``: run *your* torch training step and *your* JAX port side by side.

Both start from the same weights (convert them with :func:`parity.convert.from_torch`),
take the same batches, and after every step the losses, every parameter and buffer
(through the torch<->Flax module map, so layouts and names line up) and, optionally,
the optimizer state are compared. The report names the first step and the first leaf
where the two runs part by more than the dtype's tolerance.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from parity import convert

#: Relative tolerances per dtype. In float64 the two frameworks do the same arithmetic in
#: a different order; measured drift on the suite's models ≤ 2e-12 over 300 steps, and
#: every semantic difference the suite plants shows at ≥ 1e-6. In float32 a run
#: carries ~1e-7 relative rounding per step that compounds differently in each
#: framework; 1e-4 over a short run separates that from a semantic difference (the
#: planted ones reach ≥ 1e-3 within tens of steps), but it is a smoke test, not the
#: suite's teacher-forced float32 criterion (``python -m parity``).
TOLERANCES = {"float64": 1e-10, "float32": 1e-4}


def rel_diff(a: Any, b: Any) -> float:
    """``max |a - b| / max(|b|, rms(b))``: relative, floored at the leaf's RMS (so that a
    near-zero entry of a large tensor is judged against the tensor's scale)."""
    b = np.asarray(b, np.float64)
    a = np.asarray(a, np.float64)
    if a.shape != b.shape:
        return math.inf
    rms = float(np.sqrt(np.mean(b * b))) if b.size else 0.0
    denom = np.maximum(np.abs(b), max(rms, 1e-300))
    return float(np.max(np.abs(a - b) / denom, initial=0.0))


@dataclass
class StepDiff:
    """One step: both losses, their relative difference, the worst parameter/buffer
    difference and its leaf, and the worst optimizer-state difference (if compared)."""

    step: int
    loss_torch: float
    loss_jax: float
    dloss: float
    dparam: float
    worst_leaf: str
    dstate: float | None = None
    worst_state: str | None = None


@dataclass
class CompareReport:
    """What :func:`compare` measured.

    Attributes:
      steps: one :class:`StepDiff` per step.
      dtype, tolerance: the criterion (relative; per step, loss and every leaf).
      divergence: ``None``, or ``(step, what)`` -- the first step and leaf (or ``"loss"``)
        beyond the tolerance.
      leaf_max: per leaf, its largest difference over the run.
      jax_state: the JAX step's state after the last step (not written by :meth:`write`).
    """

    steps: list[StepDiff]
    dtype: str
    tolerance: float
    divergence: tuple[int, str] | None
    leaf_max: dict[str, float] = field(default_factory=dict)
    jax_state: Any = field(default=None, repr=False)

    @property
    def passed(self) -> bool:
        return self.divergence is None

    @property
    def max_dloss(self) -> float:
        return max((s.dloss for s in self.steps), default=0.0)

    @property
    def max_dparam(self) -> float:
        return max((s.dparam for s in self.steps), default=0.0)

    def summary(self) -> str:
        """A few lines: verdict, worst differences, where the runs part."""
        verdict = "PASS" if self.passed else "FAIL"
        lines = [
            f"{verdict}: {len(self.steps)} steps, {self.dtype}, tolerance {self.tolerance:g} "
            f"(relative): max loss difference {self.max_dloss:.2e}, max parameter/buffer "
            f"difference {self.max_dparam:.2e}",
        ]
        states = [s.dstate for s in self.steps if s.dstate is not None]
        if states:
            lines.append(f"max optimizer-state difference {max(states):.2e}")
        if self.divergence:
            step, what = self.divergence
            lines.append(f"first beyond tolerance: step {step}, {what}")
        worst = sorted(self.leaf_max.items(), key=lambda kv: -kv[1])[:3]
        lines.append("worst leaves: " + ", ".join(f"{k} {v:.1e}" for k, v in worst))
        return "\n".join(lines)

    def table(self, every: int = 1) -> str:
        """Per-step markdown table (every ``every``-th step, and the last)."""
        rows = [
            "| step | loss torch | loss jax | Δloss (rel) | Δparam (rel) | worst leaf |",
            "|---:|---:|---:|---:|---:|---|",
        ]
        for s in self.steps:
            if s.step % every and s.step != self.steps[-1].step:
                continue
            rows.append(
                f"| {s.step} | {s.loss_torch:.10g} | {s.loss_jax:.10g} | {s.dloss:.1e} | "
                f"{s.dparam:.1e} | {s.worst_leaf} |"
            )
        return "\n".join(rows)

    def write(self, out: str | Path, plots: bool = True) -> list[Path]:
        """``report.json``, ``report.md`` and (``plots``) ``compare.png`` in ``out``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        data = {
            "passed": self.passed,
            "dtype": self.dtype,
            "tolerance": self.tolerance,
            "divergence": self.divergence,
            "leaf_max": self.leaf_max,
            "steps": [asdict(s) for s in self.steps],
        }
        (out / "report.json").write_text(json.dumps(data, indent=1))
        md = ["# parity.compare", "", "```", self.summary(), "```", "", self.table()]
        written = [out / "report.json", out / "report.md"]
        if plots:
            written.append(self._plot(out / "compare.png"))
            md += ["", "![compare](compare.png)"]
        (out / "report.md").write_text("\n".join(md) + "\n")
        return written

    def _plot(self, path: Path) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from parity.report import save_figure

        k = [s.step for s in self.steps]
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
        a.plot(k, [s.loss_torch for s in self.steps], label="torch")
        a.plot(k, [s.loss_jax for s in self.steps], "--", label="jax")
        a.set(xlabel="step", ylabel="loss", title="loss")
        a.legend()
        floor = 1e-18
        b.semilogy(k, [max(s.dloss, floor) for s in self.steps], label="loss")
        b.semilogy(k, [max(s.dparam, floor) for s in self.steps], label="params/buffers")
        b.axhline(self.tolerance, color="k", ls=":", label="tolerance")
        b.set(xlabel="step", ylabel="relative difference", title="torch vs jax")
        b.legend()
        return save_figure(fig, path)


def _state_fields(opt_state: Any) -> dict[str, Any]:
    """``{torch state key: params-shaped tree}`` found in a jaxreg.optim state (its core
    NamedTuples use torch's state keys as field names)."""
    import jax

    found: dict[str, Any] = {}

    def walk(s):
        if hasattr(s, "_fields"):
            for name in s._fields:
                v = getattr(s, name)
                if name not in ("count", "inner_states") and jax.tree.leaves(v):
                    if not hasattr(v, "_fields"):
                        found.setdefault(name, v)
                walk(v)
        elif isinstance(s, dict):
            for v in s.values():
                walk(v)
        elif isinstance(s, (list, tuple)):
            for v in s:
                walk(v)

    walk(opt_state)
    return found


def _by_path(tree: Any) -> dict[tuple[str, ...], Any]:
    """``{path: leaf}`` of a tree (nnx ``Variable`` levels hidden, as jaxreg's paths)."""
    import jax

    from jaxreg._tree import leaf_paths

    return dict(zip(leaf_paths(tree), jax.tree.leaves(tree)))


def compare(
    torch_module: Any,
    torch_step: Callable[[Any], Any],
    jax_state: Any,
    jax_step: Callable[[Any, Any], tuple[Any, Any]],
    batches: Iterable[Any],
    *,
    jax_variables: Callable[[Any], Any],
    torch_batch: Callable[[Any], Any] | None = None,
    jax_batch: Callable[[Any], Any] | None = None,
    torch_optimizer: Any = None,
    jax_opt_state: Callable[[Any], Any] | None = None,
    dtype: str = "float64",
    tolerance: float | None = None,
    rename: dict[str, str] | None = None,
    flatten: dict[str, tuple[int, ...]] | None = None,
    example_input: Any = None,
) -> CompareReport:
    """Train a torch model and its JAX port side by side and compare every step.

    Each step calls ``loss_t = torch_step(torch_batch(batch))`` -- your torch step:
    ``zero_grad``, forward, ``backward``, clipping, ``optimizer.step()``, scheduler --
    and ``jax_state, loss_j = jax_step(jax_state, jax_batch(batch))``, then compares
    the losses and every parameter and buffer of ``torch_module`` with
    ``jax_variables(jax_state)`` through the :func:`parity.convert.module_map` (so a
    Linear weight is compared with its transposed kernel). With ``torch_optimizer`` and
    ``jax_opt_state``, every per-parameter torch state tensor (``exp_avg``,
    ``momentum_buffer``, ...) is compared with the jaxreg.optim state field of the same
    name. Differences are relative: ``max |a - b| / max(|b|, rms(b))`` per leaf, and
    ``|l_j - l_t| / max(|l_t|, 1e-300)`` for the loss.

    Args:
      torch_module: the torch model, already holding the starting weights.
      torch_step: ``batch -> loss`` (a float or 0-d tensor), one training step.
      jax_state: whatever your JAX step carries (params, optimizer state, ...), starting
        from the same weights.
      jax_step: ``(state, batch) -> (state, loss)``.
      batches: the batches, in order (both sides get the same ones).
      jax_variables: ``state -> variables`` to compare: a linen variables dict
        (``{"params": ..., "batch_stats": ...}``) or an ``nnx.Module``.
      torch_batch, jax_batch: per-framework views of a batch (layouts, tensors);
        default: the batch itself.
      torch_optimizer, jax_opt_state: compare optimizer states too (``jax_opt_state``:
        ``state -> the jaxreg.optim state``).
      dtype: ``"float64"`` or ``"float32"``: picks the tolerance
        (:data:`parity.compare.TOLERANCES`).
      tolerance: override the relative tolerance.
      rename, flatten, example_input: for the module map (:func:`parity.convert.module_map`).

    Returns:
      A :class:`CompareReport` (``.passed``, ``.divergence``, ``.summary()``,
      ``.write(out)``).

    Raises:
      ValueError: for an unknown dtype, or a model the module map cannot pair (naming
        every module that did not fit).
    """
    if dtype not in TOLERANCES:
        raise ValueError(f"dtype must be one of {sorted(TOLERANCES)}, got {dtype!r}")
    tol = TOLERANCES[dtype] if tolerance is None else float(tolerance)
    torch_batch = torch_batch or (lambda b: b)
    jax_batch = jax_batch or (lambda b: b)
    mm = convert.module_map(
        torch_module, jax_variables(jax_state), rename=rename, flatten=flatten,
        example_input=example_input,
    )  # fmt: skip
    param_of = {id(p): n for n, p in torch_module.named_parameters()}
    steps: list[StepDiff] = []
    leaf_max: dict[str, float] = {}
    divergence = None
    for k, batch in enumerate(batches):
        lt = torch_step(torch_batch(batch))
        lt = float(lt.detach() if hasattr(lt, "detach") else lt)  # the loss tensor as returned
        jax_state, lj = jax_step(jax_state, jax_batch(batch))
        lj = float(lj)
        dloss = abs(lj - lt) / max(abs(lt), 1e-300) if math.isfinite(lt) else math.inf
        if not (math.isfinite(lj) and math.isfinite(lt)) and lj != lt:
            dloss = math.inf
        mods, _ = convert._flax_modules(jax_variables(jax_state))
        sd = torch_module.state_dict()
        worst, worst_leaf = 0.0, ""
        for lm in mm.leaves:
            conv = lm.to_flax(convert._np(sd[lm.torch_key]))
            for path, ref in zip(lm.flax_paths, conv):
                got = mods[path[1:-1]][path[-1]][1]
                d = rel_diff(got, ref)
                name = "/".join(path)
                leaf_max[name] = max(leaf_max.get(name, 0.0), d)
                if d > worst or not worst_leaf:
                    worst, worst_leaf = d, name
        dstate, worst_state = None, None
        if torch_optimizer is not None and jax_opt_state is not None:
            dstate, worst_state = _state_diff(torch_optimizer, jax_opt_state(jax_state), mm,
                                              param_of, leaf_max)  # fmt: skip
        steps.append(StepDiff(k, lt, lj, dloss, worst, worst_leaf, dstate, worst_state))
        if divergence is None:
            if not dloss <= tol:
                divergence = (k, f"loss ({lt!r} vs {lj!r})")
            elif not worst <= tol:
                divergence = (k, f"{worst_leaf} ({worst:.2e})")
            elif dstate is not None and not dstate <= tol:
                divergence = (k, f"optimizer state {worst_state} ({dstate:.2e})")
    return CompareReport(steps, dtype, tol, divergence, leaf_max, jax_state)


def _state_diff(torch_optimizer, jax_opt_state, mm, param_of, leaf_max):
    fields = {k: _by_path(v) for k, v in _state_fields(jax_opt_state).items()}
    by_key = {lm.torch_key: lm for lm in mm.leaves if len(lm.flax_paths) == 1}
    worst, worst_name = 0.0, None
    for group in torch_optimizer.param_groups:
        for p in group["params"]:
            name = param_of.get(id(p))
            lm = by_key.get(name)
            if lm is None:
                continue
            for key, value in torch_optimizer.state.get(p, {}).items():
                if key not in fields or not hasattr(value, "shape") or tuple(value.shape) != tuple(
                    p.shape
                ):
                    continue
                ref = lm.to_flax(convert._np(value))[0]
                got = fields[key].get(lm.flax_paths[0][1:])
                if got is None:
                    continue
                d = rel_diff(got, ref)
                label = f"{key}:{'/'.join(lm.flax_paths[0][1:])}"
                leaf_max[label] = max(leaf_max.get(label, 0.0), d)
                if worst_name is None or d > worst:
                    worst, worst_name = d, label
    return (worst, worst_name) if worst_name is not None else (None, None)
