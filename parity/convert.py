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

from jaxreg._tree import torch_name_candidates


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


# --- automatic conversion: match modules by name, no spec list ---------------------------
#
# ``from_torch(torch_module, flax_target)`` walks ``torch_module.named_modules()`` and the
# Flax target's variables (a linen variables dict or an ``nnx.Module``), pairs every torch
# module that owns parameters or buffers with the Flax module at the same name, and converts
# each tensor by a rule of its torch layer type. ``to_torch`` is the inverse.

_SUPPORTED = (
    "Linear", "Conv1d", "Conv2d", "Conv3d", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
    "LayerNorm", "GroupNorm", "RMSNorm", "Embedding", "MultiheadAttention",
    "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d",
)  # fmt: skip
_CONVS = {k for k in _SUPPORTED if k.startswith("Conv")}  # plain and transposed


@dataclass(frozen=True)
class LeafMap:
    """One torch tensor <-> one or more Flax leaves, with the conversions both ways."""

    torch_key: str  # state_dict key, e.g. "layer1.0.conv1.weight"
    flax_paths: tuple[tuple[str, ...], ...]  # (collection, *module path, leaf name)
    to_flax: Any  # np.ndarray -> tuple of np.ndarray (one per flax path)
    to_torch: Any  # tuple of np.ndarray -> np.ndarray
    is_param: bool  # a torch Parameter (else a buffer)


