"""Every Python block of README.md runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_python_blocks():
    assert BLOCKS


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_block_runs(i, capsys):
    exec(compile(BLOCKS[i], f"README.md block {i}", "exec"), {"__name__": "__readme__"})
    out = capsys.readouterr().out.strip()
    if i == 0:  # the example trains: from (0.5 * 3)**2 + 1e-3 * 6 * 0.25 = 2.2515 downwards
        assert 0 < float(out) < 2.2515
