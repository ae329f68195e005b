"""Group lasso, L2 towards a reference, and the L2 ↔ weight-decay conventions.

References: PyTorch autograd (values and gradients, including exactly-zero groups),
closed forms, and SGD trajectories in both conventions.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import jaxreg
from tests.helpers import F64_ATOL


def _tree(seed=0):
    rng = np.random.default_rng(seed)
    k = rng.normal(size=(4, 3))
    k[1] = 0.0  # a zero row: the kink
    k[:, 2] = 0.0  # a zero column
    return {
        "dense": {"kernel": k, "bias": np.array([0.0, -0.5, 2.0])},
        "conv": rng.normal(size=(2, 2, 3, 5)),
    }


def _torch_group_lasso(leaf: torch.Tensor, groups: str) -> torch.Tensor:
    if groups == "leaves" or leaf.ndim == 0:
        return torch.linalg.vector_norm(leaf)
    if leaf.ndim == 1:  # one-element groups
        return leaf.abs().sum()
    dims = tuple(range(1, leaf.ndim)) if groups == "rows" else tuple(range(leaf.ndim - 1))
    return torch.linalg.vector_norm(leaf, dim=dims).sum()


@pytest.mark.parametrize("groups", ["leaves", "rows", "columns"])
def test_group_lasso_value_and_gradient_match_torch(groups):
    tree = _tree()
    leaves = jax.tree.leaves(tree)
    tl = [torch.tensor(x, requires_grad=True) for x in leaves]
    total = sum(_torch_group_lasso(t, groups) for t in tl)
    total.backward()
    params = jax.tree.map(jnp.asarray, tree)
    value, grads = jax.value_and_grad(lambda p: jaxreg.group_lasso_penalty(p, groups))(params)
    np.testing.assert_allclose(float(value), total.item(), rtol=1e-14)
    for g, t in zip(jax.tree.leaves(grads), tl):
        np.testing.assert_allclose(np.asarray(g), t.grad.numpy(), rtol=0, atol=F64_ATOL)
        assert np.isfinite(np.asarray(g)).all()  # zero groups: gradient 0, not NaN


def test_group_lasso_closed_form_and_mask():
    k = jnp.array([[3.0, 4.0], [0.0, 0.0], [6.0, 8.0]])
    p = {"k": k, "b": jnp.array([1.0, -2.0])}
    assert float(jaxreg.group_lasso_penalty({"k": k}, "rows")) == 5.0 + 0.0 + 10.0
    assert float(jaxreg.group_lasso_penalty({"k": k}, "columns")) == pytest.approx(
        np.hypot(np.hypot(3, 0), 6) + np.hypot(np.hypot(4, 0), 8)
    )
    assert float(jaxreg.group_lasso_penalty({"k": k}, "leaves")) == pytest.approx(
        np.sqrt(9 + 16 + 36 + 64)
    )
    only_b = jaxreg.masks.exclude_names("k")
    assert float(jaxreg.group_lasso_penalty(p, "rows", mask=only_b)) == 3.0  # 1-D: L1
    with pytest.raises(ValueError, match="groups must be one of"):
        jaxreg.group_lasso_penalty(p, "blocks")


def test_group_lasso_zeroes_whole_groups_under_proximal_gradient():
    """Sanity of the convention: a large enough penalty drives whole rows to exact zero
    under sub-gradient-free proximal steps (the closed-form group soft-threshold)."""
    w = np.array([[0.3, 0.4], [3.0, 4.0]])
    lam = 1.0
    norms = np.linalg.norm(w, axis=1, keepdims=True)
    prox = np.maximum(0, 1 - lam / norms) * w  # argmin ½‖x − w‖² + λ Σ_rows ‖x_r‖

    # prox minimises the objective: check against the penalty jaxreg defines
    def objective(x):
        return 0.5 * np.sum((x - w) ** 2) + lam * float(
            jaxreg.group_lasso_penalty({"x": jnp.asarray(x)}, "rows")
        )

    rng = np.random.default_rng(0)
    best = objective(prox)
    assert all(objective(prox + 1e-3 * rng.normal(size=w.shape)) >= best for _ in range(50))
    assert (prox[0] == 0).all() and (prox[1] != 0).all()


def test_l2_to_reference_matches_torch_and_takes_no_reference_gradient():
    tree, ref = _tree(0), _tree(1)
    tp = [torch.tensor(x, requires_grad=True) for x in jax.tree.leaves(tree)]
    tr = [torch.tensor(x) for x in jax.tree.leaves(ref)]
    total = sum(((p - r) ** 2).sum() for p, r in zip(tp, tr))
    total.backward()
    p, r = jax.tree.map(jnp.asarray, tree), jax.tree.map(jnp.asarray, ref)
    value, (gp, gr) = jax.value_and_grad(jaxreg.l2_to_reference_penalty, argnums=(0, 1))(p, r)
    np.testing.assert_allclose(float(value), total.item(), rtol=1e-14)
    for g, t in zip(jax.tree.leaves(gp), tp):
        np.testing.assert_allclose(np.asarray(g), t.grad.numpy(), rtol=0, atol=F64_ATOL)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(gr))
    assert float(jaxreg.l2_to_reference_penalty(p, p)) == 0.0


def test_l2_to_reference_errors_name_the_misfit():
    p = {"a": jnp.ones(3), "b": jnp.ones((2, 2))}
    with pytest.raises(ValueError, match="reference leaf 'b' has shape \\(2, 3\\)"):
        jaxreg.l2_to_reference_penalty(p, {"a": jnp.ones(3), "b": jnp.ones((2, 3))})
    with pytest.raises(ValueError, match="structure"):
        jaxreg.l2_to_reference_penalty(p, {"a": jnp.ones(3)})


@pytest.mark.parametrize("convention", ["sum", "half"])
def test_equivalent_weight_decay_reproduces_the_penalty_under_sgd(convention):
    """50 SGD steps: penalty in the loss (its convention) == weight_decay returned."""
    lam, lr = 0.05, 0.1
    rng = np.random.default_rng(2)
    w0 = jnp.asarray(rng.normal(size=(5,)))
    target = jnp.asarray(rng.normal(size=(5,)))
    factor = 1.0 if convention == "sum" else 0.5

    def loss(w):
        return jnp.sum((w - target) ** 2) + factor * lam * jaxreg.l2_penalty(w)

    w_pen = w0
    for _ in range(50):
        w_pen = w_pen - lr * jax.grad(loss)(w_pen)
    wd = jaxreg.equivalent_weight_decay(lam, convention)
    tx = jaxreg.optim.sgd(lr, weight_decay=wd)
    w_dec, state = w0, tx.init(w0)
    for _ in range(50):
        u, state = tx.update(jax.grad(lambda w: jnp.sum((w - target) ** 2))(w_dec), state, w_dec)
        w_dec = optax.apply_updates(w_dec, u)
    np.testing.assert_allclose(np.asarray(w_dec), np.asarray(w_pen), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "args,message",
    [
        ((-1.0,), "l2"),
        ((float("nan"),), "l2"),
        ((0.1, "double"), "convention"),
        ((lambda c: 0.1,), "concrete float"),
    ],  # fmt: skip
)
def test_equivalent_weight_decay_rejects_bad_input(args, message):
    with pytest.raises(ValueError, match=message):
        jaxreg.equivalent_weight_decay(*args)


def _torch_keras_orthogonal(w: torch.Tensor, mode: str, eps: float = 1e-7) -> torch.Tensor:
    """Keras 3's OrthogonalRegularizer (factor 1), transcribed into torch."""
    axis = 1 if mode == "rows" else 0
    inv = torch.minimum(torch.rsqrt((w * w).sum(axis, keepdim=True)), torch.tensor(1 / eps))
    u = w * inv
    product = u @ u.T if mode == "rows" else u.T @ u
    n = product.shape[0]
    off = product * (1.0 - torch.eye(n, dtype=w.dtype))
    return 0.5 * off.abs().sum() / (n * (n - 1) / 2.0)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["rows", "columns"])
