"""The mask language: which leaves of a parameter tree are regularized.

Every jaxreg function that takes ``mask`` accepts the same forms:

* ``None`` -- every floating-point leaf;
* a pytree of bools with the params' structure, or a prefix of it (``True`` at
  ``"encoder"`` selects every leaf below ``encoder``);
* a callable ``params -> bool pytree`` (such as an ``optax.masked`` mask function);
* a :class:`Mask` from this module, combinable with ``&``, ``|`` and ``~``:
  by name (:func:`exclude_names`), shape (:func:`min_ndim`), path (:func:`path_regex`,
  :func:`glob`), Flax module type (:func:`inside`), use by the loss (:func:`used_by`),
  presets (:func:`no_bias_no_norm`, :func:`timm_1d`, :func:`kernels_only`) or PyTorch
  parameter groups (:func:`jaxreg.optim.from_param_groups`).

Masks may carry per-leaf **multipliers** instead of on/off: a pytree (or prefix) of
non-negative numbers, or :func:`multipliers` rules. A leaf's regularization strength is
then ``multiplier * hyperparameter`` (``0`` = not selected) -- PyTorch parameter groups
with different ``weight_decay``, big_vision's ``wd_mults``. :func:`describe` prints
every leaf with its multiplier; :func:`jaxreg.optim.to_param_groups` turns a mask into
torch groups.

Paths are the "/"-joined keys of a leaf, e.g. ``"encoder/layers_0/kernel"``; they
are the same for a Flax linen dict and the matching ``flax.nnx.State`` (the nnx
``.value`` level does not show). Whatever the mask says, leaves that are not real
floating-point arrays (integer counters, booleans, PRNG keys) are never selected.

A mask whose structure does not fit the params raises ``ValueError`` naming the
first path that does not fit -- it is never broadcast silently.

Example:
  >>> import jax.numpy as jnp
  >>> from jaxreg import masks
  >>> params = {"dense": {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(3)},
  ...           "norm": {"scale": jnp.ones(3)}}
  >>> m = masks.min_ndim(2) | masks.path_regex("^norm/")
  >>> masks.selected_paths(m, params)
  ['dense/kernel', 'norm/scale']
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeAlias

import jax
import numpy as np

from jaxreg._tree import (
    is_float_leaf,
    is_variable,
    key_str,
    leaf_ndim,
    leaf_paths,
    path_str,
    reject_flat,
    reject_module,
)

__all__ = [
    "MaskLike",
    "Mask",
    "UnmatchedPatternWarning",
    "NORM_LAYERS",
    "exclude_names",
    "min_ndim",
    "path_regex",
    "glob",
    "inside",
    "module_paths",
    "multipliers",
    "used_by",
    "no_bias_no_norm",
    "timm_1d",
    "kernels_only",
    "resolve",
    "resolve_factors",
    "selected_paths",
    "describe",
]


class Mask:
    """A path- and shape-aware leaf selector, combinable with ``&``, ``|``, ``~``.

    Calling a mask on a params tree returns a bool pytree of the same structure,
    so a :class:`Mask` also works wherever Optax expects a mask function
    (e.g. ``optax.masked(tx, mask)``). A mask may also carry per-leaf *multipliers*
    (see :func:`multipliers`): :meth:`factors` gives them, ``0.0`` meaning "not
    selected"; a plain selector's factors are ``1.0``/``0.0``.
    """

    def __init__(self, select: Callable[[tuple[str, ...], Any], bool], name: str):
        self._select = select
        self._name = name

    def select(self, params: Any) -> list[bool]:
        """One bool per leaf of ``params`` (in ``jax.tree.leaves`` order)."""
        leaves = jax.tree.leaves(params)
        return [bool(self._select(p, x)) for p, x in zip(leaf_paths(params), leaves)]

    def factors(self, params: Any) -> list[float]:
        """One multiplier per leaf of ``params``: ``1.0``/``0.0`` for a plain selector."""
        return [1.0 if s else 0.0 for s in self.select(params)]

    def __call__(self, params: Any) -> Any:
        _refuse_flat(self, params)
        treedef = jax.tree.structure(params)
        return jax.tree.unflatten(treedef, self.select(params))

    def __and__(self, other: MaskLike) -> Mask:
        return _Combined(self, _as_mask(other), "&")

    def __or__(self, other: MaskLike) -> Mask:
        return _Combined(self, _as_mask(other), "|")

    def __rand__(self, other: MaskLike) -> Mask:
        return _Combined(_as_mask(other), self, "&")

    def __ror__(self, other: MaskLike) -> Mask:
        return _Combined(_as_mask(other), self, "|")

    def __invert__(self) -> Mask:
        return _Inverted(self)

    def __repr__(self) -> str:
        return self._name


class _FactorMask(Mask):
    """A mask defined by its :meth:`factors`; it selects where the factor is not 0."""

    def select(self, params: Any) -> list[bool]:
        return [f != 0.0 for f in self.factors(params)]


MaskLike: TypeAlias = (
    Mask | Callable[[Any], Any] | Mapping[str, Any] | Sequence[Any] | bool | float | None
)
"""What every ``mask=`` / ``weight_decay_mask=`` argument takes.

