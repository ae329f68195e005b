"""Moving between torch.optim and jaxreg.optim: optimizers and optimizer state.

Nothing here imports torch: the functions take live torch objects, read them through
their own methods, and create tensors with the module those objects came from.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxreg._decay import ScheduleState
from jaxreg._tree import leaf_paths, path_str, torch_name_candidates
from jaxreg.optim._adafactor import AdafactorState, adafactor
from jaxreg.optim._adam import AdamaxState, AdamState, NAdamState, adam, adamax, adamw, nadam, radam
from jaxreg.optim._asgd import ASGDState, asgd
from jaxreg.optim._muon import MuonState, muon
from jaxreg.optim._param_groups import _TORCH_LEAF_NAMES
from jaxreg.optim._rms import AdadeltaState, AdagradState, RMSpropState, adadelta, adagrad, rmsprop
from jaxreg.optim._sgd import SGDState, sgd

_FACTORIES = {
    "SGD": sgd, "Adam": adam, "AdamW": adamw, "RMSprop": rmsprop, "Adagrad": adagrad,
    "Adadelta": adadelta, "Adamax": adamax, "NAdam": nadam, "RAdam": radam, "ASGD": asgd,
    "Adafactor": adafactor, "Muon": muon,
}  # fmt: skip
_CORE_STATES = (
    SGDState, AdamState, AdamaxState, NAdamState, RMSpropState, AdagradState, AdadeltaState,
    ASGDState, AdafactorState, MuonState,
)  # fmt: skip
_STATE_OF = {
    "SGD": SGDState, "Adam": AdamState, "AdamW": AdamState, "RMSprop": RMSpropState,
    "Adagrad": AdagradState, "Adadelta": AdadeltaState, "Adamax": AdamaxState,
    "NAdam": NAdamState, "RAdam": AdamState, "ASGD": ASGDState, "Adafactor": AdafactorState,
    "Muon": MuonState,
}  # fmt: skip
_SCALAR_FIELDS = ("mu_product", "eta", "mu")  # per-param 0-d tensors in torch
_FROZEN = "frozen"


def _torch_class(torch_optimizer: Any) -> type | None:
    """The ``torch.optim`` class in the optimizer's MRO nearest to it, or None."""
    for cls in type(torch_optimizer).__mro__:
        module = cls.__module__ or ""
        if module == "torch.optim" or module.startswith("torch.optim."):
            return cls
    return None


def _factory(torch_optimizer: Any):
    """The jaxreg.optim factory for a live torch optimizer, matched by its class itself.

    A class merely *named* like a torch optimizer (a third-party ``SGD``) is refused,
    and so is a subclass of one (its ``step`` may differ from torch's).
    """
    kind = type(torch_optimizer)
    base = _torch_class(torch_optimizer)
    if base is None or base.__name__ not in _FACTORIES:
        raise ValueError(
            f"from_torch: no jaxreg.optim equivalent for {kind.__qualname__} (from "
            f"{kind.__module__}); supported: torch.optim.{{{', '.join(sorted(_FACTORIES))}}}"
        )
    if base is not kind:
        raise ValueError(
            f"from_torch: {kind.__module__}.{kind.__qualname__} subclasses "
            f"torch.optim.{base.__name__} and may change its step; build the transform "
            f"with jaxreg.optim.{_FACTORIES[base.__name__].__name__}(...) if it does not"
        )
    return _FACTORIES[base.__name__]


