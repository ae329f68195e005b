"""The names that span the parity grid, in one place.

Imports nothing heavy, so the CLI can validate arguments before checking that the
``parity`` extra (torch, scikit-learn, matplotlib) is installed.
"""

MODELS = ("mlp", "cnn", "mlp_ln", "cnn_bn")
OPTIMIZERS = ("sgd", "sgd_nesterov", "adam", "adamw", "rmsprop")
REGS = ("none", "l1", "l2", "wd", "decoupled", "masked", "prox_l1")
MUTATIONS = (
    "decay_factor",  # JAX decay/penalty 1% too strong
    "l1_abs_grad",  # JAX L1 via jnp.abs: derivative 1 at 0 (torch: 0)
    "ln_eps",  # Flax LayerNorm's default eps 1e-6 (torch: 1e-5)
    "flatten_order",  # conv -> dense rows not permuted (C,H,W vs H,W,C)
    "bn_biased_var",  # Flax-style biased running variance (torch: unbiased)
    "adamw_default_wd",  # optax.adamw's default weight_decay 1e-4 (torch: 1e-2)
)
