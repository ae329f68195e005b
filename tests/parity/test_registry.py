"""The suite's registry: one entry adds an optimizer, a regularizer or a planted bug to
the model suite, and the suite then trains it against torch like every other entry."""

from __future__ import annotations

import dataclasses

import pytest

from parity import grid, registry
from parity.data import load_digits
from parity.run import Case, run_case, valid
from parity.tolerances import F64_OPTIMIZER_TOL


def test_grid_names_and_validity_come_from_the_registry():
    assert grid.OPTIMIZERS == tuple(n for n, e in registry.OPTIMIZERS.items() if e.lr)
    assert grid.OPTIMIZERS == ("sgd", "sgd_nesterov", "adam", "adamw", "rmsprop")
    assert grid.REGS == tuple(registry.REGULARIZERS)
    assert grid.MUTATIONS == tuple(registry.MUTATIONS)
    # decoupled decay exists for Adam (a flag) and AdamW (its own); AdamW has no coupled one
    assert valid("mlp", "decoupled", "adam") and valid("mlp", "decoupled", "adamw")
    assert not valid("mlp", "decoupled", "sgd") and not valid("mlp", "wd", "adamw")


def test_regularizer_entries_give_both_sides_the_same_arguments():
    adam, adamw = registry.OPTIMIZERS["adam"], registry.OPTIMIZERS["adamw"]
    decoupled, masked = registry.REGULARIZERS["decoupled"], registry.REGULARIZERS["masked"]
    assert decoupled.optimizer_kwargs(adam, None) == {
        "weight_decay": registry.DECOUPLED_WD,
        "decoupled_weight_decay": True,
    }
    assert masked.optimizer_kwargs(adamw, None) == {"weight_decay": registry.DECOUPLED_WD}
    assert masked.optimizer_kwargs(adam, 0.3) == {"weight_decay": 0.3}
    assert registry.REGULARIZERS["l2"].optimizer_kwargs(adam, 0.3) == {"weight_decay": 0.0}


@pytest.mark.slow
def test_one_entry_adds_an_optimizer_and_a_planted_bug(monkeypatch):
    """torch's Adamax (an optimizer-grid entry) joins the model suite by its entry getting
    a learning rate, and trains identically to torch (float64); a planted bug registered
    as one Mutation (its beta2 off by 1e-3) is flagged on it."""
    assert registry.OPTIMIZERS["adamax"].lr is None  # the grid's only, so far
    entry = dataclasses.replace(registry.OPTIMIZERS["adamax"], lr=2e-3)
    monkeypatch.setitem(registry.OPTIMIZERS, "adamax", entry)

    def wrong_beta2(r):
        kw = {**r.optimizer_kwargs, "betas": (0.9, 0.998)}
        return r.replace(optimizer_kwargs=kw)

    monkeypatch.setitem(
        registry.MUTATIONS, "beta2", registry.Mutation("beta2", "beta2 0.998", wrong_beta2)
    )
    data = load_digits()
    ok = run_case(Case("mlp", "masked", "adamax", "float64", steps=20), data)
    assert ok.passed and ok.max_dparam <= F64_OPTIMIZER_TOL, ok.max_dparam
    bad = run_case(Case("mlp", "masked", "adamax", "float64", steps=20, mutation="beta2"), data)
    assert not bad.passed and bad.first_fail_step is not None


def test_the_optimizer_grid_covers_every_torch_optimizer_with_weight_decay():
    """One grid entry per torch.optim class that takes ``weight_decay`` (torch itself is the
    reference list), each built from the same entry as the model suite's."""
    import inspect

    import torch

    with_decay = {
        name
        for name, cls in vars(torch.optim).items()
        if inspect.isclass(cls)
        and issubclass(cls, torch.optim.Optimizer)
        and cls is not torch.optim.Optimizer
        and "weight_decay" in inspect.signature(cls.__init__).parameters
    }
    assert sorted(e.torch for e in registry.GRID) == sorted(with_decay)
    assert len(list(registry.grid_points())) == 53
    assert registry.OPTIMIZERS["adam"].grid is registry.GRID[1].grid  # one definition
