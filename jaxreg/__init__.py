"""jaxreg: L1/L2 regularization and weight decay for JAX that behaves exactly like PyTorch.

Penalties are pure functions of parameter pytrees; decay and proximal steps are
Optax gradient transformations; :mod:`jaxreg.masks` selects what is regularized.
"""

from jaxreg import flat, masks, nn, optim, prox
from jaxreg._decay import (
    ScheduleState,
    add_l1_decay,
    add_weight_decay,
    decoupled_weight_decay,
)
from jaxreg._guard import skip_nonfinite, skip_unused
from jaxreg._penalties import elastic_net_penalty, l1_penalty, l2_penalty, regularized
from jaxreg._soft_threshold import (  # prox_l1, prox_elastic_net: deprecated names
    prox_elastic_net as prox_elastic_net,
)
from jaxreg._soft_threshold import (
    prox_l1 as prox_l1,
)
from jaxreg._soft_threshold import (
    proximal_elastic_net,
    proximal_l1,
    soft_threshold,
)
from jaxreg._structured import (
    activity_penalty,
    equivalent_weight_decay,
    group_lasso_penalty,
    l2_to_reference_penalty,
    orthogonal_penalty,
)
from jaxreg._validate import ScalarOrSchedule
from jaxreg.prox import ProximalState, proximal

__version__ = "0.1.0"

__all__ = [
    "flat",
    "masks",
    "nn",
    "optim",
    "prox",
    "proximal",
    "ProximalState",
    "l1_penalty",
    "l2_penalty",
    "elastic_net_penalty",
    "regularized",
    "group_lasso_penalty",
    "l2_to_reference_penalty",
    "orthogonal_penalty",
    "activity_penalty",
    "equivalent_weight_decay",
    "add_weight_decay",
    "decoupled_weight_decay",
    "add_l1_decay",
    "proximal_l1",
    "proximal_elastic_net",
    "soft_threshold",
    "skip_nonfinite",
    "skip_unused",
    "ScheduleState",
    "ScalarOrSchedule",
    "__version__",
]
