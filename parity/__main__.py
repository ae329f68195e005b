"""``python -m parity``: the project's main job."""

from __future__ import annotations

import sys

from parity.data import load_digits
from parity.effect import REGS, effect_table, train_effect


def main(argv: list[str] | None = None) -> int:
    data = load_digits()
    print(f"digits: {len(data.y_train)} train / {len(data.y_test)} test images")
    results = [train_effect(data, reg) for reg in REGS]
    print(effect_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
