"""run_case: one matched PyTorch-vs-JAX training run, compared at every step."""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torch.nn.functional as F

import jaxreg
from parity import convert, models, registry
from parity.compare import clone_optimizer_state, rel_diff
from parity.data import Digits, batch_indices, load_digits
from parity.grid import MUTATIONS, OPTIMIZERS, REGS  # noqa: F401  (re-exported)
from parity.tolerances import F64_TOL, f32_allowed, f32_tolerance


@dataclass(frozen=True)
class Case:
    model: str
    reg: str
    optimizer: str
    dtype: str = "float64"
    steps: int = 300
    batch_size: int = 64
    seed: int = 0
    mutation: str | None = None
    weight_decay: float | None = None  # overrides the reg's default decay strength

    @property
    def name(self) -> str:
        base = f"{self.model}/{self.reg}/{self.optimizer}/{self.dtype}"
        return base + (f"/mutation={self.mutation}" if self.mutation else "")


def valid(model: str, reg: str, optimizer: str) -> bool:
    """Combinations that exist in both frameworks (decoupled decay is Adam's/AdamW's;
    AdamW has no coupled weight_decay): :meth:`parity.registry.RegularizerEntry.valid_for`."""
    return registry.REGULARIZERS[reg].valid_for(registry.OPTIMIZERS[optimizer])


@dataclass
class CaseResult:
    case: Case
    loss_torch: list[float]
    loss_jax: list[float]
    dloss: list[float]  # |loss_jax - loss_torch| per step
    dparam: list[float]  # max relative parameter (and BN statistics) difference per step
    dparam_layers: dict[str, float]  # per leaf path: max over steps
    # float32, teacher-forced (see forced_step_errors): per step, the single-step error
    noise: list[float] | None  # ... of torch-f32 against torch-f64 (worst batch order)
    drift: list[float] | None  # ... of JAX-f32 against torch-f64
    train_acc: dict[str, float]  # final, on the whole training set (eval mode)
    test_acc: dict[str, float]  # final, on the test set (eval mode)
    eval_dlogits: float  # max |Δ| of eval-mode logits on the test set, relative
    tolerance: float
    passed: bool
    first_fail_step: int | None
    worst_leaf: str
    exceeding_steps: list[int] = field(default_factory=list)  # float32: steps over tolerance
    zero_fraction: dict[str, float] = field(default_factory=dict)  # final exact zeros
    batch_acc: dict[str, list[float]] = field(default_factory=dict)  # per step, training batch

    @property
    def max_dloss(self) -> float:
        return max(self.dloss, default=0.0)

    @property
    def max_dparam(self) -> float:
        return max(self.dparam, default=0.0)

    @property
    def max_noise(self) -> float | None:
        return None if self.noise is None else max(self.noise, default=0.0)

    @property
    def max_drift(self) -> float | None:
        return None if self.drift is None else max(self.drift, default=0.0)

    def summary(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("case",)}
        d.update(case=self.case.name, **{f"case_{k}": v for k, v in asdict(self.case).items()})
        d.update(
            max_dloss=self.max_dloss,
            max_dparam=self.max_dparam,
            max_noise=self.max_noise,
            max_drift=self.max_drift,
        )
        return d


# --- the torch side, written as a PyTorch user writes it ------------------------------


def _torch_optimizer(case: Case, model: torch.nn.Module) -> torch.optim.Optimizer:
    opt, reg = registry.OPTIMIZERS[case.optimizer], registry.REGULARIZERS[case.reg]
    params: Any = model.parameters()
    if reg.no_decay_group:  # the usual "no decay on biases and norms" param groups
        decay = [p for p in model.parameters() if p.ndim > 1]
        no_decay = [p for p in model.parameters() if p.ndim <= 1]
        params = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    return opt.torch_optimizer(params, **reg.optimizer_kwargs(opt, case.weight_decay))


