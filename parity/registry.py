"""The parity registry: one definition of every optimizer, regularizer and planted bug.

Every part of ``parity`` builds its optimizers and regularizers from the entries here:

- the model suite (``python -m parity``, ``parity.run``, ``parity.distributed``): a
  case is (model, regularizer, optimizer, dtype[, planted bug]); ``parity.run`` builds
  both training runs from an :class:`OptimizerEntry` (those with a suite ``lr``), a
  :class:`RegularizerEntry` and a :class:`Mutation`, and nothing else;
- the optimizer grid (the torch-vs-jaxreg step tests and ``python -m parity.optim_table``):
  each entry's :class:`FlagGrid`, through :func:`grid_points`;
- the benchmark (``python -m parity.bench``): ``BENCH``, a setting of an entry;
- the regularization-effect runs: ``EFFECTS``, a regularizer entry at a strength.

Each entry holds both sides -- what the PyTorch user writes and what the jaxreg port
writes. The grid's names (``parity.grid``), the CLI's choices and the validity of a
combination come from here too.

Adding an optimizer is one :class:`OptimizerEntry`; giving it an ``lr`` puts it in the
model suite, a :class:`FlagGrid` in the optimizer grid. For example, torch's ``Adamax``::

    OptimizerEntry("adamax", torch="Adamax", jax="adamax", lr=2e-3,
                   grid=FlagGrid({"lr": 0.01, "weight_decay": 0.1}, ({}, {"betas": (0.5, 0.9)})))

A regularizer is one :class:`RegularizerEntry`; a planted bug, one :class:`Mutation`.

This module imports nothing heavy (torch and jaxreg are looked up by name when a case is
built), so the CLI can validate its arguments before the ``parity`` extra is imported.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Regularization strengths. L2 uses the sum-of-squares convention: λΣw² ≡ SGD weight_decay 2λ.
L1_ALPHA = 1e-3
L2_LAMBDA = 1e-3
COUPLED_WD = 2 * L2_LAMBDA
DECOUPLED_WD = 1e-2  # torch AdamW's default

SHAPES = ((4, 3), (3,), (), (5, 2))  # the grid's leaves: matrices, a vector, a scalar leaf
MATRIX_SHAPES = ((4, 3), (3, 5), (6, 2))  # Muon: 2-D only


@dataclass(frozen=True)
class FlagGrid:
    """An optimizer's flag grid: every point is stepped against torch on random gradients.

    Attributes:
      base: arguments at every point (``lr``, ``weight_decay``, ...).
      points: the flag combinations, each added to ``base``.
      shapes: the parameter leaves' shapes.
      maximize: the last point is also run with ``maximize=True``.
    """

    base: dict[str, Any]
    points: tuple[dict[str, Any], ...] = ({},)
    shapes: tuple[tuple[int, ...], ...] = SHAPES
    maximize: bool = True


@dataclass(frozen=True)
class OptimizerEntry:
    """A torch optimizer and its jaxreg twin: the suite's learning rate and flags, and
    the flag grid.

    Attributes:
      name: the entry's name (``"sgd_nesterov"``).
      torch, jax: the class name in ``torch.optim`` and the factory name in
        ``jaxreg.optim``; both take the same arguments.
      lr: the model suite's learning rate; ``None``: not in the model suite.
      flags: further arguments of the model suite, the same on both sides
        (``momentum=0.9``).
      decay: what the optimizer's own ``weight_decay`` is: ``"coupled"`` (added to the
        gradient) or ``"decoupled"`` (AdamW).
      decoupled_flags: the arguments that make its ``weight_decay`` decoupled (Adam:
        ``decoupled_weight_decay=True``), or ``None`` where it has no such mode.
      grid: the optimizer grid's flag combinations, or ``None``.
      scalar_state: torch keeps 0-d state tensors (NAdam's ``mu_product``, ASGD's
        ``eta``/``mu``) in its default dtype; the grid passes torch's current choice as
        ``torch_scalar_dtype``.
    """

    name: str
    torch: str
    jax: str
    lr: float | None = None
    flags: dict[str, Any] = field(default_factory=dict)
    decay: str = "coupled"
    decoupled_flags: dict[str, Any] | None = None
    grid: FlagGrid | None = None
    scalar_state: bool = False

    @property
    def torch_cls(self) -> Any:
        import torch

        return getattr(torch.optim, self.torch)

    @property
    def jax_fn(self) -> Any:
        from jaxreg import optim

        return getattr(optim, self.jax)

    def torch_optimizer(self, params: Any, **kwargs: Any) -> Any:
        """The model suite's torch optimizer (its ``lr`` and ``flags``, then ``kwargs``)."""
        return self.torch_cls(params, **{"lr": self.lr, **self.flags, **kwargs})

    def jax_optimizer(self, **kwargs: Any) -> Any:
        """The model suite's jaxreg optimizer (its ``lr`` and ``flags``, then ``kwargs``)."""
        return self.jax_fn(**{"lr": self.lr, **self.flags, **kwargs})

    def make_jax(self, **kwargs: Any) -> Any:
        """The jaxreg optimizer with exactly ``kwargs``, as torch runs in this process.

        NAdam's and ASGD's 0-d state follows ``torch.get_default_dtype()`` in torch
        (float32 unless a test sets float64); jaxreg's default follows the parameters,
        so an entry with ``scalar_state`` passes torch's choice explicitly.
        """
        if self.scalar_state and "torch_scalar_dtype" not in kwargs:
            import torch

            f64 = torch.get_default_dtype() == torch.float64
            kwargs["torch_scalar_dtype"] = "float64" if f64 else "float32"
        return self.jax_fn(**kwargs)


