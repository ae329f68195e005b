"""``torch.optim.lr_scheduler`` as Optax schedules.

Each function is the snake_case name of a torch scheduler class and returns a schedule
``count -> lr`` whose value at ``count = k`` is torch's ``scheduler.get_last_lr()``
after ``k`` calls of ``scheduler.step()`` -- the lr that torch's ``optimizer.step()``
number ``k + 1`` uses. Pass it as the ``lr`` of any ``jaxreg.optim`` optimizer (which
evaluates it at its own step count, as torch steps the scheduler once per
``optimizer.step()``).

Arguments: the optimizer's ``lr`` first (torch reads it from the param group), then the
scheduler's own arguments with torch's names and defaults. ``OneCycleLR`` (``max_lr``)
and ``CyclicLR`` (``base_lr``, ``max_lr``) set the lr themselves and take those instead.

torch computes most schedules *recursively* (each lr from the previous one); these are
the closed forms of the same sequences, equal to torch's to float64 round-off (tested
≤ 1e-12 relative per step over several cycles). Call them with x64 enabled for that;
in float32 they are float32 schedules. Anything not covered here (a scheduler subclass,
``ReduceLROnPlateau``, a custom chain): :func:`schedule_from_torch` records a live
torch scheduler's lrs into an exact table.

Example:
  >>> import jax.numpy as jnp
  >>> from jaxreg.optim import lr_scheduler
  >>> s = lr_scheduler.step_lr(0.1, step_size=2, gamma=0.5)
  >>> [round(float(s(k)), 6) for k in range(5)]
  [0.1, 0.1, 0.05, 0.05, 0.025]
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxreg._validate import default_float_dtype

__all__ = [
    "step_lr",
    "multi_step_lr",
    "constant_lr",
    "linear_lr",
    "exponential_lr",
    "polynomial_lr",
    "cosine_annealing_lr",
    "cosine_annealing_warm_restarts",
    "one_cycle_lr",
    "one_cycle_momentum",
    "cyclic_lr",
    "cyclic_momentum",
    "lambda_lr",
    "multiplicative_lr",
    "sequential_lr",
    "chained_scheduler",
    "schedule_from_torch",
    "reduce_lr_on_plateau",
    "PlateauState",
]

Schedule = Callable[[Any], jax.Array]


class _TorchSchedule:
    """A schedule that remembers what it reproduces.

    ``factor(k)``, when set, is the schedule divided by its ``lr`` as torch's chainable
    form multiplies it into the param group's lr (what :func:`chained_scheduler`
    composes); ``None`` for schedules that set the lr outright.
    """

    def __init__(self, name: str, lr: float, fn: Callable[[jax.Array], jax.Array], factor=None):
        self.name, self.lr, self._fn, self.factor = name, lr, fn, factor

    def __call__(self, count: Any) -> jax.Array:
        return self._fn(_k(count))

    def __repr__(self) -> str:
        return f"lr_scheduler.{self.name}"


def _k(count: Any) -> jax.Array:
    """The step count as a float of JAX's default float dtype (float64 under x64)."""
    return jnp.asarray(count).astype(default_float_dtype())


def _div(a: Any, b: float, k: jax.Array) -> jax.Array:
    """``a / b`` rounded as IEEE division, also for a constant ``b`` under ``jit``.

    XLA:CPU rewrites a division by a constant into a multiplication by its reciprocal
    (``k / 50`` becomes ``k * 0.02``) and LLVM may fuse that with a following add:
    ``1 - 50 / 50`` then comes out as -2.1e-17, and ``(1 - k / T) ** p`` as NaN. torch
    divides in Python double; ``b + 0 * k`` is not a constant, so XLA keeps the division.
    """
    return a / (b + k * 0.0)