def _torch_step(case, model, opt, x, y) -> tuple[float, float]:
    """One training step as a PyTorch user writes it; returns (loss, batch accuracy)."""
    reg = registry.REGULARIZERS[case.reg]
    model.train()
    out = model(x)
    loss = F.cross_entropy(out, y)
    if "l1" in reg.penalty:
        loss = loss + reg.penalty["l1"] * sum(p.abs().sum() for p in model.parameters())
    if "l2" in reg.penalty:
        loss = loss + reg.penalty["l2"] * sum(p.pow(2).sum() for p in model.parameters())
    opt.zero_grad()
    loss.backward()
    opt.step()
    if reg.prox_l1 is not None:  # proximal L1: soft-threshold after the step
        thr = registry.OPTIMIZERS[case.optimizer].lr * reg.prox_l1
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.sign() * (p.abs() - thr).clamp(min=0))
    return loss.item(), (out.argmax(1) == y).double().mean().item()


# --- the JAX side, with jaxreg ---------------------------------------------------------


def _recipe(case: Case) -> registry.JaxRecipe:
    return registry.jax_recipe(
        case.model, case.reg, case.optimizer, case.weight_decay, case.mutation
    )


def _jax_optimizer(recipe: registry.JaxRecipe) -> optax.GradientTransformation:
    tx = recipe.optimizer.jax_optimizer(**recipe.optimizer_kwargs)
    if recipe.prox_l1 is not None:
        tx = optax.chain(tx, jaxreg.proximal_l1(recipe.optimizer.lr * recipe.prox_l1))
    return tx


def _jax_loss(recipe: registry.JaxRecipe, model, has_bn: bool):
    def data_loss(params, batch_stats, x, y):
        if has_bn:
            logits, new = model.apply(
                {"params": params, "batch_stats": batch_stats},
                x,
                train=True,
                mutable=["batch_stats"],
            )
            batch_stats = new["batch_stats"]
        else:
            logits = model.apply({"params": params}, x, train=True)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, (batch_stats, jnp.mean(jnp.argmax(logits, -1) == y))

    if recipe.loss_term is not None:
        term = recipe.loss_term

        def loss_fn(params, batch_stats, x, y):
            loss, aux = data_loss(params, batch_stats, x, y)
            return loss + term(params), aux

        return loss_fn
    if recipe.penalty:
        return jaxreg.regularized(data_loss, **recipe.penalty)
    return data_loss


# --- comparison ------------------------------------------------------------------------


def _flat_vars(variables: dict) -> dict[str, np.ndarray]:
    out = {}
    for coll, tree in variables.items():
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            out["/".join([coll, *(str(getattr(k, "key", k)) for k in path)])] = np.asarray(leaf)
    return out


def _accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, -1) == y))


def _torch_snapshot(model, layers) -> dict[str, np.ndarray]:
    """torch's parameters and BN statistics in Flax layout, keyed like :func:`_flat_vars`."""
    out = {}
    for coll, tree in convert.torch_to_flax(model.state_dict(), layers).items():
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            out["/".join([coll, *(str(getattr(k, "key", k)) for k in path)])] = leaf
    return out


@dataclass
class History:
    """One framework's trajectory: the loss and a snapshot of every variable per step."""

    losses: list[float]
    snapshots: list[dict[str, np.ndarray]]  # Flax layout, keys like "params/fc1/kernel"
    predict: Any  # x (N, 8, 8) -> logits, eval mode, with the final weights
    accuracies: list[float] = field(default_factory=list)  # training-batch accuracy per step


def _setup(case: Case, data: Digits, device: str):
    if case.dtype == "float64" and not jax.config.jax_enable_x64:
        raise ValueError("float64 cases need jax_enable_x64 (set before arrays are created)")
    tdev = torch.device("cuda" if device == "gpu" else "cpu")
    tmodel = models.torch_model(case.model, case.seed).to(tdev, getattr(torch, case.dtype))
    idx = batch_indices(len(data.y_train), case.batch_size, case.steps, case.seed)
    return tdev, tmodel, idx


