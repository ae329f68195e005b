"""``jaxreg.optim``: every ``torch.optim`` optimizer that has ``weight_decay``, as Optax.

Each function takes torch's argument names and defaults, validates as torch does,
accepts ``lr`` as a float or an Optax schedule, takes a ``weight_decay_mask`` in the
jaxreg mask language, and returns an ``optax.GradientTransformation`` whose
trajectory equals torch's to float64 round-off.
"""

from jaxreg.optim import lr_scheduler
from jaxreg.optim._adafactor import AdafactorState, adafactor
from jaxreg.optim._adam import AdamaxState, AdamState, NAdamState, adam, adamax, adamw, nadam, radam
from jaxreg.optim._asgd import ASGDState, asgd
from jaxreg.optim._bridge import from_torch, state_from_torch, state_to_torch, state_with
from jaxreg.optim._clip import ClipGradNormState, clip_grad_norm, clip_grad_value, get_total_norm
from jaxreg.optim._fused_opt import FusedOptimizer, fused_adamw, fused_sgd
from jaxreg.optim._muon import MuonState, muon, zeropower_via_newtonschulz
from jaxreg.optim._param_groups import from_param_groups, to_param_groups, torch_name
from jaxreg.optim._rms import AdadeltaState, AdagradState, RMSpropState, adadelta, adagrad, rmsprop
from jaxreg.optim._sgd import SGDState, sgd

__all__ = [
    "lr_scheduler",
    "sgd",
    "adam",
    "adamw",
    "rmsprop",
    "adagrad",
    "adadelta",
    "adamax",
    "nadam",
    "radam",
    "asgd",
    "adafactor",
    "muon",
    "clip_grad_norm",
    "clip_grad_value",
    "get_total_norm",
    "ClipGradNormState",
    "fused_sgd",
    "fused_adamw",
    "FusedOptimizer",
    "zeropower_via_newtonschulz",
    "from_torch",
    "state_from_torch",
    "state_to_torch",
    "state_with",
    "torch_name",
    "to_param_groups",
    "from_param_groups",
    "SGDState",
    "AdamState",
    "AdamaxState",
    "NAdamState",
    "RMSpropState",
    "AdagradState",
    "AdadeltaState",
    "ASGDState",
    "AdafactorState",
    "MuonState",
]
