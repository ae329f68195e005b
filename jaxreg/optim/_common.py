"""Small torch-semantics blocks shared by every ``jaxreg.optim`` optimizer.

* torch-style argument validation (the same bad values rejected, argument named);
* the gradient prelude every torch optimizer runs: ``maximize`` negation, then the
  coupled ``weight_decay`` (``grad.add(param, alpha=weight_decay)``);
* a per-leaf map returning several trees (moments, buffers);
* scalar helpers that compute torch's Python-double scalars accurately in JAX.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.experimental.shard_alike import shard_alike

from jaxreg._decay import add_weight_decay, decoupled_weight_decay
from jaxreg._tree import is_float_leaf, key_str, reject_module
from jaxreg._validate import ScalarOrSchedule, at_count, concrete_float, default_float_dtype
from jaxreg.masks import MaskLike


def check(condition: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``condition`` (torch's ``__init__`` checks)."""
    if not condition:
        raise ValueError(message)


def value_of(x: Any) -> float | None:
    """A concrete hyperparameter as a float; ``None`` for schedules and traced values."""
    if callable(x):
        return None
    try:
        return concrete_float(x)
    except (TypeError, ValueError):
        raise ValueError(
            f"expected a number (float, int, 0-d array) or a schedule, got {type(x).__name__} {x!r}"
        ) from None


def nonneg(name: str, x: Any, message: str | None = None) -> None:
    """torch's ``if not 0.0 <= x: raise ValueError(...)``, skipped for schedules/tracers."""
    v = value_of(x)
    if v is not None:
        check(0.0 <= v, message or f"Invalid {name} value: {x}")
        check(math.isfinite(v), f"Invalid {name} value: {x} (must be finite)")


def check_lr(lr: ScalarOrSchedule, message: str = "Invalid learning rate: {lr}") -> None:
    nonneg("learning rate", lr, message.format(lr=lr))


def check_betas(betas: tuple[float, float]) -> None:
    check(len(tuple(betas)) == 2, f"betas must be a pair, got {betas!r}")
    for i, b in enumerate(betas):
        v = value_of(b)
        if v is not None:
            check(0.0 <= v < 1.0, f"Invalid beta parameter at index {i}: {b}")


def check_kernel_flags(flags: dict[str, Any]) -> None:
    """``foreach``/``fused``/``capturable``/``differentiable`` only pick torch kernels."""
    for name, value in flags.items():
        check(
            value is None or isinstance(value, bool),
            f"{name} must be a bool or None, got {value!r}",
        )


def refuse_differentiable(differentiable: bool, name: str) -> None:
    """Raise for ``differentiable=True`` where it changes torch's numbers (Adam, AdamW,
    NAdam): torch then computes the step's scalars (bias corrections, step size) as
    tensors of its default dtype -- float32 unless set to float64 -- instead of Python
    doubles, 1e-6 to 1e-5 away from the default path after a few dozen steps."""
    if differentiable:
        raise ValueError(
            f"{name}(differentiable=True): torch then computes the bias corrections as "
            "tensors of its default dtype (float32 unless set to float64), which changes its "
            "numbers; jaxreg.optim reproduces torch's default differentiable=False path only"
        )


def prelude(
    maximize: bool, weight_decay: ScalarOrSchedule, mask: MaskLike
) -> list[optax.GradientTransformation]:
    """``grad = -grad if maximize``; then ``grad = grad + weight_decay * param`` (coupled)."""
    out = []
    if maximize:
        out.append(optax.scale(-1.0))
    if callable(weight_decay) or value_of(weight_decay) != 0.0:
        out.append(add_weight_decay(weight_decay, mask=mask))
    return out


def decoupled(
    weight_decay: ScalarOrSchedule, lr: ScalarOrSchedule, mask: MaskLike
) -> list[optax.GradientTransformation]:
    """``param.mul_(1 - lr * weight_decay)`` as a transform chained after the update.

    With a Tensor lr (:func:`tensor_lr_dtype`) torch computes ``1 - lr * weight_decay``
    as a tensor of the lr's dtype; the decay is then ``1 - that`` (exact in float64),
    applied with a unit learning rate.
    """
    if not (callable(weight_decay) or value_of(weight_decay) != 0.0):
        return []
    t = tensor_lr_dtype(lr)
    if t is not None:
        lr_t = jnp.asarray(lr)

        def torch_decay(count):
            wd = at_count(weight_decay, count)
            factor = as_tensor(1 - tensor_mul(lr_t, wd, t), t)  # torch: a tensor of lr's dtype
            return 1 - factor

        return [decoupled_weight_decay(torch_decay, 1.0, mask=mask)]
    return [decoupled_weight_decay(weight_decay, lr, mask=mask)]


