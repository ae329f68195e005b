"""The porting kit on code the suite did not write: the examples (the tutorial's loop and a
realistic recipe), a model the suite has never seen, and parity.compare's power to flag a
port that differs."""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

import jaxreg
import parity
from parity import convert
from parity.tolerances import F64_TOL

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
sys.path.insert(0, str(EXAMPLES))

import digits  # noqa: E402
import recipe_jax  # noqa: E402
import recipe_torch  # noqa: E402
import tutorial_jax  # noqa: E402
import tutorial_torch  # noqa: E402

DATA = digits.load()


def _tutorial(epochs=2):
    tm, torch_step, stats = tutorial_torch.make()
    model = convert.from_torch(tm, tutorial_jax.Net())  # the same starting weights
    state, jax_step, graphdef = tutorial_jax.make(model)
    report = parity.compare(
        tm, lambda b: torch_step(*b), state, jax_step,
        digits.batches(*DATA[:2], epochs=epochs),
        jax_variables=lambda s: nnx.merge(graphdef, s[0]),
        torch_batch=tutorial_torch.to_torch,
        jax_batch=lambda b: (jnp.asarray(b[0]), jnp.asarray(b[1])),
    )  # fmt: skip
    return report, stats, report.jax_state


@pytest.mark.slow
def test_tutorial_loop_ported_with_jaxreg_matches_torch(tmp_path):
    report, stats, state = _tutorial()
    assert report.passed, report.summary()
    assert report.max_dloss <= F64_TOL and len(report.steps) == 2 * (1347 // 64)
    assert stats["correct"] == int(state[2])  # the same predictions, step by step
    written = report.write(tmp_path)
    assert (tmp_path / "compare.png").stat().st_size > 0 and len(written) == 3
    assert "PASS" in (tmp_path / "report.md").read_text()


def _recipe_twin(dt):
    """A fresh copy of the torch recipe in ``dt``, stepping on batches as yielded."""
    model, optimizer, step, _ = recipe_torch.make(dtype=dt)
    return model, optimizer, lambda b: step(*recipe_torch.to_torch(b, dt))


def _recipe(dtype, n_batches=None, port=recipe_jax.make, **compare_kw):
    tdt = getattr(torch, dtype)
    if dtype == "float32" and "tolerance" not in compare_kw:  # teacher-forced
        forced = {"torch_twin": _recipe_twin, "jax_load": lambda s, v, o: (v, o, s[2])}
        compare_kw = {**forced, **compare_kw}
    tm, topt, torch_step, stats = recipe_torch.make(dtype=tdt)
    x0 = torch.zeros((1, 1, 8, 8), dtype=tdt)
    template = recipe_jax.CNN(jnp.dtype(dtype)).init(
        jax.random.key(0), jnp.zeros((1, 8, 8, 1), dtype), train=False
    )
    variables = convert.from_torch(tm, template, example_input=x0)
    state, jax_step, model = port(variables, dtype=jnp.dtype(dtype))
    batches = digits.batches(*DATA[:2], recipe_torch.BATCH, recipe_torch.EPOCHS)[:n_batches]
    report = parity.compare(
        tm, lambda b: torch_step(*b), state, jax_step, batches,
        jax_variables=lambda s: s[0],
        torch_batch=lambda b: recipe_torch.to_torch(b, tdt),
        jax_batch=lambda b: (jnp.asarray(b[0][..., None], dtype), jnp.asarray(b[1])),
        torch_optimizer=topt, jax_opt_state=lambda s: s[1],
        dtype=dtype, example_input=x0, **compare_kw,
    )  # fmt: skip
    return report, tm, stats, model, report.jax_state


@pytest.mark.slow
def test_realistic_recipe_ported_with_the_kit_matches_torch_in_float64():
    report, tm, stats, model, state = _recipe("float64")
    assert report.passed, report.summary()
    assert report.max_dloss <= F64_TOL
    assert len(report.steps) == recipe_torch.TOTAL_STEPS
    # BatchNorm running statistics and AdamW's moments were compared at every step
    assert report.leaf_max["batch_stats/bn1/var"] <= F64_TOL
    assert any(k.startswith("exp_avg_sq:") for k in report.leaf_max)
    assert stats["correct"] == int(state[2])
    # eval mode on the test set (running statistics)
    x_test = DATA[2]
    tm.eval()
    with torch.no_grad():
        ref = tm(torch.tensor(x_test[:, None])).numpy()
    got = np.asarray(model.apply(state[0], jnp.asarray(x_test[..., None]), train=False))
    assert parity.compare_rel_diff(got, ref) <= F64_TOL


@pytest.mark.slow
def test_realistic_recipe_in_float32_stays_within_the_suites_float32_criterion():
    """Teacher-forced: at every step, the JAX-float32 step from torch-float32's state is
    within 4x torch-float32's own single-step error against a float64 twin."""
    report, *_ = _recipe("float32")
    assert report.criterion == "teacher-forced" and report.passed, report.summary()
    assert len(report.steps) == recipe_torch.TOTAL_STEPS and not report.exceeding_steps
    # the criterion is float32's noise, not a loose constant: measured ~1e-6
    assert 4 * np.finfo(np.float32).eps <= report.tolerance <= 1e-5
    assert all(s.noise > 0 and s.dparam > 0 for s in report.steps)


@pytest.mark.slow
def test_float32_criterion_flags_a_port_that_differs():
    """Power: the recipe with AdamW decaying every parameter (the no-decay group of
    biases and BatchNorm parameters forgotten): a bias shrinks by lr·weight_decay =
    1.5e-5 relative at the first warm-up step (1.5e-4 at full lr), over ten times float32's
    noise, so every step is flagged."""

    def decay_everything(variables, dtype):
        orig = recipe_jax.masks.min_ndim
        try:
            recipe_jax.masks.min_ndim = lambda n: orig(0)
            return recipe_jax.make(variables, dtype)
        finally:
            recipe_jax.masks.min_ndim = orig

    report, *_ = _recipe("float32", n_batches=10, port=decay_everything)
    assert not report.passed and len(report.exceeding_steps) == 10
    step, what = report.divergence
    assert step == 0 and ("bias" in what or "scale" in what), what
    assert report.steps[0].dparam > 10 * report.tolerance


def test_float32_needs_the_twin_or_an_explicit_tolerance():
    tm = torch.nn.Linear(2, 1)
    with pytest.raises(ValueError, match="torch_twin, jax_load, torch_optimizer"):
        parity.compare(tm, None, {}, None, [], jax_variables=lambda s: s, dtype="float32")
    with pytest.raises(ValueError, match="float64' or 'float32'"):
        parity.compare(tm, None, {}, None, [], jax_variables=lambda s: s, dtype="bfloat16")


@pytest.mark.slow
def test_float32_refuses_a_twin_of_the_wrong_dtype():
    with pytest.raises(ValueError, match=r"torch_twin\(torch.float64\) returned a module"):
        _recipe("float32", n_batches=2, torch_twin=lambda dt: _recipe_twin(torch.float32))


@pytest.mark.slow
def test_compare_flags_a_port_that_differs():
    """Power: the same port with Optax's clipping instead of torch's (the 1e-6 in torch's
    coefficient) is flagged, at a named step and leaf."""

    def optax_clip_port(variables, dtype):
        orig = jaxreg.optim.clip_grad_norm
        try:
            jaxreg.optim.clip_grad_norm = optax.clip_by_global_norm
            return recipe_jax.make(variables, dtype)
        finally:
            jaxreg.optim.clip_grad_norm = orig

    report, *_ = _recipe("float64", n_batches=15, port=optax_clip_port)
    assert not report.passed
    step, what = report.divergence
    assert step <= 5 and ("params/" in what or "loss" in what or "state" in what)
    assert "FAIL" in report.summary() and f"step {step}" in report.summary()


# --- a model the suite has never seen: a ResNet-style block stack (nnx) ----------------


class TorchBlock(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(c)
        self.conv2 = torch.nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(c)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))


class TorchResNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(1, 6, 3, padding=1)
        self.blocks = torch.nn.ModuleList([TorchBlock(6), TorchBlock(6)])
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.head = torch.nn.Linear(6, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        for b in self.blocks:
            x = b(x)
        return self.head(self.pool(x).flatten(1))


class NnxBlock(nnx.Module):
    def __init__(self, c, rngs, dtype=jnp.float64):
        kw = dict(padding=((1, 1), (1, 1)), use_bias=False, param_dtype=dtype, rngs=rngs)
        self.conv1 = nnx.Conv(c, c, (3, 3), **kw)
        self.bn1 = jaxreg.nn.NnxBatchNorm(c, param_dtype=dtype)
        self.conv2 = nnx.Conv(c, c, (3, 3), **kw)
        self.bn2 = jaxreg.nn.NnxBatchNorm(c, param_dtype=dtype)

    def __call__(self, x):
        y = jax.nn.relu(self.bn1(self.conv1(x)))
        return jax.nn.relu(x + self.bn2(self.conv2(y)))


class NnxResNet(nnx.Module):
    def __init__(self, rngs=None, dtype=jnp.float64):
        rngs = rngs or nnx.Rngs(0)
        kw = dict(param_dtype=dtype, rngs=rngs)
        self.stem = nnx.Conv(1, 6, (3, 3), padding=((1, 1), (1, 1)), **kw)
        self.blocks = nnx.List([NnxBlock(6, rngs, dtype), NnxBlock(6, rngs, dtype)])
        self.head = nnx.Linear(6, 10, **kw)

    def __call__(self, x):
        x = jax.nn.relu(self.stem(x))
        for b in self.blocks:
            x = b(x)
        return self.head(jnp.mean(x, axis=(1, 2)))


def _torch_resnet(dt):
    """``(model, optimizer, step)``: the ResNet stack, SGD with momentum and weight decay;
    ``step`` takes a batch as ``digits.batches`` yields it."""
    torch.manual_seed(3)
    tm = TorchResNet().to(dt)
    opt = torch.optim.SGD(tm.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)

    def torch_step(b):
        x, y = torch.tensor(b[0][:, None], dtype=dt), torch.tensor(b[1])
        tm.train()
        loss = torch.nn.functional.cross_entropy(tm(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    return tm, opt, torch_step


def _resnet_compare(dtype, n_batches, **compare_kw):
    tm, opt, torch_step = _torch_resnet(getattr(torch, dtype))
    x0 = torch.zeros((2, 1, 8, 8), dtype=getattr(torch, dtype))
    model = convert.from_torch(tm, NnxResNet(dtype=jnp.dtype(dtype)), example_input=x0)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = jaxreg.optim.sgd(lr=0.05, momentum=0.9, weight_decay=1e-3)

    @jax.jit
    def jax_step(state, b):
        params, rest, opt_state = state
        m = nnx.merge(graphdef, params, rest)

        def loss_fn(m):
            logits = m(b[0])
            return optax.softmax_cross_entropy_with_integer_labels(logits, b[1]).mean()

        loss, g = nnx.value_and_grad(loss_fn)(m)  # BatchNorm updates its statistics in m
        u, opt_state = tx.update(g, opt_state, params)
        return (optax.apply_updates(params, u), nnx.state(m, nnx.BatchStat), opt_state), loss

    return parity.compare(
        tm, torch_step, (params, rest, tx.init(params)), jax_step,
        digits.batches(*DATA[:2], 32)[:n_batches],
        jax_variables=lambda s: nnx.merge(graphdef, s[0], s[1]),
        jax_batch=lambda b: (jnp.asarray(b[0][..., None], dtype), jnp.asarray(b[1])),
        torch_optimizer=opt, jax_opt_state=lambda s: s[2], example_input=x0,
        dtype=dtype, **compare_kw,
    )  # fmt: skip


@pytest.mark.slow
def test_a_model_the_suite_has_never_seen_converts_and_trains_identically():
    report = _resnet_compare("float64", 25)
    assert report.passed, report.summary()
    assert report.leaf_max["batch_stats/blocks/1/bn2/num_batches_tracked"] == 0.0
    assert any(k.startswith("momentum_buffer:") for k in report.leaf_max)


@pytest.mark.slow
def test_a_model_the_suite_has_never_seen_meets_the_float32_criterion_in_nnx():
    """Teacher-forced in nnx: the module, its BatchNorm statistics and SGD's momentum
    buffers are loaded from torch-float32 every step."""
    report = _resnet_compare(
        "float32", 25, torch_twin=_torch_resnet,
        jax_load=lambda s, m, o: (*nnx.split(m, nnx.Param, ...)[1:], o),
    )  # fmt: skip
    assert report.criterion == "teacher-forced" and report.passed, report.summary()
    assert report.leaf_max["batch_stats/blocks/1/bn2/var"] > 0  # compared, not skipped


@pytest.mark.slow
def test_converter_round_trip_is_bitwise_and_keeps_dtypes():
    torch.manual_seed(4)
    tm = TorchResNet().double()
    with torch.no_grad():
        for b in tm.blocks:
            b.bn1.running_var.uniform_(0.5, 2.0)
            b.bn1.num_batches_tracked.fill_(7)
    x0 = torch.zeros((2, 1, 8, 8), dtype=torch.float64)
    model = convert.from_torch(tm, NnxResNet(), example_input=x0)
    assert model.blocks[0].bn1.var.get_value().dtype == jnp.float64
    assert int(model.blocks[0].bn1.num_batches_tracked.get_value()) == 7
    tm2 = TorchResNet().double()
    convert.to_torch(model, tm2, example_input=x0)
    for k, v in tm.state_dict().items():
        assert torch.equal(v, tm2.state_dict()[k]), k
    model.eval()
    tm.eval()
    x = np.random.default_rng(0).random((5, 8, 8))
    ref = tm(torch.tensor(x[:, None])).detach().numpy()
    assert parity.compare_rel_diff(np.asarray(model(jnp.asarray(x[..., None]))), ref) <= 1e-12


@pytest.mark.slow
def test_multihead_attention_maps_onto_flax_attention():
    """nn.TransformerEncoderLayer (attention, feed-forward, two LayerNorms) vs its nnx twin."""
    torch.manual_seed(5)
    layer = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True).double()

    class Twin(nnx.Module):
        def __init__(self, rngs=None):
            rngs = rngs or nnx.Rngs(0)
            f64 = dict(param_dtype=jnp.float64, rngs=rngs)
            self.self_attn = nnx.MultiHeadAttention(
                2, 8, decode=False, attention_fn=jaxreg.nn.dot_product_attention, **f64
            )
            self.linear1 = nnx.Linear(8, 16, **f64)
            self.linear2 = nnx.Linear(16, 8, **f64)
            ln = dict(epsilon=1e-5, use_fast_variance=False, **f64)
            self.norm1, self.norm2 = nnx.LayerNorm(8, **ln), nnx.LayerNorm(8, **ln)

        def __call__(self, x):
            x = self.norm1(x + self.self_attn(x))
            return self.norm2(x + self.linear2(jax.nn.relu(self.linear1(x))))

    twin = convert.from_torch(layer, Twin())
    x = np.random.default_rng(1).standard_normal((3, 5, 8))
    ref = layer(torch.tensor(x)).detach().numpy()  # training mode, dropout 0: deterministic
    assert parity.compare_rel_diff(np.asarray(twin(jnp.asarray(x))), ref) <= 1e-12
    # Flax's default attention (jax.nn.dot_product_attention: softmax in float32) is not
    stock = convert.from_torch(layer, Twin())
    stock.self_attn.attention_fn = nnx.dot_product_attention
    assert parity.compare_rel_diff(np.asarray(stock(jnp.asarray(x))), ref) > 1e-9
    back = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True).double()
    convert.to_torch(twin, back)
    for k, v in layer.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k


def test_converter_names_every_module_that_does_not_fit():
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = torch.nn.Linear(4, 3)
            self.act = torch.nn.PReLU()  # has a parameter, no rule
            self.out = torch.nn.Linear(3, 2)

    class FlaxOdd(nnx.Module):
        def __init__(self, rngs=None):
            rngs = rngs or nnx.Rngs(0)
            self.fc1 = nnx.Linear(4, 3, rngs=rngs)
            self.head = nnx.Linear(3, 2, rngs=rngs)  # named differently

    with pytest.raises(ValueError) as e:
        convert.from_torch(Odd(), FlaxOdd())
    msg = str(e.value)
    assert "act: PReLU is not a supported layer type" in msg
    assert "out: Linear has no Flax module (tried out" in msg
    assert "Flax leaf head/kernel is filled by no torch tensor" in msg
    ok = convert.module_map(Odd().fc1, nnx.Linear(4, 3, rngs=nnx.Rngs(0)))
    assert [lm.torch_key for lm in ok.leaves] == ["weight", "bias"]
    with pytest.raises(ValueError, match="pass example_input="):
        convert.from_torch(TorchResNet(), NnxResNet())
    renamed = torch.nn.Sequential()
    renamed.add_module("fc1", torch.nn.Linear(4, 3))
    renamed.add_module("out", torch.nn.Linear(3, 2))
    convert.from_torch(renamed, FlaxOdd(), rename={"out": "head"})  # an explicit map


# --- the torch-semantics BatchNorm ------------------------------------------------------


@pytest.mark.parametrize("kw", [{}, {"momentum": None}, {"affine": False}, {"momentum": 0.3}])
def test_jaxreg_batchnorm_is_torchs(kw):
    torch.manual_seed(0)
    tbn = torch.nn.BatchNorm2d(4, **kw).double()
    jbn = jaxreg.nn.NnxBatchNorm(4, param_dtype=jnp.float64, **kw)
    lbn = jaxreg.nn.BatchNorm(4, param_dtype=jnp.float64, **kw)
    lv = lbn.init(jax.random.key(0), jnp.zeros((1, 4)), train=False)
    rng = np.random.default_rng(0)
    for _ in range(4):
        x = rng.standard_normal((6, 3, 3, 4)) * 2 + 1
        ref = tbn(torch.tensor(x.transpose(0, 3, 1, 2))).detach().numpy().transpose(0, 2, 3, 1)
        np.testing.assert_allclose(np.asarray(jbn(jnp.asarray(x))), ref, rtol=1e-12, atol=1e-13)
        y, upd = lbn.apply(lv, jnp.asarray(x), train=True, mutable=["batch_stats"])
        lv = {**lv, **upd}
        np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(jbn.var.get_value(), tbn.running_var.numpy(), rtol=1e-13)
    np.testing.assert_allclose(lv["batch_stats"]["mean"], tbn.running_mean.numpy(), atol=1e-15)
    assert int(jbn.num_batches_tracked.get_value()) == int(tbn.num_batches_tracked) == 4
    tbn.eval()
    jbn.eval()
    x = rng.standard_normal((2, 3, 3, 4))
    ref = tbn(torch.tensor(x.transpose(0, 3, 1, 2))).detach().numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(jbn(jnp.asarray(x))), ref, rtol=1e-12, atol=1e-13)
    # Flax's own BatchNorm (momentum 0.99 of the old value, biased running variance) is not
    fbn = nnx.BatchNorm(4, rngs=nnx.Rngs(0))  # its statistics are float32
    fbn(jnp.asarray(rng.standard_normal((6, 3, 3, 4)), jnp.float32))
    assert abs(float(fbn.var.get_value()[0]) - float(jbn.var.get_value()[0])) > 1e-3


