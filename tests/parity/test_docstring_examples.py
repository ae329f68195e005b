"""The docstring examples of the public parity API run (pytest collects doctests from
jaxreg/ only: parity/__main__.py would run the suite on import)."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize("name", ["parity.convert", "parity.compare", "parity.progress"])
def test_docstring_examples_run(name):
    # import_module: the package attribute parity.compare is the function, not the module
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    if name != "parity.compare":
        assert result.attempted > 0
