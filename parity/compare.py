"""``parity.compare``: run *your* torch training step and *your* JAX port side by side.

Both start from the same weights (convert them with :func:`parity.convert.from_torch`),
take the same batches, and after every step the losses, every parameter and buffer
(through the torch<->Flax module map, so layouts and names line up) and, optionally,
the optimizer state are compared. The report names the first step and the first leaf
where the two runs part by more than the dtype's tolerance.

float64 runs are compared free-running (both runs go their own way; ≤ 1e-10 relative
per step). float32 runs are compared teacher-forced, as the suite does: at every step
your JAX step and a float64 twin of your torch step start from your float32 torch run's
exact state, and the JAX step's error against float64 must stay within
:data:`parity.tolerances.F32_NOISE_FACTOR` times float32's own (torch-float32's
single-step error against float64, over reorderings of the batch).
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
from parity.tolerances import F64_TOL, f32_allowed, f32_tolerance

#: Free-running relative tolerances per dtype (see :mod:`parity.tolerances` for the basis).
#: float32 has none: it is judged teacher-forced (``torch_twin=``/``jax_load=``), unless
#: you pass ``tolerance=`` yourself.
TOLERANCES = {"float64": F64_TOL}


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
    difference and its leaf, and the worst optimizer-state difference (if compared).

    Teacher-forced (float32): ``loss_torch`` is the float64 twin's loss, ``loss_jax`` the
    JAX step's, both from torch-float32's state; ``dloss``/``dparam`` are the JAX step's
    errors against float64 and ``noise`` is torch-float32's own (the worst of its loss and
    variables over the batch orders)."""

    step: int
    loss_torch: float
    loss_jax: float
    dloss: float
    dparam: float
    worst_leaf: str
    dstate: float | None = None
    worst_state: str | None = None
    noise: float | None = None