@dataclass(frozen=True)
class ModuleMap:
    """How a torch module's tensors map onto a Flax model's variables.

    Attributes:
      leaves: one :class:`LeafMap` per torch tensor (state_dict order).
      flax_kind: ``"linen"`` or ``"nnx"``.
    """

    leaves: tuple[LeafMap, ...]
    flax_kind: str

    def state_to_jax(self, torch_name: str, array: np.ndarray) -> np.ndarray:
        """A parameter-shaped tensor (e.g. optimizer state) of ``torch_name`` in its Flax
        leaf's layout (for ``jaxreg.optim.state_from_torch(..., to_jax=...)``)."""
        lm = self._one(torch_name)
        return lm.to_flax(np.asarray(array))[0]

    def state_to_torch(self, torch_name: str, array: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`state_to_jax` (``state_to_torch(..., to_torch=...)``)."""
        lm = self._one(torch_name)
        return lm.to_torch((np.asarray(array),))

    def _one(self, torch_name: str) -> LeafMap:
        for lm in self.leaves:
            if lm.torch_key == torch_name:
                if len(lm.flax_paths) != 1:
                    raise ValueError(
                        f"{torch_name} maps onto {len(lm.flax_paths)} Flax leaves; its "
                        "optimizer state cannot be converted leaf by leaf"
                    )
                return lm
        raise ValueError(f"{torch_name!r} is not a tensor of the mapped torch module")

    def param_paths(self) -> dict[str, tuple[str, ...]]:
        """``{torch parameter name: "/"-joined path in the Flax params}`` (one-to-one
        parameters only, e.g. for ``jaxreg.optim.from_torch(..., paths=...)``)."""
        return {
            lm.torch_key: lm.flax_paths[0][1:]
            for lm in self.leaves
            if lm.is_param and len(lm.flax_paths) == 1
        }


def _perm_inverse(perm):
    return tuple(int(i) for i in np.argsort(perm))


def _linear_rule(chw):
    def fwd(w):
        if chw is not None:
            spatial = int(np.prod(chw[1:]))
            w = w.reshape(w.shape[0], chw[0], spatial).transpose(0, 2, 1).reshape(w.shape[0], -1)
        return w.T

    def inv(k):
        w = k.T
        if chw is not None:
            spatial = int(np.prod(chw[1:]))
            w = w.reshape(w.shape[0], spatial, chw[0]).transpose(0, 2, 1).reshape(w.shape[0], -1)
        return w

    return fwd, inv


def _one(fn):
    """Lift an array -> array function to the tuple interface of :class:`LeafMap`."""
    return lambda x: (fn(x),)


def _unone(fn):
    return lambda xs: fn(xs[0])


def _conv_transpose_rule(nd: int, transpose_kernel: bool):
    """torch ``ConvTranspose{nd}d`` weight ``(I, O, *k)`` <-> Flax ``ConvTranspose`` kernel.

    torch's transposed convolution is the gradient of a convolution: it correlates the
    stride-dilated input with the *spatially flipped* kernel. Flax's default
    (``transpose_kernel=False``) correlates with the kernel as stored, ``(*k, I, O)``, so
    the kernel is flipped; with ``transpose_kernel=True`` Flax flips it itself and stores
    ``(*k, O, I)``.
    """
    spatial = tuple(range(nd))
    if transpose_kernel:
        perm = (*range(2, 2 + nd), 1, 0)
        inv = _perm_inverse(perm)
        return lambda w: w.transpose(perm), lambda k: k.transpose(inv)
    perm = (*range(2, 2 + nd), 0, 1)
    inv = _perm_inverse(perm)

    def fwd(w):
        return np.ascontiguousarray(np.flip(w.transpose(perm), axis=spatial))

    def back(k):
        return np.ascontiguousarray(np.flip(k, axis=spatial).transpose(inv))

    return fwd, back


def _rules(kind: str, chw, transpose_kernel: bool = False) -> list[tuple[str, str, str, Any, Any]]:
    """``(torch attr, flax leaf, collection, to_flax, to_torch)`` for a module type."""
    ident = (lambda x: x, lambda x: x)
    if kind.startswith("ConvTranspose"):
        return [
            ("weight", "kernel", "params", *_conv_transpose_rule(int(kind[-2]), transpose_kernel)),
            ("bias", "bias", "params", *ident),
        ]
    if kind == "Linear":
        return [
            ("weight", "kernel", "params", *_linear_rule(chw)),
            ("bias", "bias", "params", *ident),
        ]
    if kind in ("Conv1d", "Conv2d", "Conv3d"):
        nd = int(kind[4])
        perm = (*range(2, 2 + nd), 1, 0)  # (O, I, *k) -> (*k, I, O)
        inv = _perm_inverse(perm)
        return [
            ("weight", "kernel", "params", lambda w: w.transpose(perm), lambda k: k.transpose(inv)),
            ("bias", "bias", "params", *ident),
        ]
    if kind.startswith("BatchNorm"):
        return [
            ("weight", "scale", "params", *ident),
            ("bias", "bias", "params", *ident),
            ("running_mean", "mean", "batch_stats", *ident),
            ("running_var", "var", "batch_stats", *ident),
            ("num_batches_tracked", "num_batches_tracked", "batch_stats", *ident),
        ]
    if kind in ("LayerNorm", "GroupNorm"):
        return [("weight", "scale", "params", *ident), ("bias", "bias", "params", *ident)]
    if kind == "RMSNorm":
        return [("weight", "scale", "params", *ident)]
    if kind == "Embedding":
        return [("weight", "embedding", "params", *ident)]
    raise AssertionError(kind)  # pragma: no cover


def _flax_modules(target: Any) -> tuple[dict[tuple[str, ...], dict[str, tuple[str, Any]]], str]:
    """``{module path: {leaf: (collection, array)}}`` of a linen variables dict or nnx module."""
    mods: dict[tuple[str, ...], dict[str, tuple[str, Any]]] = {}
    if _is_nnx(target):
        from flax import nnx

        for path, var in nnx.to_flat_state(nnx.state(target)):
            if not isinstance(var, (nnx.Param, nnx.BatchStat)):
                continue  # RNG counts and the like
            coll = "params" if isinstance(var, nnx.Param) else "batch_stats"
            parts = tuple(str(p) for p in path)
            mods.setdefault(parts[:-1], {})[parts[-1]] = (coll, var.get_value())
        return mods, "nnx"
    if not hasattr(target, "items") or "params" not in target:
        raise ValueError(
            "from_torch: the Flax target must be an nnx.Module or a linen variables dict "
            "with a 'params' collection (model.init(...))"
        )
    for coll in ("params", "batch_stats"):
        for path, leaf in _flat(dict(target.get(coll, {}))).items():
            parts = tuple(str(p) for p in path)
            mods.setdefault(parts[:-1], {})[parts[-1]] = (coll, leaf)
    return mods, "linen"


def _is_nnx(x: Any) -> bool:
    try:
        from flax import nnx
    except ImportError:  # pragma: no cover
        return False
    return isinstance(x, nnx.Module)


def _torch_layers(torch_module: Any):
    """``(name, module, class name)`` of every module that owns parameters or buffers."""
    out = []
    for name, mod in torch_module.named_modules():
        own = [k for k, v in mod._parameters.items() if v is not None]
        own += [k for k, v in mod._buffers.items() if v is not None]
        if own:
            out.append((name, mod, type(mod).__name__))
    return out


def _detect_flatten(torch_module: Any, example_input: Any) -> dict[str, tuple[int, ...]]:
    """``{linear name: (C, *spatial)}`` for every Linear fed by a flattened feature map,
    found by running the torch module once on ``example_input`` with hooks."""
    import torch

    names = {id(m): n for n, m in torch_module.named_modules()}
    last_out: list[tuple[int, ...]] = []
    found: dict[str, tuple[int, ...]] = {}
    hooks = []

    def post(mod, args, out):
        if isinstance(out, torch.Tensor) and not isinstance(mod, torch.nn.Linear):
            last_out.append(tuple(out.shape))

    def pre(mod, args):
        x = args[0] if args else None
        if isinstance(x, torch.Tensor) and x.ndim == 2 and last_out and len(last_out[-1]) >= 3:
            shape = last_out[-1]
            if int(np.prod(shape[1:])) == x.shape[1]:
                if int(np.prod(shape[2:])) > 1:
                    found[names[id(mod)]] = tuple(shape[1:])
            else:
                found[names[id(mod)]] = ()  # cannot tell: the user must say
        if isinstance(x, torch.Tensor):
            last_out.append(tuple(x.shape))

    for m in torch_module.modules():
        if not list(m.children()):
            hooks.append(m.register_forward_hook(post))
        if isinstance(m, torch.nn.Linear):
            hooks.append(m.register_forward_pre_hook(pre))
    was_training = torch_module.training
    try:
        torch_module.eval()
        with torch.no_grad():
            torch_module(example_input)
    finally:
        torch_module.train(was_training)
        for h in hooks:
            h.remove()
    return found


def module_map(
    torch_module: Any,
    flax_target: Any,
    *,
    rename: dict[str, str] | None = None,
    flatten: dict[str, tuple[int, ...]] | None = None,
    example_input: Any = None,
) -> ModuleMap:
    """Pair a torch module's tensors with a Flax model's variables, by module name.

    Every torch module that owns parameters or buffers (``named_modules()``) is matched
    with the Flax module at the same name: ``"layer1.0.conv"`` is looked up as
    ``layer1/0/conv`` (nnx lists), ``layer1_0/conv`` (linen list attributes),
    ``layer1/layers/0/conv`` and ``layer1/layers_0/conv`` (Sequential). ``rename`` maps a
    torch name prefix to a Flax path for layers named differently. Layer rules:

    - ``Linear``: weight ``(out, in)`` -> kernel ``(in, out)``; after a flattened
      feature map the rows are permuted from torch's ``(C, *spatial)`` order to Flax's
      ``(*spatial, C)``.
    - ``Conv1d/2d/3d``: weight ``(O, I, *k)`` -> kernel ``(*k, I, O)``.
    - ``ConvTranspose1d/2d/3d`` (``groups=1``): weight ``(I, O, *k)`` -> Flax
      ``ConvTranspose`` kernel ``(*k, I, O)`` flipped spatially (Flax's default
      ``transpose_kernel=False``), or ``(*k, O, I)`` unflipped for ``transpose_kernel=True``
      -- read from an nnx module, told from the kernel shape in linen variables when the
      channel counts differ; with equal counts linen variables do not say, and the default
      is assumed. The Flax layer's padding must be ``(d * (k - 1) - p, d * (k - 1) - p +
      output_padding)`` per spatial dim for torch's kernel size k, padding p and dilation
      d (Flax ``kernel_dilation=d``).
    - ``BatchNorm1d/2d/3d``: weight/bias -> params scale/bias; running_mean/var ->
      batch_stats mean/var; num_batches_tracked -> batch_stats num_batches_tracked when
      the Flax module has it (:class:`jaxreg.nn.BatchNorm` does), else it stays torch's.
    - ``LayerNorm``, ``GroupNorm``: weight/bias -> scale/bias; ``RMSNorm``: weight ->
      scale; ``Embedding``: weight -> embedding.
    - ``MultiheadAttention`` (one embedding size, ``in_proj_weight``): the q/k/v rows
      -> query/key/value kernels ``(E, heads, head_dim)`` and biases; ``out_proj`` ->
      out kernel ``(heads, head_dim, E)`` (Flax's ``MultiHeadDotProductAttention`` /
      ``nnx.MultiHeadAttention``).

    Args:
      torch_module: the ``torch.nn.Module``.
      flax_target: the Flax model's variables (linen: ``model.init(...)``) or the
        ``nnx.Module``; it gives the paths and shapes.
      rename: ``{torch name prefix: flax path}`` ("/"-joined), e.g. ``{"features":
        "backbone"}``.
      flatten: ``{linear name: (C, *spatial)}`` for Linears fed by a flattened feature
        map; found automatically when ``example_input`` is given.
      example_input: one torch input batch, to find the flattened Linears (required when
        the model has both convolutions and Linears and ``flatten`` is not given).

    Returns:
      A :class:`ModuleMap`.

    Raises:
      ValueError: naming every torch module that did not fit: an unsupported layer
        type, no Flax module of that name (the candidates tried are listed), a Flax
        module without the expected leaves, a shape that differs after conversion, or
        Flax leaves that no torch tensor fills.
    """
    flax_mods, flax_kind = _flax_modules(flax_target)
    layers = _torch_layers(torch_module)
    kinds = {k for _, _, k in layers}
    flatten = dict(flatten or {})
    if example_input is not None:
        detected = _detect_flatten(torch_module, example_input)
        unknown = [n for n, shape in detected.items() if shape == () and n not in flatten]
        if unknown:
            raise ValueError(
                f"from_torch: cannot tell the feature-map shape flattened into {unknown} "
                "(a functional op sits between the last module and the flatten); pass "
                "flatten={name: (C, H, W)}"
            )
        flatten = {**{n: s for n, s in detected.items() if s}, **flatten}
    elif kinds & _CONVS and "Linear" in kinds and not flatten:
        raise ValueError(
            "from_torch: the model has convolutions and Linear layers; pass example_input= "
            "(one input batch) so that a Linear fed by a flattened feature map gets its rows "
            "permuted, or flatten={linear name: (C, H, W)} ({} if none is)"
        )
    rename = dict(rename or {})
    problems: list[str] = []
    leaves: list[LeafMap] = []
    consumed: set[str] = set()
    sd = torch_module.state_dict()
    for name, mod, kind in layers:
        if name in consumed:
            continue
        parts = name.split(".") if name else []
        for prefix, target in sorted(rename.items(), key=lambda kv: -len(kv[0])):
            if name == prefix or name.startswith(prefix + "."):
                parts = [*target.split("/"), *name[len(prefix) :].lstrip(".").split(".")]
                parts = [p for p in parts if p]
                break
        if kind not in _SUPPORTED:
            problems.append(f"{name or '<root>'}: {kind} is not a supported layer type")
            continue
        if kind.startswith("ConvTranspose") and mod.groups != 1:
            problems.append(
                f"{name}: {kind} with groups={mod.groups}: Flax's ConvTranspose has no "
                "feature groups"
            )
            continue
        cands = torch_name_candidates(parts)
        if kind == "MultiheadAttention":  # its leaves sit in query/key/value/out submodules
            consumed.add(f"{name}.out_proj" if name else "out_proj")
            hit = next((c for c in cands if (*c, "query") in flax_mods), None)
        else:
            hit = next((c for c in cands if c in flax_mods), None)
        if hit is None:
            tried = ", ".join("/".join(c) for c in cands[:4])
            problems.append(f"{name}: {kind} has no Flax module (tried {tried}); use rename=")
            continue
        fl = flax_mods.get(hit, {})
        key = (name + ".") if name else ""
        if kind == "MultiheadAttention":
            maps, errs = _mha(mod, key, hit, fl)
        else:
            maps, errs = [], []
            own = {k for k, v in mod._parameters.items() if v is not None}
            own |= {k for k, v in mod._buffers.items() if v is not None}
            transposed = kind.startswith("ConvTranspose")
            tk = _transpose_kernel(flax_target, hit, fl, mod) if transposed else False
            for attr, leaf, coll, fwd, inv in _rules(kind, flatten.get(name), tk):
                if attr not in own:
                    continue
                if leaf not in fl:
                    if attr == "num_batches_tracked":
                        continue  # a Flax BatchNorm without a counter: torch keeps its own
                    errs.append(f"{name}: Flax module {'/'.join(hit)} has no {leaf!r}")
                    continue
                maps.append(
                    LeafMap(key + attr, ((coll, *hit, leaf),), _one(fwd), _unone(inv),
                            attr in mod._parameters)
                )  # fmt: skip
        for lm in maps:
            converted = lm.to_flax(_np(sd[lm.torch_key]))
            for path, arr in zip(lm.flax_paths, converted):
                want = flax_mods[path[1:-1]].get(path[-1])
                if want is None:
                    errs.append(f"{lm.torch_key}: Flax leaf {'/'.join(path[1:])} missing")
                elif tuple(np.shape(arr)) != tuple(np.shape(want[1])):
                    errs.append(
                        f"{lm.torch_key}: converted {tuple(np.shape(arr))} vs Flax "
                        f"{'/'.join(path[1:])} {tuple(np.shape(want[1]))}"
                    )
        problems += errs
        leaves += maps
    covered = {p[1:] for lm in leaves for p in lm.flax_paths}
    for path, fl in flax_mods.items():
        for leaf in fl:
            if (*path, leaf) not in covered and leaf != "num_batches_tracked":
                problems.append(f"Flax leaf {'/'.join((*path, leaf))} is filled by no torch tensor")
    if problems:
        raise ValueError("torch <-> Flax module map does not fit:\n  " + "\n  ".join(problems))
    return ModuleMap(tuple(leaves), flax_kind)


def _transpose_kernel(flax_target: Any, hit: tuple[str, ...], fl: dict, mod: Any) -> bool:
    """Whether the Flax ``ConvTranspose`` at ``hit`` has ``transpose_kernel=True``: read
    from an nnx module; from a linen kernel's shape ``(*k, O, I)`` when the channel counts
    differ; else Flax's default, False (linen variables do not record the flag)."""
    if _is_nnx(flax_target):
        obj = flax_target
        for part in hit:
            obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
        return bool(getattr(obj, "transpose_kernel", False))
    i, o = mod.in_channels, mod.out_channels
    shape = tuple(np.shape(fl["kernel"][1])) if "kernel" in fl else ()
    return i != o and shape[-2:] == (o, i)


