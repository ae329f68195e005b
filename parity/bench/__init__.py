"""Benchmarks: jitted jaxreg steps against the best PyTorch variant and the bandwidth limit.

``python -m parity.bench`` (``--quick`` for a short run). Results are importable:
``parity.bench.suite.run(parity.bench.suite.QUICK)`` returns the same dict that is written
to ``bench.json``.
"""