``None`` (every float leaf); a :class:`Mask`; a callable ``params -> tree``; or a tree of
bools or non-negative multipliers (dicts, lists, tuples, ``nnx.State``; any other pytree node
is accepted too), full or a prefix of the params tree.
"""


def _bool_factors(mask: Mask, params: Any, op: str) -> list[float]:
    f = mask.factors(params)
    if any(x not in (0.0, 1.0) for x in f):
        raise ValueError(
            f"{op!r} of a mask with multipliers ({mask!r}) is ambiguous; "
            "use masks.multipliers((mask, factor), ...) rules instead"
        )
    return f


class _Combined(_FactorMask):
    """``a & b`` multiplies the factors (a selector restricts a multiplier mask);
    ``a | b`` is only defined for plain selectors."""

    def __init__(self, a: Mask, b: Mask, op: str):
        self._a, self._b, self._op = a, b, op
        self._name = f"({a!r} {op} {b!r})"

    def factors(self, params: Any) -> list[float]:
        if self._op == "&":
            return [x * y for x, y in zip(self._a.factors(params), self._b.factors(params))]
        fa, fb = _bool_factors(self._a, params, "|"), _bool_factors(self._b, params, "|")
        return [max(x, y) for x, y in zip(fa, fb)]


class _Inverted(_FactorMask):
    def __init__(self, inner: Mask):
        self._inner = inner
        self._name = f"~{inner!r}"

    def factors(self, params: Any) -> list[float]:
        return [1.0 - f for f in _bool_factors(self._inner, params, "~")]


class _FromSpec(_FactorMask):
    """Wraps any other mask form (bool tree, callable) so it combines with ``&``/``|``."""

    def __init__(self, spec: Any):
        self._spec = spec
        self._name = f"mask({spec!r})"

    def factors(self, params: Any) -> list[float]:
        return resolve_factors(self._spec, params, float_only=False)


class _PerLeaf(_FactorMask):
    """Factors fixed per leaf path (``used_by``, ``from_param_groups``).

    Matched by path, so it also fits a tree with some leaves removed (as
    ``optax.masked`` passes to its inner transform); a leaf it has no entry for raises.
    """

    def __init__(self, by_path: dict[tuple[str, ...], float], name: str):
        self._by_path, self._name = by_path, name

    def factors(self, params: Any) -> list[float]:
        out = []
        for path in leaf_paths(params):
            if path not in self._by_path:
                raise ValueError(
                    f"{self._name} has no entry for leaf {path_str(path)!r}: it was built "
                    "for other params"
                )
            out.append(self._by_path[path])
        return out


def _as_mask(obj: MaskLike) -> Mask:
    return obj if isinstance(obj, Mask) else _FromSpec(obj)


def _check_factor(value: Any, where: str) -> float:
    if isinstance(value, (str, bytes)):
        raise ValueError(f"multiplier for {where} must be a float, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"multiplier for {where} must be a float, got {value!r}") from None
    if not math.isfinite(x) or x < 0:
        raise ValueError(f"multiplier for {where} must be finite and >= 0, got {value!r}")
    return x


class _Multipliers(_FactorMask):
    def __init__(self, rules: list[tuple[Mask, float]], default: float, name: str):
        self._rules, self._default, self._name = rules, default, name

    def factors(self, params: Any) -> list[float]:
        out: list[float | None] = [None] * len(jax.tree.leaves(params))
        for mask, factor in self._rules:
            for i, s in enumerate(mask.select(params)):
                if s and out[i] is None:
                    out[i] = factor
        return [self._default if f is None else f for f in out]


def multipliers(*rules: tuple[MaskLike, float], default: float = 0.0) -> Mask:
    r"""Per-leaf multipliers: each leaf gets the factor of the *first* rule that selects it.

    The regularization strength of a leaf becomes ``factor *`` the hyperparameter
    (``weight_decay``, ``l1``, ``l2``, a prox threshold), like PyTorch parameter groups
    with different ``weight_decay`` or big_vision's ``wd_mults``. ``0.0`` means "not
    regularized"; leaves no rule selects get ``default``.

    Args:
      *rules: ``(mask, factor)`` pairs, ``mask`` in any mask form, ``factor >= 0``.
      default: the factor of leaves no rule selects (``>= 0``).

    Returns:
      A :class:`Mask` whose :meth:`Mask.factors` are the multipliers. ``mask & other``
      restricts it; ``|`` and ``~`` of a multiplier mask raise ``ValueError``.

    Raises:
      ValueError: a rule that is not a ``(mask, factor)`` pair, or a negative or
        non-finite factor.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxreg import masks
      >>> params = {"enc": {"kernel": jnp.ones((2, 2))}, "head": {"kernel": jnp.ones((2, 1))}}
      >>> m = masks.multipliers((masks.glob("head/*"), 0.1), default=1.0)
      >>> m.factors(params)
      [1.0, 0.1]
    """
    checked = []
    for i, rule in enumerate(rules):
        if not (isinstance(rule, tuple) and len(rule) == 2):
            raise ValueError(f"multipliers: rule {i} must be a (mask, factor) pair, got {rule!r}")
        checked.append((_as_mask(rule[0]), _check_factor(rule[1], f"rule {i}")))
    default = _check_factor(default, "default")
    name = "multipliers(" + ", ".join(f"({m!r}, {f})" for m, f in checked)
    return _Multipliers(checked, default, name + f", default={default})")


class UnmatchedPatternWarning(UserWarning):
    """A name, regex or glob of a mask selects no leaf of the params it was applied to."""


_ON_UNMATCHED = ("warn", "error", "ignore")


class _PatternMask(Mask):
    """A selector built from several patterns, each of which should match some leaf.

    ``include``: a leaf is selected when a pattern matches it (else: when none does).
    A pattern matching no leaf of a non-empty tree is usually a typo
    (``exclude_names("biass")`` changes nothing): ``on_unmatched`` says what then
    happens -- warn (:class:`UnmatchedPatternWarning`, once per pattern and mask),
    raise ``ValueError``, or nothing.
    """

    def __init__(self, kind, patterns, matchers, include, on_unmatched, name):
        if on_unmatched not in _ON_UNMATCHED:
            raise ValueError(f"on_unmatched must be one of {_ON_UNMATCHED}, got {on_unmatched!r}")
        super().__init__(lambda path, leaf: False, name)
        self._kind, self._patterns, self._matchers = kind, patterns, matchers
        self._include, self._on_unmatched = include, on_unmatched
        self._warned: set[str] = set()

    def select(self, params: Any) -> list[bool]:
        paths = leaf_paths(params)
        hits = [[m(path) for m in self._matchers] for path in paths]
        if paths and self._on_unmatched != "ignore":
            missed = [pat for j, pat in enumerate(self._patterns) if not any(h[j] for h in hits)]
            if missed and self._on_unmatched == "error":
                raise ValueError(
                    f"{self._name}: {self._kind} {', '.join(map(repr, missed))} matches no "
                    f"leaf; the leaves are {[path_str(p) for p in paths]}"
                )
            for pat in missed:
                if pat not in self._warned:
                    self._warned.add(pat)
                    warnings.warn(
                        f"{self._name}: {self._kind} {pat!r} matches no leaf of the params "
                        f"(a typo?); leaves: {', '.join(path_str(p) for p in paths[:8])}"
                        f"{', ...' if len(paths) > 8 else ''}. Pass on_unmatched='ignore' "
                        "if that is intended, or 'error' to make it an error",
                        UnmatchedPatternWarning,
                        stacklevel=2,
                    )
        return [any(h) if self._include else not any(h) for h in hits]


def exclude_names(*names: str, on_unmatched: str = "warn") -> Mask:
    """Select leaves none of whose path components equals one of ``names``.

    Example: ``exclude_names("bias", "scale", "embedding")`` -- no decay on biases,
    normalization scales and embeddings.

    A name that is no component of any leaf's path is most likely a typo: it warns
    (:class:`UnmatchedPatternWarning`); ``on_unmatched="error"`` raises instead,
    ``"ignore"`` says nothing.
    """
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"exclude_names needs one or more non-empty strings, got {names!r}")
    return _PatternMask(
        "name",
        names,
        [lambda path, n=n: n in path for n in names],
        False,
        on_unmatched,
        f"exclude_names({', '.join(map(repr, names))})",
    )


def min_ndim(n: int) -> Mask:
    """Select leaves with ``ndim >= n`` (``min_ndim(2)``: kernels, not biases or norm scales)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"min_ndim needs a non-negative int, got {n!r}")
    return Mask(lambda path, leaf: leaf_ndim(leaf) >= n, f"min_ndim({n})")