@dataclass(frozen=True)
class RegularizerEntry:
    """One way to regularize, on both sides.

    Attributes:
      name: the suite's name.
      penalty: ``{"l1": α}`` or ``{"l2": λ}`` added to the loss -- torch:
        ``α·Σ|p|`` / ``λ·Σp²`` over every parameter, written as a torch user writes it;
        JAX: ``jaxreg.regularized(loss, **penalty)``.
      weight_decay: the optimizer's ``weight_decay``: ``None`` (none), ``"coupled"``,
        ``"decoupled"`` (through the optimizer's ``decoupled_flags``), or ``"own"``
        (whatever the optimizer's ``weight_decay`` is). The strength is
        ``COUPLED_WD`` for coupled decay, ``DECOUPLED_WD`` for decoupled.
      no_decay_group: torch: biases and norm parameters (``ndim <= 1``) in a
        ``weight_decay=0`` param group; JAX: ``weight_decay_mask=masks.min_ndim(2)``.
      prox_l1: a proximal L1 step of threshold ``lr·prox_l1`` after each step -- torch:
        soft-threshold the parameters in place; JAX: ``jaxreg.proximal_l1`` chained.
    """

    name: str
    penalty: dict[str, float] = field(default_factory=dict)
    weight_decay: str | None = None
    no_decay_group: bool = False
    prox_l1: float | None = None

    def valid_for(self, opt: OptimizerEntry) -> bool:
        """Does this combination exist in both frameworks?"""
        if self.weight_decay == "coupled":
            return opt.decay == "coupled"  # AdamW has no coupled weight_decay
        if self.weight_decay == "decoupled":
            return opt.decay == "decoupled" or opt.decoupled_flags is not None
        return True

    def decay_kind(self, opt: OptimizerEntry) -> str | None:
        return opt.decay if self.weight_decay == "own" else self.weight_decay

    def optimizer_kwargs(self, opt: OptimizerEntry, weight_decay: float | None) -> dict:
        """The optimizer's regularizing arguments, the same on both sides (the masks and
        param groups of :attr:`no_decay_group` aside). ``weight_decay`` overrides the
        strength."""
        kind = self.decay_kind(opt)
        if kind is None:
            return {"weight_decay": 0.0}
        default = DECOUPLED_WD if kind == "decoupled" else COUPLED_WD
        kwargs = {"weight_decay": default if weight_decay is None else weight_decay}
        if kind == "decoupled" and opt.decay != "decoupled":
            kwargs.update(opt.decoupled_flags or {})
        return kwargs

    def jax_transforms(
        self, base: Any, lr: float, strength: float, mask: Any = None
    ) -> tuple[dict[str, float], Any]:
        """This regularizer as jaxreg transforms around any Optax optimizer ``base``:
        ``(penalty, tx)``, the arguments of ``jaxreg.regularized`` and the optimizer.

        One ``strength`` for every part: the penalty's α or λ; ``jaxreg.add_weight_decay``
        before ``base`` (coupled); ``jaxreg.decoupled_weight_decay(strength, lr)`` after it
        (decoupled); ``jaxreg.proximal_l1(lr·strength)`` after it (proximal L1). ``mask``
        selects the leaves of the decay or proximal step.

        Raises:
          ValueError: the regularizer is the optimizer's own ``weight_decay`` (``"own"``),
            which has no optimizer-independent form.
        """
        import optax

        import jaxreg

        penalty = {k: strength for k in self.penalty}
        if self.weight_decay == "own" or self.no_decay_group:
            raise ValueError(f"regularizer {self.name!r} is the optimizer's own weight_decay")
        if self.weight_decay == "coupled":
            return penalty, optax.chain(jaxreg.add_weight_decay(strength, mask), base)
        if self.weight_decay == "decoupled":
            return penalty, optax.chain(base, jaxreg.decoupled_weight_decay(strength, lr, mask))
        if self.prox_l1 is not None:
            return penalty, optax.chain(base, jaxreg.proximal_l1(lr * strength, mask=mask))
        return penalty, base


