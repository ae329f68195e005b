"""Group lasso, orthogonality (Keras), L2 towards a reference (L2-SP), and the L2 ↔ weight-decay
conventions."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxreg._masked import scaled
from jaxreg._numerics import safe_norm
from jaxreg._penalties import _abs, _acc_dtype, _l2_factor, _sum_over, _total
from jaxreg._tree import leaf_paths, path_str, reject_flat
from jaxreg._validate import check_nonnegative, concrete_float
from jaxreg.masks import MaskLike, resolve_factors

__all__ = [
    "group_lasso_penalty",
    "orthogonal_penalty",
    "l2_to_reference_penalty",
    "activity_penalty",
    "equivalent_weight_decay",
]

_GROUPS = ("leaves", "rows", "columns")


def group_lasso_penalty(params: Any, groups: str = "leaves", mask: MaskLike = None) -> jax.Array:
    r"""Group lasso, :math:`\sum_g \lVert w_g \rVert_2`, over the selected leaves.

    The groups are, per leaf ``w``:

    - ``"leaves"``: the whole leaf, :math:`\lVert w \rVert_2`;
    - ``"rows"``: ``w[i, ...]`` for each index ``i`` of the first axis;
    - ``"columns"``: ``w[..., j]`` for each index ``j`` of the last axis.

    A Flax ``Dense`` kernel is ``(in, out)``, so its ``"columns"`` are the output units
    (the *rows* of the same layer's ``torch.nn.Linear.weight``, ``(out, in)``); a 1-D leaf
    under ``"rows"``/``"columns"`` has one-element groups (its L1 norm). No
    :math:`\sqrt{|g|}` group-size weighting (scikit-learn's ``MultiTaskLasso`` has none).
    The gradient is :math:`w_g / \lVert w_g \rVert_2`, and 0 for a group that is exactly
    zero, as PyTorch autograd gives for ``torch.linalg.vector_norm``.

    Args:
      params: a pytree of arrays.
      groups: ``"leaves"``, ``"rows"`` or ``"columns"``.
      mask: which leaves to include, and their multipliers; see :mod:`jaxreg.masks`.

    Returns:
      A scalar of dtype ``promote(float32, leaf dtypes)``; ``0.0`` if nothing is selected.

    Raises:
      ValueError: unknown ``groups``.

    Example:
      >>> import jax.numpy as jnp, jaxreg
      >>> w = {"k": jnp.array([[3.0, 4.0], [0.0, 0.0]])}
      >>> float(jaxreg.group_lasso_penalty(w, groups="rows"))
      5.0
    """
    if groups not in _GROUPS:
        raise ValueError(f"groups must be one of {_GROUPS}, got {groups!r}")
    reject_flat(params, "group_lasso_penalty")

    def term(x: jax.Array) -> jax.Array:
        sq = x * x
        if groups == "leaves" or x.ndim == 0:
            return safe_norm(jnp.sum(sq))
        axes = tuple(range(1, x.ndim)) if groups == "rows" else tuple(range(x.ndim - 1))
        return safe_norm(jnp.sum(sq, axis=axes))

    return _sum_over(params, mask, term)


def orthogonal_penalty(
    params: Any, mode: str = "rows", mask: MaskLike = None, epsilon: float = 1e-7
) -> jax.Array:
    r"""Keras' ``OrthogonalRegularizer`` (factor 1), summed over the selected 2-D leaves.

    Keras 3 (``keras/src/regularizers/regularizers.py``): rows (or columns) are
    L2-normalised, :math:`\hat w_i = w_i \cdot \min(\lVert w_i \rVert^{-1},
    1/\epsilon)`, then

    .. math:: \tfrac12 \sum_{i \ne j} |\hat w_i \cdot \hat w_j| \,/\, \tfrac{n(n-1)}{2}

    over the :math:`n` rows (``mode="rows"``: ``w[i, :]``) or columns (``w[:, j]``): the
    mean absolute cosine between distinct rows. Keras' ``Dense`` kernel is ``(in, out)``
    like Flax's, so the modes mean the same thing on both. Multiply by Keras' ``factor``
    yourself. Gradients use sign(0) = 0 for the absolute value and are finite for
    all-zero rows.

    Args:
      params: a pytree of arrays; every selected leaf must be 2-D.
      mode: ``"rows"`` or ``"columns"``.
      mask: which leaves to include (e.g. ``jaxreg.masks.min_ndim(2)``).
      epsilon: Keras' ``backend.epsilon()``, the lower bound on a row's norm.

    Returns:
      A scalar; ``0.0`` if nothing is selected.

    Raises:
      ValueError: unknown ``mode``; a selected leaf that is not 2-D or has fewer than 2
        rows/columns (naming its path).

    Example:
      >>> import jax.numpy as jnp, jaxreg
      >>> w = {"k": jnp.array([[1.0, 0.0], [1.0, 1.0]])}  # cosine 1/√2 between the rows
      >>> round(float(jaxreg.orthogonal_penalty(w)), 6)
      0.707107
    """
    if mode not in ("rows", "columns"):
        raise ValueError(f"mode must be 'rows' or 'columns', got {mode!r}")
    reject_flat(params, "orthogonal_penalty")
    factors = resolve_factors(mask, params)
    terms = []
    for path, leaf, f in zip(leaf_paths(params), jax.tree.leaves(params), factors):
        if not f:
            continue
        x = jnp.asarray(leaf)
        x = x.astype(_acc_dtype(x))
        n = x.shape[0] if mode == "rows" else (x.shape[1] if x.ndim == 2 else 0)
        if x.ndim != 2 or n < 2:
            raise ValueError(
                f"orthogonal_penalty needs 2-D leaves with at least 2 {mode}; "
                f"{path_str(path)!r} has shape {x.shape} (select leaves with mask=)"
            )
        axis = 1 if mode == "rows" else 0
        sq = jnp.sum(x * x, axis=axis, keepdims=True)
        big = sq > epsilon**2  # rsqrt(sq) < 1/epsilon: Keras' minimum, with a safe gradient
        inv = jnp.where(big, jax.lax.rsqrt(jnp.where(big, sq, 1.0)), 1.0 / epsilon)
        u = x * inv
        gram = u @ u.T if mode == "rows" else u.T @ u
        off = gram * (1.0 - jnp.eye(n, dtype=gram.dtype))
        terms.append(scaled(0.5 * jnp.sum(_abs(off)) / (n * (n - 1) / 2.0), f))
    return _total(terms)


def l2_to_reference_penalty(
    params: Any, reference: Any, mask: MaskLike = None, *, convention: str = "sum"
) -> jax.Array:
    r"""L2 towards reference weights (L2-SP), :math:`\sum_i (w_i - w^{\mathrm{ref}}_i)^2`.

    "Decay towards the pretrained weights" (Li et al., 2018, *Explicit Inductive Bias for
    Transfer Learning*; praxis' L2-to-initial). Same convention as :func:`l2_penalty`
    (no :math:`\tfrac12`): gradient :math:`2 (w - w^{\mathrm{ref}})`; no gradient flows
    into ``reference``.

    Args:
      params: a pytree of arrays.
      reference: a pytree with the same structure and shapes (e.g. the pretrained params).
      mask: which leaves of ``params`` to include, and their multipliers; see :mod:`jaxreg.masks`.
      convention: ``"sum"`` (default) or ``"half"`` (:math:`\tfrac12 \sum (w - w^{ref})^2`).

    Returns:
      A scalar of dtype ``promote(float32, leaf dtypes)``; ``0.0`` if nothing is selected.

    Raises:
      ValueError: ``reference`` has another structure or a leaf of another shape (naming
        the path).

    Example:
      >>> import jax.numpy as jnp, jaxreg
      >>> w, w0 = {"k": jnp.array([1.0, 3.0])}, {"k": jnp.array([1.0, 1.0])}
      >>> float(jaxreg.l2_to_reference_penalty(w, w0))
      4.0
    """
    factor = _l2_factor(convention)
    p_leaves, r_leaves = jax.tree.leaves(params), jax.tree.leaves(reference)
    if jax.tree.structure(params) != jax.tree.structure(reference):
        raise ValueError(
            "reference must have the structure of params: "
            f"{jax.tree.structure(reference)} vs {jax.tree.structure(params)}"
        )
    for path, p, r in zip(leaf_paths(params), p_leaves, r_leaves):
        if jnp.shape(p) != jnp.shape(r):
            raise ValueError(
                f"reference leaf {path_str(path)!r} has shape {jnp.shape(r)}, params {jnp.shape(p)}"
            )
    factors = resolve_factors(mask, params)
    diffs = [
        (jnp.asarray(p) - jax.lax.stop_gradient(jnp.asarray(r, jnp.asarray(p).dtype)), f)
        for p, r, f in zip(p_leaves, r_leaves, factors)
        if f
    ]
    return factor * _total(
        [scaled(jnp.sum(jnp.square(d.astype(_acc_dtype(d)))), f) for d, f in diffs]
    )


def activity_penalty(
    activations: Any, l1: float = 0.0, l2: float = 0.0, normalize: str = "batch"
) -> jax.Array:
    r"""Penalty on activations, :math:`\ell_1 \sum |a| + \ell_2 \sum a^2`, per array.

    ``normalize`` says what each array's penalty is divided by -- the convention that
    differs between libraries:

    - ``"batch"`` (default): its first dimension, the batch size -- Keras 3, whose
      ``Layer`` divides an ``activity_regularizer``'s ``L1L2`` value by
      ``shape(output)[0]`` ("consistent regularization strength across batch sizes");
    - ``"sum"``: nothing (tf.keras 1.x; a hand-written ``loss + l2 * a.pow(2).sum()``);
    - ``"mean"``: its number of elements (``a.pow(2).mean()`` in a PyTorch loop).

    ``activations`` is any pytree of arrays, batch first -- e.g. what Flax collected:
    linen's ``self.sow("intermediates", name, x)`` then
    ``model.apply(variables, x, mutable=["intermediates"])[1]["intermediates"]``, or
    nnx's ``self.sow(nnx.Intermediate, name, x)`` then
    ``_, inter = nnx.capture(model, nnx.Intermediate)(x)``.
    The L1 gradient at 0 is 0, as torch's.

    Args:
      activations: a pytree of arrays (0-d arrays are not divided by a batch size).
      l1: weight of :math:`\sum |a|`, ``>= 0``.
      l2: weight of :math:`\sum a^2`, ``>= 0`` (no :math:`\tfrac12`, as Keras' ``L1L2``).
      normalize: ``"batch"``, ``"sum"`` or ``"mean"``.

    Returns:
      The summed penalty of all arrays, a scalar.

    Raises:
      ValueError: negative or non-finite ``l1``/``l2``; unknown ``normalize``.

    Example:
      >>> import jax.numpy as jnp, jaxreg
      >>> a = jnp.array([[1.0, -2.0], [0.0, 3.0]])  # batch of 2
      >>> round(float(jaxreg.activity_penalty(a, l1=0.1, l2=0.01)), 6)  # (0.6 + 0.14) / 2
      0.37
    """
    check_nonnegative("l1", l1)
    check_nonnegative("l2", l2)
    if normalize not in ("batch", "sum", "mean"):
        raise ValueError(f"normalize must be 'batch', 'sum' or 'mean', got {normalize!r}")
    terms = []
    for leaf in jax.tree.leaves(activations):
        a = jnp.asarray(leaf)
        a = a.astype(_acc_dtype(a))
        value = l1 * jnp.sum(_abs(a)) + l2 * jnp.sum(a * a)
        if normalize == "batch" and a.ndim > 0:
            value = value / max(a.shape[0], 1)  # Keras: divide_no_nan
        elif normalize == "mean" and a.size:
            value = value / a.size
        terms.append(value)
    return _total(terms)


def equivalent_weight_decay(l2: float, convention: str = "sum") -> float:
    r"""The SGD ``weight_decay`` that equals an L2 penalty of strength ``l2`` in the loss.

    - ``convention="sum"``: penalty :math:`\lambda \sum w^2` (jaxreg's
      :func:`l2_penalty`, the usual PyTorch loop ``l2 * sum(p.pow(2).sum())``, Keras'
      ``L2(l2)``): gradient :math:`2\lambda w`, so ``weight_decay = 2 * l2``.
    - ``convention="half"``: penalty :math:`\tfrac{\lambda}{2} \sum w^2` (textbook
      :math:`\tfrac12\lambda\lVert w\rVert^2`, Optax's ``add_decayed_weights`` viewed as a
      penalty): gradient :math:`\lambda w`, so ``weight_decay = l2``.

    Exact for plain SGD (and for coupled decay in any optimizer: the same gradient);
    *not* equal to decoupled decay (AdamW), which no loss penalty reproduces.

    Args:
      l2: the penalty's strength, ``>= 0``.
      convention: ``"sum"`` or ``"half"``.

    Returns:
      The equivalent coupled weight decay, a float.

    Raises:
      ValueError: negative or non-finite ``l2``; unknown ``convention``.

    Example:
      >>> import jaxreg
      >>> jaxreg.equivalent_weight_decay(5e-4), jaxreg.equivalent_weight_decay(5e-4, "half")
      (0.001, 0.0005)
    """
    if callable(l2) or isinstance(l2, jax.core.Tracer):
        raise ValueError(f"l2 must be a concrete float, got {l2!r}")
    check_nonnegative("l2", l2)
    if convention not in ("sum", "half"):
        raise ValueError(f"convention must be 'sum' or 'half', got {convention!r}")
    value = concrete_float(l2)
    return 2.0 * value if convention == "sum" else value
