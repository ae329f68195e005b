"""torch ``state_dict`` ↔ Flax variables, layer by layer.

Layouts: Linear weight ``(out, in)`` ↔ Dense kernel ``(in, out)``; Conv2d weight
``(O, I, kH, kW)`` ↔ Conv kernel ``(kH, kW, I, O)``; a Linear after a conv flattens
``(C, H, W)`` in torch and ``(H, W, C)`` in Flax, so its rows are permuted (``chw=``);
BatchNorm's running statistics go to the ``batch_stats`` collection. Embedding weight
``(num, dim)`` is the same in both. Works on plain nested dicts, which is what linen
uses and what ``flax.nnx`` reads/writes with ``nnx.to_pure_dict`` /
``nnx.replace_by_pure_dict`` (see :func:`to_nnx`).

Everything is checked: a missing or unexpected key, or a shape that does not fit, is a
``ValueError`` listing everything that did not fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Layer:
    torch_name: str  # prefix in the state_dict, e.g. "fc1"
    flax_name: str  # "/"-joined path in the Flax params, e.g. "fc1"

    def to_flax(self, get) -> dict[str, dict[str, np.ndarray]]:  # pragma: no cover
        raise NotImplementedError

    def to_torch(self, get) -> dict[str, np.ndarray]:  # pragma: no cover
        raise NotImplementedError


@dataclass(frozen=True)
class Linear(Layer):
    chw: tuple[int, int, int] | None = None  # input is a flattened (C, H, W) feature map

    def to_flax(self, get):
        w = get("weight")
        if self.chw is not None:
            c, h, wd = self.chw
            w = w.reshape(w.shape[0], c, h, wd).transpose(0, 2, 3, 1).reshape(w.shape[0], -1)
        return {"params": {"kernel": w.T, "bias": get("bias")}}

    def to_torch(self, get):
        k = get("params", "kernel").T
        if self.chw is not None:
            c, h, wd = self.chw
            k = k.reshape(k.shape[0], h, wd, c).transpose(0, 3, 1, 2).reshape(k.shape[0], -1)
        return {"weight": k, "bias": get("params", "bias")}


@dataclass(frozen=True)
class Conv2d(Layer):
    bias: bool = True

    def to_flax(self, get):
        out = {"kernel": get("weight").transpose(2, 3, 1, 0)}
        if self.bias:
            out["bias"] = get("bias")
        return {"params": out}

    def to_torch(self, get):
        out = {"weight": get("params", "kernel").transpose(3, 2, 0, 1)}
        if self.bias:
            out["bias"] = get("params", "bias")
        return out


@dataclass(frozen=True)
class LayerNorm(Layer):
    def to_flax(self, get):
        return {"params": {"scale": get("weight"), "bias": get("bias")}}

    def to_torch(self, get):
        return {"weight": get("params", "scale"), "bias": get("params", "bias")}


@dataclass(frozen=True)
class BatchNorm(Layer):
    def to_flax(self, get):
        return {
            "params": {"scale": get("weight"), "bias": get("bias")},
            "batch_stats": {"mean": get("running_mean"), "var": get("running_var")},
        }

    def to_torch(self, get):
        return {
            "weight": get("params", "scale"),
            "bias": get("params", "bias"),
            "running_mean": get("batch_stats", "mean"),
            "running_var": get("batch_stats", "var"),
            "num_batches_tracked": None,  # kept from the target state_dict
        }


@dataclass(frozen=True)
class Embedding(Layer):
    def to_flax(self, get):
        return {"params": {"embedding": get("weight")}}

    def to_torch(self, get):
        return {"weight": get("params", "embedding")}


def _np(x: Any) -> np.ndarray:
    """A numpy *copy*: ``tensor.numpy()`` shares memory with the tensor, and ``jnp.asarray``
    may alias a numpy buffer on CPU, so without the copy an in-place torch update
    (``optimizer.step()``) would silently change the converted JAX arrays too."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.array(x, copy=True)


def _set(tree: dict, path: list[str], value) -> None:
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


def _get(tree: dict, path: list[str]):
    for k in path:
        tree = tree[k]
    return tree


