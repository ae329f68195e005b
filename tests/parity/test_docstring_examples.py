"""The docstring examples of the public parity API run (pytest collects doctests from
jaxreg/ only: parity/__main__.py would run the suite on import)."""

from __future__ import annotations

import doctest

import pytest

from parity import compare, convert


@pytest.mark.parametrize("module", [convert, compare])
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    if module is convert:
        assert result.attempted > 0