def _schedule_of(sched: Any, gi: int) -> tuple[Any, Any]:
    """A live torch LR scheduler as ``(lr schedule, momentum schedule or None)`` for param
    group ``gi``: its jaxreg.optim.lr_scheduler closed form, read from its attributes."""
    from jaxreg.optim import lr_scheduler as L

    kind = type(sched).__name__
    module = type(sched).__module__ or ""
    if not module.startswith("torch.optim"):
        raise ValueError(
            f"from_torch: scheduler {kind} is not torch's; record it with "
            "jaxreg.optim.lr_scheduler.schedule_from_torch(scheduler, num_steps) and pass lr="
        )
    base = float(sched.base_lrs[gi]) if hasattr(sched, "base_lrs") else None
    if kind == "StepLR":
        return L.step_lr(base, sched.step_size, sched.gamma), None
    if kind == "MultiStepLR":
        return L.multi_step_lr(base, list(sched.milestones.elements()), sched.gamma), None
    if kind == "ConstantLR":
        return L.constant_lr(base, sched.factor, sched.total_iters), None
    if kind == "LinearLR":
        return L.linear_lr(base, sched.start_factor, sched.end_factor, sched.total_iters), None
    if kind == "ExponentialLR":
        return L.exponential_lr(base, sched.gamma), None
    if kind == "PolynomialLR":
        return L.polynomial_lr(base, sched.total_iters, sched.power), None
    if kind == "CosineAnnealingLR":
        return L.cosine_annealing_lr(base, sched.T_max, sched.eta_min), None
    if kind == "CosineAnnealingWarmRestarts":
        return L.cosine_annealing_warm_restarts(base, sched.T_0, sched.T_mult, sched.eta_min), None
    if kind == "OneCycleLR":
        group = sched.optimizer.param_groups[gi]
        phases = sched._schedule_phases
        kw = dict(
            total_steps=sched.total_steps,
            pct_start=(phases[0]["end_step"] + 1) / sched.total_steps,
            anneal_strategy=sched._anneal_func_type,
            three_phase=len(phases) == 3,
        )
        lr = L.one_cycle_lr(
            group["max_lr"], div_factor=group["max_lr"] / group["initial_lr"],
            final_div_factor=group["initial_lr"] / group["min_lr"], **kw,
        )  # fmt: skip
        mom = None
        if sched.cycle_momentum:
            mom = L.one_cycle_momentum(
                base_momentum=group["base_momentum"], max_momentum=group["max_momentum"], **kw
            )
        return lr, mom
    if kind == "CyclicLR":
        if sched._scale_fn_custom is not None:
            raise ValueError(
                "from_torch: CyclicLR with a Python scale_fn; rewrite it for "
                "lr_scheduler.cyclic_lr(scale_fn=jnp...) or use schedule_from_torch"
            )
        up = sched.total_size * sched.step_ratio
        kw = dict(
            step_size_up=int(round(up)), step_size_down=int(round(sched.total_size - up)),
            mode=sched.mode, gamma=sched.gamma,
        )  # fmt: skip
        lr = L.cyclic_lr(sched.base_lrs[gi], sched.max_lrs[gi], **kw)
        mom = None
        if sched.cycle_momentum:
            mom = L.cyclic_momentum(
                base_momentum=sched.base_momentums[gi], max_momentum=sched.max_momentums[gi], **kw
            )
        return lr, mom
    if kind == "SequentialLR":
        parts = [_schedule_of(s, gi) for s in sched._schedulers]
        if any(m is not None for _, m in parts):
            raise ValueError("from_torch: a SequentialLR part that cycles momentum; use lr=")
        return L.sequential_lr([p for p, _ in parts], sched._milestones), None
    if kind == "ChainedScheduler":
        parts = [_schedule_of(s, gi) for s in sched._schedulers]
        return L.chained_scheduler([p for p, _ in parts]), None
    if kind == "ReduceLROnPlateau":
        raise ValueError(
            "from_torch: ReduceLROnPlateau depends on metrics; chain "
            "jaxreg.optim.lr_scheduler.reduce_lr_on_plateau(lr, ...) after the optimizer"
        )
    raise ValueError(
        f"from_torch: {kind} cannot be translated to a closed form (a Python lambda or an "
        "unknown scheduler); record it with "
        "jaxreg.optim.lr_scheduler.schedule_from_torch(scheduler, num_steps) and pass lr="
    )


def _torch_default_dtype(torch_optimizer: Any) -> Any:
    """``torch.get_default_dtype()`` as a JAX dtype, without importing torch here."""
    torch = sys.modules[_torch_class(torch_optimizer).__module__.split(".")[0]]
    return jnp.float64 if torch.get_default_dtype() == torch.float64 else jnp.float32


