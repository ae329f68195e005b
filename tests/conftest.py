"""Test configuration: float64 on, so that parity is judged at round-off level."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)


# tests/multidevice needs 8 devices fixed before JAX starts: tests/test_multidevice.py runs it
# in a child process (JAXREG_MULTIDEVICE=1) instead of collecting it here.
if not os.environ.get("JAXREG_MULTIDEVICE"):
    collect_ignore = ["multidevice"]