def torch_history(
    case: Case, data: Digits, device: str = "cpu", dtype: str | None = None
) -> History:
    """Train the torch model of ``case`` (optionally in another dtype, from the same
    initial weights) and record loss and parameters after every step."""
    tdev, tmodel, idx = _setup(case, data, device)
    tdtype = getattr(torch, dtype or case.dtype)
    tmodel = tmodel.to(tdtype)
    opt = _torch_optimizer(case, tmodel)
    x_all = torch.tensor(models.torch_input(data.x_train), device=tdev, dtype=tdtype)
    y_all = torch.tensor(data.y_train, device=tdev)
    layers = models.layers(case.model)
    losses, accs, snaps = [], [], []
    for batch in idx:
        b = torch.tensor(batch, device=tdev)
        loss, acc = _torch_step(case, tmodel, opt, x_all[b], y_all[b])
        losses.append(loss)
        accs.append(acc)
        snaps.append(_torch_snapshot(tmodel, layers))

    def predict(x):
        tmodel.eval()
        with torch.no_grad():
            xt = torch.tensor(models.torch_input(x), device=tdev, dtype=tdtype)
            return tmodel(xt).cpu().numpy()

    return History(losses, snaps, predict, accs)


@dataclass
class _JaxSide:
    model: Any
    layers: list
    template: dict
    tx: optax.GradientTransformation
    step: Any  # jitted (params, opt_state, bs, x, y) -> (params, opt_state, bs, loss, accuracy)
    has_bn: bool
    dtype: Any

    def variables(self, params, batch_stats) -> dict:
        return {"params": params, **({"batch_stats": batch_stats} if self.has_bn else {})}


@functools.lru_cache(maxsize=4)
def _jax_side(case: Case) -> _JaxSide:
    """The Flax twin, its jaxreg optimizer and the jitted training step for ``case``
    (cached: the forced float32 loop and the free-running history share one compilation)."""
    jdtype = jnp.dtype(case.dtype)
    recipe = _recipe(case)
    layers = models.layers(case.model)
    if not recipe.permute_flatten:
        layers = [
            convert.Linear(layer.torch_name, layer.flax_name)
            if isinstance(layer, convert.Linear)
            else layer
            for layer in layers
        ]
    fmodel = models.flax_model(case.model, jdtype, **recipe.model_overrides)
    x0 = jnp.zeros((2, 8, 8, 1), jdtype)
    template = fmodel.init(jax.random.key(0), x0, train=False)
    has_bn = "batch_stats" in template
    tx = _jax_optimizer(recipe)
    loss_fn = _jax_loss(recipe, fmodel, has_bn)

    @jax.jit
    def step(params, opt_state, batch_stats, x, y):
        (loss, (batch_stats, acc)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, batch_stats, x, y
        )
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, batch_stats, loss, acc

    return _JaxSide(fmodel, layers, template, tx, step, has_bn, jdtype)


def jax_history(case: Case, data: Digits, device: str = "cpu") -> History:
    """Train the Flax twin with jaxreg from the torch model's initial weights."""
    _, tmodel, idx = _setup(case, data, device)
    side = _jax_side(case)
    variables = convert.torch_to_flax(tmodel.state_dict(), side.layers, side.template)
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    opt_state = side.tx.init(params)
    x_all = np.asarray(models.flax_input(data.x_train), side.dtype)  # sliced in numpy
    losses, accs, snaps = [], [], []
    for batch in idx:
        params, opt_state, batch_stats, loss, acc = side.step(
            params, opt_state, batch_stats, x_all[batch], data.y_train[batch]
        )
        losses.append(float(loss))
        accs.append(float(acc))
        snaps.append(_flat_vars(side.variables(params, batch_stats)))

    def predict(x):
        xj = jnp.asarray(models.flax_input(x), side.dtype)
        return np.asarray(side.model.apply(side.variables(params, batch_stats), xj, train=False))

    return History(losses, snaps, predict, accs)