def test_orthogonal_penalty_matches_keras_formula_in_torch(mode):
    rng = np.random.default_rng(3)
    leaves = [rng.normal(size=(4, 6)), rng.normal(size=(5, 3))]
    tl = [torch.tensor(x, requires_grad=True) for x in leaves]
    total = sum(_torch_keras_orthogonal(t, mode) for t in tl)
    total.backward()
    params = {"a": jnp.asarray(leaves[0]), "b": jnp.asarray(leaves[1])}
    value, grads = jax.value_and_grad(lambda p: jaxreg.orthogonal_penalty(p, mode))(params)
    np.testing.assert_allclose(float(value), total.item(), rtol=1e-13)
    for g, t in zip((grads["a"], grads["b"]), tl):
        np.testing.assert_allclose(np.asarray(g), t.grad.numpy(), rtol=1e-10, atol=1e-13)


def test_orthogonal_penalty_closed_forms():
    q, _ = np.linalg.qr(np.random.default_rng(4).normal(size=(5, 5)))
    assert float(jaxreg.orthogonal_penalty({"q": jnp.asarray(q[:3])})) < 1e-15  # orthonormal
    w = jnp.array([[1.0, 0.0], [1.0, 1.0]])  # one pair, cosine 1/√2: ½ · 2/√2 / 1
    assert float(jaxreg.orthogonal_penalty({"w": w})) == pytest.approx(np.sqrt(0.5), rel=1e-15)
    assert float(jaxreg.orthogonal_penalty({"w": w.T}, "columns")) == pytest.approx(np.sqrt(0.5))
    z = {"w": jnp.array([[0.0, 0.0], [1.0, 2.0], [2.0, 1.0]])}  # a zero row: finite gradient
    g = jax.grad(jaxreg.orthogonal_penalty)(z)["w"]
    assert np.isfinite(np.asarray(g)).all()