def torch_to_flax(
    state_dict: dict, layers: list[Layer], template: dict | None = None
) -> dict[str, dict]:
    """Flax variables (``{"params": ..., "batch_stats": ...}``) from a torch state_dict.

    Args:
      state_dict: ``model.state_dict()`` (tensors or arrays).
      layers: the model's layers, e.g. ``[Linear("fc1", "fc1"), ...]``.
      template: optional Flax variables (e.g. from ``model.init``) whose paths, shapes
        and dtypes the result must match; the result takes the template's dtypes.

    Raises:
      ValueError: listing every missing/unexpected key and every shape that does not fit.
    """
    sd = {k: _np(v) for k, v in state_dict.items()}
    used, problems, out = set(), [], {}
    for layer in layers:

        def get(name, _l=layer):
            key = f"{_l.torch_name}.{name}"
            if key not in sd:
                problems.append(f"missing torch key {key!r}")
                return np.zeros(0)
            used.add(key)
            return sd[key]

        for coll, leaves in layer.to_flax(get).items():
            for leaf, value in leaves.items():
                _set(out, [coll, *layer.flax_name.split("/"), leaf], value)
    for key in sd:
        if key not in used and not key.endswith("num_batches_tracked"):
            problems.append(f"unexpected torch key {key!r}")
    if template is not None and not problems:
        problems += _compare_to_template(out, template)
        if not problems:
            out = _cast_like(out, template)
    if problems:
        raise ValueError("torch -> flax conversion does not fit: " + "; ".join(problems))
    return out


def flax_to_torch(variables: dict, layers: list[Layer], template: dict) -> dict:
    """A torch state_dict (numpy arrays) from Flax variables; ``template`` is the target
    ``model.state_dict()`` (its keys, shapes and ``num_batches_tracked`` are kept)."""
    tmpl = {k: _np(v) for k, v in template.items()}
    out, problems = {}, []
    for layer in layers:

        def get(*path, _l=layer):
            try:
                return np.asarray(_get(variables, [path[0], *_l.flax_name.split("/"), *path[1:]]))
            except (KeyError, TypeError):
                problems.append(
                    f"missing flax path {'/'.join([path[0], _l.flax_name, *path[1:]])!r}"
                )
                return np.zeros(0)

        for name, value in layer.to_torch(get).items():
            key = f"{layer.torch_name}.{name}"
            if key not in tmpl:
                problems.append(f"unexpected torch key {key!r}")
                continue
            if value is None:
                value = tmpl[key]
            if value.shape != tmpl[key].shape:
                problems.append(f"{key}: shape {value.shape} vs torch {tmpl[key].shape}")
            out[key] = value.astype(tmpl[key].dtype)
    for key in tmpl:
        if key not in out:
            problems.append(f"torch key {key!r} not produced by any layer")
    if problems:
        raise ValueError("flax -> torch conversion does not fit: " + "; ".join(problems))
    return out


def _flat(tree: dict, prefix=()) -> dict[tuple, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) or hasattr(v, "items"):
            out.update(_flat(v, (*prefix, k)))
        else:
            out[(*prefix, k)] = v
    return out


def _compare_to_template(out: dict, template: dict) -> list[str]:
    a, b = _flat(out), _flat(dict(template))
    problems = [f"flax path {'/'.join(k)!r} missing from the conversion" for k in b if k not in a]
    problems += [f"converted path {'/'.join(k)!r} not in the flax model" for k in a if k not in b]
    for k in a.keys() & b.keys():
        if tuple(np.shape(a[k])) != tuple(np.shape(b[k])):
            problems.append(f"{'/'.join(k)}: converted {np.shape(a[k])} vs flax {np.shape(b[k])}")
    return sorted(problems)


def _cast_like(out: dict, template: dict) -> dict:
    import jax.numpy as jnp

    res = {}
    for k, v in out.items():
        res[k] = (
            _cast_like(v, template[k])
            if isinstance(v, dict)
            else jnp.asarray(v, dtype=template[k].dtype)
        )
    return res


def to_nnx(variables: dict, module: Any) -> None:
    """Write converted variables into a ``flax.nnx`` module whose attribute names follow
    the same paths (``nnx.Linear`` kernel/bias, ``nnx.Conv``, ``nnx.LayerNorm``)."""
    from flax import nnx

    state = nnx.state(module, nnx.Param)
    nnx.replace_by_pure_dict(state, variables["params"])
    nnx.update(module, state)