def _pos_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _lr(value: Any, name: str = "lr") -> float:
    if isinstance(value, (str, bytes)) or callable(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    x = float(value)
    if not math.isfinite(x) or x < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return x


def _multiplicative(name: str, lr: float, factor: Callable[[jax.Array], jax.Array]):
    return _TorchSchedule(name, lr, lambda k: lr * factor(k), factor)


def step_lr(lr: float, step_size: int, gamma: float = 0.1) -> Schedule:
    """``StepLR``: ``lr * gamma ** (k // step_size)``."""
    lr, step_size = _lr(lr), _pos_int("step_size", step_size)
    return _multiplicative("step_lr", lr, lambda k: gamma ** jnp.floor(_div(k, step_size, k)))


def multi_step_lr(lr: float, milestones: Sequence[int], gamma: float = 0.1) -> Schedule:
    """``MultiStepLR``: ``lr * gamma ** (number of milestones <= k)`` (a milestone given
    twice counts twice, as torch's ``Counter``)."""
    lr = _lr(lr)
    ms = sorted(int(m) for m in milestones)

    def factor(k):
        n = sum((k >= m).astype(k.dtype) for m in ms) if ms else jnp.zeros_like(k)
        return gamma**n

    return _multiplicative("multi_step_lr", lr, factor)


def constant_lr(lr: float, factor: float = 1.0 / 3, total_iters: int = 5) -> Schedule:
    """``ConstantLR``: ``lr * factor`` for ``k < total_iters``, then ``lr``."""
    lr = _lr(lr)
    if factor > 1.0 or factor < 0:
        raise ValueError("Constant multiplicative factor expected to be between 0 and 1.")
    return _multiplicative(
        "constant_lr", lr, lambda k: jnp.where(k < total_iters, factor, 1.0).astype(k.dtype)
    )


def linear_lr(
    lr: float, start_factor: float = 1.0 / 3, end_factor: float = 1.0, total_iters: int = 5
) -> Schedule:
    """``LinearLR``: ``lr * (start + (end - start) * min(k, total_iters) / total_iters)``."""
    lr = _lr(lr)
    if start_factor > 1.0 or start_factor <= 0:
        raise ValueError(
            "Starting multiplicative factor expected to be greater than 0 and less or equal to 1."
        )
    if end_factor > 1.0 or end_factor < 0:
        raise ValueError("Ending multiplicative factor expected to be between 0 and 1.")
    total = _pos_int("total_iters", total_iters)

    def factor(k):
        return start_factor + _div((end_factor - start_factor) * jnp.minimum(total, k), total, k)

    return _multiplicative("linear_lr", lr, factor)


def exponential_lr(lr: float, gamma: float) -> Schedule:
    """``ExponentialLR``: ``lr * gamma ** k``."""
    return _multiplicative("exponential_lr", _lr(lr), lambda k: gamma**k)


def polynomial_lr(lr: float, total_iters: int = 5, power: float = 1.0) -> Schedule:
    """``PolynomialLR``: ``lr * (1 - min(k, total_iters) / total_iters) ** power``."""
    total = _pos_int("total_iters", total_iters)
    return _multiplicative(
        "polynomial_lr", _lr(lr), lambda k: (1.0 - _div(jnp.minimum(total, k), total, k)) ** power
    )


def cosine_annealing_lr(lr: float, T_max: int, eta_min: float = 0.0) -> Schedule:  # noqa: N803
    """``CosineAnnealingLR``: ``eta_min + (lr - eta_min) * (1 + cos(pi * k / T_max)) / 2``.

    For every ``k``: past ``T_max`` torch's schedule rises again (period ``2 * T_max``),
    and so does this one (``optax.cosine_decay_schedule`` stays at its minimum).
    """
    lr, T_max = _lr(lr), _pos_int("T_max", T_max)
    eta_min = float(eta_min)
    return _TorchSchedule(
        "cosine_annealing_lr",
        lr,
        lambda k: eta_min + (lr - eta_min) * (1 + jnp.cos(_div(math.pi * k, T_max, k))) / 2,
    )


def cosine_annealing_warm_restarts(
    lr: float,
    T_0: int,  # noqa: N803
    T_mult: int = 1,  # noqa: N803
    eta_min: float = 0.0,
) -> Schedule:
    """``CosineAnnealingWarmRestarts``: cosine from ``lr`` to ``eta_min`` over ``T_i``
    steps, then restart; ``T_i = T_0 * T_mult ** i`` for the i-th cycle.

    ``eta_min + (lr - eta_min) * (1 + cos(pi * T_cur / T_i)) / 2``, ``T_cur`` the steps
    since the last restart.
    """
    lr = _lr(lr)
    T_0 = _pos_int("T_0", T_0)
    if isinstance(T_mult, bool) or not isinstance(T_mult, int) or T_mult < 1:
        raise ValueError(f"Expected integer T_mult >= 1, but got {T_mult}")
    eta_min = float(eta_min)

    def fn(k):
        if T_mult == 1:
            t_cur, t_i = jnp.mod(k, T_0), jnp.asarray(float(T_0), k.dtype)
        else:
            # cycle n starts at T_0 * (T_mult**n - 1) / (T_mult - 1); all exact integers
            def start(n):
                return _div(T_0 * (T_mult**n - 1), T_mult - 1, k)

            n = jnp.floor(_div(jnp.log(_div(k, T_0, k) * (T_mult - 1) + 1), math.log(T_mult), k))
            n = jnp.where(k < start(n), n - 1, n)  # the log may land one cycle off
            n = jnp.where(k >= start(n + 1), n + 1, n)
            t_cur, t_i = k - start(n), T_0 * T_mult**n
        return eta_min + (lr - eta_min) * (1 + jnp.cos(_div(math.pi * t_cur, t_i, k))) / 2

    return _TorchSchedule("cosine_annealing_warm_restarts", lr, fn)


def _anneal(strategy: str, start, end, pct):
    if strategy == "cos":
        return end + (start - end) / 2.0 * (jnp.cos(math.pi * pct) + 1)
    return (end - start) * pct + start


def _one_cycle_phases(total_steps, pct_start, three_phase):
    """torch's phases: ``(end_step, lr start, lr end, momentum start, momentum end)``."""
    if three_phase:
        return [
            (float(pct_start * total_steps) - 1, "initial", "max", "max_m", "base_m"),
            (float(2 * pct_start * total_steps) - 2, "max", "initial", "base_m", "max_m"),
            (total_steps - 1, "initial", "min", "max_m", "max_m"),
        ]
    return [
        (float(pct_start * total_steps) - 1, "initial", "max", "max_m", "base_m"),
        (total_steps - 1, "max", "min", "base_m", "max_m"),
    ]


def _one_cycle_total(total_steps, epochs, steps_per_epoch, pct_start, anneal_strategy) -> int:
    if total_steps is not None:
        total = _pos_int("total_steps", total_steps)
    elif epochs is not None and steps_per_epoch is not None:
        total = _pos_int("epochs", epochs) * _pos_int("steps_per_epoch", steps_per_epoch)
    else:
        raise ValueError("You must define either total_steps OR (epochs AND steps_per_epoch)")
    if not isinstance(pct_start, float) or not 0 <= pct_start <= 1:
        raise ValueError(f"Expected float between 0 and 1 pct_start, but got {pct_start}")
    if anneal_strategy not in ("cos", "linear"):
        raise ValueError(
            f"anneal_strategy must be one of 'cos' or 'linear', instead got {anneal_strategy}"
        )
    return total


def _one_cycle_fn(phases, level, which, anneal_strategy):
    """The piecewise anneal over torch's phases; ``which`` picks lr (1) or momentum (3)."""

    def fn(k):
        out = jnp.zeros_like(k)
        chosen = jnp.zeros(k.shape, bool)
        start_step = 0.0
        for i, phase in enumerate(phases):
            end_step, a, b = phase[0], phase[which], phase[which + 1]
            here = (k <= end_step) if i < len(phases) - 1 else jnp.ones(k.shape, bool)
            pct = _div(k - start_step, end_step - start_step, k)
            value = _anneal(anneal_strategy, level[a], level[b], pct)
            out = jnp.where(here & ~chosen, value, out)
            chosen = chosen | here
            start_step = end_step
        return out

    return fn


def one_cycle_lr(
    max_lr: float,
    total_steps: int | None = None,
    epochs: int | None = None,
    steps_per_epoch: int | None = None,
    pct_start: float = 0.3,
    anneal_strategy: str = "cos",
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    three_phase: bool = False,
) -> Schedule:
    """``OneCycleLR``'s lr: from ``max_lr / div_factor`` up to ``max_lr`` over
    ``pct_start`` of the steps, then down to ``initial / final_div_factor`` (three
    phases: up, back down to the initial lr, then to the minimum).

    Each phase anneals by ``cos`` (``end + (start - end) / 2 * (cos(pi * pct) + 1)``) or
    ``linear``, ``pct`` the fraction of the phase done, as torch. torch raises past
    ``total_steps``; this schedule extends the last phase's formula there. torch's
    ``cycle_momentum=True`` (its default) also cycles the momentum (SGD) or
    ``betas[0]`` (Adam): give :func:`one_cycle_momentum` to the optimizer for that.
    """
    max_lr = _lr(max_lr, "max_lr")
    total = _one_cycle_total(total_steps, epochs, steps_per_epoch, pct_start, anneal_strategy)
    initial = max_lr / div_factor
    level = {"initial": initial, "max": max_lr, "min": initial / final_div_factor}
    phases = _one_cycle_phases(total, pct_start, three_phase)
    fn = _one_cycle_fn(phases, level, 1, anneal_strategy)
    return _TorchSchedule("one_cycle_lr", initial, fn)


def one_cycle_momentum(
    total_steps: int | None = None,
    epochs: int | None = None,
    steps_per_epoch: int | None = None,
    pct_start: float = 0.3,
    anneal_strategy: str = "cos",
    base_momentum: float = 0.85,
    max_momentum: float = 0.95,
    three_phase: bool = False,
) -> Schedule:
    """The momentum ``OneCycleLR(cycle_momentum=True)`` sets: from ``max_momentum`` down to
    ``base_momentum`` while the lr rises, back up while it falls (same phases and anneal as
    :func:`one_cycle_lr`). Give it as ``jaxreg.optim.sgd(momentum=...)`` or as
    ``betas=(schedule, beta2)`` of ``adam``/``adamw``."""
    total = _one_cycle_total(total_steps, epochs, steps_per_epoch, pct_start, anneal_strategy)
    level = {"base_m": float(base_momentum), "max_m": float(max_momentum)}
    phases = _one_cycle_phases(total, pct_start, three_phase)
    return _TorchSchedule(
        "one_cycle_momentum", float(max_momentum), _one_cycle_fn(phases, level, 3, anneal_strategy)
    )


def cyclic_lr(
    base_lr: float,
    max_lr: float,
    step_size_up: int = 2000,
    step_size_down: int | None = None,
    mode: str = "triangular",
    gamma: float = 1.0,
    scale_fn: Callable[[jax.Array], jax.Array] | None = None,
    scale_mode: str = "cycle",
) -> Schedule:
    """``CyclicLR``'s lr: triangles between ``base_lr`` and ``max_lr``.

    torch: ``cycle = floor(1 + k / total)``, ``x = 1 + k / total - cycle``, the height
    ``x / ratio`` going up and ``(x - 1) / (ratio - 1)`` going down, scaled by
    ``scale_fn(cycle)`` (``"triangular"``: 1, ``"triangular2"``: ``1 / 2 ** (cycle - 1)``)
    or ``scale_fn(k)`` (``"exp_range"``: ``gamma ** k``). A custom ``scale_fn`` must be
    traceable (``jnp`` operations) and gets a float array. torch's
    ``cycle_momentum=True`` (its default) also cycles the momentum: see
    :func:`cyclic_momentum`.
    """
    base_lr, max_lr = _lr(base_lr, "base_lr"), _lr(max_lr, "max_lr")
    total, ratio, scale_fn, scale_mode = _cyclic_setup(
        step_size_up, step_size_down, mode, gamma, scale_fn, scale_mode
    )

    def fn(k):
        factor, scale = _cyclic(k, total, ratio, scale_fn, scale_mode)
        return base_lr + (max_lr - base_lr) * factor * scale

    return _TorchSchedule("cyclic_lr", base_lr, fn)


def _cyclic(k, total, ratio, scale_fn, scale_mode):
    """torch CyclicLR's ``scale_factor`` and ``scale_fn(...)`` at step ``k``."""
    cycle = jnp.floor(1 + _div(k, total, k))
    x = 1.0 + _div(k, total, k) - cycle
    factor = jnp.where(x <= ratio, _div(x, ratio, k), _div(x - 1, ratio - 1, k))
    return factor, scale_fn(cycle if scale_mode == "cycle" else k)


def _cyclic_setup(step_size_up, step_size_down, mode, gamma, scale_fn, scale_mode):
    up = float(_pos_int("step_size_up", step_size_up))
    down = float(_pos_int("step_size_down", step_size_down)) if step_size_down else up
    if scale_fn is None:
        if mode == "triangular":
            scale_fn, scale_mode = (lambda x: jnp.ones_like(x)), "cycle"
        elif mode == "triangular2":
            scale_fn, scale_mode = (lambda x: 1 / (2.0 ** (x - 1))), "cycle"
        elif mode == "exp_range":
            scale_fn, scale_mode = (lambda x: gamma**x), "iterations"
        else:
            raise ValueError("mode is invalid and scale_fn is None")
    if scale_mode not in ("cycle", "iterations"):
        raise ValueError(f"scale_mode must be 'cycle' or 'iterations', got {scale_mode!r}")
    return up + down, up / (up + down), scale_fn, scale_mode


def cyclic_momentum(
    step_size_up: int = 2000,
    step_size_down: int | None = None,
    mode: str = "triangular",
    gamma: float = 1.0,
    scale_fn: Callable[[jax.Array], jax.Array] | None = None,
    scale_mode: str = "cycle",
    base_momentum: float = 0.8,
    max_momentum: float = 0.9,
) -> Schedule:
    """The momentum ``CyclicLR(cycle_momentum=True)`` sets: ``max_momentum - (max_momentum
    - base_momentum) * height * scale``, falling while the lr rises (same cycle arguments
    as :func:`cyclic_lr`). Give it as ``sgd(momentum=...)`` or ``betas=(schedule, beta2)``."""
    total, ratio, scale_fn, scale_mode = _cyclic_setup(
        step_size_up, step_size_down, mode, gamma, scale_fn, scale_mode
    )
    lo, hi = float(base_momentum), float(max_momentum)

    def fn(k):
        factor, scale = _cyclic(k, total, ratio, scale_fn, scale_mode)
        return hi - (hi - lo) * factor * scale

    return _TorchSchedule("cyclic_momentum", hi, fn)


def lambda_lr(lr: float, lr_lambda: Callable[[jax.Array], Any]) -> Schedule:
    """``LambdaLR``: ``lr * lr_lambda(k)``.

    ``lr_lambda`` gets the step count as a float array and must be traceable: write
    ``jnp.minimum(1.0, k / 100)`` where the torch lambda has ``min(1.0, k / 100)``.
    """
    lr = _lr(lr)
    return _TorchSchedule("lambda_lr", lr, lambda k: lr * lr_lambda(k))


def multiplicative_lr(lr: float, lr_lambda: Callable[[jax.Array], Any]) -> Schedule:
    """``MultiplicativeLR``: ``lr * prod(lr_lambda(j) for j in 1..k)``.

    ``lr_lambda`` must be traceable (see :func:`lambda_lr`); the product is a loop of
    ``k`` iterations per evaluation.
    """
    lr = _lr(lr)

    def factor(k):
        def body(j, acc):
            return acc * jnp.asarray(lr_lambda(j.astype(k.dtype)), k.dtype)

        return jax.lax.fori_loop(1, k.astype(jnp.int32) + 1, body, jnp.ones_like(k))

    return _multiplicative("multiplicative_lr", lr, factor)


def sequential_lr(schedulers: Sequence[Schedule], milestones: Sequence[int]) -> Schedule:
    """``SequentialLR``: ``schedulers[i]`` from ``milestones[i - 1]`` on, its own count
    restarting at 0 there (torch calls the next scheduler's closed form at epoch 0).

    Example -- linear warm-up for 5 steps, then cosine over 95 (torch:
    ``SequentialLR(opt, [LinearLR(opt, 0.1, total_iters=5), CosineAnnealingLR(opt, 95)],
    milestones=[5])``)::

        sequential_lr([linear_lr(lr, 0.1, total_iters=5), cosine_annealing_lr(lr, 95)], [5])
    """
    scheds, ms = list(schedulers), [int(m) for m in milestones]
    if not scheds:
        raise ValueError("SequentialLR expects at least one scheduler, but got no scheduler.")
    if len(ms) != len(scheds) - 1:
        raise ValueError(
            "Sequential Schedulers expects number of schedulers provided to be one more than "
            f"the number of milestone points, but got number of schedulers {len(scheds)} and "
            f"the number of milestones to be equal to {len(ms)}"
        )
    for s in scheds:
        if not callable(s):
            raise ValueError(f"sequential_lr takes schedules (callables), got {s!r}")

    def fn(k):
        out = scheds[0](k)
        for m, s in zip(ms, scheds[1:]):
            out = jnp.where(k >= m, s(k - m), out)
        return out

    return _TorchSchedule("sequential_lr", getattr(scheds[0], "lr", None), fn)


def chained_scheduler(schedulers: Sequence[Schedule]) -> Schedule:
    """``ChainedScheduler``: every scheduler steps the same lr, each multiplying it by its
    own factor: ``lr * prod(s(k) / lr for s in schedulers)``.

    That is what torch computes for its multiplicative schedulers (``step_lr``,
    ``multi_step_lr``, ``constant_lr``, ``linear_lr``, ``exponential_lr``,
    ``polynomial_lr``, ``multiplicative_lr``), all built on the same ``lr``. A scheduler
    that sets the lr outright (cosine, cyclic, one-cycle, lambda, warm restarts) does not
    compose by a formula of ``k`` alone in torch's chain: record the chain with
    :func:`schedule_from_torch` instead.

    Raises:
      ValueError: a scheduler is not one of the multiplicative ones, or their ``lr``
        differ.
    """
    scheds = list(schedulers)
    if not scheds:
        raise ValueError("ChainedScheduler expects at least one scheduler to be chained")
    bad = [s for s in scheds if getattr(s, "factor", None) is None]
    if bad:
        raise ValueError(
            f"chained_scheduler: {bad} set the lr outright, which torch's chain does not "
            "compose by a closed form; use schedule_from_torch(chained, num_steps)"
        )
    lrs = {s.lr for s in scheds}
    if len(lrs) != 1:
        raise ValueError(f"chained_scheduler: the schedulers have different lr values {lrs}")
    lr = lrs.pop()

    def factor(k):
        out = jnp.ones_like(k)
        for s in scheds:
            out = out * s.factor(k)
        return out

    return _multiplicative("chained_scheduler", lr, factor)


def schedule_from_torch(scheduler: Any, num_steps: int, group: int = 0) -> Schedule:
    """Record a live torch LR scheduler's lrs into an exact table schedule.

    Steps a *copy* of the scheduler's position ``num_steps`` times (the scheduler and
    its optimizer's param groups are restored afterwards) and returns the schedule whose
    value at ``k`` is the recorded ``get_last_lr()[group]`` after ``k`` steps, for
    ``0 <= k <= num_steps``. Any scheduler works (subclasses, ``ChainedScheduler`` of
    anything, ``SequentialLR``, Python lambdas); ``ReduceLROnPlateau`` needs metrics
    and is refused. Past ``num_steps`` the schedule is NaN, so a run longer than the
    recording fails loudly instead of reusing the last lr.

    Args:
      scheduler: a torch ``LRScheduler`` in its current state (usually just built).
      num_steps: how many ``scheduler.step()`` calls to record.
      group: which param group's lr.

    Returns:
      A schedule ``count -> lr``.
    """
    num_steps = _pos_int("num_steps", num_steps)
    if type(scheduler).__name__ == "ReduceLROnPlateau":
        raise ValueError("schedule_from_torch: ReduceLROnPlateau depends on metrics, not steps")
    opt = scheduler.optimizer
    saved_sched = scheduler.state_dict()
    saved_groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    subs = getattr(scheduler, "_schedulers", [])
    saved_subs = [s.state_dict() for s in subs]
    values = [float(scheduler.get_last_lr()[group])]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()"
            for _ in range(num_steps):
                scheduler.step()
                values.append(float(scheduler.get_last_lr()[group]))
    finally:
        scheduler.load_state_dict(saved_sched)
        for s, st in zip(subs, saved_subs):
            s.load_state_dict(st)
        for g, st in zip(opt.param_groups, saved_groups):
            g.update(st)
    table = np.asarray(values + [np.nan])

    def fn(k):
        idx = jnp.clip(k, 0, num_steps + 1).astype(jnp.int32)
        return jnp.asarray(table, k.dtype)[idx]

    return _TorchSchedule(f"schedule_from_torch({type(scheduler).__name__})", values[0], fn)


class PlateauState(NamedTuple):
    """:func:`reduce_lr_on_plateau`'s state; field names are torch's attributes."""

    lr: jax.Array  # the current lr (torch: param_group["lr"])
    best: jax.Array
    num_bad_epochs: jax.Array
    cooldown_counter: jax.Array
    last_epoch: jax.Array  # scheduler.step(metric) calls so far


def reduce_lr_on_plateau(
    lr: float,
    mode: str = "min",
    factor: float = 0.1,
    patience: int = 10,
    threshold: float = 1e-4,
    threshold_mode: str = "rel",
    cooldown: int = 0,
    min_lr: float = 0.0,
    eps: float = 1e-8,
) -> optax.GradientTransformationExtraArgs:
    r"""``ReduceLROnPlateau`` as an Optax transform: chain it *after* the optimizer.

    ``update(updates, state, params, metric=m)`` first does what torch's
    ``scheduler.step(m)`` does, then scales the update by ``state.lr / lr``; without
    ``metric`` it only scales. Pass the metric with the first update after you measured
    it -- where torch calls ``scheduler.step(val_loss)`` between two ``optimizer.step()``
    calls. torch's step::

        better = (metric < best * (1 - threshold)  if mode == "min" and threshold_mode == "rel"
                  metric < best - threshold        if mode == "min" and "abs"
                  metric > best * (1 + threshold)  if mode == "max" and "rel"
                  metric > best + threshold        if mode == "max" and "abs")
        if better: best = metric; num_bad_epochs = 0
        else:      num_bad_epochs += 1
        if cooldown_counter > 0: cooldown_counter -= 1; num_bad_epochs = 0
        if num_bad_epochs > patience:
            new_lr = max(lr * factor, min_lr)
            if lr - new_lr > eps: lr = new_lr
            cooldown_counter = cooldown; num_bad_epochs = 0

    Scaling the update equals running the optimizer at the reduced lr when its update is
    proportional to the lr: SGD (momentum, Nesterov), the Adam family with coupled or
    decoupled decay, RMSprop, Adagrad, Adadelta, Muon. Not for ASGD and Adafactor, whose
    lr enters nonlinearly.

    Args:
      lr: the optimizer's lr (the one its transform was built with).
      mode, factor, patience, threshold, threshold_mode, cooldown, min_lr, eps: torch's.

    Returns:
      A transform whose ``update`` takes an optional ``metric``; its state is a
      :class:`PlateauState` (``state.lr``: torch's ``get_last_lr()[0]``).

    Raises:
      ValueError: as torch (``factor >= 1``, unknown mode or threshold mode), and for a
        negative ``patience``/``cooldown``.
    """
    lr = _lr(lr)
    if factor >= 1.0:
        raise ValueError("Factor should be < 1.0.")
    if mode not in ("min", "max"):
        raise ValueError(f"mode {mode} is unknown!")
    if threshold_mode not in ("rel", "abs"):
        raise ValueError(f"threshold mode {threshold_mode} is unknown!")
    for name, v in (("patience", patience), ("cooldown", cooldown)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be a non-negative int, got {v!r}")

    def is_better(a, best):
        if mode == "min":
            return a < (best * (1.0 - threshold) if threshold_mode == "rel" else best - threshold)
        return a > (best * (threshold + 1.0) if threshold_mode == "rel" else best + threshold)

    def init_fn(params):
        del params
        f = default_float_dtype()
        worse = jnp.inf if mode == "min" else -jnp.inf
        zero = jnp.zeros((), jnp.int32)
        return PlateauState(jnp.asarray(lr, f), jnp.asarray(worse, f), zero, zero, zero)

    def step(state, metric):
        current = jnp.asarray(metric, state.best.dtype)
        better = is_better(current, state.best)
        best = jnp.where(better, current, state.best)
        bad = jnp.where(better, 0, state.num_bad_epochs + 1)
        in_cooldown = state.cooldown_counter > 0
        cool = jnp.where(in_cooldown, state.cooldown_counter - 1, state.cooldown_counter)
        bad = jnp.where(in_cooldown, 0, bad)
        reduce = bad > patience
        new_lr = jnp.maximum(state.lr * factor, min_lr)
        lr_t = jnp.where(reduce & (state.lr - new_lr > eps), new_lr, state.lr)
        cool = jnp.where(reduce, cooldown, cool)
        bad = jnp.where(reduce, 0, bad)
        return PlateauState(lr_t, best, bad, cool, state.last_epoch + 1)

    def update_fn(updates, state, params=None, *, metric=None, **extra):
        del params, extra
        if metric is not None:
            state = step(state, metric)
        scale = state.lr / lr
        out = jax.tree.map(lambda u: u * scale.astype(u.dtype) if jnp.issubdtype(
            u.dtype, jnp.floating) else u, updates)  # fmt: skip
        return out, state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