def clone_optimizer_state(osd: dict) -> dict:
    """A copy of a torch optimizer ``state_dict`` whose tensors do not alias the
    optimizer's (``load_state_dict`` keeps same-dtype state tensors by reference)."""
    import torch

    state = {
        i: {k: v.clone() if torch.is_tensor(v) else v for k, v in st.items()}
        for i, st in osd["state"].items()
    }
    return {"state": state, "param_groups": osd["param_groups"]}


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
      criterion: ``"free-running"`` or ``"teacher-forced"``.
      exceeding_steps: teacher-forced: every step beyond the tolerance (up to
        :func:`parity.tolerances.f32_allowed` of them pass: a ReLU input within float32
        rounding of zero may be decided either way).
    """

    steps: list[StepDiff]
    dtype: str
    tolerance: float
    divergence: tuple[int, str] | None
    leaf_max: dict[str, float] = field(default_factory=dict)
    jax_state: Any = field(default=None, repr=False)
    criterion: str = "free-running"
    exceeding_steps: list[int] = field(default_factory=list)

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
            f"{verdict}: {len(self.steps)} steps, {self.dtype} {self.criterion}, tolerance "
            f"{self.tolerance:.3g} (relative): max loss difference {self.max_dloss:.2e}, max "
            f"parameter/buffer difference {self.max_dparam:.2e}",
        ]
        noise = [s.noise for s in self.steps if s.noise is not None]
        if noise:
            lines.append(
                f"teacher-forced against float64: float32's own noise up to {max(noise):.2e}; "
                f"{len(self.exceeding_steps)} step(s) beyond the tolerance "
                f"({f32_allowed(len(self.steps))} allowed)"
                + (f": {self.exceeding_steps[:10]}" if self.exceeding_steps else "")
            )
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
        forced = self.criterion == "teacher-forced"
        rows = [
            "| step | loss torch | loss jax | Δloss (rel) | Δparam (rel) | worst leaf |"
            + (" f32 noise |" if forced else ""),
            "|---:|---:|---:|---:|---:|---|" + ("---:|" if forced else ""),
        ]
        for s in self.steps:
            if s.step % every and s.step != self.steps[-1].step:
                continue
            rows.append(
                f"| {s.step} | {s.loss_torch:.10g} | {s.loss_jax:.10g} | {s.dloss:.1e} | "
                f"{s.dparam:.1e} | {s.worst_leaf} |" + (f" {s.noise:.1e} |" if forced else "")
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
            "criterion": self.criterion,
            "exceeding_steps": self.exceeding_steps,
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
        if self.criterion == "teacher-forced":
            b.semilogy(k, [max(s.noise, floor) for s in self.steps], lw=0.8,
                       label="torch-float32's own error")  # fmt: skip
        b.axhline(self.tolerance, color="k", ls=":", label="tolerance")
        forced = self.criterion == "teacher-forced"
        title = "vs torch-float64, teacher-forced" if forced else "torch vs jax"
        b.set(xlabel="step", ylabel="relative difference", title=title)
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
    torch_twin: Callable[[Any], tuple[Any, Any, Callable[[Any], Any]]] | None = None,
    jax_load: Callable[[Any, Any, Any], Any] | None = None,
    reorder: Callable[[Any, np.ndarray], Any] | None = None,
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

    **float64** (free-running): every step, loss and leaf within
    :data:`parity.tolerances.F64_TOL` (1e-10).

    **float32** (teacher-forced, the suite's criterion): two float32 runs drift apart
    chaotically (a ReLU input on the other side of zero), so instead, at every step k::

        state_k = torch-float32's parameters, buffers and optimizer state (lr included)
        ref     = torch-float64 twin: one step from state_k          (torch_twin(float64))
        err     = |JAX-float32 step from state_k  - ref|             (jax_load, jax_step)
        noise   = max over batch orders of |torch-float32 step from state_k - ref|
        pass if err ≤ F32_NOISE_FACTOR · max(max_k noise, eps_f32) at all but 1% of steps

    over the loss and every parameter and buffer. ``torch_module``/``torch_step`` are
    the float32 run that goes on free-running; ``torch_twin(dtype)`` builds a fresh copy
    of your torch setup in ``dtype`` (``torch.float64`` for the reference,
    ``torch.float32`` for the noise probe); its optimizer receives torch-float32's
    ``state_dict`` every step (param groups, so the scheduled lr, come with it: a
    scheduler stepped after ``optimizer.step()`` needs no transfer). ``jax_load`` puts
    torch-float32's state into your JAX state. Passing ``tolerance=`` with float32
    compares free-running instead (a smoke test at your tolerance).

    Args:
      torch_module: the torch model, already holding the starting weights.
      torch_step: ``batch -> loss`` (a float or 0-d tensor), one training step.
      jax_state: whatever your JAX step carries (params, optimizer state, ...), starting
        from the same weights.
      jax_step: ``(state, batch) -> (state, loss)``.
      batches: the batches, in order (both sides get the same ones), from step 0.
      jax_variables: ``state -> variables`` to compare: a linen variables dict
        (``{"params": ..., "batch_stats": ...}``) or an ``nnx.Module``.
      torch_batch, jax_batch: per-framework views of a batch (layouts, tensors);
        default: the batch itself.
      torch_optimizer, jax_opt_state: compare optimizer states too (``jax_opt_state``:
        ``state -> the jaxreg.optim state``); float32 needs them to move the state.
      dtype: ``"float64"`` or ``"float32"``.
      tolerance: a relative tolerance of your own, free-running.
      torch_twin: float32: ``dtype -> (module, optimizer, step)``, a fresh torch setup in
        ``dtype`` whose ``step`` takes a batch as ``batches`` yields it.
      jax_load: float32: ``(jax_state, variables, opt_state) -> jax_state`` with
        ``variables`` shaped as ``jax_variables(jax_state)`` and ``opt_state`` as
        ``jax_opt_state(jax_state)``, both holding torch-float32's values.
      reorder: float32: ``(batch, permutation) -> batch`` for the noise probe; default:
        index every array of a tuple/list batch (or an array batch) along axis 0. Your
        step must not depend on the order of the examples in a batch (a mean loss).
      rename, flatten, example_input: for the module map (:func:`parity.convert.module_map`).

    Returns:
      A :class:`CompareReport` (``.passed``, ``.divergence``, ``.summary()``,
      ``.write(out)``).

    Raises:
      ValueError: for an unknown dtype; float32 without ``torch_twin``, ``jax_load``,
        ``torch_optimizer`` and ``jax_opt_state`` (and no ``tolerance``); a twin whose
        dtype or optimizer type is not the run's; a batch the default ``reorder`` cannot
        permute; or a model the module map cannot pair (naming every module that did
        not fit).
    """
    if dtype not in ("float64", "float32"):
        raise ValueError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
    torch_batch = torch_batch or (lambda b: b)
    jax_batch = jax_batch or (lambda b: b)
    forced = dtype == "float32" and tolerance is None
    if forced:
        missing = [
            name
            for name, v in (
                ("torch_twin", torch_twin),
                ("jax_load", jax_load),
                ("torch_optimizer", torch_optimizer),
                ("jax_opt_state", jax_opt_state),
            )
            if v is None
        ]
        if missing:
            raise ValueError(
                "compare(dtype='float32') judges teacher-forced against a float64 twin and "
                f"needs {', '.join(missing)} (see the docstring); or pass tolerance= to "
                "compare free-running at a tolerance of your own"
            )
    mm = convert.module_map(
        torch_module, jax_variables(jax_state), rename=rename, flatten=flatten,
        example_input=example_input,
    )  # fmt: skip
    if forced:
        return _compare_forced(
            mm, torch_module, torch_step, torch_optimizer, torch_twin, jax_state, jax_step,
            jax_variables, jax_opt_state, jax_load, batches, torch_batch, jax_batch,
            reorder or _reorder,
        )  # fmt: skip
    tol = TOLERANCES[dtype] if tolerance is None else float(tolerance)
    param_of = {id(p): n for n, p in torch_module.named_parameters()}
    steps: list[StepDiff] = []
    leaf_max: dict[str, float] = {}
    divergence = None
    for k, batch in enumerate(batches):
        lt = _loss(torch_step(torch_batch(batch)))
        jax_state, lj = jax_step(jax_state, jax_batch(batch))
        lj = float(lj)
        dloss = _loss_diff(lj, lt)
        worst, worst_leaf = _worst(
            _jax_snapshot(mm, jax_variables(jax_state)),
            _torch_snapshot(mm, torch_module.state_dict()),
            leaf_max,
        )
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