def _group_kwargs(factory, group: dict) -> dict:
    accepted = inspect.signature(factory).parameters
    out = {}
    for key, value in group.items():
        if key == "params" or key not in accepted:
            continue
        if key == "lr" and hasattr(value, "item"):
            # a Tensor lr: torch computes the step's lr scalars in its dtype; a jax.Array lr
            # of that dtype makes jaxreg.optim do the same (see the optimizers' docstrings).
            # A float64 one computes as a float lr does.
            dt = jnp.dtype(str(value.dtype).removeprefix("torch."))
            value = value.item() if jnp.finfo(dt).bits >= 64 else jnp.asarray(value.item(), dt)
        elif hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
            value = value.item()  # tensor betas
        if isinstance(value, tuple):
            value = tuple(v.item() if hasattr(v, "item") else v for v in value)
        out[key] = value
    return out


# torch leaf name -> the Flax leaf names it may have (the inverse of torch_name's rule)
_LEAF_NAMES = {
    "weight": (*(f for f, t in _TORCH_LEAF_NAMES.items() if t == "weight"), "weight"),
    "bias": ("bias",),
}


def _paths_by_module(torch_optimizer: Any, params: Any, module: Any) -> list[str]:
    """The Flax leaf path of every torch parameter (group by group), by module name.

    ``fc1.weight`` is looked for as ``fc1/kernel``, ``fc1/scale``, ``fc1/embedding`` (and
    the list/``Sequential`` spellings of :func:`jaxreg._tree.torch_name_candidates`); the
    leaf must have the parameter's number of elements. Nothing is paired by position.
    """
    by_path = {p: leaf for p, leaf in zip(leaf_paths(params), jax.tree.leaves(params))}
    names = {id(t): n for n, t in module.named_parameters()}
    out, problems = [], []
    for g in torch_optimizer.param_groups:
        for t in g["params"]:
            name = names.get(id(t))
            if name is None:
                problems.append(f"a parameter of shape {tuple(t.shape)} is not in the module")
                continue
            *mod, attr = name.split(".")
            tried = [
                (*c, leaf)
                for c in torch_name_candidates(mod)
                for leaf in _LEAF_NAMES.get(attr, (attr,))
            ]
            hits = [c for c in tried if c in by_path and np.size(by_path[c]) == t.numel()]
            if len(hits) == 1:
                out.append(path_str(hits[0]))
            elif not hits:
                problems.append(
                    f"{name}: no leaf of {t.numel()} elements at "
                    f"{', '.join(path_str(c) for c in tried[:6])}"
                )
            else:
                problems.append(f"{name}: several leaves fit ({[path_str(h) for h in hits]})")
    if problems:
        raise ValueError(
            "from_torch: torch parameters without their Flax leaf (pass paths= for these "
            "models): " + "; ".join(problems)
        )
    return out


def _leaf_index(
    torch_optimizer: Any, params: Any, paths: list[str] | None, layout_free: bool = False
) -> list[list[int]]:
    """For each torch param group, the jax leaf index of each of its parameters.

    ``layout_free``: compare element counts, not shapes (leaves in Flax's layout).
    """
    leaves = jax.tree.leaves(params)
    names = [path_str(p) for p in leaf_paths(params)]
    groups = [list(g["params"]) for g in torch_optimizer.param_groups]
    n_torch = sum(len(g) for g in groups)
    if paths is None:
        if n_torch != len(leaves):
            raise ValueError(
                f"the torch optimizer has {n_torch} parameters but params has {len(leaves)} "
                "leaves; pass paths=[...] naming the jax leaf of each torch parameter"
            )
        flat = list(range(n_torch))
    else:
        paths = list(paths)
        if len(paths) != n_torch:
            raise ValueError(f"paths names {len(paths)} leaves for {n_torch} torch parameters")
        repeated = sorted({p for p in paths if paths.count(p) > 1})
        if repeated:
            raise ValueError(
                f"paths names these leaves more than once: {repeated} (each torch parameter "
                "needs its own leaf)"
            )
        missing = [p for p in paths if p not in names]
        if missing:
            raise ValueError(f"paths not found in params: {missing}; params has {names}")
        flat = [names.index(p) for p in paths]
    out, k = [], 0
    bad = []
    for g in groups:
        idx = flat[k : k + len(g)]
        for t, i in zip(g, idx):
            fits = (
                t.numel() == np.size(leaves[i])
                if layout_free
                else tuple(t.shape) == tuple(np.shape(leaves[i]))
            )
            if not fits:
                bad.append(
                    f"{names[i]}: jax {tuple(np.shape(leaves[i]))} vs torch {tuple(t.shape)}"
                )
        out.append(idx)
        k += len(g)
    if bad:
        raise ValueError("parameter shapes do not fit: " + "; ".join(bad))
    return out