def path_regex(pattern: str, *, on_unmatched: str = "warn") -> Mask:
    """Select leaves whose "/"-joined path matches ``pattern`` (``re.search``; anchor with ^ $).

    A pattern that matches no leaf warns (:class:`UnmatchedPatternWarning`);
    ``on_unmatched="error"`` raises, ``"ignore"`` says nothing.
    """
    try:
        compiled = re.compile(pattern)
    except (re.error, TypeError) as e:
        raise ValueError(f"path_regex: invalid pattern {pattern!r}: {e}") from None
    return _PatternMask(
        "pattern",
        (pattern,),
        [lambda path: compiled.search(path_str(path)) is not None],
        True,
        on_unmatched,
        f"path_regex({pattern!r})",
    )


def glob(*patterns: str, on_unmatched: str = "warn") -> Mask:
    """Select leaves whose "/"-joined path matches one of the glob ``patterns`` in full.

    ``*`` matches within one path component, ``**`` across components (any depth, also
    none), ``?`` one character, ``[abc]``/``[!abc]`` a character class -- e.g.
    ``"**/kernel"`` (every kernel), ``"encoder/layers_*/attn/**"``. A pattern that
    matches no leaf warns (:class:`UnmatchedPatternWarning`); ``on_unmatched="error"``
    raises, ``"ignore"`` says nothing.
    """
    if not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise ValueError(f"glob needs one or more non-empty strings, got {patterns!r}")
    compiled = [re.compile(_glob_regex(p)) for p in patterns]
    return _PatternMask(
        "pattern",
        patterns,
        [lambda path, c=c: c.fullmatch(path_str(path)) is not None for c in compiled],
        True,
        on_unmatched,
        f"glob({', '.join(map(repr, patterns))})",
    )