def forced_step_errors(
    case: Case, data: Digits, device: str = "cpu"
) -> tuple[list[float], list[float], History]:
    """Teacher-forced single-step errors of a float32 case, against float64.

    At every step, JAX-f32 and torch-f64 start from torch-f32's exact parameters, BatchNorm
    statistics and optimizer state and take one step on the same batch, as torch-f32 does.
    Returns, per step, (JAX-f32 vs torch-f64, float32's own noise) as max relative
    differences over all variables, and torch-f32's free-running history. The noise is the
    worst torch-f32 step vs torch-f64 over :data:`parity.tolerances.REORDERINGS` of the
    batch: where a gradient is a nearly cancelling sum (and Adam/RMSprop divide it by
    sqrt(v) + eps), any float32 summation order gives a different answer, and one order's
    error would be a lucky sample. Single steps avoid the chaotic growth of a free-running
    float32 run (a ReLU input or an L1-thresholded weight landing on the other side of zero).
    """
    tdev, t32, idx = _setup(case, data, device)
    opt32 = _torch_optimizer(case, t32)
    t64 = models.torch_model(case.model, case.seed).to(tdev, torch.float64)
    opt64 = _torch_optimizer(case, t64)
    side = _jax_side(case)
    cmp_layers = models.layers(case.model)
    name_of = {id(p): n for n, p in t32.named_parameters()}
    order = [name_of[id(p)] for g in opt32.param_groups for p in g["params"]]
    x32 = torch.tensor(models.torch_input(data.x_train), device=tdev, dtype=torch.float32)
    x64 = x32.double()
    y_all = torch.tensor(data.y_train, device=tdev)
    xj_all = np.asarray(models.flax_input(data.x_train), side.dtype)
    tp = models.torch_model(case.model, case.seed).to(tdev, torch.float32)
    optp = _torch_optimizer(case, tp)
    rng = np.random.default_rng(case.seed + 1)
    e_jax, e_torch, losses, accs, snaps = [], [], [], [], []
    for t, batch in enumerate(idx):
        b = torch.tensor(batch, device=tdev)
        sd = {k: v.detach().clone() for k, v in t32.state_dict().items()}
        osd = clone_optimizer_state(opt32.state_dict())
        # torch-f64 from torch-f32's state (load_state_dict casts params and buffers).
        t64.load_state_dict(sd)
        opt64.load_state_dict(osd)
        _torch_step(case, t64, opt64, x64[b], y_all[b])
        ref = _torch_snapshot(t64, cmp_layers)
        # JAX-f32 from the same state: per-parameter buffers go through the converter.
        variables = convert.torch_to_flax(sd, side.layers, side.template)
        buffers: dict[str, dict[str, Any]] = {}
        scalars: dict[str, float] = {}
        for i, st in osd["state"].items():
            for key, v in st.items():
                if key == "step" or not torch.is_tensor(v):
                    continue
                if v.ndim == 0:
                    scalars[key] = float(v)
                else:
                    buffers.setdefault(key, {})[order[i]] = v
        fields = {
            key: convert.torch_to_flax({**sd, **bufs}, side.layers)["params"]
            for key, bufs in buffers.items()
        }
        params = variables["params"]
        opt_state = jaxreg.optim.state_with(side.tx, params, t, fields, scalars)
        params, _, bs, _, _ = side.step(
            params, opt_state, variables.get("batch_stats", {}), xj_all[batch], data.y_train[batch]
        )
        snap_j = _flat_vars(side.variables(params, bs))
        # torch-f32 on reordered batches, from the same state: float32's own spread.
        noise = 0.0
        for reordered in (batch[::-1].copy(), rng.permutation(batch)):
            tp.load_state_dict(sd)
            # load_state_dict keeps same-dtype state tensors by reference: copy, or this
            # step would update `osd` in place.
            optp.load_state_dict(clone_optimizer_state(osd))
            bo = torch.tensor(reordered, device=tdev)
            _torch_step(case, tp, optp, x32[bo], y_all[bo])
            snap_p = _torch_snapshot(tp, cmp_layers)
            noise = max(noise, max(rel_diff(snap_p[k], v) for k, v in ref.items()))
        # torch-f32's own step (its free-running trajectory continues from here).
        loss, acc = _torch_step(case, t32, opt32, x32[b], y_all[b])
        losses.append(loss)
        accs.append(acc)
        snap_t = _torch_snapshot(t32, cmp_layers)
        snaps.append(snap_t)
        e_jax.append(max(rel_diff(snap_j[k], v) for k, v in ref.items()))
        e_torch.append(max(noise, max(rel_diff(snap_t[k], v) for k, v in ref.items())))

    def predict(x):
        t32.eval()
        with torch.no_grad():
            xt = torch.tensor(models.torch_input(x), device=tdev, dtype=torch.float32)
            return t32(xt).cpu().numpy()

    return e_jax, e_torch, History(losses, snaps, predict, accs)


