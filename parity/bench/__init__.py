"""Benchmarks: jitted jaxreg steps against the best PyTorch variant and the bandwidth limit.

``python -m parity.bench`` (``--quick`` for a short run, ``--device gpu`` on a GPU). Results
are importable: ``parity.bench.suite.run(parity.bench.suite.config("cpu", quick=True))``
returns a :class:`parity.bench.results.BenchResults`, written to ``bench.json`` by
``to_json`` and read back by ``BenchResults.from_json``.
"""
