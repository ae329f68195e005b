"""Every Python block of README.md and of the guides in docs/ runs as written.

The blocks of one file run in order in one namespace (a guide may build on its previous
block); what they print is checked against hand-derived values where they print one.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _blocks(path):
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


def _check(name, out):
    if name == "README.md":  # trains: from (0.5 * 3)**2 + 1e-3 * 6 * 0.25 = 2.2515 downwards
        assert 0 < float(out) < 2.2515
    elif name == "optim.md":  # zero gradient: AdamW's decay alone, -lr * wd * 1; bias masked
        assert [float(v) for v in out.split()] == pytest.approx([-1e-3 * 0.05, 0.0], rel=1e-12)
    elif name in ("flat.md", "porting.md"):
        assert out.splitlines()[0] == "True"
        if name == "porting.md":  # the float32 check of the same port, teacher-forced
            assert out.splitlines()[-1] == "True teacher-forced"
    elif name == "decay.md":  # SGD: L2 in the loss == weight_decay=2λ; Adam: == coupled, != AdamW
        sgd_gap, coupled_gap, decoupled_gap = (float(v) for v in out.split())
        assert sgd_gap <= 1e-15 and coupled_gap <= 1e-15 and decoupled_gap > 1e-4
    elif name == "masks.md":
        assert out.splitlines() == [
            "['dense/kernel']",
            "['dense/kernel', 'norm/bias', 'norm/scale']",
        ]
    elif name == "proximal.md":  # soft-threshold by 0.1: 0.05 -> 0, -0.5 -> -0.4, 2 -> 1.9
        assert out == "[ 0.  -0.4  1.9]"


def test_readme_and_guides_have_python_blocks():
    with_blocks = [p.name for p in FILES if _blocks(p)]
    assert {
        "README.md",
        "decay.md",
        "flat.md",
        "masks.md",
        "optim.md",
        "porting.md",
        "proximal.md",
    } <= set(with_blocks)


@pytest.mark.parametrize("path", [p for p in FILES if _blocks(p)], ids=lambda p: p.name)
def test_python_blocks_run(path, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a block that writes files writes them here
    namespace = {"__name__": "__doc_example__"}
    for i, block in enumerate(_blocks(path)):
        exec(compile(block, f"{path.name} block {i}", "exec"), namespace)
    _check(path.name, capsys.readouterr().out.strip())
