"""Run benchmark subjects side by side: one process each, rounds in alternating order."""

from __future__ import annotations

import json
import os
import select
import statistics
import subprocess
import sys
import time
from pathlib import Path

from parity.bench.results import Subject
from parity.tolerances import TOLERANCES

ROOT = Path(__file__).resolve().parents[2]

# Guard tolerances (float32). Optimizer steps: elementwise, so two correct implementations
# differ by a few ULPs after 3 steps (measured ≤ 3e-7 relative, AdamW's decay rounding);
# the smallest semantic slip benchmarked (SGD weight decay 5e-4 at lr 0.01 missing) moves
# elements by 1.5e-5 relative -- 1e-6 separates them. Training steps: reductions in
# another order (measured ≤ 1e-6 on the loss); 1e-4 still catches a wrong model/optimizer.
# Roof and stream kernels: elementwise like the optimizer steps, the same tolerance.
# bfloat16: implementations that round after every operation and those that compute in
# float32 and round once differ by bfloat16 ULPs.
GUARD_RTOL = {
    ("float32", "opt"): TOLERANCES["float32", "bench_guard_opt"].value,
    ("float32", "train"): TOLERANCES["float32", "bench_guard_train"].value,
    ("bfloat16", "opt"): TOLERANCES["bfloat16", "bench_guard_opt"].value,
}
GUARD_ATOL = {"opt": 1e-7, "train": 0.0}
#: ``JAX_PLATFORMS`` of a worker, per ``--device``.
JAX_PLATFORMS = {"cpu": "cpu", "gpu": "cuda", "tpu": "tpu"}


class BenchError(RuntimeError):
    """A worker failed to start, crashed, or timed out."""


class _Worker:
    def __init__(self, spec: dict):
        device = spec.get("device", "cpu")
        env = dict(os.environ, JAX_PLATFORMS=JAX_PLATFORMS[device], PYTHONUNBUFFERED="1")
        if device != "cpu":  # workers share the device: no 75% preallocation per process
            env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
        env.pop("XLA_FLAGS", None)
        self.spec = spec
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "parity.bench.worker", json.dumps(spec)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def read(self, timeout: float | None = None) -> dict:
        if timeout is not None:
            ready, _, _ = select.select([self.proc.stdout], [], [], max(timeout, 0.0))
            if not ready:
                raise TimeoutError
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read()[-3000:]
            raise BenchError(f"{self.spec['framework']}/{self.spec['variant']} died:\n{err}")
        return json.loads(line)

    def round(self, iters: int) -> list[float]:
        self.proc.stdin.write(json.dumps({"iters": iters}) + "\n")
        self.proc.stdin.flush()
        return self.read()["times"]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            f.close()


def measure(
    case: dict, subjects: list[Subject], rounds: int, round_s: float, ready_s: float = 240.0
) -> None:
    """Time every subject of ``case``; fills each :class:`Subject`'s measurements.

    All workers are started together (set-up and compilation overlap), then timed one at
    a time: ``rounds`` rounds, each visiting every subject once, the order reversed and
    rotated from round to round so that no subject always runs first or after the same
    neighbour. A round times ``k`` single steps (``k`` set so a round lasts ~``round_s``);
    its median is the round's value; the subject's value is the median over rounds, with
    the min/max over rounds as its spread. A subject not ready (set-up, guard, compile)
    within ``ready_s`` seconds is dropped and its ``error`` says so.
    """
    workers = [_Worker({**case, "framework": s.framework, "variant": s.variant}) for s in subjects]
    try:
        deadline = time.time() + ready_s
        for w, s in zip(workers, subjects):
            try:
                r = w.read(timeout=deadline - time.time())
            except TimeoutError:
                s.error = f"not ready within {ready_s:.0f} s (set-up + compile)"
                w.proc.kill()
                continue
            s.setup_s, s.compile_s, s.guard = r["setup_s"], r["first_step_s"], r["guard"]
            s.hlo, s.rounds = r.get("hlo"), []
            s.iters = max(3, min(500, round(round_s / max(r["per_step_s"], 1e-7))))
        order = [i for i, s in enumerate(subjects) if s.error is None]
        for r in range(rounds):
            visit = order[r % len(order) :] + order[: r % len(order)]
            if r % 2:
                visit.reverse()
            for i in visit:
                times = workers[i].round(subjects[i].iters)
                subjects[i].rounds.append(statistics.median(times))
    finally:
        for w in workers:
            w.close()
    for s in subjects:
        if s.error is None:
            s.median_s, s.min_s, s.max_s = statistics.median(s.rounds), min(s.rounds), max(s.rounds)


def check_guards(kind: str, subjects: list[Subject], dtype: str = "float32") -> None:
    """Subjects with the same semantics must end the guard steps within tolerance of the
    reference: PyTorch's for-loop implementation where the group has one (torch's own
    reference semantics), else the group's first subject. A subject that fails is not
    timed against the others (``guard_ok`` False). Elementwise kinds (optimizer steps,
    roof and stream kernels) use the ``"opt"`` tolerance, training steps ``"train"``."""
    import numpy as np

    live = [s for s in subjects if s.error is None]
    refs: dict[str, Subject] = {}
    for s in live:
        refs.setdefault(s.semantics, s)
    refs.update({s.semantics: s for s in live if s.variant == "torch_loop"})
    for s in live:
        ref = refs[s.semantics]
        a, b = np.array(s.guard), np.array(ref.guard)
        rtol = GUARD_RTOL[dtype, kind]
        if dtype == "bfloat16":  # relative to the largest element (see the tolerance)
            err = float(np.max(np.abs(a - b)) / (rtol * np.max(np.abs(b))))
        else:
            err = float(np.max(np.abs(a - b) / (GUARD_ATOL[kind] + rtol * np.abs(b))))
        s.guard_ok, s.guard_vs, s.guard_err_over_tol = bool(err <= 1.0), ref.name, err