def from_torch(
    torch_optimizer: Any,
    params: Any,
    paths: list[str] | None = None,
    lr: Any = None,
    *,
    module: Any = None,
    scheduler: Any = None,
) -> optax.GradientTransformation:
    """The jaxreg.optim transform equivalent to a live ``torch.optim`` optimizer.

    Every param group becomes the matching ``jaxreg.optim`` factory called with that
    group's hyperparameters (several groups: an ``optax.multi_transform``); leaves of
    ``params`` in no group, and those whose torch parameter has ``requires_grad=False``,
    are frozen (``optax.set_to_zero``), as torch leaves them untouched.

    Args:
      torch_optimizer: e.g. ``torch.optim.AdamW(model.parameters(), ...)``.
      params: the JAX parameter tree the transform will update.
      paths: for each torch parameter (group by group, in order), the "/"-joined path
        of its leaf in ``params``; default: the leaves of ``params`` in
        ``jax.tree.leaves`` order are the torch parameters in order. Shapes must match.
      module: the torch module whose parameters the optimizer holds, to pair them with
        the leaves of a Flax model *by name* (``fc1.weight`` -> ``fc1/kernel``; lists and
        ``Sequential`` spelled as nnx or linen name them; the leaf must have as many
        elements -- Flax's layout may differ). Instead of ``paths``. The optimizer-state
        converters do not take it: a state in torch's layout needs the model's layout
        rules (``parity.convert``).
      scheduler: the torch LR scheduler attached to the optimizer (``StepLR`` ...
        ``OneCycleLR``, ``CyclicLR``, ``SequentialLR``, ``ChainedScheduler``): each group
        gets its ``jaxreg.optim.lr_scheduler`` closed form, and the cycled momentum /
        ``betas[0]`` of ``OneCycleLR``/``CyclicLR``. The JAX step count is torch's
        ``last_epoch`` (one ``scheduler.step()`` per ``optimizer.step()``). Schedulers
        with Python lambdas raise, pointing to ``schedule_from_torch``.
      lr: optional learning rate or Optax schedule replacing every group's current
        ``lr``. Required when a torch LR scheduler is attached (a group holds
        ``initial_lr``): the scheduler is a separate object, and its current lr is not
        the run's lr.

    Returns:
      An ``optax.GradientTransformation``.

    Raises:
      ValueError: for an optimizer class without an equivalent (matched by the class
        itself: a look-alike or a subclass is refused), parameters that do not fit (the
        message lists them), ``paths`` naming a leaf twice, or an attached scheduler
        without ``lr=``.
    """
    factory = _factory(torch_optimizer)
    if module is not None:
        if paths is not None:
            raise ValueError("from_torch: pass paths= or module=, not both")
        paths = _paths_by_module(torch_optimizer, params, module)
    index = _leaf_index(torch_optimizer, params, paths, layout_free=module is not None)
    if scheduler is not None and lr is not None:
        raise ValueError("from_torch: pass lr= or scheduler=, not both")
    if scheduler is not None and scheduler.optimizer is not torch_optimizer:
        raise ValueError("from_torch: the scheduler belongs to another optimizer")
    txs = []
    for gi, group in enumerate(torch_optimizer.param_groups):
        kw = _group_kwargs(factory, group)
        if scheduler is not None:
            if hasattr(group.get("lr"), "item"):
                raise ValueError(
                    f"from_torch: param group {gi} has a Tensor lr and a scheduler: torch "
                    "then keeps the scheduled lr as a tensor of its dtype, which "
                    "jaxreg.optim's schedules do not reproduce; use a float lr in torch"
                )
            kw["lr"], momentum = _schedule_of(scheduler, gi)
            if momentum is not None:  # OneCycleLR/CyclicLR cycle momentum or betas[0]
                if "betas" in kw:
                    kw["betas"] = (momentum, kw["betas"][1])
                else:
                    kw["momentum"] = momentum
        elif lr is not None:
            kw["lr"] = lr
        elif "initial_lr" in group:
            raise ValueError(
                f"from_torch: param group {gi} has 'initial_lr' ({group['initial_lr']}), so a "
                f"torch LR scheduler is attached; its current lr ({group['lr']}) would be "
                "frozen as a constant. Pass scheduler=, or lr= a schedule "
                "(jaxreg.optim.lr_scheduler), or lr=group['lr'] for a constant"
            )
        if factory in (nadam, asgd):  # torch keeps these scalars in its default dtype
            kw["torch_scalar_dtype"] = _torch_default_dtype(torch_optimizer)
        txs.append(factory(**kw))
    n = len(jax.tree.leaves(params))
    labels = [_FROZEN] * n
    for gi, (group, idx) in enumerate(zip(torch_optimizer.param_groups, index)):
        for t, i in zip(group["params"], idx):
            # torch's step skips a parameter without .grad; requires_grad=False never has one
            labels[i] = f"group{gi}" if getattr(t, "requires_grad", True) else _FROZEN
    if len(txs) == 1 and _FROZEN not in labels:
        return txs[0]
    transforms = {f"group{gi}": tx for gi, tx in enumerate(txs)}
    if _FROZEN in labels:
        transforms[_FROZEN] = optax.set_to_zero()
    treedef = jax.tree.structure(params)
    return optax.multi_transform(transforms, jax.tree.unflatten(treedef, labels))