def _glob_regex(pattern: str) -> str:
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")  # any number of whole components, also none
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            j = pattern.find("]", i + 2 if pattern[i + 1 : i + 2] in ("!", "]") else i + 1)
            if j < 0:
                raise ValueError(f"glob: unclosed '[' in {pattern!r}")
            body = pattern[i + 1 : j]
            if body.startswith("!"):
                body = "^" + body[1:]
            elif body.startswith("^"):  # a literal ^, as in fnmatch
                body = "\\^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = j + 1
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


def _norm_layers() -> tuple[type, ...]:
    from flax import linen as nn
    from flax import nnx

    names = ("BatchNorm", "LayerNorm", "GroupNorm", "RMSNorm", "InstanceNorm")
    return tuple(getattr(mod, n) for mod in (nn, nnx) for n in names if hasattr(mod, n))


def module_paths(model: Any, *example_args: Any, **example_kwargs: Any) -> list[tuple]:
    """``(path, module)`` of every Flax submodule of ``model``; paths as in its params.

    ``model`` is a ``flax.nnx.Module`` (its graph is walked) or a ``flax.linen.Module``
    (initialised abstractly with ``jax.eval_shape(model.init, key, *example_args,
    **example_kwargs)`` while every module call is recorded; nothing is computed).
    """
    from flax import linen as nn
    from flax import nnx

    if isinstance(model, nnx.Module):
        walk = nnx.iter_modules(model) if hasattr(nnx, "iter_modules") else model.iter_modules()
        return [(tuple(str(k) for k in p), m) for p, m in walk]
    if isinstance(model, nn.Module):
        if not example_args and not example_kwargs:
            raise ValueError("a linen module needs example inputs to find its submodules")
        found: dict[tuple, Any] = {}

        def record(next_fun, args, kwargs, context):
            found.setdefault(tuple(context.module.path), context.module)
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(record):
            jax.eval_shape(model.init, jax.random.key(0), *example_args, **example_kwargs)
        return list(found.items())
    raise ValueError(f"expected a flax.nnx.Module or flax.linen.Module, got {type(model)!r}")