def test_orthogonal_penalty_names_a_leaf_that_is_not_a_matrix():
    p = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}}
    with pytest.raises(ValueError, match="'dense/bias' has shape \\(2,\\)"):
        jaxreg.orthogonal_penalty(p)
    assert float(jaxreg.orthogonal_penalty(p, mask=jaxreg.masks.min_ndim(2))) > 0
    with pytest.raises(ValueError, match="mode must be"):
        jaxreg.orthogonal_penalty(p, "diagonal")


# --- activity penalties --------------------------------------------------------------


A = np.array([[1.0, -2.0], [0.0, 3.0]])  # batch of 2: Σ|a| = 6, Σa² = 14


@pytest.mark.parametrize(
    "normalize,expected",
    [
        ("batch", (0.1 * 6 + 0.01 * 14) / 2),
        ("sum", 0.1 * 6 + 0.01 * 14),
        ("mean", (0.1 * 6 + 0.01 * 14) / 4),
    ],  # fmt: skip
)
def test_activity_penalty_conventions_by_hand(normalize, expected):
    tree = {"h1": (jnp.asarray(A),), "h2": jnp.zeros((3, 5))}
    got = jaxreg.activity_penalty(tree, l1=0.1, l2=0.01, normalize=normalize)
    assert float(got) == pytest.approx(expected, rel=1e-15)
    g = jax.grad(lambda a: jaxreg.activity_penalty(a, l1=1.0))(jnp.asarray(A))
    np.testing.assert_array_equal(np.asarray(g), np.sign(A) / 2)  # sign(0) = 0


def _torch_linear_activity_grads(w, b, x, l1, l2):
    """torch: h = x @ W + b, Keras 3's activity loss (l1Σ|h| + l2Σh²) / batch, backward."""
    tw, tb = torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True)
    h = torch.tensor(x) @ tw + tb
    loss = (l1 * h.abs().sum() + l2 * (h * h).sum()) / h.shape[0]
    loss.backward()
    return loss.item(), tw.grad.numpy(), tb.grad.numpy()


def test_activity_penalty_from_linen_sow_matches_torch():
    import flax.linen as nn

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.Dense(4, name="dense", param_dtype=jnp.float64)(x)
            self.sow("intermediates", "hidden", h)
            return nn.relu(h).sum()

    x = np.random.default_rng(5).normal(size=(6, 3))
    net = Net()
    params = net.init(jax.random.key(0), jnp.asarray(x))["params"]

    def penalty(p):
        _, state = net.apply({"params": p}, jnp.asarray(x), mutable=["intermediates"])
        return jaxreg.activity_penalty(state["intermediates"], l1=0.01, l2=0.1)

    value, grads = jax.value_and_grad(penalty)(params)
    w, b = np.asarray(params["dense"]["kernel"]), np.asarray(params["dense"]["bias"])
    t_value, t_gw, t_gb = _torch_linear_activity_grads(w, b, x, 0.01, 0.1)
    assert float(value) == pytest.approx(t_value, rel=1e-13)
    np.testing.assert_allclose(np.asarray(grads["dense"]["kernel"]), t_gw, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(grads["dense"]["bias"]), t_gb, rtol=1e-12, atol=1e-15)