def _mha(mod, key, hit, fl):
    """MultiheadAttention: in_proj (q, k, v rows) and out_proj <-> query/key/value/out."""
    errs: list[str] = []
    if getattr(mod, "in_proj_weight", None) is None:
        return [], [f"{key.rstrip('.')}: MultiheadAttention with kdim/vdim != embed_dim"]
    e, h = mod.embed_dim, mod.num_heads
    d = e // h

    def split_w(w):
        return tuple(w[i * e : (i + 1) * e].T.reshape(e, h, d) for i in range(3))

    def join_w(ks):
        return np.concatenate([k.reshape(e, e).T for k in ks], 0)

    def split_b(b):
        return tuple(b[i * e : (i + 1) * e].reshape(h, d) for i in range(3))

    def join_b(bs):
        return np.concatenate([b.reshape(e) for b in bs], 0)

    qkv = ("query", "key", "value")
    maps = [
        LeafMap(key + "in_proj_weight", tuple(("params", *hit, s, "kernel") for s in qkv),
                split_w, join_w, True),
    ]  # fmt: skip
    if mod.in_proj_bias is not None:
        maps.append(
            LeafMap(key + "in_proj_bias", tuple(("params", *hit, s, "bias") for s in qkv),
                    split_b, join_b, True)
        )  # fmt: skip
    maps.append(
        LeafMap(key + "out_proj.weight", (("params", *hit, "out", "kernel"),),
                _one(lambda w: w.T.reshape(h, d, e)), _unone(lambda k: k.reshape(e, e).T), True)
    )  # fmt: skip
    if mod.out_proj.bias is not None:
        maps.append(
            LeafMap(key + "out_proj.bias", (("params", *hit, "out", "bias"),),
                    _one(lambda b: b), _unone(lambda b: b), True)
        )  # fmt: skip
    if getattr(mod, "bias_k", None) is not None:
        errs.append(f"{key.rstrip('.')}: MultiheadAttention with add_bias_kv is not supported")
    return maps, errs