def inside(types: type | tuple[type, ...], model: Any, *example_args: Any, **kw: Any) -> Mask:
    """Select every leaf inside a submodule of ``model`` that is an instance of ``types``.

    Type-based rules for Flax modules, e.g. ``inside(masks.NORM_LAYERS, model)``: all
    parameters of any normalization layer, wherever it sits and whatever it is called.
    The mask's paths are those of the module's params (``variables["params"]`` for
    linen, ``nnx.state(model, nnx.Param)`` for nnx).

    Args:
      types: a class or tuple of classes (linen or nnx modules).
      model: a ``flax.nnx.Module`` or a ``flax.linen.Module``.
      *example_args: for linen only: example inputs for ``model.init`` (shapes only).
      **kw: for linen only: keyword inputs for ``model.init``.

    Returns:
      A :class:`Mask`.

    Example:
      >>> from flax import nnx
      >>> from jaxreg import masks
      >>> class Net(nnx.Module):
      ...     def __init__(self, rngs):
      ...         self.fc = nnx.Linear(2, 2, rngs=rngs)
      ...         self.ln = nnx.LayerNorm(2, rngs=rngs)
      >>> net = Net(nnx.Rngs(0))
      >>> masks.selected_paths(masks.inside(masks.NORM_LAYERS, net), nnx.state(net, nnx.Param))
      ['ln/bias', 'ln/scale']
    """
    types = types if isinstance(types, tuple) else (types,)
    if not types or not all(isinstance(t, type) for t in types):
        raise ValueError(f"inside needs module classes, got {types!r}")
    prefixes = [p for p, m in module_paths(model, *example_args, **kw) if isinstance(m, types)]
    names = ", ".join(t.__name__ for t in types)

    def select(path: tuple[str, ...], leaf: Any) -> bool:
        return any(path[: len(p)] == p for p in prefixes)

    return Mask(select, f"inside({names})")


def no_bias_no_norm(model: Any = None, *example_args: Any, **kw: Any) -> Mask:
    """The usual "no decay" rule: everything except biases and normalization layers.

    With ``model`` (nnx, or linen plus example inputs), normalization layers are found
    by type (:data:`NORM_LAYERS`). Without it, by name: Flax's norm layers hold only
    ``scale`` and ``bias``, so ``exclude_names("bias", "scale")`` is the same rule for
    models built from Flax's own layers.
    """
    if model is None:  # a model without norm layers has no "scale": no warning for that
        return exclude_names("bias", "scale", on_unmatched="ignore")
    no_bias = exclude_names("bias", on_unmatched="ignore")
    return no_bias & ~inside(NORM_LAYERS, model, *example_args, **kw)