def _compare_forced(
    mm, torch_module, torch_step, torch_optimizer, torch_twin, jax_state, jax_step,
    jax_variables, jax_opt_state, jax_load, batches, torch_batch, jax_batch, reorder,
):  # fmt: skip
    """The teacher-forced float32 comparison (see :func:`compare`)."""
    import torch

    import jaxreg

    twins = {}
    for dt in (torch.float64, torch.float32):
        module, optimizer, step = torch_twin(dt)
        dtypes = {p.dtype for p in module.parameters()}
        if dtypes != {dt}:
            raise ValueError(f"torch_twin({dt}) returned a module with parameters of {dtypes}")
        if type(optimizer) is not type(torch_optimizer):
            raise ValueError(
                f"torch_twin({dt}) returned a {type(optimizer).__name__}, the run uses a "
                f"{type(torch_optimizer).__name__}"
            )
        twins[dt] = (module, optimizer, step)
    rng = np.random.default_rng(1)
    steps: list[StepDiff] = []
    leaf_max: dict[str, float] = {}
    noises: list[float] = []
    for k, batch in enumerate(batches):
        sd = {key: v.detach().clone() for key, v in torch_module.state_dict().items()}
        osd = clone_optimizer_state(torch_optimizer.state_dict())
        l64, ref = _twin_step(twins[torch.float64], sd, osd, batch, mm)
        # JAX-float32 from the same state
        variables = convert._load_flax(mm, sd, jax_variables(jax_state))
        template = _fixed_init(jax_opt_state(jax_state))
        opt_state = jaxreg.optim.state_from_torch(
            torch_optimizer, template,
            _params_of(variables), step=k, module=torch_module, to_jax=mm.state_to_jax,
        )  # fmt: skip
        jax_state, lj = jax_step(jax_load(jax_state, variables, opt_state), jax_batch(batch))
        lj = float(lj)
        err, worst_leaf = _worst(_jax_snapshot(mm, jax_variables(jax_state)), ref, leaf_max)
        dloss = _loss_diff(lj, l64)
        # float32's own noise: torch-float32 on reordered batches, then its own step
        n = _batch_len(batch)
        runs = [
            _twin_step(twins[torch.float32], sd, osd, reorder(batch, perm), mm)
            for perm in (np.arange(n)[::-1].copy(), rng.permutation(n))
        ]
        lt = _loss(torch_step(torch_batch(batch)))
        runs.append((lt, _torch_snapshot(mm, torch_module.state_dict())))
        noise = max(max(_loss_diff(loss, l64), _worst(snap, ref)[0]) for loss, snap in runs)
        noises.append(noise)
        steps.append(StepDiff(k, l64, lj, dloss, err, worst_leaf, noise=noise))
    tol = f32_tolerance(noises)
    exceeding = [s.step for s in steps if not max(s.dloss, s.dparam) <= tol]
    divergence = None
    if len(exceeding) > f32_allowed(len(steps)):
        first = steps[exceeding[0]]
        if first.dloss > first.dparam:
            divergence = (first.step, f"loss ({first.dloss:.2e})")
        else:
            divergence = (first.step, f"{first.worst_leaf} ({first.dparam:.2e})")
    return CompareReport(steps, "float32", tol, divergence, leaf_max, jax_state,
                         "teacher-forced", exceeding)  # fmt: skip


