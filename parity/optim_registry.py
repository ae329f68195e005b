"""The optimizer registry driving the parity grid: torch class, jaxreg factory, flag grid."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from jaxreg import optim

SHAPES = [(4, 3), (3,), (), (5, 2)]  # a matrix, a vector, a scalar leaf, another matrix
MATRIX_SHAPES = [(4, 3), (3, 5), (6, 2)]  # Muon: 2-D only


@dataclass
class Spec:
    name: str
    torch_cls: Any
    jax_fn: Any
    base: dict[str, Any]  # kwargs used at every grid point (lr, weight_decay, ...)
    grid: list[dict[str, Any]] = field(default_factory=lambda: [{}])
    shapes: list[tuple[int, ...]] = field(default_factory=lambda: SHAPES)
    has_maximize: bool = True
    torch_scalar_state: bool = False  # NAdam/ASGD: 0-d state tensors in torch's default dtype

    def jax(self, **kwargs: Any) -> Any:
        """The jaxreg optimizer as torch runs in this process.

        NAdam's and ASGD's 0-d state follows ``torch.get_default_dtype()`` in torch (float32
        here unless a test sets float64); jaxreg's default follows the parameters, so the
        grid passes torch's choice explicitly.
        """
        if self.torch_scalar_state and "torch_scalar_dtype" not in kwargs:
            f64 = torch.get_default_dtype() == torch.float64
            kwargs["torch_scalar_dtype"] = "float64" if f64 else "float32"
        return self.jax_fn(**kwargs)


SPECS = [
    Spec(
        "sgd",
        torch.optim.SGD,
        optim.sgd,
        {"lr": 0.05, "weight_decay": 0.1},
        [
            {},
            {"momentum": 0.9},
            {"momentum": 0.9, "dampening": 0.5},
            {"momentum": 0.9, "nesterov": True},
            {"weight_decay": 0.0, "momentum": 0.5},
        ],
    ),
    Spec(
        "adam",
        torch.optim.Adam,
        optim.adam,
        {"lr": 0.01, "weight_decay": 0.1},
        [
            {},
            {"amsgrad": True},
            {"decoupled_weight_decay": True},
            {"decoupled_weight_decay": True, "amsgrad": True},
            {"betas": (0.5, 0.9), "eps": 1e-3},
        ],
    ),
    Spec(
        "adamw",
        torch.optim.AdamW,
        optim.adamw,
        {"lr": 0.01},
        [{}, {"amsgrad": True}, {"weight_decay": 0.5}],
    ),
    Spec(
        "rmsprop",
        torch.optim.RMSprop,
        optim.rmsprop,
        {"lr": 0.01, "weight_decay": 0.1},
        [
            {},
            {"centered": True},
            {"momentum": 0.9},
            {"centered": True, "momentum": 0.9},
            {"alpha": 0.9, "eps": 1e-3},
        ],
    ),
    Spec(
        "adagrad",
        torch.optim.Adagrad,
        optim.adagrad,
        {"lr": 0.05, "weight_decay": 0.1},
        [{}, {"lr_decay": 0.01}, {"initial_accumulator_value": 0.1}, {"eps": 1e-3}],
    ),
    Spec(
        "adadelta",
        torch.optim.Adadelta,
        optim.adadelta,
        {"lr": 0.5, "weight_decay": 0.1},
        [{}, {"rho": 0.5, "eps": 1e-4}],
    ),
    Spec(
        "adamax",
        torch.optim.Adamax,
        optim.adamax,
        {"lr": 0.01, "weight_decay": 0.1},
        [{}, {"betas": (0.5, 0.9)}],
    ),
    Spec(
        "nadam",
        torch.optim.NAdam,
        optim.nadam,
        {"lr": 0.01, "weight_decay": 0.1},
        [{}, {"decoupled_weight_decay": True}, {"momentum_decay": 0.01}],
        torch_scalar_state=True,
    ),
    Spec(
        "radam",
        torch.optim.RAdam,
        optim.radam,
        {"lr": 0.01, "weight_decay": 0.1},
        [{}, {"decoupled_weight_decay": True}, {"betas": (0.9, 0.99)}],
    ),
    Spec(
        "asgd",
        torch.optim.ASGD,
        optim.asgd,
        {"lr": 0.05, "weight_decay": 0.1},
        [{}, {"t0": 20.0}, {"t0": 20.0, "lambd": 0.01, "alpha": 0.5}],
        torch_scalar_state=True,
    ),
    Spec(
        "adafactor",
        torch.optim.Adafactor,
        optim.adafactor,
        {"lr": 0.01, "weight_decay": 0.1},
        [{}, {"beta2_decay": -0.5, "d": 2.0}, {"eps": (1e-8, 1e-2)}],
    ),
    Spec(
        "muon",
        torch.optim.Muon,
        optim.muon,
        {"lr": 0.01},
        [
            {},
            {"nesterov": False},
            {"adjust_lr_fn": "match_rms_adamw", "weight_decay": 0.3},
            {"adjust_lr_fn": "spectral_unclamped"},
        ],
        shapes=MATRIX_SHAPES,
        has_maximize=False,
    ),
]


def grid_points():
    """(spec, kwargs, id) for every optimizer × flag combination, plus maximize."""
    for spec in SPECS:
        points = list(spec.grid)
        if spec.has_maximize:
            points.append({**spec.grid[-1], "maximize": True})
        for kw in points:
            kwargs = {**spec.base, **kw}
            yield (
                spec,
                kwargs,
                f"{spec.name}-" + (",".join(f"{k}={v}" for k, v in kw.items()) or "default"),
            )
