"""parity: proof that jaxreg-regularized JAX training follows its PyTorch twin step by step."""
