"""Progress output that fits where it goes: a live bar on a terminal, lines elsewhere.

On a terminal (``stream.isatty()``) a :mod:`tqdm` bar is redrawn in place; in a log file or on a
CI page each finished item is one line (``[i/n] elapsed label``), so no ``\\r``-joined line grows
with the run.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Report ``total`` items finishing, one :meth:`done` call per item.

    Args:
        total: number of items.
        desc: a short prefix for the bar (terminal only).
        stream: where to write; default ``sys.stderr``.

    Example:
        >>> import io
        >>> out = io.StringIO()
        >>> with Progress(2, "cases", stream=out) as p:
        ...     p.done("a PASS")
        ...     p.done("b PASS")
        >>> [line.split()[0] for line in out.getvalue().splitlines()]
        ['[1/2]', '[2/2]']
    """

    def __init__(self, total: int, desc: str = "", stream: TextIO | None = None):
        self.total, self.count, self.t0 = total, 0, time.time()
        self.stream = sys.stderr if stream is None else stream
        self._bar = None
        isatty = getattr(self.stream, "isatty", None)
        if isatty is not None and isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, file=self.stream, dynamic_ncols=True)

    def done(self, label: str) -> None:
        """One item finished; ``label`` names it (and its outcome)."""
        self.count += 1
        if self._bar is not None:
            self._bar.set_postfix_str(label, refresh=False)
            self._bar.update(1)
        else:
            elapsed = time.time() - self.t0
            self.stream.write(f"[{self.count}/{self.total}] {elapsed:5.0f}s {label}\n")
            self.stream.flush()

    def close(self) -> None:
        """End the bar (a no-op for line output)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
