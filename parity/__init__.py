"""parity: proof that jaxreg-regularized JAX training follows its PyTorch twin step by step.

The public API for porting your own training run: :func:`compare` (side by side, step by
step), :mod:`parity.convert` (``from_torch`` / ``to_torch``: weights between a torch model
and its Flax port, matched by name).
"""

from parity.compare import CompareReport, StepDiff, compare
from parity.compare import rel_diff as compare_rel_diff

__all__ = ["compare", "compare_rel_diff", "CompareReport", "StepDiff"]