def _check_core(core: Any, torch_optimizer: Any, where: str) -> None:
    """The jaxreg state kind must be the torch optimizer's (an Adam state is no SGD's)."""
    _factory(torch_optimizer)
    name = _torch_class(torch_optimizer).__name__
    if not isinstance(core, _STATE_OF[name]):
        raise ValueError(
            f"{where}: the jaxreg state is a {type(core).__name__} but the torch optimizer is "
            f"torch.optim.{name} (state {_STATE_OF[name].__name__}); convert between the "
            "same optimizer on both sides"
        )


def _torch_step(state: dict, step: int | None) -> int:
    if step is not None:
        return int(step)
    for s in state.values():
        if "step" in s:
            return int(float(s["step"]))
    return 1 if any(state.values()) else 0


def _walk(state: Any, fn_core, fn_count, label: str | None = None) -> Any:
    """Rebuild an Optax state tree, converting jaxreg core states and counters."""
    if isinstance(state, _CORE_STATES):
        return fn_core(state, label)
    if isinstance(state, ScheduleState):
        return fn_count(state, label)
    if isinstance(state, optax.MultiTransformState):
        inner = {k: _walk(v, fn_core, fn_count, k) for k, v in state.inner_states.items()}
        return state._replace(inner_states=inner)
    if hasattr(state, "_fields"):  # any other NamedTuple (MaskedState, EmptyState, ...)
        return type(state)(*(_walk(v, fn_core, fn_count, label) for v in state))
    if isinstance(state, (tuple, list)):
        return type(state)(_walk(v, fn_core, fn_count, label) for v in state)
    return state


def _group_of(label: str | None) -> int | None:
    if label is None:
        return 0
    return int(label[5:]) if label.startswith("group") else None


def _is_masked(x: Any) -> bool:
    return type(x).__name__ == "MaskedNode"


def _index_tree(params: Any) -> Any:
    treedef = jax.tree.structure(params)
    return jax.tree.unflatten(treedef, list(range(treedef.num_leaves)))


def _layout(torch_optimizer, params, paths, module, convert, who):
    """``(leaf index per group, {id(tensor): torch name})`` with ``module=`` pairing."""
    if module is None:
        if convert is not None:
            raise ValueError(f"{who}: a layout converter goes with module=")
        return _leaf_index(torch_optimizer, params, paths), {}
    if paths is not None:
        raise ValueError(f"{who}: pass paths= or module=, not both")
    if convert is None:
        raise ValueError(
            f"{who}: with module=, pass the layout converter too (torch's layout is not "
            "Flax's: e.g. parity.convert.module_map(torch_model, flax_variables).state_to_jax)"
        )
    paths = _paths_by_module(torch_optimizer, params, module)
    names = {id(t): n for n, t in module.named_parameters()}
    return _leaf_index(torch_optimizer, params, paths, layout_free=True), names


