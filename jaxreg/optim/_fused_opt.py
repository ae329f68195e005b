"""``fused_sgd`` / ``fused_adamw``: one-pass optimizer steps (torch's ``fused=True``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxreg._decay import ScheduleState
from jaxreg._masked import scaled
from jaxreg._tree import is_float_leaf
from jaxreg._validate import ScalarOrSchedule, constant_float
from jaxreg.masks import MaskLike, resolve_factors
from jaxreg.optim import _common as c
from jaxreg.optim import _fused
from jaxreg.optim._adam import AdamState, adam_step_scalars, adamw
from jaxreg.optim._sgd import SGDState, sgd


class FusedOptimizer(NamedTuple):
    """An optimizer with a fused ``step``; ``tx`` is the same optimizer as Optax.

    ``init(params) -> state`` (the state of ``tx``, so the two are interchangeable, e.g.
    for checkpoints or :func:`jaxreg.optim.state_to_torch`);
    ``step(params, grads, state) -> (params, state)`` -- the whole update, applied;
    ``tx`` -- the unfused ``optax.GradientTransformation``.
    """

    init: Callable[[Any], Any]
    step: Callable[[Any, Any, Any], tuple[Any, Any]]
    tx: optax.GradientTransformation


def _constant(name: str, value: Any) -> float:
    return constant_float(name, value, "fused steps")


def _check_backend() -> None:
    if jax.default_backend() == "cpu" and not _fused.numba_available():
        raise ImportError(
            "fused steps on CPU need numba: pip install 'jaxreg[fused]' (or use the unfused "
            "jaxreg.optim optimizer)"
        )


def _replace(state: Any, cls: type, fn: Callable[[Any], Any]) -> Any:
    """``state`` with every ``cls`` instance in it (chain tuples included) mapped by ``fn``."""
    if isinstance(state, cls):
        return fn(state)
    if type(state) is tuple:
        return tuple(_replace(s, cls, fn) for s in state)
    return state


def _find(state: Any, cls: type) -> Any:
    found = []
    _replace(state, cls, lambda s: found.append(s) or s)
    if len(found) != 1:
        raise ValueError(f"expected one {cls.__name__} in the optimizer state, found {len(found)}")
    return found[0]


def _make(tx, kind, core_cls, hparams, buffers_of, rebuild, weight_decay, mask) -> FusedOptimizer:
    unfused = _make_unfused(tx)

    def fused(params, grads, state):
        core = _find(state, core_cls)
        p_leaves, treedef = jax.tree.flatten(params)
        g_leaves = treedef.flatten_up_to(grads)
        bufs = [treedef.flatten_up_to(b) for b in buffers_of(core)]
        factors = resolve_factors(mask, params)
        out_p, out_b = list(p_leaves), [list(b) for b in bufs]
        hp_values = hparams(core)
        dtypes = sorted({str(x.dtype) for x in p_leaves if is_float_leaf(x)})
        for dtype in dtypes:
            idx = [i for i, x in enumerate(p_leaves) if is_float_leaf(x) and str(x.dtype) == dtype]
            wd = [scaled(weight_decay, factors[i]) for i in idx]
            hp = jnp.concatenate(
                [
                    jnp.stack([jnp.asarray(v).astype(dtype) for v in hp_values]),
                    jnp.asarray(wd, dtype),
                ]
            )
            new_p, new_b = _fused.fused_call(
                kind,
                [p_leaves[i] for i in idx],
                [jnp.asarray(g_leaves[i], dtype) for i in idx],
                [[b[i] for i in idx] for b in bufs],
                hp,
            )
            for j, i in enumerate(idx):
                out_p[i] = new_p[j]
                for s in range(len(bufs)):
                    out_b[s][i] = new_b[s][j]
        if not all(is_float_leaf(x) for x in p_leaves):
            # Leaves the kernel does not take (integers, ...) get exactly the unfused update;
            # the unfused work on the float leaves is dead code and XLA drops it.
            p_unf, s_unf = unfused(params, grads, state)
            p_unf = treedef.flatten_up_to(p_unf)
            b_unf = [treedef.flatten_up_to(b) for b in buffers_of(_find(s_unf, core_cls))]
            for i, x in enumerate(p_leaves):
                if not is_float_leaf(x):
                    out_p[i] = p_unf[i]
                    for k, b in enumerate(b_unf):
                        out_b[k][i] = b[i]
        new_core = rebuild(core, [jax.tree.unflatten(treedef, b) for b in out_b])
        state = _replace(state, core_cls, lambda _: new_core)
        state = _replace(
            state, ScheduleState, lambda s: ScheduleState(optax.safe_increment(s.count))
        )
        return jax.tree.unflatten(treedef, out_p), state

    def step(params, grads, state):
        if not _fused.numba_available():
            return unfused(params, grads, state)
        return jax.lax.platform_dependent(params, grads, state, cpu=fused, default=unfused)

    return FusedOptimizer(tx.init, step, tx)


def fused_sgd(
    lr: ScalarOrSchedule = 1e-3,
    momentum: float = 0,
    dampening: float = 0,
    weight_decay: float = 0,
    nesterov: bool = False,
    *,
    maximize: bool = False,
    weight_decay_mask: MaskLike = None,
) -> FusedOptimizer:
    r"""``torch.optim.SGD(..., fused=True)``: the whole step in one pass over memory.

    The same update as :func:`jaxreg.optim.sgd` (torch's ``_fused_sgd``)::

        g = -grad if maximize else grad;  g = g + weight_decay * p
        buf = g if step == 1 else momentum * buf + (1 - dampening) * g
        p = p - lr * (g + momentum * buf if nesterov else buf)

    computed per element in one loop that reads ``p, grad, buf`` and writes ``p, buf``
    (20 B/param in float32, as torch's fused kernel) instead of XLA:CPU's two loops (28
    B/param with decay). On CPU it is one XLA custom call per dtype for all leaves
    (numba-compiled, needs the ``fused`` extra); elsewhere, and for ``momentum == 0``
    (already one loop in XLA), it is the unfused update. Sharded leaves are updated
    shard by shard (no gather). Donate ``params`` and ``state`` to update in place.

    Args:
      lr: float or Optax schedule (evaluated at the step count, as :func:`sgd`).
      momentum, dampening, weight_decay, nesterov, maximize: as in torch; constants.
      weight_decay_mask: which leaves decay, and multipliers (jaxreg masks).

    Returns:
      A :class:`FusedOptimizer`; its state is :func:`jaxreg.optim.sgd`'s.

    Raises:
      ValueError: as :func:`sgd`, and for a scheduled ``weight_decay``.
      ImportError: on a CPU backend without numba.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxreg import optim
      >>> opt = optim.fused_sgd(lr=0.5, momentum=0.9, weight_decay=0.5)
      >>> p = {"w": jnp.array([1.0])}
      >>> step = jax.jit(opt.step, donate_argnums=(0, 2))
      >>> p, s = step(p, {"w": jnp.array([1.0])}, opt.init(p))
      >>> p["w"].tolist()  # 1 - 0.5 * (1 + 0.5 * 1)
      [0.25]
    """
    weight_decay = _constant("weight_decay", weight_decay)
    tx = sgd(lr, momentum, dampening, weight_decay, nesterov, maximize=maximize,
             weight_decay_mask=weight_decay_mask)  # fmt: skip
    _check_backend()
    if float(momentum) == 0:
        return FusedOptimizer(tx.init, _make_unfused(tx), tx)
    flags = (float(momentum), 1.0 - float(dampening), float(nesterov), float(maximize))

    def hparams(core: SGDState):
        first = (core.count == 0).astype(c.scalar_dtype())
        return [c.lr_at(lr, core.count), flags[0], flags[1], first, flags[2], flags[3]]

    return _make(
        tx,
        "sgd",
        SGDState,
        hparams,
        lambda core: [core.momentum_buffer],
        lambda core, b: SGDState(optax.safe_increment(core.count), b[0]),
        weight_decay,
        weight_decay_mask,
    )


def _make_unfused(tx):
    def step(params, grads, state):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def fused_adamw(
    lr: ScalarOrSchedule = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    *,
    maximize: bool = False,
    weight_decay_mask: MaskLike = None,
) -> FusedOptimizer:
    r"""``torch.optim.AdamW(..., fused=True)``: the whole step in one pass over memory.

    torch's ``_fused_adamw`` per element (``FusedAdamKernel.cpp``, ADAMW mode)::

        g = -grad if maximize else grad
        p = p - lr * weight_decay * p
        m = lerp(m, g, 1 - beta1);  v = beta2 * v + (1 - beta2) * g * g
        p = p - lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    one loop reading ``p, grad, m, v`` and writing ``p, m, v`` (28 B/param in float32)
    instead of XLA:CPU's three (40 B/param). The same state and trajectory as
    :func:`jaxreg.optim.adamw` (no ``amsgrad``). Backends, sharding and donation as
    :func:`fused_sgd`.

    Args:
      lr: float or Optax schedule.
      betas, eps, weight_decay, maximize: as in torch; constants.
      weight_decay_mask: which leaves decay, and multipliers (jaxreg masks).

    Returns:
      A :class:`FusedOptimizer`; its state is :func:`jaxreg.optim.adamw`'s.

    Raises:
      ValueError: as :func:`adamw`, and for a scheduled ``weight_decay`` or betas.
      ImportError: on a CPU backend without numba.
    """
    if c.tensor_lr_dtype(lr) is not None:
        raise ValueError(
            f"fused_adamw takes a float lr, not a {jnp.asarray(lr).dtype} array (a Tensor lr, "
            "whose step scalars torch computes in that dtype): use jaxreg.optim.adamw for that"
        )
    weight_decay = _constant("weight_decay", weight_decay)
    b1, b2 = _constant("betas[0]", betas[0]), _constant("betas[1]", betas[1])
    eps = _constant("eps", eps)
    tx = adamw(lr, (b1, b2), eps, weight_decay, maximize=maximize,
               weight_decay_mask=weight_decay_mask)  # fmt: skip
    _check_backend()

    def hparams(core: AdamState):  # the unfused adamw's scalars, so the two agree exactly
        lr_t, step_size, bc2_sqrt = adam_step_scalars(lr, b1, b2, core.count)
        return [lr_t, b1, 1.0 - b1, b2, 1.0 - b2, eps, step_size, bc2_sqrt, float(maximize)]

    return _make(
        tx,
        "adamw",
        AdamState,
        hparams,
        lambda core: [core.exp_avg, core.exp_avg_sq],
        lambda core, b: AdamState(optax.safe_increment(core.count), b[0], b[1], ()),
        weight_decay,
        weight_decay_mask,
    )