def test_activity_penalty_from_nnx_intermediates():
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self):
            self.dense = nnx.Linear(3, 4, param_dtype=jnp.float64, rngs=nnx.Rngs(0))

        def __call__(self, x):
            h = self.dense(x)
            self.sow(nnx.Intermediate, "hidden", h)
            return h

    x = np.random.default_rng(6).normal(size=(5, 3))
    net = Net()
    _, inter = nnx.capture(net, nnx.Intermediate)(jnp.asarray(x))
    w, b = np.asarray(net.dense.kernel.get_value()), np.asarray(net.dense.bias.get_value())
    t_value, _, _ = _torch_linear_activity_grads(w, b, x, 0.0, 0.5)
    assert float(jaxreg.activity_penalty(inter, l2=0.5)) == pytest.approx(t_value, rel=1e-13)


def test_activity_penalty_rejects_bad_input():
    with pytest.raises(ValueError, match="normalize must be"):
        jaxreg.activity_penalty(jnp.ones(2), l1=1.0, normalize="elements")
    with pytest.raises(ValueError, match="l2"):
        jaxreg.activity_penalty(jnp.ones(2), l2=-1.0)


# --- the ½ convention ----------------------------------------------------------------


def test_half_convention_is_half_with_gradient_w():
    tree = jax.tree.map(jnp.asarray, _tree())
    full = jaxreg.l2_penalty(tree)
    half, g = jax.value_and_grad(lambda p: jaxreg.l2_penalty(p, convention="half"))(tree)
    assert float(half) == pytest.approx(0.5 * float(full), rel=1e-15)
    for gl, pl in zip(jax.tree.leaves(g), jax.tree.leaves(tree)):
        np.testing.assert_array_equal(np.asarray(gl), np.asarray(pl))  # d(½w²)/dw = w
    en = jaxreg.elastic_net_penalty(tree, l1=0.2, l2=0.3, convention="half")
    assert float(en) == pytest.approx(
        0.2 * float(jaxreg.l1_penalty(tree)) + 0.15 * float(full), rel=1e-14
    )
    ref = jax.tree.map(jnp.zeros_like, tree)
    assert float(jaxreg.l2_to_reference_penalty(tree, ref, convention="half")) == pytest.approx(
        0.5 * float(full), rel=1e-15
    )


def test_regularized_half_convention_equals_weight_decay_l2_under_sgd():
    """Optax's add_decayed_weights(λ) is the gradient of ½λΣw²: the 'half' convention."""
    lam, lr = 0.05, 0.1
    w0 = jnp.asarray(np.random.default_rng(7).normal(size=(4,)))

    def data(w):
        return jnp.sum(jnp.sin(w))

    loss = jaxreg.regularized(data, l2=lam, convention="half")
    w_pen = w0
    for _ in range(20):
        w_pen = w_pen - lr * jax.grad(loss)(w_pen)
    tx = optax.chain(optax.add_decayed_weights(lam), optax.sgd(lr))
    w_opt, state = w0, tx.init(w0)
    for _ in range(20):
        u, state = tx.update(jax.grad(data)(w_opt), state, w_opt)
        w_opt = optax.apply_updates(w_opt, u)
    np.testing.assert_allclose(np.asarray(w_pen), np.asarray(w_opt), rtol=0, atol=1e-13)


@pytest.mark.parametrize(
    "call",
    [
        lambda: jaxreg.l2_penalty({"w": jnp.ones(2)}, convention="mean"),
        lambda: jaxreg.elastic_net_penalty({"w": jnp.ones(2)}, 0.1, 0.1, convention="x"),
        lambda: jaxreg.regularized(lambda w: 0.0, l2=0.1, convention="double"),
        lambda: jaxreg.l2_to_reference_penalty(
            {"w": jnp.ones(2)}, {"w": jnp.ones(2)}, convention="Half"
        ),  # fmt: skip
    ],
)
def test_unknown_convention_is_an_error(call):
    with pytest.raises(ValueError, match="convention must be 'sum' or 'half'"):
        call()
