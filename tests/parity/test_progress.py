"""Progress output: one line per finished item in a file, a redrawn tqdm bar on a terminal."""

from __future__ import annotations

import io

from parity.progress import Progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_lines_when_not_a_terminal():
    out = io.StringIO()
    with Progress(3, "cases", stream=out) as p:
        for name in ("a PASS", "b FAIL", "c PASS"):
            p.done(name)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and "\r" not in out.getvalue()
    assert [ln.split()[0] for ln in lines] == ["[1/3]", "[2/3]", "[3/3]"]
    assert lines[1].endswith("b FAIL")


def test_live_bar_on_a_terminal():
    out = _Terminal()
    with Progress(3, "cases", stream=out) as p:
        for name in ("a PASS", "b PASS", "c PASS"):
            p.done(name)
    text = out.getvalue()
    assert "\r" in text  # redrawn in place
    assert "3/3" in text and "cases" in text
    assert "[1/3]" not in text  # not the line format