def from_torch(
    torch_module: Any,
    flax_target: Any,
    *,
    rename: dict[str, str] | None = None,
    flatten: dict[str, tuple[int, ...]] | None = None,
    example_input: Any = None,
) -> Any:
    """Load a torch module's weights and buffers into a Flax model, matched by name.

    No spec list: see :func:`module_map` for the matching and the layer rules. dtypes
    are torch's (float64 stays float64; running statistics keep theirs); everything is
    copied (no memory shared with torch).

    Args:
      torch_module: the ``torch.nn.Module``.
      flax_target: linen variables (``model.init(...)``: paths and shapes) or an
        ``nnx.Module`` (updated in place).
      rename, flatten, example_input: as for :func:`module_map`.

    Returns:
      For linen variables, a new variables dict (``params``, ``batch_stats`` and any other
      collection of ``flax_target`` unchanged); for an nnx module, the module, updated.

    Raises:
      ValueError: naming every module that did not fit (:func:`module_map`).

    Example:
      >>> import torch, jax, jax.numpy as jnp, flax.linen as nn
      >>> from parity import convert
      >>> tm = torch.nn.Sequential(torch.nn.Linear(3, 2))
      >>> v = nn.Sequential([nn.Dense(2)]).init(jax.random.key(0), jnp.ones((1, 3)))
      >>> v = convert.from_torch(tm, v)
      >>> v["params"]["layers_0"]["kernel"].shape
      (3, 2)
    """
    mm = module_map(
        torch_module, flax_target, rename=rename, flatten=flatten, example_input=example_input
    )
    return _load_flax(mm, torch_module.state_dict(), flax_target)