# --- each converted layer type, with jaxreg.nn's recommended settings, against torch ---


def _nnx_f64(**kw):
    return dict(param_dtype=jnp.float64, rngs=nnx.Rngs(0), **kw)


LAYERS = {
    # name: (torch module, nnx twin, input shape (torch layout), torch -> jax input transpose)
    "conv1d": (
        lambda: torch.nn.Conv1d(3, 4, 3, padding=1),
        lambda: nnx.Conv(3, 4, (3,), padding=((1, 1),), **_nnx_f64()),
        (2, 3, 7), (0, 2, 1),
    ),
    "conv3d": (
        lambda: torch.nn.Conv3d(2, 3, 3),
        lambda: nnx.Conv(2, 3, (3, 3, 3), padding="VALID", **_nnx_f64()),
        (2, 2, 5, 5, 5), (0, 2, 3, 4, 1),
    ),
    # torch's transposed conv correlates with the flipped kernel; Flax's padding is
    # (d * (k - 1) - p, d * (k - 1) - p + output_padding)
    "convtranspose2d": (
        lambda: torch.nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1),
        lambda: nnx.ConvTranspose(3, 4, (3, 3), strides=(2, 2), padding=((1, 2), (1, 2)),
                                  **_nnx_f64()),
        (2, 3, 5, 6), (0, 2, 3, 1),
    ),
    "convtranspose2d-transpose_kernel": (
        lambda: torch.nn.ConvTranspose2d(3, 3, 4, stride=2, padding=1),
        lambda: nnx.ConvTranspose(3, 3, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)),
                                  transpose_kernel=True, **_nnx_f64()),
        (2, 3, 5, 6), (0, 2, 3, 1),
    ),
    "convtranspose1d-dilated": (
        lambda: torch.nn.ConvTranspose1d(2, 2, 3, stride=3, dilation=2),
        lambda: nnx.ConvTranspose(2, 2, (3,), strides=(3,), padding=((4, 4),),
                                  kernel_dilation=(2,), **_nnx_f64()),
        (2, 2, 7), (0, 2, 1),
    ),
    "convtranspose3d": (
        lambda: torch.nn.ConvTranspose3d(2, 3, 2, stride=2),
        lambda: nnx.ConvTranspose(2, 3, (2, 2, 2), strides=(2, 2, 2), padding=((1, 1),) * 3,
                                  **_nnx_f64()),
        (1, 2, 3, 4, 3), (0, 2, 3, 4, 1),
    ),
    "groupnorm": (
        lambda: torch.nn.GroupNorm(2, 6),
        lambda: nnx.GroupNorm(6, num_groups=2, epsilon=1e-5, use_fast_variance=False,
                              **_nnx_f64()),
        (3, 6, 4), (0, 2, 1),
    ),
    "rmsnorm": (
        lambda: torch.nn.RMSNorm(5),
        lambda: nnx.RMSNorm(5, epsilon=float(jnp.finfo(jnp.float64).eps), **_nnx_f64()),
        (4, 5), (0, 1),
    ),
    "layernorm": (
        lambda: torch.nn.LayerNorm(5),
        lambda: nnx.LayerNorm(5, epsilon=1e-5, use_fast_variance=False, **_nnx_f64()),
        (4, 5), (0, 1),
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(LAYERS))
def test_each_layer_type_converts_and_computes_as_torch(name):
    make_t, make_j, shape, perm = LAYERS[name]
    torch.manual_seed(1)
    tm = make_t().double()
    with torch.no_grad():  # non-trivial affine parameters
        for p in tm.parameters():
            p.add_(torch.rand_like(p))
    jm = convert.from_torch(tm, make_j())
    x = np.random.default_rng(2).standard_normal(shape) * 3 + 0.5
    ref = tm(torch.tensor(x)).detach().numpy().transpose(perm)
    got = np.asarray(jm(jnp.asarray(x.transpose(perm))))
    assert parity.compare_rel_diff(got, ref) <= 1e-12


