"""The data both sides of every example train on: scikit-learn's bundled digits.

1,797 8x8 images (no download), scaled to [0, 1], a fixed 75/25 split, and a seeded
batch order that the torch script and its JAX port share.
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def load(dtype=np.float64):
    """``(x_train, y_train, x_test, y_test)``; images ``(N, 8, 8)`` in [0, 1]."""
    d = load_digits()
    x = (d.images / 16.0).astype(dtype)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, d.target, test_size=0.25, random_state=0, stratify=d.target
    )
    return x_tr, y_tr, x_te, y_te


def batches(x, y, batch_size=64, epochs=1, seed=0):
    """``[(images, labels), ...]``: every epoch a new seeded permutation."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(epochs):
        order = rng.permutation(len(y))
        for i in range(0, len(y) - batch_size + 1, batch_size):
            idx = order[i : i + batch_size]
            out.append((x[idx], y[idx]))
    return out