def state_from_torch(
    torch_optimizer: Any,
    tx: optax.GradientTransformation,
    params: Any,
    paths: list[str] | None = None,
    step: int | None = None,
    *,
    module: Any = None,
    to_jax: Any = None,
) -> Any:
    """Optax state for ``tx`` (from :func:`from_torch` or the matching ``jaxreg.optim``
    factory) holding a torch optimizer's state, so training continues on the same path.

    Args:
      torch_optimizer: the live torch optimizer (its ``state`` is read).
      tx: the jaxreg transform that will continue the run.
      params: the JAX parameters (current values), as for :func:`from_torch`.
      paths: as for :func:`from_torch`.
      step: steps taken so far. Read from torch's ``state['step']``; SGD and Muon keep
        none, so pass it when an ``lr`` schedule must resume at the right position.
      module, to_jax: for a Flax model whose layout is not torch's: the torch module
        (pairing by name, as :func:`from_torch`) and ``to_jax(torch_name, array) ->
        array``, which puts a parameter-shaped state tensor into its leaf's layout
        (``parity.convert.module_map(...).state_to_jax`` is that function).

    Returns:
      The state to pass to ``tx.update`` next.

    Raises:
      ValueError: a state tensor does not fit its leaf (naming parameter and field), the
        state is another optimizer's, or ``module`` comes without ``to_jax``.
    """
    index, tnames = _layout(torch_optimizer, params, paths, module, to_jax, "state_from_torch")
    groups = [list(g["params"]) for g in torch_optimizer.param_groups]
    by_leaf: dict[int, tuple[int, Any, str]] = {}
    for gi, (g, idx) in enumerate(zip(groups, index)):
        for k, (t, i) in enumerate(zip(g, idx)):
            by_leaf[i] = (gi, t, f"{k} of group {gi}")
    names = [path_str(p) for p in leaf_paths(params)]
    bad: list[str] = []
    tstate = {id(p): torch_optimizer.state.get(p, {}) for g in groups for p in g}
    count = _torch_step({k: v for k, v in tstate.items()}, step)
    leaves = jax.tree.leaves(params)
    itree = _index_tree(params)

    def fill(field_tree, name):
        def one(x, i):
            if _is_masked(x):
                return x
            value = tstate[id(by_leaf[i][1])].get(name)
            if value is None:  # torch keeps no entry (e.g. Adafactor's unused factor)
                return jnp.zeros_like(x)
            # A copy: .numpy() shares the tensor's memory and jnp.asarray may alias it on
            # CPU, so torch's in-place updates would otherwise leak into the JAX state.
            arr = np.array(value.detach().cpu().numpy(), copy=True)
            if to_jax is not None and arr.shape == tuple(by_leaf[i][1].shape):
                arr = np.array(to_jax(tnames[id(by_leaf[i][1])], arr), copy=True)
            if arr.shape != np.shape(x):
                bad.append(
                    f"{names[i]} (torch parameter {by_leaf[i][2]}) field {name!r}: torch "
                    f"{arr.shape} vs jaxreg {tuple(np.shape(x))}"
                )
                return x
            return jnp.asarray(arr, dtype=jnp.asarray(leaves[i]).dtype)

        return jax.tree.map(one, field_tree, itree, is_leaf=_is_masked)

    def fn_core(core, label):
        _check_core(core, torch_optimizer, "state_from_torch")
        gi = _group_of(label)
        first = next((t for g_i, t, _ in by_leaf.values() if g_i == gi), None)
        new = {"count": jnp.asarray(count, jnp.int32)}
        for name in core._fields[1:]:
            value = getattr(core, name)
            if name in _SCALAR_FIELDS:
                s = tstate[id(first)].get(name) if first is not None else None
                new[name] = value if s is None else jnp.asarray(float(s), value.dtype)
            elif isinstance(value, tuple) and value == ():
                new[name] = ()
            else:
                new[name] = fill(value, name)
        return type(core)(**new)

    def fn_count(s, label):
        return s._replace(count=jnp.asarray(count, jnp.int32))

    out = _walk(tx.init(params), fn_core, fn_count)
    if bad:
        raise ValueError("state_from_torch: optimizer state does not fit: " + "; ".join(bad))
    return out


