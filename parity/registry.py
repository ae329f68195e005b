"""The model suite's registry: one definition of every case's pieces.

A case of ``python -m parity`` is (model, regularizer, optimizer, dtype[, planted bug]).
Each optimizer and each regularizer is one entry here, holding both sides -- what the
PyTorch user writes and what the jaxreg port writes -- and each planted bug is a
registered change to the JAX side. ``parity.run`` builds both training runs from these
entries and nothing else; the grid's names (``parity.grid``), the CLI's choices and the
validity of a combination all come from here.

Adding an optimizer to the suite is one :class:`OptimizerEntry`; a regularizer, one
:class:`RegularizerEntry`; a planted bug, one :class:`Mutation`. For example, torch's
``Adamax`` would be::

    OptimizerEntry("adamax", torch="Adamax", jax="adamax", lr=2e-3)

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


@dataclass(frozen=True)
class OptimizerEntry:
    """A torch optimizer and its jaxreg twin, with the suite's learning rate and flags.

    Attributes:
      name: the suite's name (``"sgd_nesterov"``).
      torch, jax: the class name in ``torch.optim`` and the factory name in
        ``jaxreg.optim``; both take the same arguments.
      lr: the learning rate of every case.
      flags: further arguments, the same on both sides (``momentum=0.9``).
      decay: what the optimizer's own ``weight_decay`` is: ``"coupled"`` (added to the
        gradient) or ``"decoupled"`` (AdamW).
      decoupled_flags: the arguments that make its ``weight_decay`` decoupled (Adam:
        ``decoupled_weight_decay=True``), or ``None`` where it has no such mode.
    """

    name: str
    torch: str
    jax: str
    lr: float
    flags: dict[str, Any] = field(default_factory=dict)
    decay: str = "coupled"
    decoupled_flags: dict[str, Any] | None = None

    def torch_optimizer(self, params: Any, **kwargs: Any) -> Any:
        import torch

        return getattr(torch.optim, self.torch)(params, lr=self.lr, **self.flags, **kwargs)

    def jax_optimizer(self, **kwargs: Any) -> Any:
        from jaxreg import optim

        return getattr(optim, self.jax)(lr=self.lr, **self.flags, **kwargs)


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


OPTIMIZERS: dict[str, OptimizerEntry] = {
    e.name: e
    for e in (
        OptimizerEntry("sgd", "SGD", "sgd", lr=0.05),
        OptimizerEntry(
            "sgd_nesterov", "SGD", "sgd", lr=0.05, flags={"momentum": 0.9, "nesterov": True}
        ),  # fmt: skip
        OptimizerEntry(
            "adam", "Adam", "adam", lr=1e-3, decoupled_flags={"decoupled_weight_decay": True}
        ),  # fmt: skip
        OptimizerEntry("adamw", "AdamW", "adamw", lr=1e-3, decay="decoupled"),
        OptimizerEntry("rmsprop", "RMSprop", "rmsprop", lr=1e-3),
    )
}

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