@pytest.mark.parametrize("transpose_kernel", [False, True])
def test_conv_transpose_in_linen_variables_converts_both_ways(transpose_kernel):
    """Linen variables do not record ``transpose_kernel``: the kernel's shape tells when
    the channel counts differ. Forward output as torch's, and back to torch bitwise."""
    import flax.linen as nn

    torch.manual_seed(3)
    tm = torch.nn.ConvTranspose2d(3, 5, 3, stride=2, padding=1).double()
    fm = nn.ConvTranspose(5, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                          transpose_kernel=transpose_kernel, param_dtype=jnp.float64)  # fmt: skip
    x = np.random.default_rng(4).standard_normal((2, 3, 4, 5))
    template = fm.init(jax.random.key(0), jnp.zeros((1, 4, 5, 3), jnp.float64))
    variables = convert.from_torch(tm, template)
    got = np.asarray(fm.apply(variables, jnp.asarray(x.transpose(0, 2, 3, 1))))
    ref = tm(torch.tensor(x)).detach().numpy().transpose(0, 2, 3, 1)
    assert parity.compare_rel_diff(got, ref) <= 1e-12
    back = torch.nn.ConvTranspose2d(3, 5, 3, stride=2, padding=1).double()
    convert.to_torch(variables, back)
    for key, value in tm.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