def _load_flax(mm: ModuleMap, sd: dict[str, Any], flax_target: Any) -> Any:
    """``from_torch`` with its module map already made: a torch ``state_dict`` into the
    Flax target (linen: a new dict; nnx: the module, updated in place)."""
    flat = {}
    for lm in mm.leaves:
        for path, arr in zip(lm.flax_paths, lm.to_flax(_np(sd[lm.torch_key]))):
            flat[path] = np.array(arr, order="C", copy=True)  # (ascontiguousarray makes 0-d 1-d)
    return _write_flax(flax_target, flat, mm.flax_kind)


def _write_flax(target: Any, flat: dict[tuple[str, ...], np.ndarray], kind: str) -> Any:
    import jax.numpy as jnp

    if kind == "nnx":
        from flax import nnx

        for path, var in nnx.to_flat_state(nnx.state(target)):
            parts = tuple(str(p) for p in path)
            coll = "params" if isinstance(var, nnx.Param) else "batch_stats"
            if (coll, *parts) in flat:
                var.set_value(jnp.asarray(flat[(coll, *parts)]))
        return target
    out = {k: v for k, v in dict(target).items()}
    for coll in ("params", "batch_stats"):
        if coll not in out:
            continue
        tree = _copy_tree(dict(out[coll]))
        for (c, *path), arr in flat.items():
            if c == coll:
                _set(tree, list(path), jnp.asarray(arr))
        out[coll] = tree
    return out