def _twin_step(twin, sd, osd, batch, mm) -> tuple[float, dict[str, np.ndarray]]:
    """One step of a torch twin ``(module, optimizer, step)`` from the state ``sd``/``osd``
    (``load_state_dict`` casts to the twin's dtype): its loss and its variables."""
    module, optimizer, step = twin
    module.load_state_dict(sd)
    # a copy: load_state_dict keeps same-dtype state tensors by reference
    optimizer.load_state_dict(clone_optimizer_state(osd))
    return _loss(step(batch)), _torch_snapshot(mm, module.state_dict())


def _fixed_init(opt_state: Any) -> Any:
    """A transform whose ``init`` returns ``opt_state``: the structure
    ``jaxreg.optim.state_from_torch`` fills (the user's own chain, whatever it is)."""
    import optax

    return optax.GradientTransformation(lambda _: opt_state, None)


def _loss(value: Any) -> float:
    """A loss as returned (float or 0-d tensor) as a float."""
    return float(value.detach() if hasattr(value, "detach") else value)


def _loss_diff(a: float, b: float) -> float:
    if not (math.isfinite(a) and math.isfinite(b)):
        return 0.0 if a == b else math.inf
    return abs(a - b) / max(abs(b), 1e-300)


def _torch_snapshot(mm: Any, sd: dict[str, Any]) -> dict[str, np.ndarray]:
    """Every tensor of a torch ``state_dict`` in its Flax leaves' layout, by Flax path."""
    return {
        "/".join(path): arr
        for lm in mm.leaves
        for path, arr in zip(lm.flax_paths, lm.to_flax(convert._np(sd[lm.torch_key])))
    }


def _jax_snapshot(mm: Any, variables: Any) -> dict[str, Any]:
    """The Flax leaves the module map pairs, by Flax path."""
    mods, _ = convert._flax_modules(variables)
    return {
        "/".join(path): mods[path[1:-1]][path[-1]][1] for lm in mm.leaves for path in lm.flax_paths
    }


def _worst(got: dict[str, Any], ref: dict[str, Any], leaf_max: dict | None = None):
    """``(largest rel_diff, its leaf)`` over ``ref``'s leaves, recording each in
    ``leaf_max``."""
    worst, worst_leaf = 0.0, ""
    for name, r in ref.items():
        d = rel_diff(got[name], r)
        if leaf_max is not None:
            leaf_max[name] = max(leaf_max.get(name, 0.0), d)
        if d > worst or not worst_leaf:
            worst, worst_leaf = d, name
    return worst, worst_leaf


def _params_of(variables: Any) -> Any:
    """The parameter tree of linen variables or of an nnx module."""
    if hasattr(variables, "items") and "params" in variables:
        return variables["params"]
    from flax import nnx

    return nnx.state(variables, nnx.Param)


def _batch_len(batch: Any) -> int:
    first = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
    if np.ndim(first) < 1:
        raise ValueError(
            "compare(dtype='float32'): cannot tell the batch size of this batch for the "
            "noise probe; pass batches as arrays or tuples of arrays (examples on axis 0)"
        )
    return len(first)


def _reorder(batch: Any, perm: np.ndarray) -> Any:
    """The default ``reorder``: every array of a tuple/list batch along axis 0."""
    if isinstance(batch, (tuple, list)):
        if not all(np.ndim(a) >= 1 and len(a) == len(perm) for a in batch):
            raise ValueError(
                "compare(dtype='float32'): the default reorder needs every element of a "
                "tuple/list batch to hold the examples on axis 0; pass reorder="
            )
        return type(batch)(np.asarray(a)[perm] for a in batch)
    return np.asarray(batch)[perm]


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
                if (
                    key not in fields
                    or not hasattr(value, "shape")
                    or tuple(value.shape) != tuple(p.shape)
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
