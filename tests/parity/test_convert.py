"""parity.convert: torch state_dict <-> Flax variables (linen and nnx)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from parity import convert, models
from parity.grid import MODELS

X = np.random.default_rng(0).random((7, 8, 8))


def _pair(name):
    tm = models.torch_model(name).double()
    fm = models.flax_model(name, jnp.float64)
    tmpl = fm.init(jax.random.key(0), jnp.asarray(models.flax_input(X)), train=False)
    return tm, fm, tmpl


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_round_trip_is_exact(name):
    tm, _, tmpl = _pair(name)
    v = convert.torch_to_flax(tm.state_dict(), models.layers(name), tmpl)
    back = convert.flax_to_torch(v, models.layers(name), tm.state_dict())
    assert set(back) == set(tm.state_dict())
    for k, t in tm.state_dict().items():
        np.testing.assert_array_equal(back[k], t.numpy())


@pytest.mark.parametrize("name", MODELS)
def test_converted_model_gives_the_same_forward_output(name):
    tm, fm, tmpl = _pair(name)
    if name == "cnn_bn":  # non-trivial running statistics for the eval-mode check
        with torch.no_grad():
            tm.bn1.running_mean.uniform_(-0.5, 0.5)
            tm.bn1.running_var.uniform_(0.5, 2.0)
    v = convert.torch_to_flax(tm.state_dict(), models.layers(name), tmpl)
    tm.eval()
    ref = tm(torch.tensor(models.torch_input(X))).detach().numpy()
    out = np.asarray(fm.apply(v, jnp.asarray(models.flax_input(X)), train=False))
    assert np.max(np.abs(out - ref)) <= 1e-12


def test_flatten_order_matters():
    """Without the (C,H,W)->(H,W,C) row permutation the CNN's output is wrong."""
    tm, fm, tmpl = _pair("cnn")
    plain = [
        convert.Linear(lyr.torch_name, lyr.flax_name) if isinstance(lyr, convert.Linear) else lyr
        for lyr in models.layers("cnn")
    ]
    v = convert.torch_to_flax(tm.state_dict(), plain, tmpl)
    ref = tm(torch.tensor(models.torch_input(X))).detach().numpy()
    out = np.asarray(fm.apply(v, jnp.asarray(models.flax_input(X)), train=False))
    assert np.max(np.abs(out - ref)) > 1e-3


class _NnxMLP(nnx.Module):
    def __init__(self, rngs):
        self.fc1 = nnx.Linear(64, models.HIDDEN, param_dtype=jnp.float64, rngs=rngs)
        self.fc2 = nnx.Linear(models.HIDDEN, 10, param_dtype=jnp.float64, rngs=rngs)

    def __call__(self, x):
        return self.fc2(jax.nn.relu(self.fc1(x.reshape((x.shape[0], -1)))))


def test_nnx_model_from_torch():
    tm, _, tmpl = _pair("mlp")
    v = convert.torch_to_flax(tm.state_dict(), models.layers("mlp"), tmpl)
    m = _NnxMLP(nnx.Rngs(0))
    convert.to_nnx(v, m)
    ref = tm(torch.tensor(models.torch_input(X))).detach().numpy()
    out = np.asarray(m(jnp.asarray(models.flax_input(X))))
    assert np.max(np.abs(out - ref)) <= 1e-12


def test_embedding():
    emb = torch.nn.Embedding(5, 3).double()
    v = convert.torch_to_flax({"e.weight": emb.weight}, [convert.Embedding("e", "emb")])
    np.testing.assert_array_equal(v["params"]["emb"]["embedding"], emb.weight.detach().numpy())
    back = convert.flax_to_torch(v, [convert.Embedding("e", "emb")], {"e.weight": emb.weight})
    np.testing.assert_array_equal(back["e.weight"], emb.weight.detach().numpy())


def test_mismatches_are_listed():
    tm, _, tmpl = _pair("mlp")
    sd = dict(tm.state_dict())
    sd["extra.weight"] = torch.zeros(2)
    del sd["fc2.bias"]
    with pytest.raises(ValueError) as e:
        convert.torch_to_flax(sd, models.layers("mlp"), tmpl)
    assert "missing torch key 'fc2.bias'" in str(e.value)
    assert "unexpected torch key 'extra.weight'" in str(e.value)
    wrong = models.flax_model("mlp", jnp.float64).init(
        jax.random.key(0), jnp.zeros((1, 4, 4, 1)), train=False
    )  # 16 inputs, not 64
    with pytest.raises(ValueError, match=r"fc1/kernel: converted \(64, 32\) vs flax \(16, 32\)"):
        convert.torch_to_flax(tm.state_dict(), models.layers("mlp"), wrong)
    v = convert.torch_to_flax(tm.state_dict(), models.layers("mlp"), tmpl)
    with pytest.raises(ValueError, match="torch key 'ln.weight' not produced"):
        convert.flax_to_torch(v, models.layers("mlp"), models.torch_model("mlp_ln").state_dict())


def test_conversion_copies_memory():
    """tensor.numpy() shares memory; an in-place torch update must not reach JAX arrays."""
    tm, _, tmpl = _pair("mlp")
    v = convert.torch_to_flax(tm.state_dict(), models.layers("mlp"), tmpl)
    before = np.asarray(v["params"]["fc1"]["bias"]).copy()
    with torch.no_grad():
        tm.fc1.bias.add_(1.0)
    np.testing.assert_array_equal(np.asarray(v["params"]["fc1"]["bias"]), before)
