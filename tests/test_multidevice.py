"""Runs ``tests/multidevice`` in its own process with 8 simulated CPU devices."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # separate processes: minutes, not seconds

ROOT = Path(__file__).resolve().parent.parent


def test_multidevice_suite_passes_on_8_simulated_cpu_devices():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["JAXREG_MULTIDEVICE"] = "1"
    # A fresh pytest, not an xdist worker: drop the worker markers it inherits.
    for key in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        env.pop(key, None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/multidevice",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:benchmark",
            "-o",
            "addopts=",
            "-q",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-8000:]
    assert " passed" in out and "skipped" not in out, out[-2000:]