_WD = {"weight_decay": 0.1}

OPTIMIZERS: dict[str, OptimizerEntry] = {
    e.name: e
    for e in (
        OptimizerEntry(
            "sgd", "SGD", "sgd", lr=0.05,
            grid=FlagGrid({"lr": 0.05, **_WD}, (
                {},
                {"momentum": 0.9},
                {"momentum": 0.9, "dampening": 0.5},
                {"momentum": 0.9, "nesterov": True},
                {"weight_decay": 0.0, "momentum": 0.5},
            )),
        ),
        OptimizerEntry(
            "sgd_nesterov", "SGD", "sgd", lr=0.05, flags={"momentum": 0.9, "nesterov": True}
        ),
        OptimizerEntry(
            "adam", "Adam", "adam", lr=1e-3, decoupled_flags={"decoupled_weight_decay": True},
            grid=FlagGrid({"lr": 0.01, **_WD}, (
                {},
                {"amsgrad": True},
                {"decoupled_weight_decay": True},
                {"decoupled_weight_decay": True, "amsgrad": True},
                {"betas": (0.5, 0.9), "eps": 1e-3},
            )),
        ),
        OptimizerEntry(
            "adamw", "AdamW", "adamw", lr=1e-3, decay="decoupled",
            grid=FlagGrid({"lr": 0.01}, ({}, {"amsgrad": True}, {"weight_decay": 0.5})),
        ),
        OptimizerEntry(
            "rmsprop", "RMSprop", "rmsprop", lr=1e-3,
            grid=FlagGrid({"lr": 0.01, **_WD}, (
                {},
                {"centered": True},
                {"momentum": 0.9},
                {"centered": True, "momentum": 0.9},
                {"alpha": 0.9, "eps": 1e-3},
            )),
        ),
        # The optimizer grid only (no suite lr):
        OptimizerEntry(
            "adagrad", "Adagrad", "adagrad",
            grid=FlagGrid({"lr": 0.05, **_WD}, (
                {}, {"lr_decay": 0.01}, {"initial_accumulator_value": 0.1}, {"eps": 1e-3}
            )),
        ),
        OptimizerEntry(
            "adadelta", "Adadelta", "adadelta",
            grid=FlagGrid({"lr": 0.5, **_WD}, ({}, {"rho": 0.5, "eps": 1e-4})),
        ),
        OptimizerEntry(
            "adamax", "Adamax", "adamax",
            grid=FlagGrid({"lr": 0.01, **_WD}, ({}, {"betas": (0.5, 0.9)})),
        ),
        OptimizerEntry(
            "nadam", "NAdam", "nadam", scalar_state=True,
            grid=FlagGrid({"lr": 0.01, **_WD}, (
                {}, {"decoupled_weight_decay": True}, {"momentum_decay": 0.01}
            )),
        ),
        OptimizerEntry(
            "radam", "RAdam", "radam",
            grid=FlagGrid({"lr": 0.01, **_WD}, (
                {}, {"decoupled_weight_decay": True}, {"betas": (0.9, 0.99)}
            )),
        ),
        OptimizerEntry(
            "asgd", "ASGD", "asgd", scalar_state=True,
            grid=FlagGrid({"lr": 0.05, **_WD}, (
                {}, {"t0": 20.0}, {"t0": 20.0, "lambd": 0.01, "alpha": 0.5}
            )),
        ),
        OptimizerEntry(
            "adafactor", "Adafactor", "adafactor",
            grid=FlagGrid({"lr": 0.01, **_WD}, (
                {}, {"beta2_decay": -0.5, "d": 2.0}, {"eps": (1e-8, 1e-2)}
            )),
        ),
        OptimizerEntry(
            "muon", "Muon", "muon",
            grid=FlagGrid({"lr": 0.01}, (
                {},
                {"nesterov": False},
                {"adjust_lr_fn": "match_rms_adamw", "weight_decay": 0.3},
                {"adjust_lr_fn": "spectral_unclamped"},
            ), shapes=MATRIX_SHAPES, maximize=False),
        ),
    )
}  # fmt: skip