def chain(*parts: Any) -> optax.GradientTransformation:
    """``optax.chain`` of the given transforms and lists of transforms (flattened)."""
    flat = []
    for p in parts:
        flat.extend(p if isinstance(p, list) else [p])
    return flat[0] if len(flat) == 1 else optax.chain(*flat)


def scalar_dtype() -> jnp.dtype:
    """The float dtype for torch's Python-double scalars: float64 if x64 is on, else float32."""
    return default_float_dtype()


def tensor_lr_dtype(lr: ScalarOrSchedule) -> Any:
    """The dtype of a Tensor-like lr, or ``None`` for a Python-float lr.

    torch accepts ``lr=torch.tensor(0.001)``; its step then computes the lr's scalars
    (``lr / bias_correction1``, ``1 - lr * weight_decay``, ...) as 0-d tensor operations
    in the tensor's dtype -- float32 for ``torch.tensor(0.001)`` -- not in Python double.
    Its counterpart here is a ``jax.Array`` lr of a float dtype narrower than the scalar
    dtype (``lr=jnp.float32(1e-3)`` under x64): the optimizers then compute those
    scalars in that dtype, as torch does. Any other lr (a float, a schedule, an array of
    the scalar dtype) gives ``None``.
    """
    if callable(lr) or not isinstance(lr, jax.Array):
        return None
    dt = lr.dtype
    if not jnp.issubdtype(dt, jnp.floating):
        return None
    if jnp.finfo(dt).bits >= jnp.finfo(scalar_dtype()).bits:
        return None
    return dt


def torch_scalar_dtype_of(params: Any, requested: Any) -> Any:
    """The dtype of torch's 0-d state tensors (NAdam's ``mu_product``, ASGD's ``eta``/``mu``).

    torch makes them in its default dtype (``torch.get_default_dtype()``): float32, or
    float64 under ``torch.set_default_dtype(torch.float64)`` -- what a float64 torch run
    sets. ``requested=None`` follows the parameters as that run would: float64 if a
    floating leaf is float64 (and x64 is on), else float32; a dtype is taken as given.
    """
    if requested is not None:
        return jnp.dtype(requested)
    wide = any(
        jnp.issubdtype(getattr(x, "dtype", jnp.float32), jnp.floating)
        and jnp.finfo(x.dtype).bits >= 64
        for x in jax.tree.leaves(params)
    )
    return scalar_dtype() if wide else jnp.dtype(jnp.float32)


def as_tensor(x: Any, t: Any) -> Any:
    """``x`` as torch holds it in a 0-d tensor of dtype ``t`` (a Tensor lr's dtype from
    :func:`tensor_lr_dtype`): rounded to ``t``'s precision, kept in the scalar dtype.
    Unchanged for ``t=None`` (a float lr: torch's Python double).

    torch's float32 tensor arithmetic is emulated as "compute in float64, round with
    ``as_tensor``": a float64 +, -, *, / of float32 values rounded once to float32 is
    the float32 result (double rounding is harmless when the wide precision has at least
    2p + 2 bits, 53 >= 50). The rounding is ``lax.reduce_precision``, never a float32
    array: XLA:CPU drops float64 -> float32 -> float64 conversion pairs and contracts a
    float32 ``a * b + c`` into a fused multiply-add, each skipping a rounding that torch
    does (measured: ASGD's ``1 + lambd * lr * step`` one ulp apart at step 21).
    """
    if t is None:
        return x
    fi = jnp.finfo(t)
    wide = jnp.asarray(x).astype(scalar_dtype())
    return jax.lax.reduce_precision(wide, exponent_bits=fi.nexp, mantissa_bits=fi.nmant)


def tensor_mul(a: Any, b: Any, t: Any) -> Any:
    """``a * b`` as torch computes it: Python doubles for a float lr (``t=None``), else a
    0-d tensor multiply in dtype ``t`` (operands and product rounded to ``t``)."""
    if t is None:
        return a * b
    return as_tensor(as_tensor(a, t) * as_tensor(b, t), t)


