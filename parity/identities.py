"""The identities the suite demonstrates, each with its own verdict, in both frameworks.

1. ``sgd_l2_is_wd``: λ·Σw² in the loss with SGD ≡ SGD ``weight_decay = 2λ``.
2. ``adam_l2_is_coupled_wd``: with Adam, λ·Σw² in the loss ≡ Adam ``weight_decay = 2λ``
   (coupled) -- but ``adam_l2_is_not_decoupled``: it is *not* AdamW-style decoupled
   decay of the same strength; the suite measures how far apart they go, and that the
   gap is the same in torch and in JAX.
3. ``decay_reaches_biases``: unmasked weight decay moves biases (by exactly
   ``-lr·wd·b`` on an SGD step) and a mask keeps them out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from parity import models
from parity.data import Digits
from parity.registry import COUPLED_WD, OPTIMIZERS
from parity.run import (
    Case,
    History,
    _torch_snapshot,
    jax_history,
    torch_history,
    trajectory_diff,
)
from parity.tolerances import F64_TOL

#: Below this relative distance two runs would count as "the same algorithm".
NOT_EQUIVALENT_MIN = 1e-4


@dataclass
class IdentityResult:
    name: str
    claim: str
    framework: str  # "torch", "jax" or "both"
    measured: float
    criterion: str
    passed: bool


def _max(a: History, b: History) -> float:
    return max(trajectory_diff(a, b)[0], default=0.0)


def run_identities(data: Digits, steps: int = 300, model: str = "mlp") -> list[IdentityResult]:
    """Run every identity in torch and in JAX (float64) and judge each."""
    out: list[IdentityResult] = []
    hist = {"torch": torch_history, "jax": jax_history}

    def case(reg: str, opt: str, n: int = steps, wd: float | None = None) -> Case:
        return Case(model, reg, opt, steps=n, weight_decay=wd)

    # 1. SGD: λΣw² in the loss == weight_decay 2λ.
    for fw, h in hist.items():
        d = _max(h(case("l2", "sgd"), data), h(case("wd", "sgd"), data))
        out.append(
            IdentityResult(
                "sgd_l2_is_wd",
                "SGD: λ·Σw² in the loss ≡ weight_decay=2λ",
                fw,
                d,
                f"max rel Δp ≤ {F64_TOL:g}",
                d <= F64_TOL,
            )
        )

    # 2. Adam: the penalty is coupled decay, and not decoupled decay.
    gaps = {}
    for fw, h in hist.items():
        pen = h(case("l2", "adam"), data)
        d = _max(pen, h(case("wd", "adam"), data))
        out.append(
            IdentityResult(
                "adam_l2_is_coupled_wd",
                "Adam: λ·Σw² in the loss ≡ Adam(weight_decay=2λ)",
                fw,
                d,
                f"max rel Δp ≤ {F64_TOL:g}",
                d <= F64_TOL,
            )
        )
        gaps[fw] = _max(pen, h(case("decoupled", "adam", wd=COUPLED_WD), data))
        out.append(
            IdentityResult(
                "adam_l2_is_not_decoupled",
                "Adam: λ·Σw² in the loss ≢ decoupled decay 2λ (Loshchilov & Hutter)",
                fw,
                gaps[fw],
                f"max rel Δp ≥ {NOT_EQUIVALENT_MIN:g}",
                gaps[fw] >= NOT_EQUIVALENT_MIN,
            )
        )
    same = abs(gaps["jax"] - gaps["torch"]) / max(gaps["torch"], 1e-300)
    out.append(
        IdentityResult(
            "adam_gap_same_in_both",
            "the coupled-vs-decoupled gap is the same in torch and JAX",
            "both",
            same,
            "relative difference ≤ 1e-6",
            same <= 1e-6,
        )
    )

    # 3. One SGD step from the same weights on the same batch: unmasked decay moves each
    #    bias by exactly -lr·wd·b0 more than the masked run; kernels decay in both runs.
    b0 = _torch_snapshot(models.torch_model(model, 0).double(), models.layers(model))
    for fw, h in hist.items():
        full = h(case("wd", "sgd", 1), data).snapshots[0]
        masked = h(case("masked", "sgd", 1), data).snapshots[0]
        worst = moved = 0.0
        for k, v in full.items():
            delta = v - masked[k]
            expected = -OPTIMIZERS["sgd"].lr * COUPLED_WD * b0[k] if k.endswith("bias") else 0.0
            worst = max(worst, float(np.max(np.abs(delta - expected))))
            if k.endswith("bias"):
                moved = max(moved, float(np.max(np.abs(delta))))
        out.append(
            IdentityResult(
                "decay_reaches_biases",
                "weight decay moves biases by -lr·wd·b unless masked",
                fw,
                worst,
                "max abs(Δ + lr·wd·b) ≤ 1e-15, biases moved",
                worst <= 1e-15 and moved > 0,
            )
        )
    return out