def test_grouped_conv_transpose_is_refused_by_name():
    tm = torch.nn.Sequential(torch.nn.ConvTranspose2d(4, 4, 3, groups=2))
    fm = nnx.Sequential(nnx.ConvTranspose(4, 4, (3, 3), rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"0: ConvTranspose2d with groups=2"):
        convert.from_torch(tm, fm)


def test_embedding_and_gelu_defaults():
    emb = torch.nn.Embedding(7, 3).double()
    jm = convert.from_torch(emb, nnx.Embed(7, 3, **_nnx_f64()))
    idx = np.array([[0, 6, 3]])
    np.testing.assert_array_equal(np.asarray(jm(jnp.asarray(idx))), emb(torch.tensor(idx)).detach())
    x = np.linspace(-3, 3, 13)
    ref = torch.nn.GELU()(torch.tensor(x)).numpy()
    exact = np.asarray(jax.nn.gelu(jnp.asarray(x), approximate=False))
    assert parity.compare_rel_diff(exact, ref) <= 1e-15
    approx = np.asarray(jax.nn.gelu(jnp.asarray(x)))  # JAX's default: the tanh approximation
    assert parity.compare_rel_diff(approx, ref) > 1e-5
    # Flax's default LayerNorm (eps 1e-6) is not torch's
    tm = torch.nn.LayerNorm(5).double()
    jm = convert.from_torch(tm, nnx.LayerNorm(5, **_nnx_f64()))
    x = np.random.default_rng(3).standard_normal((4, 5)) * 0.01
    ref = tm(torch.tensor(x)).detach().numpy()
    assert parity.compare_rel_diff(np.asarray(jm(jnp.asarray(x))), ref) > 1e-4
