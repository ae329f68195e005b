"""Multi-device tests: run in their own process with 8 simulated CPU devices.

``tests/test_multidevice.py`` starts ``pytest tests/multidevice`` in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (the flag must be set before JAX
creates its CPU backend, so it cannot share the main test process).
"""

import jax

N_DEVICES = 8

if jax.device_count() != N_DEVICES:
    raise RuntimeError(
        f"tests/multidevice needs {N_DEVICES} devices, JAX sees {jax.device_count()}: run it "
        "via tests/test_multidevice.py, or set "
        f"XLA_FLAGS=--xla_force_host_platform_device_count={N_DEVICES} JAXREG_MULTIDEVICE=1"
    )