def tensor_div(a: Any, b: Any, t: Any) -> Any:
    """``a / b`` as torch computes it: Python doubles for a float lr (``t=None``), else a
    0-d tensor division in dtype ``t`` (operands and quotient rounded to ``t``)."""
    if t is None:
        return a / b
    return as_tensor(as_tensor(a, t) / as_tensor(b, t), t)


def step_of(count: jax.Array) -> jax.Array:
    """torch's ``step`` after ``step_t += 1``, as a float: ``count + 1``."""
    return count.astype(scalar_dtype()) + 1


def one_minus_pow(beta: Any, step: jax.Array) -> jax.Array:
    """``1 - beta**step`` as torch computes it in Python double, accurately in any dtype.

    Written as ``-expm1(step * log(beta))`` with ``log(beta)`` taken in Python double for
    a concrete beta, so float32 runs avoid the cancellation in ``1 - beta**step``
    (Optax's ``1 - b**t`` in float32 is off by ~1e-5 relative at ``t = 1`` for b=0.999).
    """
    v = value_of(beta)
    if v is not None:
        if v == 0.0:
            return jnp.ones_like(step)
        log_beta = math.log(v)
    else:
        log_beta = jnp.log(jnp.asarray(beta, step.dtype))
    return -jnp.expm1(step * log_beta)


def lr_at(lr: ScalarOrSchedule, count: jax.Array) -> jax.Array:
    """The learning rate at this step: ``lr(count)`` for a schedule (torch: scheduler
    stepped once after every ``optimizer.step()``), else ``lr``."""
    return jnp.asarray(at_count(lr, count))


def map_leaves(
    fn: Callable[..., tuple], tree: Any, *others: Any, state_from: int = 1
) -> tuple[Any, ...]:
    """Apply ``fn(grad, *other_leaves) -> (update, *new_state)`` per leaf.

    Returns one tree per output. ``(tree, *others)[state_from:]`` are the state trees
    that ``fn``'s outputs after the first replace, in order (inputs before
    ``state_from`` -- the gradient, and the params where the rule reads them -- are not
    returned). That correspondence lets every optimizer treat two cases alike:

    * a leaf whose gradient is not a real floating-point array (an integer counter, a
      boolean flag in the parameter tree) is left alone, as torch never optimizes such a
      tensor: its update is zero and its state is returned unchanged (running the rule
      on it would make ``0 / 0`` NaNs that ``optax.apply_updates`` casts to 0, wiping
      the leaf);
    * an empty tree (an unused label of ``optax.multi_transform``) gives empty trees.

    Raises:
      ValueError: for complex leaves, naming them. torch optimizes a complex tensor as
        its real and imaginary parts (``torch.view_as_real``); jaxreg.optim does not
        reproduce that -- keep such a parameter as a real array of shape ``(..., 2)``.
    """
    for t in (tree, *others):
        reject_module(t, "jaxreg.optim")
    pairs, treedef = jax.tree_util.tree_flatten_with_path(tree)
    leaves = [leaf for _, leaf in pairs]
    complex_paths = [
        "/".join(key_str(k) for k in path)
        for path, leaf in pairs
        if jnp.issubdtype(getattr(leaf, "dtype", jnp.float32), jnp.complexfloating)
    ]
    if complex_paths:
        raise ValueError(
            f"jaxreg.optim does not take complex parameters ({', '.join(complex_paths)}): "
            "torch optimizes a complex tensor as its real and imaginary parts "
            "(torch.view_as_real), which jaxreg.optim does not reproduce; keep the "
            "parameter as a real array of shape (..., 2) (jnp.stack([z.real, z.imag], -1))"
        )
    other_leaves = [treedef.flatten_up_to(o) for o in others]
    holes = sorted(
        {
            "/".join(key_str(k) for k in pairs[i][0])
            for o in other_leaves
            for i, x in enumerate(o)
            if x is None and leaves[i] is not None
        }
    )
    if holes:
        raise ValueError(
            f"jaxreg.optim: the gradient has arrays at {', '.join(holes)} where the params "
            "(or the optimizer state made from them) hold None: updates, state and params "
            "must have the structure of the params given to init"
        )
    n_out = 1 + len(others) + 1 - state_from
    results = []
    for args in zip(leaves, *other_leaves):
        if is_float_leaf(args[0]):
            results.append(fn(*args))
        else:
            results.append((jnp.zeros_like(args[0]), *args[state_from:]))
    if not results:
        return tuple(jax.tree.unflatten(treedef, []) for _ in range(n_out))
    return tuple(jax.tree.unflatten(treedef, list(r)) for r in zip(*results))


