"""``python -m parity --distributed 2``: jax.distributed and torch DDP on localhost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from parity.tolerances import F64_TOL

pytestmark = pytest.mark.slow  # separate processes: minutes, not seconds

ROOT = Path(__file__).resolve().parents[2]


def _parity(*args, timeout=600):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-m", "parity", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def _workers_alive() -> list[str]:
    alive = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "parity.distributed --worker" in cmd:
                alive.append(cmd)
    return alive


def test_two_processes_match_one_process_and_torch_ddp(tmp_path):
    proc = _parity("--distributed", "2", "--steps", "10", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((tmp_path / "distributed.json").read_text())
    assert result["world"] == 2 and result["passed"] and len(result["cases"]) == 4
    for row in result["cases"]:
        for check in ("jax_dist_vs_single", "torch_ddp_vs_jax_dist"):
            for what in ("param", "loss"):
                assert row[check][what] <= result["tolerance"] == F64_TOL, (row["case"], check)
        assert row["max_rank_disagreement"] == 0.0  # replicas identical, bit for bit
    assert "PASS" in proc.stdout and "FAIL" not in proc.stdout


def test_planted_bug_fails_the_ddp_comparison(tmp_path):
    """A 1% stronger decay on the JAX side: JAX dist still equals JAX single, not DDP."""
    proc = _parity(
        "--distributed", "2", "--steps", "3", "--mutation", "decay_factor",
        "--out", str(tmp_path),
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    result = json.loads((tmp_path / "distributed.json").read_text())
    for row in result["cases"]:
        assert row["jax_dist_vs_single"]["param"] <= F64_TOL
        assert row["torch_ddp_vs_jax_dist"]["param"] > 1e-8, row
        assert not row["passed"]


def test_time_limit_kills_every_worker(tmp_path):
    t0 = time.time()
    proc = _parity("--distributed", "2", "--timeout", "3", "--out", str(tmp_path))
    assert proc.returncode == 1
    assert "time limit" in proc.stderr and "rank 0 log" in proc.stderr
    assert time.time() - t0 < 60
    assert _workers_alive() == []
    assert not (tmp_path / "distributed.json").exists()