def state_with(
    tx: optax.GradientTransformation,
    params: Any,
    count: int,
    fields: dict[str, Any] | None = None,
    scalars: dict[str, float] | None = None,
) -> Any:
    """The state of a jaxreg.optim transform after ``count`` steps, holding given buffers.

    For moving a state whose buffers are already in the JAX parameters' layout (e.g.
    converted layer by layer with ``parity.convert``): every jaxreg core state gets
    ``count`` and the named per-leaf buffers; every schedule counter gets ``count``.

    Args:
      tx: a ``jaxreg.optim`` transform (chains of jaxreg/Optax blocks included; not an
        ``optax.multi_transform`` -- use :func:`state_from_torch` for that).
      params: the parameters (structure, shapes and dtypes of the buffers).
      count: steps taken so far (torch's ``step``).
      fields: ``{torch state key: params-shaped tree}``, e.g. ``{"exp_avg": tree}``;
        buffers not given stay as ``tx.init`` makes them.
      scalars: ``{name: value}`` for 0-d buffers (``mu_product``, ``eta``, ``mu``).

    Returns:
      The state to pass to ``tx.update`` next.
    """
    fields, scalars = fields or {}, scalars or {}

    def fn_core(core, label):
        new = {"count": jnp.asarray(count, jnp.int32)}
        for name in core._fields[1:]:
            value = getattr(core, name)
            if name in _SCALAR_FIELDS and name in scalars:
                value = jnp.asarray(scalars[name], value.dtype)
            elif name in fields and not (isinstance(value, tuple) and value == ()):
                value = jax.tree.map(
                    lambda x, f: jnp.asarray(np.array(f, copy=True), x.dtype).reshape(x.shape),
                    value,
                    fields[name],
                )
            new[name] = value
        return type(core)(**new)

    def fn_count(s, label):
        return s._replace(count=jnp.asarray(count, jnp.int32))

    return _walk(tx.init(params), fn_core, fn_count)


def state_to_torch(
    opt_state: Any,
    torch_optimizer: Any,
    params: Any,
    paths: list[str] | None = None,
    *,
    module: Any = None,
    to_torch: Any = None,
) -> None:
    """Load a jaxreg.optim state into a live torch optimizer (in place).

    The inverse of :func:`state_from_torch`: afterwards ``torch_optimizer.step()``
    continues the trajectory the JAX run was on. Copy the parameter values into the
    torch model separately (e.g. with ``parity.convert``). ``module``/``to_torch``: as
    :func:`state_from_torch`'s ``module``/``to_jax``, the other way
    (``parity.convert.module_map(...).state_to_torch``).
    """
    index, tnames = _layout(torch_optimizer, params, paths, module, to_torch, "state_to_torch")
    groups = [list(g["params"]) for g in torch_optimizer.param_groups]
    leaf_to_param = {i: t for g, idx in zip(groups, index) for t, i in zip(g, idx)}
    any_param = next(iter(leaf_to_param.values()))
    torch = sys.modules[type(any_param).__module__.split(".")[0]]
    scalar_dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
    new_state: dict[int, dict[str, Any]] = {i: {} for i in leaf_to_param}
    itree = _index_tree(params)

    def fn_core(core, label):
        _check_core(core, torch_optimizer, "state_to_torch")
        count = int(core.count)
        gi = _group_of(label)
        members = index[gi] if gi is not None else []
        for i in members:
            if not isinstance(core, (SGDState, MuonState)):
                new_state[i]["step"] = torch.tensor(float(count), dtype=scalar_dtype)
        for name in core._fields[1:]:
            value = getattr(core, name)
            if name in _SCALAR_FIELDS:
                for i in members:
                    new_state[i][name] = torch.tensor(float(value), dtype=scalar_dtype)
                continue
            if isinstance(value, tuple) and value == ():
                continue
            # MaskedNode stands where a leaf belongs to another group: the two align.
            for x, i in zip(jax.tree.leaves(value, is_leaf=_is_masked), jax.tree.leaves(itree)):
                if _is_masked(x) or i not in leaf_to_param or np.size(x) == 0:
                    continue
                p = leaf_to_param[i]
                arr = np.asarray(x)
                if to_torch is not None and arr.size == p.numel():
                    arr = np.array(to_torch(tnames[id(p)], arr), copy=True)
                new_state[i][name] = p.new_tensor(arr).reshape(arr.shape)
        return core

    _walk(opt_state, fn_core, lambda s, label: s)
    for i, p in leaf_to_param.items():
        if new_state[i]:
            torch_optimizer.state[p] = new_state[i]