def _copy_tree(tree: dict) -> dict:
    return {k: _copy_tree(dict(v)) if hasattr(v, "items") else v for k, v in tree.items()}


def to_torch(
    flax_source: Any,
    torch_module: Any,
    *,
    rename: dict[str, str] | None = None,
    flatten: dict[str, tuple[int, ...]] | None = None,
    example_input: Any = None,
) -> Any:
    """Load Flax variables (linen dict or ``nnx.Module``) into a torch module, in place:
    the inverse of :func:`from_torch` (a round trip is bitwise). Tensors keep the torch
    module's dtypes and devices; ``num_batches_tracked`` comes from the Flax side when it
    has one. Returns the torch module."""
    import torch

    mm = module_map(
        torch_module, flax_source, rename=rename, flatten=flatten, example_input=example_input
    )
    mods, _ = _flax_modules(flax_source)
    sd = torch_module.state_dict()
    new = {}
    for lm in mm.leaves:
        parts = [np.asarray(mods[p[1:-1]][p[-1]][1]) for p in lm.flax_paths]
        t = sd[lm.torch_key]
        new[lm.torch_key] = torch.as_tensor(np.array(lm.to_torch(tuple(parts)), copy=True)).to(
            dtype=t.dtype, device=t.device
        )
    torch_module.load_state_dict({**sd, **new})
    return torch_module