def full_like(like: jax.Array, fill: Any, dtype: Any = None) -> jax.Array:
    """``jnp.full_like`` placed where ``like`` lives, also inside ``jit``.

    A constant has no data dependence, so under ``jit`` with automatic (GSPMD) sharding
    XLA would replicate optimizer state created from it while the parameter it mirrors
    is sharded; ``shard_alike`` ties the two together.
    """
    if isinstance(fill, (int, float)) and fill == 0:  # zeros_like: no per-shape compile
        out = jnp.zeros_like(like, dtype=dtype)
    else:
        out = jnp.full_like(like, fill, dtype=dtype)
    if jnp.ndim(like) == 0 or not isinstance(like, jax.core.Tracer):
        return out  # eagerly, full_like already places the result on like's sharding
    return shard_alike(out, like)[0]


def zeros_like_tree(params: Any) -> Any:
    """Zeros shaped, typed and sharded like each leaf (see :func:`full_like`)."""
    reject_module(params, "jaxreg.optim")
    return jax.tree.map(lambda p: full_like(p, 0), params)


def cast(x: Any, like: jax.Array) -> jax.Array:
    """A scalar cast to a leaf's dtype (as torch casts a Python scalar to the tensor's)."""
    return jnp.asarray(x).astype(like.dtype)


def lerp(start: jax.Array, end: jax.Array, weight: Any) -> jax.Array:
    """torch's ``start.lerp_(end, weight)``, including its two-branch formula.

    ``start + w * (end - start)`` for ``w < 0.5``, else ``end - (end - start) * (1 - w)``.
    """
    w = value_of(weight)
    if w is not None:
        if w < 0.5:
            return start + cast(w, start) * (end - start)
        return end - (end - start) * cast(1 - w, start)
    w = cast(weight, start)
    return jnp.where(w < 0.5, start + w * (end - start), end - (end - start) * (1 - w))


def _split(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Veltkamp split: ``a = hi + lo`` exactly, each half fitting half the mantissa."""
    bits = jnp.finfo(a.dtype).nmant + 1
    factor = jnp.asarray(2.0 ** ((bits + 1) // 2) + 1.0, a.dtype)
    t = factor * a
    hi = t - (t - a)
    return hi, a - hi


def fma(a: jax.Array, b: jax.Array, c: jax.Array) -> jax.Array:
    """``a * b + c`` with (almost always) a single rounding, like a hardware FMA.

    Error-free transformations: Dekker's TwoProduct gives ``a*b = p + e`` exactly and
    Knuth's TwoSum gives ``p + c = s + f`` exactly; the result is ``s + (e + f)``.
    torch's vectorized CPU kernels (``lerp``) use FMA instructions; JAX exposes none.
    """
    p = a * b
    a_hi, a_lo = _split(a)
    b_hi, b_lo = _split(b)
    e = ((a_hi * b_hi - p) + a_hi * b_lo + a_lo * b_hi) + a_lo * b_lo
    s = p + c
    bb = s - p
    f = (p - (s - bb)) + (c - bb)
    return s + (e + f)


def lerp_fma(start: jax.Array, end: jax.Array, weight: Any) -> jax.Array:
    """torch's vectorized CPU ``lerp``: ``fma(w, end - start, start)`` for ``w < 0.5``,
    else ``fma(w - 1, end - start, end)`` -- bit for bit where :func:`lerp` is 1 ulp off.
    """
    w = value_of(weight)
    diff = end - start
    if w is None:  # a traced weight (a scheduled momentum): both branches, selected
        wt = jnp.full_like(diff, weight)
        return jnp.where(wt < 0.5, fma(wt, diff, start), fma(wt - 1, diff, end))
    if w < 0.5:
        return fma(jnp.full_like(diff, w), diff, start)
    # torch casts the weight to the tensor dtype first, then forms ``w - 1`` in it.
    return fma(jnp.full_like(diff, w) - 1, diff, end)