#: The model suite's optimizers (entries with an ``lr``), in order.
SUITE_OPTIMIZERS = tuple(name for name, e in OPTIMIZERS.items() if e.lr is not None)
# The optimizer grid's entries (one per torch optimizer), in order.
GRID = tuple(e for e in OPTIMIZERS.values() if e.grid is not None)


def grid_points():
    """``(entry, kwargs, id)`` for every optimizer x flag combination, plus maximize."""
    for entry in GRID:
        points = list(entry.grid.points)
        if entry.grid.maximize:
            points.append({**points[-1], "maximize": True})
        for kw in points:
            kwargs = {**entry.grid.base, **kw}
            label = ",".join(f"{k}={v}" for k, v in kw.items()) or "default"
            yield entry, kwargs, f"{entry.name}-{label}"


REGULARIZERS: dict[str, RegularizerEntry] = {
    e.name: e
    for e in (
        RegularizerEntry("none"),
        RegularizerEntry("l1", penalty={"l1": L1_ALPHA}),
        RegularizerEntry("l2", penalty={"l2": L2_LAMBDA}),
        RegularizerEntry("wd", weight_decay="coupled"),
        RegularizerEntry("decoupled", weight_decay="decoupled"),
        RegularizerEntry("masked", weight_decay="own", no_decay_group=True),
        RegularizerEntry("prox_l1", prox_l1=L1_ALPHA),
    )
}