def timm_1d(no_weight_decay: tuple[str, ...] | list[str] = ()) -> Mask:
    """timm's ``param_groups_weight_decay`` rule: no decay for 1-D (and 0-D) leaves,
    biases, or paths matching one of ``no_weight_decay``.

    timm (``timm/optim/_param_groups.py``) excludes ``param.ndim <= 1 or
    name.endswith(".bias")`` or ``fnmatch(name, pattern)`` for any pattern; here the
    patterns are :func:`glob` patterns on "/"-joined paths.
    """
    mask = min_ndim(2) & exclude_names("bias", on_unmatched="ignore")
    if no_weight_decay:
        mask = mask & ~glob(*no_weight_decay)
    return mask


def kernels_only() -> Mask:
    """big_vision's default weight-decay rule: only leaves named ``kernel``
    (its ``wd_mults`` default ``[(".*/kernel$", 1.0)]``)."""
    return path_regex(r"(^|/)kernel$", on_unmatched="ignore")


def used_by(fn: Callable[..., Any], *args: Any, argnum: int = 0, **kwargs: Any) -> Mask:
    """Select the leaves of ``args[argnum]`` that ``fn``'s output depends on.

    PyTorch skips a parameter whose ``.grad`` is ``None`` -- one the loss never
    touched -- in every optimizer (no decay, no momentum). JAX's gradient for such a
    leaf is an array of zeros, so decay would still move it. This mask finds those
    leaves *structurally*: ``fn`` is traced once (``jax.make_jaxpr``, nothing runs) and
    dead code is eliminated; a leaf is selected if the loss still reads it. Multiplying
    by zero still counts as a use, as in torch. Control flow (``lax.cond``, ``scan``)
    counts a leaf read in any branch as used.

    Args:
      fn: the loss, ``fn(*args, **kwargs) -> loss`` or ``-> (loss, aux)`` (only ``loss``
        counts, as in ``jax.grad(has_aux=True)``).
      *args: example arguments (only shapes and dtypes matter).
      argnum: which argument holds the parameters.
      **kwargs: example keyword arguments.

    Returns:
      A :class:`Mask` for params with the structure of ``args[argnum]``; combine it:
      ``used_by(loss, params, x, y) & masks.exclude_names("bias")``, or pass it to
      :func:`jaxreg.skip_unused` to skip those leaves in the whole optimizer.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxreg import masks
      >>> loss = lambda p, x: jnp.sum(x @ p["used"])
      >>> params = {"used": jnp.ones((2, 2)), "unused": jnp.ones(2)}
      >>> masks.selected_paths(masks.used_by(loss, params, jnp.ones((1, 2))), params)
      ['used']
    """
    # jax's own dead-code elimination (what jit uses); private, but stable for years and
    # exercised by tests/test_masks_more.py, so a change in JAX shows up as a test failure.
    from jax._src.interpreters import partial_eval as pe

    if (
        isinstance(argnum, bool)
        or not isinstance(argnum, int)
        or not -len(args) <= argnum < len(args)
    ):
        raise ValueError(f"used_by: argnum={argnum!r} does not index the {len(args)} argument(s)")
    params = args[argnum]
    leaves, treedef = jax.tree.flatten(params)

    def loss_of_leaves(p_leaves, other_args, other_kwargs):
        a = list(other_args)
        a[argnum] = jax.tree.unflatten(treedef, p_leaves)
        out = fn(*a, **other_kwargs)
        return out[0] if isinstance(out, tuple) else out

    others = list(args)
    others[argnum] = None
    closed = jax.make_jaxpr(loss_of_leaves)(leaves, others, kwargs)
    n_out = len(closed.jaxpr.outvars)
    _, used_inputs = pe.dce_jaxpr(closed.jaxpr, [True] * n_out)
    used = used_inputs[: len(leaves)]
    name = getattr(fn, "__name__", type(fn).__name__)
    by_path = {p: (1.0 if u else 0.0) for p, u in zip(leaf_paths(params), used)}
    return _PerLeaf(by_path, f"used_by({name})")


