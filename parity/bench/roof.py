"""The roof: kernels with an optimizer step's own memory access pattern.

A step's time is bounded below by the bytes it must move divided by the rate the machine
moves *those* bytes at -- at that size (a working set in cache streams faster than one in
DRAM) and with that pattern (in-place read-modify-write). So the limit is measured in the
same run, at the same N as each case, with kernels that move exactly the step's bytes and
do almost no arithmetic, each written several ways (numba ``prange``, torch, jax), and the
fastest one is the roof. A step faster than its roof by more than noise means the roof is
wrong, and the report says so instead of printing a fraction above 1.

Patterns (per element, 4-byte float32 unless stated):

- ``axpy``: ``a += s·b`` -- reads a, b; writes a: 2R/1W, 12 B;
- ``sgd``: ``m = μm + g; p -= lr·m`` -- reads p, g, m; writes p, m: 3R/2W, 20 B
  (SGD with momentum and weight decay);
- ``adamw``: ``m = β₁m + g; v = β₂v + g; p = p - lr·m - lr·v`` -- reads p, g, m, v;
  writes p, m, v: 4R/3W, 28 B (AdamW).

Bytes moved are counted as reads + writes of each array once -- exact for the numba
kernels (one pass by construction); XLA:CPU compiles the jax kernels with one loop per
output array (measured from the HLO: 24 B for ``sgd``, 40 B for ``adamw``), so they move
more than credited and can only make the roof slower, never faster. Every write lands on a
cache line the kernel has just read (in place), so no write-allocate read is added -- the
same for the fused optimizer steps. (A triad into a separate array, ``a = b + s·c``,
does pay it: 16 B per element moved for STREAM's nominal 12, which is why a STREAM-style
triad understates the rate an in-place step can reach.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

#: pattern -> (arrays read, arrays written) per element
PATTERNS = {"axpy": (2, 1), "sgd": (3, 2), "adamw": (4, 3)}
MU, LR, B1, B2, S = 0.9, 0.01, 0.9, 0.999, 1e-3
ITEMSIZE = {"float32": 4, "bfloat16": 2, "float64": 8}


def bytes_per_element(pattern: str, dtype: str = "float32") -> int:
    reads, writes = PATTERNS[pattern]
    return (reads + writes) * ITEMSIZE[dtype]


def label(pattern: str) -> str:
    reads, writes = PATTERNS[pattern]
    return f"{reads}R/{writes}W"


def _arrays(pattern: str, n: int) -> list[np.ndarray]:
    """The kernel's arrays, seeded: written arrays first (p or a, then m, v), then g/b."""
    rng = np.random.default_rng(7)
    return [rng.standard_normal(n, dtype=np.float32) for _ in range(PATTERNS[pattern][0])]


def _numba(pattern: str, n: int, threads: int) -> tuple[Callable[[], None], Callable]:
    import numba
    from numba import njit, prange

    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    f32 = np.float32
    arrays = _arrays(pattern, n)
    if pattern == "axpy":

        @njit(parallel=True, fastmath=False)
        def kernel(a, b, s):
            for i in prange(a.size):
                a[i] += s * b[i]

        a, b = arrays
        return (lambda: kernel(a, b, f32(S))), lambda: [a]
    if pattern == "sgd":

        @njit(parallel=True, fastmath=False)
        def kernel(p, m, g, mu, lr):
            for i in prange(p.size):
                mi = mu * m[i] + g[i]
                m[i] = mi
                p[i] = p[i] - lr * mi

        p, m, g = arrays
        return (lambda: kernel(p, m, g, f32(MU), f32(LR))), lambda: [p]

    @njit(parallel=True, fastmath=False)
    def kernel(p, m, v, g, b1, b2, lr):
        for i in prange(p.size):
            gi = g[i]
            mi = b1 * m[i] + gi
            vi = b2 * v[i] + gi
            m[i] = mi
            v[i] = vi
            p[i] = p[i] - lr * mi - lr * vi

    p, m, v, g = arrays
    return (lambda: kernel(p, m, v, g, f32(B1), f32(B2), f32(LR))), lambda: [p]


def _torch(pattern: str, n: int, device: str) -> tuple[Callable[[], None], Callable]:
    import torch

    dev = "cuda" if device == "gpu" else "cpu"
    ts = [torch.tensor(a, device=dev) for a in _arrays(pattern, n)]
    if pattern == "axpy":
        a, b = ts

        def step():
            a.add_(b, alpha=S)

    elif pattern == "sgd":
        p, m, g = ts

        def step():
            m.mul_(MU).add_(g)
            p.add_(m, alpha=-LR)

    else:
        p, m, v, g = ts

        def step():
            m.mul_(B1).add_(g)
            v.mul_(B2).add_(g)
            p.add_(m, alpha=-LR).add_(v, alpha=-LR)

    return step, lambda: [ts[0].cpu().numpy()]


def jax_kernel(pattern: str) -> Callable:
    """The jax kernel of ``pattern`` (jitted with its written arrays donated): arrays in,
    the written ones out, in :func:`_arrays`'s order."""
    import jax

    if pattern == "axpy":

        def fn(a, b):
            return a + S * b

    elif pattern == "sgd":

        def fn(p, m, g):
            m = MU * m + g
            return p - LR * m, m

    else:

        def fn(p, m, v, g):
            m, v = B1 * m + g, B2 * v + g
            return p - LR * m - LR * v, m, v

    return jax.jit(fn, donate_argnums=tuple(range(PATTERNS[pattern][1])))


def _jax(pattern: str, n: int) -> tuple[Callable[[], None], Callable]:
    import jax

    jitted, written = jax_kernel(pattern), PATTERNS[pattern][1]
    box = {"a": [jax.device_put(a) for a in _arrays(pattern, n)]}

    def step():
        out = jitted(*box["a"])
        out = out if isinstance(out, tuple) else (out,)
        jax.block_until_ready(out)
        box["a"] = list(out) + box["a"][written:]

    return step, lambda: [np.asarray(box["a"][0])]


def make(framework: str, pattern: str, n: int, *, threads: int = 1, device: str = "cpu") -> Any:
    """``(step, written)``: one pass of ``pattern`` over ``n`` float32 elements by
    ``framework`` (``"numba"``: CPU only; ``"torch"``; ``"jax"``), and the first array
    it writes (the guard's fingerprint). Every implementation computes the same values."""
    if pattern not in PATTERNS:
        raise ValueError(f"unknown roof pattern {pattern!r}; one of {tuple(PATTERNS)}")
    if framework == "numba":
        if device != "cpu":
            raise ValueError("the numba roof kernels run on the CPU only")
        return _numba(pattern, n, threads)
    if framework == "torch":
        return _torch(pattern, n, device)
    if framework == "jax":
        return _jax(pattern, n)
    raise ValueError(f"unknown roof framework {framework!r}")