@dataclass(frozen=True)
class BenchEntry:
    """An optimizer as ``python -m parity.bench`` times it: an ``OPTIMIZERS`` entry
    with the benchmark's hyperparameters, and jaxreg's fused step of the same update.

    Attributes:
      name: the benchmark's name (``spec["opt"]``).
      optimizer: the ``OPTIMIZERS`` entry.
      kwargs: the benchmark's arguments besides ``weight_decay`` (``lr``, ``momentum``).
      weight_decay: the benchmark's decay (the ``*_nowd`` subjects use 0).
      fused: the ``jaxreg.optim`` factory of the fused step (``fused_sgd``).
      bytes_per_param: float32 bytes one fused step reads and writes per parameter.
      title: the plot's title.
    """

    name: str
    optimizer: str
    kwargs: dict[str, Any]
    weight_decay: float
    fused: str
    bytes_per_param: int
    title: str

    def torch_optimizer(self, params: Any, weight_decay: float, **flags: Any) -> Any:
        """torch's optimizer; ``flags`` picks its kernel (``foreach``, ``fused``)."""
        entry = OPTIMIZERS[self.optimizer]
        return entry.torch_cls(params, **self.kwargs, weight_decay=weight_decay, **flags)

    def jax_optimizer(self, weight_decay: float) -> Any:
        return OPTIMIZERS[self.optimizer].jax_fn(**self.kwargs, weight_decay=weight_decay)

    def fused_optimizer(self, weight_decay: float) -> Any:
        from jaxreg import optim

        return getattr(optim, self.fused)(**self.kwargs, weight_decay=weight_decay)


BENCH: dict[str, BenchEntry] = {
    e.name: e
    for e in (
        # read p, g, momentum; write p, momentum: 5 x 4 B
        BenchEntry("sgd", "sgd", {"lr": 0.01, "momentum": 0.9}, 5e-4, "fused_sgd", 20,
                   "SGD + momentum + weight decay"),
        # read p, g, m, v; write p, m, v: 7 x 4 B
        BenchEntry("adamw", "adamw", {"lr": 0.01}, 1e-2, "fused_adamw", 28, "AdamW"),
    )
}  # fmt: skip


@dataclass(frozen=True)
class EffectEntry:
    """A row of the regularization-effect runs (``parity.effect``): a regularizer
    entry at ``scale`` times the run's strength, on ``optax.adam``.

    Attributes:
      name: the row's label.
      regularizer: the ``REGULARIZERS`` entry.
      scale: multiple of the run's strength (a visible effect for decay and prox).
      kernels_only: the decay/proximal step touches only kernels (``ndim >= 2``).
    """

    name: str
    regularizer: str
    scale: float = 1.0
    kernels_only: bool = False

    def build(self, lr: float, strength: float) -> tuple[dict[str, float], Any]:
        """``(penalty, tx)``: ``jaxreg.regularized``'s arguments and the optimizer."""
        import optax

        from jaxreg import masks

        mask = masks.min_ndim(2) if self.kernels_only else None
        reg = REGULARIZERS[self.regularizer]
        return reg.jax_transforms(optax.adam(lr), lr, self.scale * strength, mask)


EFFECTS: dict[str, EffectEntry] = {
    e.name: e
    for e in (
        EffectEntry("none", "none"),
        EffectEntry("l1", "l1"),
        EffectEntry("l2", "l2"),
        EffectEntry("decay", "decoupled", scale=100),
        EffectEntry("prox_l1", "prox_l1", scale=100, kernels_only=True),
    )
}


@dataclass(frozen=True)
class JaxRecipe:
    """Everything the JAX side of a case is built from; a :class:`Mutation` changes it.

    Attributes:
      model: the suite's model name.
      optimizer: the optimizer entry.
      optimizer_kwargs: the jaxreg optimizer's arguments besides ``lr`` and its flags.
      penalty: the arguments of ``jaxreg.regularized``.
      loss_term: ``params -> scalar`` added to the loss instead of ``penalty`` (a
        hand-written port), or ``None``.
      prox_l1: the proximal L1 strength (threshold ``lr·prox_l1``), or ``None``.
      model_overrides: arguments of ``parity.models.flax_model``.
      permute_flatten: the converter permutes the rows of a Linear that follows a
        flattened conv feature map (torch's C,H,W to Flax's H,W,C).
    """

    model: str
    optimizer: OptimizerEntry
    optimizer_kwargs: dict[str, Any]
    penalty: dict[str, float]
    loss_term: Callable[[Any], Any] | None = None
    prox_l1: float | None = None
    model_overrides: dict[str, Any] = field(default_factory=dict)
    permute_flatten: bool = True

    def replace(self, **changes: Any) -> JaxRecipe:
        return dataclasses.replace(self, **changes)


