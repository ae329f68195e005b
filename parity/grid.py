"""The names that span the parity grid, in one place.

Imports nothing heavy, so the CLI can validate arguments before checking that the
``parity`` extra (torch, scikit-learn, matplotlib) is installed.
"""

from parity.registry import MUTATIONS as _MUTATIONS
from parity.registry import OPTIMIZERS as _OPTIMIZERS
from parity.registry import REGULARIZERS as _REGULARIZERS

MODELS = ("mlp", "cnn", "mlp_ln", "cnn_bn")
OPTIMIZERS = tuple(_OPTIMIZERS)  # the registry's entries, in order
REGS = tuple(_REGULARIZERS)
MUTATIONS = tuple(_MUTATIONS)