def _as_factor(value: Any, where: str) -> float:
    if isinstance(value, (bool, np.bool_)):
        return 1.0 if value else 0.0
    if isinstance(value, jax.core.Tracer):
        raise ValueError(f"mask entry at {where!r} is a traced value; masks must be concrete")
    if hasattr(value, "dtype") and np.ndim(value) == 0 and np.dtype(value.dtype) == np.bool_:
        return 1.0 if bool(value) else 0.0
    if isinstance(value, (int, float, np.integer, np.floating)):
        return _check_factor(float(value), repr(where))
    if hasattr(value, "dtype") and np.ndim(value) == 0 and np.dtype(value.dtype).kind in "iuf":
        return _check_factor(float(value), repr(where))  # a 0-d numpy/JAX array
    raise ValueError(f"mask entry at {where!r} must be a bool or a multiplier, got {value!r}")


def _match_tree(mask_tree: Any, params: Any) -> list[float]:
    """Match a bool/multiplier pytree (full structure or prefix) to the params by path."""
    mask_leaves = jax.tree.leaves(mask_tree, is_leaf=is_variable)
    mask_leaves = [_variable_value(m) if is_variable(m) else m for m in mask_leaves]
    mask_paths = _variable_level_paths(mask_tree)  # aligned with mask_leaves
    entries: dict[tuple[str, ...], float] = {}
    for p, v in zip(mask_paths, mask_leaves):
        entries[p] = _as_factor(v, path_str(p) or "<root>")
    used: set[tuple[str, ...]] = set()
    out = []
    for path in leaf_paths(params):
        hit = None
        for k in range(len(path) + 1):
            if path[:k] in entries:
                hit = path[:k]
                break
        if hit is None:
            raise ValueError(
                f"mask does not fit params: params leaf {path_str(path)!r} has no entry in the mask"
            )
        used.add(hit)
        out.append(entries[hit])
    for p in mask_paths:
        if p not in used:
            raise ValueError(
                f"mask does not fit params: mask path {path_str(p) or '<root>'!r} "
                "does not exist in params"
            )
    return out


def _variable_value(v: Any) -> Any:
    return v.get_value() if hasattr(v, "get_value") else v.value  # flax >= 0.12 / older


def _variable_level_paths(tree: Any) -> list[tuple[str, ...]]:
    nodes = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_variable)[0]
    return [tuple(key_str(k) for k in path) for path, _ in nodes]


def resolve_factors(mask: MaskLike, params: Any, *, float_only: bool = True) -> list[float]:
    """Resolve any mask form to one multiplier per leaf (``0.0``: not selected).

    Args:
      mask: ``None`` (every leaf, ``1.0``), a bool or multiplier pytree (full or
        prefix), a callable returning one, or a :class:`Mask`.
      params: the parameter pytree.
      float_only: give leaves that are not real floating point ``0.0`` (default).

    Returns:
      A list of Python floats, one per leaf in ``jax.tree.leaves`` order.

    Raises:
      ValueError: if the mask does not fit the params (the message names the path), or
        a multiplier is negative or not finite.
    """
    reject_module(params, "jaxreg")
    leaves = jax.tree.leaves(params)
    if mask is not None and not _is_tree_spec(mask):
        _refuse_flat(mask, params)
    if mask is None:
        factors = [1.0] * len(leaves)
    elif isinstance(mask, Mask):
        factors = [float(f) for f in mask.factors(params)]
    elif callable(mask):
        factors = _match_tree(mask(params), params)
    else:
        factors = _match_tree(mask, params)
    if len(factors) != len(leaves):  # pragma: no cover - a Mask subclass bug
        raise ValueError(f"mask gave {len(factors)} entries for {len(leaves)} leaves")
    if float_only:
        factors = [f if is_float_leaf(x) else 0.0 for f, x in zip(factors, leaves)]
    return factors


