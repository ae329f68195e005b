"""The names that span the parity grid, in one place.

Imports nothing heavy, so the CLI can validate arguments before checking that the
``parity`` extra (torch, scikit-learn, matplotlib) is installed.
"""

from parity.registry import MUTATIONS as _MUTATIONS
from parity.registry import REGULARIZERS as _REGULARIZERS
from parity.registry import SUITE_OPTIMIZERS as _SUITE_OPTIMIZERS

MODELS = ("mlp", "cnn", "mlp_ln", "cnn_bn")
OPTIMIZERS = _SUITE_OPTIMIZERS  # the model suite's entries, in order
REGS = tuple(_REGULARIZERS)
MUTATIONS = tuple(_MUTATIONS)
