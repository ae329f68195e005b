"""Torch parameter groups <-> jaxreg masks, by torch's parameter names.

A torch optimizer's param groups give parameters different ``weight_decay`` (typically 0 for
biases and norm layers); jaxreg expresses the same with a multiplier mask. These helpers
translate in both directions through :func:`torch_name`, the ``named_parameters()`` name of a
Flax leaf path.
"""

from __future__ import annotations

from typing import Any

import jax

from jaxreg._tree import is_float_leaf, leaf_paths, path_str
from jaxreg._validate import check_nonnegative
from jaxreg.masks import Mask, MaskLike, _PerLeaf, resolve_factors

__all__ = ["torch_name", "to_param_groups", "from_param_groups"]


_TORCH_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "embedding": "weight"}


def torch_name(path: str | tuple[str, ...], rename: dict[str, str] | None = None) -> str:
    """The PyTorch ``named_parameters()`` name of a Flax leaf path.

    The rule: module prefixes renamed by ``rename`` (longest matching Flax prefix
    first, e.g. ``{"Dense_0": "fc1", "blocks": "layers"}``), path components joined
    with ``"."``, and the leaf ``kernel`` (Dense/Conv), ``scale`` (norm layers) or
    ``embedding`` (Embed) called ``weight``. ``bias`` and nnx list indices
    (``blocks/0`` -> ``blocks.0``) carry over as they are.

    Example:
      >>> from jaxreg import optim
      >>> optim.torch_name("Dense_0/kernel", {"Dense_0": "fc1"})
      'fc1.weight'
    """
    parts = list(path) if isinstance(path, tuple) else path.split("/")
    for prefix in sorted(rename or {}, key=lambda p: -len(p.split("/"))):
        pre = prefix.split("/")
        if parts[: len(pre)] == pre:
            parts = rename[prefix].split(".") + parts[len(pre) :]
            break
    if parts:
        parts[-1] = _TORCH_LEAF_NAMES.get(parts[-1], parts[-1])
    return ".".join(p for p in parts if p)


def to_param_groups(
    mask: MaskLike, params: Any, *, weight_decay: float, rename: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """PyTorch parameter groups (by name) that apply ``mask`` with ``weight_decay``.

    One group per distinct multiplier, in order of first appearance:
    ``{"params": [names], "weight_decay": weight_decay * factor}`` -- the unselected
    leaves form a group with ``weight_decay`` ``0.0`` (they still train, as timm's
    ``no_decay`` group). Non-float leaves are not parameters and appear nowhere. Build
    the torch optimizer with ``named = dict(model.named_parameters())`` and
    ``[{**g, "params": [named[n] for n in g["params"]]} for g in groups]``.

    Raises:
      ValueError: two leaves map to the same torch name (pass ``rename``).
    """
    check_nonnegative("weight_decay", weight_decay)
    factors = resolve_factors(mask, params)
    groups: dict[float, list[str]] = {}
    seen: dict[str, str] = {}
    for path, leaf, f in zip(leaf_paths(params), jax.tree.leaves(params), factors):
        if not is_float_leaf(leaf):
            continue
        name = torch_name(path, rename)
        if name in seen:
            raise ValueError(
                f"to_param_groups: {path_str(path)!r} and {seen[name]!r} both map to torch "
                f"name {name!r}; pass rename="
            )
        seen[name] = path_str(path)
        groups.setdefault(f, []).append(name)
    return [{"params": names, "weight_decay": weight_decay * f} for f, names in groups.items()]


def from_param_groups(
    groups: list[dict[str, Any]],
    params: Any,
    *,
    weight_decay: float,
    rename: dict[str, str] | None = None,
) -> Mask:
    """A multiplier mask reproducing PyTorch parameter groups' ``weight_decay``.

    Each group names its parameters (``"params"`` as ``named_parameters()`` names, or
    ``"param_names"`` as torch stores them for optimizers built from named
    parameters); its ``weight_decay`` (``weight_decay`` when the group has none, as
    torch's defaults) becomes the multiplier ``group_weight_decay / weight_decay`` on
    the leaves whose :func:`torch_name` it lists. Use the result as ``mask=`` of a
    jaxreg transform or ``weight_decay_mask=`` of a :mod:`jaxreg.optim` optimizer with
    the same ``weight_decay``.

    Raises:
      ValueError: a name that no leaf has, a name in two groups, a float leaf in no
        group, or a non-zero group decay with ``weight_decay == 0``.
    """
    check_nonnegative("weight_decay", weight_decay)
    paths = leaf_paths(params)
    leaves = jax.tree.leaves(params)
    index = {torch_name(p, rename): i for i, p in enumerate(paths)}
    factors: list[float | None] = [None] * len(leaves)
    problems = []
    for g, group in enumerate(groups):
        names = group.get("param_names", group.get("params"))
        if names is None or not all(isinstance(n, str) for n in names):
            raise ValueError(f"from_param_groups: group {g} must list parameter names (str)")
        wd = group.get("weight_decay", weight_decay)
        check_nonnegative(f"group {g} weight_decay", wd)
        if weight_decay == 0 and wd != 0:
            raise ValueError(f"group {g} has weight_decay={wd} but the base weight_decay is 0")
        factor = 0.0 if wd == 0 else float(wd) / float(weight_decay)
        for n in names:
            if n not in index:
                problems.append(f"group {g}: no leaf is called {n!r}")
            elif factors[index[n]] is not None:
                problems.append(f"{n!r} appears in more than one group")
            else:
                factors[index[n]] = factor
    for p, x, f in zip(paths, leaves, factors):
        if f is None and is_float_leaf(x):
            problems.append(f"leaf {path_str(p)!r} ({torch_name(p, rename)!r}) is in no group")
    if problems:
        raise ValueError("param groups do not fit params: " + "; ".join(problems))
    by_path = {p: (f or 0.0) for p, f in zip(paths, factors)}
    return _PerLeaf(by_path, "from_param_groups(...)")