def _refuse_flat(mask: MaskLike, params: Any) -> None:
    reject_flat(
        params,
        f"mask {mask!r}",
        "would be evaluated on the buffers of a FlatParams, not on your parameters: give the "
        "mask to jaxreg.flat.ravel(params, mask=...) and pass flat_params.multipliers here",
    )


def _is_tree_spec(mask: MaskLike) -> bool:
    """A bool/multiplier pytree (possibly wrapped by ``_as_mask``): matched by path."""
    if isinstance(mask, _FromSpec):
        return _is_tree_spec(mask._spec)
    return not isinstance(mask, Mask) and not callable(mask)


def resolve(mask: MaskLike, params: Any, *, float_only: bool = True) -> list[bool]:
    """Resolve any mask form to one bool per leaf of ``params`` (``jax.tree.leaves`` order).

    A leaf is selected when its multiplier (:func:`resolve_factors`) is not zero.

    Args:
      mask: ``None``, a bool or multiplier pytree (full or prefix), a callable, or a
        :class:`Mask`.
      params: the parameter pytree.
      float_only: also deselect leaves that are not real floating point (default).

    Returns:
      A list of Python bools, one per leaf.

    Raises:
      ValueError: if the mask does not fit the params (the message names the path).
    """
    return [f != 0.0 for f in resolve_factors(mask, params, float_only=float_only)]


def selected_paths(mask: MaskLike, params: Any) -> list[str]:
    """The "/"-joined paths of the leaves that ``mask`` selects in ``params``."""
    return [path_str(p) for p, s in zip(leaf_paths(params), resolve(mask, params)) if s]


def describe(mask: MaskLike, params: Any) -> str:
    """A table of every leaf: path, shape, dtype, whether ``mask`` selects it, multiplier.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxreg import masks
      >>> params = {"b": jnp.zeros(3, jnp.float32), "w": jnp.ones((3, 2), jnp.float32)}
      >>> print(masks.describe(masks.min_ndim(2), params))
      path  shape   dtype    selected  multiplier
      b     (3,)    float32  no        0
      w     (3, 2)  float32  yes       1
      1 of 2 leaves selected (6 of 9 elements)
    """
    leaves = jax.tree.leaves(params)
    factors = resolve_factors(mask, params)
    rows = [("path", "shape", "dtype", "selected", "multiplier")]
    for p, x, f in zip(leaf_paths(params), leaves, factors):
        dtype = str(getattr(x, "dtype", type(x).__name__))
        shape = str(tuple(np.shape(x)))
        rows.append((path_str(p), shape, dtype, "yes" if f else "no", f"{f:g}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    n_el = [int(np.size(x)) for x in leaves]
    sel = [f != 0.0 for f in factors]
    lines.append(
        f"{sum(sel)} of {len(leaves)} leaves selected "
        f"({sum(n for n, s in zip(n_el, sel) if s)} of {sum(n_el)} elements)"
    )
    return "\n".join(lines)


NORM_LAYERS: tuple[type, ...] = _norm_layers()
"""The normalization layers of Flax (linen and nnx) -- ``BatchNorm``, ``LayerNorm``,
``GroupNorm``, ``RMSNorm``, ``InstanceNorm`` (those the installed Flax has)."""


# The torch parameter-group helpers moved to jaxreg.optim, next to the rest of torch's
# semantics; the old names still resolve here, with a DeprecationWarning.
_MOVED_TO_OPTIM = ("torch_name", "to_param_groups", "from_param_groups")


def __getattr__(name: str) -> Any:
    if name in _MOVED_TO_OPTIM:
        warnings.warn(
            f"jaxreg.masks.{name} moved to jaxreg.optim.{name} (same arguments)",
            DeprecationWarning,
            stacklevel=2,
        )
        from jaxreg.optim import _param_groups  # at call time: masks must not import optim

        return getattr(_param_groups, name)
    raise AttributeError(f"module 'jaxreg.masks' has no attribute {name!r}")