def _scale_strengths(r: JaxRecipe) -> JaxRecipe:
    kw = dict(r.optimizer_kwargs)
    kw["weight_decay"] = kw.get("weight_decay", 0.0) * 1.01
    return r.replace(optimizer_kwargs=kw, penalty={k: v * 1.01 for k, v in r.penalty.items()})


def _abs_l1(r: JaxRecipe) -> JaxRecipe:
    if "l1" not in r.penalty:
        return r
    alpha = r.penalty["l1"]

    def loss_term(params):  # the naive port: jnp.abs, whose derivative at 0 is 1
        import jax
        import jax.numpy as jnp

        return alpha * sum(jnp.abs(p).sum() for p in jax.tree.leaves(params))

    return r.replace(penalty={k: v for k, v in r.penalty.items() if k != "l1"}, loss_term=loss_term)


def _for_model(model: str, **overrides: Any) -> Callable[[JaxRecipe], JaxRecipe]:
    def change(r: JaxRecipe) -> JaxRecipe:
        if r.model != model:
            return r
        return r.replace(model_overrides={**r.model_overrides, **overrides})

    return change


def _optax_adamw_default(r: JaxRecipe) -> JaxRecipe:
    if r.optimizer.jax != "adamw":
        return r
    return r.replace(optimizer_kwargs={**r.optimizer_kwargs, "weight_decay": 1e-4})


@dataclass(frozen=True)
class Mutation:
    """A planted bug: a registered change to the JAX side of a case, which the suite
    must flag (``python -m parity --mutation NAME``). Where the change does not apply to
    a case (an L1 bug on an L2 case), the case runs unchanged."""

    name: str
    description: str
    change: Callable[[JaxRecipe], JaxRecipe]


MUTATIONS: dict[str, Mutation] = {
    m.name: m
    for m in (
        Mutation("decay_factor", "JAX decay/penalty 1% too strong", _scale_strengths),
        Mutation("l1_abs_grad", "JAX L1 via jnp.abs: derivative 1 at 0 (torch: 0)", _abs_l1),
        Mutation(
            "ln_eps",
            "Flax LayerNorm's default eps 1e-6 (torch: 1e-5)",
            _for_model("mlp_ln", ln_epsilon=1e-6),
        ),  # fmt: skip
        Mutation(
            "flatten_order",
            "conv -> dense rows not permuted (C,H,W vs H,W,C)",
            lambda r: r.replace(permute_flatten=False),
        ),  # fmt: skip
        Mutation(
            "bn_biased_var",
            "Flax-style biased running variance (torch: unbiased)",
            _for_model("cnn_bn", unbiased_running_var=False),
        ),  # fmt: skip
        Mutation(
            "adamw_default_wd",
            "optax.adamw's default weight_decay 1e-4 (torch: 1e-2)",
            _optax_adamw_default,
        ),  # fmt: skip
    )
}


def jax_recipe(
    model: str, reg: str, optimizer: str, weight_decay: float | None, mutation: str | None
) -> JaxRecipe:
    """The JAX side of a case, with its planted bug (if any) applied."""
    opt, r = OPTIMIZERS[optimizer], REGULARIZERS[reg]
    kwargs = r.optimizer_kwargs(opt, weight_decay)
    if r.no_decay_group:
        from jaxreg import masks

        kwargs["weight_decay_mask"] = masks.min_ndim(2)
    recipe = JaxRecipe(model, opt, kwargs, dict(r.penalty), prox_l1=r.prox_l1)
    return MUTATIONS[mutation].change(recipe) if mutation else recipe
