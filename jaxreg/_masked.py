"""Applying a mask with per-leaf multipliers: the one rule every regularizing transform,
penalty, proximal step and fused optimizer step follows.

A mask (:mod:`jaxreg.masks`) resolves to one multiplier per leaf: ``0`` leaves the leaf
alone, ``1`` applies the hyperparameter as given, any other ``m`` applies ``m`` times it.
"""

from __future__ import annotations

from typing import Any

import jax

from jaxreg._tree import leaf_paths, path_str


def scaled(value: Any, factor: float) -> Any:
    """``factor * value`` for a mask multiplier; ``value`` itself (bitwise) for 1."""
    return value if factor == 1.0 else factor * value


def aligned(updates: Any, params: Any, who: str = "this jaxreg transform") -> tuple:
    """``(treedef, update_leaves, param_leaves)`` of two trees of one structure.

    Raises:
      ValueError: ``params`` is ``None`` (naming ``who``), the structures differ, or
        ``params`` holds ``None`` where ``updates`` has an array (each such path named).
    """
    if params is None:
        raise ValueError(
            f"{who} needs the params (the current ones): call update(updates, state, params)"
        )
    u_leaves, treedef = jax.tree.flatten(updates)
    try:
        p_leaves = treedef.flatten_up_to(params)
    except (ValueError, TypeError) as e:
        raise ValueError(f"updates and params have different structures: {e}") from None
    holes = [
        path_str(path)
        for path, u, p in zip(leaf_paths(updates), u_leaves, p_leaves)
        if p is None and u is not None
    ]
    if holes:
        raise ValueError(
            f"updates have arrays at {', '.join(holes)} where params hold None: the two "
            "trees must have the same structure"
        )
    return treedef, u_leaves, p_leaves
