"""scikit-learn's bundled digits: a fixed split and a seeded batch order for both sides."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Digits:
    """Train/test split of the 1,797 8×8 digit images, pixels scaled to [0, 1]."""

    x_train: np.ndarray  # (n_train, 8, 8) float64
    y_train: np.ndarray  # (n_train,) int64
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits(test_fraction: float = 0.25, seed: int = 0) -> Digits:
    """Load the digits set shipped with scikit-learn (no download) and split it, seeded."""
    from sklearn.datasets import load_digits as _load

    data = _load()
    x = data.images.astype(np.float64) / 16.0
    y = data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    test, train = order[:n_test], order[n_test:]
    return Digits(x[train], y[train], x[test], y[test])


def batch_indices(n: int, batch_size: int, steps: int, seed: int = 0) -> np.ndarray:
    """Index arrays for ``steps`` batches: seeded reshuffle each epoch, last partial batch dropped.

    Both frameworks take their batches from these indices, so they see the same data in
    the same order.
    """
    rng = np.random.default_rng(seed)
    per_epoch = n // batch_size
    out = []
    while len(out) < steps:
        perm = rng.permutation(n)
        out.extend(perm[i * batch_size : (i + 1) * batch_size] for i in range(per_epoch))
    return np.stack(out[:steps])