def trajectory_diff(a: History, b: History) -> tuple[list[float], dict[str, float]]:
    """Per step, the max relative difference over all variables; per leaf, over all steps."""
    per_step, per_leaf = [], {}
    for sa, sb in zip(a.snapshots, b.snapshots):
        worst = 0.0
        for k, vb in sb.items():
            d = rel_diff(sa[k], vb)
            per_leaf[k] = max(per_leaf.get(k, 0.0), d)
            worst = max(worst, d)
        per_step.append(worst)
    return per_step, per_leaf


def run_case(case: Case, data: Digits | None = None, device: str = "cpu") -> CaseResult:
    """Train the torch model and its Flax twin from the same weights on the same batches.

    Returns:
      A :class:`CaseResult` with the per-step trajectories (losses, max relative
      parameter and BatchNorm-statistics difference overall and per leaf, the float32
      noise floor) and the verdict against the case's tolerance.
    """
    data = data or load_digits()
    noise = drift = None
    if case.dtype == "float64":
        ht = torch_history(case, data, device)
    else:  # teacher-forced single steps against float64; also torch-f32's trajectory
        drift, noise, ht = forced_step_errors(case, data, device)
    hj = jax_history(case, data, device)
    dparam, per_leaf = trajectory_diff(hj, ht)
    tr_t, tr_j = ht.predict(data.x_train), hj.predict(data.x_train)
    te_t, te_j = ht.predict(data.x_test), hj.predict(data.x_test)
    eval_dlogits = rel_diff(te_j, te_t)
    if case.dtype == "float64":
        tol, judged = F64_TOL, dparam
    else:
        tol = f32_tolerance(noise)
        judged = drift
    fails = [i for i, d in enumerate(judged) if d > tol]
    allowed = 0 if case.dtype == "float64" else f32_allowed(len(judged))

    def zero_fraction(h: History) -> float:  # exact zeros among all parameter elements
        leaves = [v for k, v in h.snapshots[-1].items() if k.startswith("params")]
        return float(sum(np.sum(v == 0) for v in leaves) / sum(v.size for v in leaves))

    zeros = {"torch": zero_fraction(ht), "jax": zero_fraction(hj)}
    return CaseResult(
        case=case,
        loss_torch=ht.losses,
        loss_jax=hj.losses,
        dloss=[abs(a - b) for a, b in zip(hj.losses, ht.losses)],
        dparam=dparam,
        dparam_layers=per_leaf,
        noise=noise,
        drift=drift,
        train_acc={"torch": _accuracy(tr_t, data.y_train), "jax": _accuracy(tr_j, data.y_train)},
        test_acc={"torch": _accuracy(te_t, data.y_test), "jax": _accuracy(te_j, data.y_test)},
        eval_dlogits=eval_dlogits,
        tolerance=float(tol),
        passed=len(fails) <= allowed and (case.dtype != "float64" or eval_dlogits <= tol),
        first_fail_step=(fails[0] + 1) if len(fails) > allowed else None,
        exceeding_steps=[i + 1 for i in fails],
        worst_leaf=max(per_leaf, key=per_leaf.get) if per_leaf else "",
        zero_fraction=zeros,
        batch_acc={"torch": ht.accuracies, "jax": hj.accuracies},
    )
