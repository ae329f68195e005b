"""One benchmark subject — (framework, variant, case) — in its own process.

Protocol (JSON lines): the parent starts ``python -m parity.bench.worker SPEC_JSON``; the
worker builds its inputs, runs the correctness guard (``GUARD_STEPS`` steps from the
shared seeded start), compiles and warms up, and prints ``{"ready": ...}``. Then, for
each ``{"iters": k}`` line on stdin it times ``k`` steps, each one individually and
synchronised, and prints ``{"times": [...]}``; an empty line or EOF ends it.

Synchronisation (:func:`synchronized`): JAX -- ``block_until_ready`` on every output;
PyTorch -- ``torch.cuda.synchronize()`` after each step on a GPU (CUDA kernels are
asynchronous), nothing on the CPU (its ops are synchronous); numba -- synchronous.

``spec["device"]`` (``"cpu"``, ``"gpu"``, ``"tpu"``) picks where torch's tensors live
(JAX's platform is set by the parent, ``JAX_PLATFORMS``); ``spec["dtype"]`` the parameters'
dtype (``"float32"`` or ``"bfloat16"``). Imports only the framework it measures.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time

import numpy as np

from parity.registry import BENCH, REGULARIZERS

GUARD_STEPS = 3
SGD = BENCH["sgd"]
WD = SGD.weight_decay
L2_LAMBDA = WD / 2  # λ·Σw² in the loss ≡ coupled decay 2λ
L1_STRENGTH = 1e-4  # the proximal L1 step's threshold: lr·1e-4 = 1e-6


def leaf_sizes(spec: dict) -> list[int]:
    """Parameter leaves: ``n`` split into 10 leaves, or ``many`` leaves of 1k..64k elements."""
    if spec.get("many"):
        count = spec["many"]
        rng = np.random.default_rng(123)
        return [int(s) for s in np.exp(rng.uniform(np.log(1024), np.log(65536), count))]
    n = spec["n"]
    base = n // 10
    return [base] * 9 + [n - 9 * base]


def torch_device(spec: dict) -> str:
    """torch's device for a spec: ``"cuda"`` on a GPU, else the CPU (torch has no TPU)."""
    return "cuda" if spec.get("device", "cpu") == "gpu" else "cpu"


def synchronized(step, spec: dict):
    """``step`` followed by the framework's wait for the device (see the module docstring)."""
    if spec["framework"] == "torch" and spec.get("device", "cpu") == "gpu":
        import torch

        def timed():
            step()
            torch.cuda.synchronize()

        timed.hlo = getattr(step, "hlo", None)
        return timed
    return step


def initial(spec: dict) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Seeded float32 parameters and gradients (the same in every worker)."""
    rng = np.random.default_rng(0)
    sizes = leaf_sizes(spec)
    params = [rng.standard_normal(s, dtype=np.float32) for s in sizes]
    grads = [rng.standard_normal(s, dtype=np.float32) for s in sizes]
    return params, grads


def _guard_vector(leaves) -> list[float]:
    """A fingerprint of the parameters after the guard steps: elements, not sums (a sum of
    many ULP-level differences can exceed any relative tolerance when it is near zero)."""
    picked = [np.asarray(x, np.float64)[:32] for x in list(leaves)[:8]]
    return np.concatenate(picked).tolist()


# --- JAX -------------------------------------------------------------------------------


def _decay(spec) -> float:
    """The weight decay of a subject: 0 for the ``*_nowd`` variants, else the case's."""
    return 0.0 if spec["variant"].endswith("_nowd") else BENCH[spec["opt"]].weight_decay


def _jax_opt(spec):
    entry = BENCH[spec["opt"]]
    tx = entry.jax_optimizer(_decay(spec))
    if spec["variant"] == "jaxreg_prox":
        lr = entry.kwargs["lr"]
        _, tx = REGULARIZERS["prox_l1"].jax_transforms(tx, lr, L1_STRENGTH)
    return tx


def _jax_subject(spec):
    import jax
    import jax.numpy as jnp
    import optax

    import jaxreg

    if spec["variant"] == "roof":
        return _roof(spec)
    if spec["case"] == "train":
        return _jax_train(spec)

    params0, grads0 = initial(spec)
    variant = spec["variant"]
    if variant == "jaxreg_flat":  # jaxreg.flat: one buffer for all leaves + the fused step
        return _jax_flat(spec, params0, grads0)
    dtype = jnp.dtype(spec.get("dtype", "float32"))
    # jax.device_put: jnp.asarray costs ~12 ms per new shape
    params = [jax.device_put(p).astype(dtype) for p in params0]
    grads = [jax.device_put(g).astype(dtype) for g in grads0]
    if variant in ("penalty_in_loss", "decay_transform"):
        # The gradient of a linear loss Σ g·w is g; the L2 term is either differentiated
        # with the loss (λΣw², gradient 2λw) or added by the optimizer (weight_decay = 2λ).
        in_loss = variant == "penalty_in_loss"
        tx = SGD.jax_optimizer(weight_decay=0.0 if in_loss else WD)

        def loss(ps, gs):
            data = sum(jnp.vdot(g, p) for g, p in zip(gs, ps))
            return data + L2_LAMBDA * jaxreg.l2_penalty(ps) if in_loss else data

        def update(ps, s, gs):
            u, s = tx.update(jax.grad(loss)(ps, gs), s, ps)
            return optax.apply_updates(ps, u), s
    elif variant.startswith("jaxreg_fused"):  # one custom call per step (numba kernel)
        fo = _fused_opt(spec)
        tx = fo.tx  # for init: the fused step keeps the unfused optimizer's state

        def update(ps, s, gs):
            return fo.step(ps, gs, s)
    else:
        tx = _jax_opt(spec)

        def update(ps, s, gs):
            u, s = tx.update(gs, s, ps)
            return optax.apply_updates(ps, u), s

    jstep = jax.jit(update, donate_argnums=(0, 1))
    box = {"p": params, "s": tx.init(params)}

    def step():
        box["p"], box["s"] = jstep(box["p"], box["s"], grads)
        jax.block_until_ready((box["p"], box["s"]))

    if spec.get("device", "cpu") == "cpu":  # XLA:CPU's loop fusions (the table's HLO B/p)
        hlo = jstep.lower(box["p"], box["s"], grads).compile().as_text()
        step.hlo = hlo_traffic(hlo, sum(int(p.size) for p in params), len(params))
    return step, lambda: _guard_vector(box["p"])


def _roof(spec):
    """A roof kernel (:mod:`parity.bench.roof`): the stream case's ``axpy``, or the
    access pattern of the group's optimizer step, over the group's parameter count."""
    from parity.bench import roof

    pattern = "axpy" if spec["case"] == "stream" else spec["opt"]
    n = spec["n"] if spec["case"] == "stream" else sum(leaf_sizes(spec))
    step, written = roof.make(
        spec["framework"], pattern, n, threads=spec["threads"], device=spec.get("device", "cpu")
    )
    return step, lambda: _guard_vector(written())


def _fused_opt(spec):
    return BENCH[spec["opt"]].fused_optimizer(_decay(spec))


def _jax_flat(spec, params0, grads0):
    """The many-leaves case with the parameters in a jaxreg.flat buffer: the step takes one
    params, one gradient and one buffer per optimizer moment, whatever the leaf count. The
    gradient is packed the same way once, outside the timing (in a training step it is the
    gradient with respect to the flat buffer, as in tests/test_flat.py)."""
    import jax

    import jaxreg

    fp = jaxreg.flat.ravel(params0)
    grads = fp.ravel_like(grads0)
    fo = _fused_opt(spec)
    jstep = jax.jit(fo.step, donate_argnums=(0, 2))
    box = {"p": fp, "s": jax.jit(fo.init)(fp)}

    def step():
        box["p"], box["s"] = jstep(box["p"], grads, box["s"])
        jax.block_until_ready((box["p"], box["s"]))

    hlo = jstep.lower(box["p"], grads, box["s"]).compile().as_text()
    step.hlo = hlo_traffic(hlo, fp.size, len(params0))
    return step, lambda: _guard_vector(jax.tree.leaves(box["p"].unravel()))


_SHAPE = re.compile(r"\b(f16|bf16|f32|f64|s32|u32|s64|pred|s8|u8)\[([\d,]*)\]")
_BYTES = {"f16": 2, "bf16": 2, "f32": 4, "f64": 8, "s32": 4, "u32": 4, "s64": 8, "pred": 1,
          "s8": 1, "u8": 1}  # fmt: skip


def _nbytes(shape_text: str) -> int:
    total = 0
    for dtype, dims in _SHAPE.findall(shape_text):
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        total += n * _BYTES[dtype]
    return total


def hlo_traffic(hlo: str, n_params: int, n_leaves: int) -> dict:
    """From the compiled HLO's entry computation: loops (fusions and custom calls -- the
    fused kernel), and the bytes they read and write per parameter (each reads its
    operands and writes its results once)."""
    entry = hlo[hlo.index("ENTRY") :]
    header, body = entry.split("{", 1)
    sizes = {}
    for name, shape in re.findall(r"(\S+): ([^,)]+\])", header):
        sizes[name] = _nbytes(shape)
    fusions, moved = 0, 0
    for line in body.splitlines():
        m = re.match(r"\s*(?:ROOT )?%?(\S+) = (.+?) (\w[\w-]*)\((.*?)\)", line)
        if not m:
            continue
        name, shape, op, args = m.groups()
        sizes[name] = _nbytes(shape)
        if op in ("fusion", "custom-call"):
            fusions += 1
            moved += sizes[name] + sum(sizes.get(a.strip().lstrip("%"), 0)
                                       for a in args.split(","))  # fmt: skip
    return {"fusions": fusions, "fusions_per_leaf": fusions / n_leaves,
            "bytes_per_param": moved / n_params}  # fmt: skip


def _train_data(spec):
    from parity.data import load_digits

    d = load_digits()
    b = spec["batch"]
    return d.x_train[:b].astype(np.float32), d.y_train[:b]


def _jax_train(spec):
    """A jitted SGD training step of the model, its weights from the torch twin (same seed):
    linen models through the suite's converter spec, the transformer block as an nnx
    module through ``parity.convert.from_torch``."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from parity import convert, models  # torch: only for the shared initial weights

    x, y = _train_data(spec)
    tmodel = models.torch_model(spec["model"], 0).float()
    if spec["model"] == "tblock":
        graphdef, params = nnx.split(convert.from_torch(tmodel, models.NnxTBlock()), nnx.Param)

        def logits_of(p, x):
            return nnx.merge(graphdef, p)(x)

        xj = jnp.asarray(x)
    else:
        fmodel = models.flax_model(spec["model"], jnp.float32)
        template = fmodel.init(jax.random.key(0), jnp.zeros((2, 8, 8, 1)), train=False)
        layers = models.layers(spec["model"])
        params = convert.torch_to_flax(tmodel.state_dict(), layers, template)["params"]

        def logits_of(p, x):
            return fmodel.apply({"params": p}, x, train=True)

        xj = jnp.asarray(models.flax_input(x))
    tx = SGD.jax_optimizer(WD)

    def loss_fn(p, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(logits_of(p, x), y).mean()

    def train_step(p, s, x, y):
        loss, g = jax.value_and_grad(loss_fn)(p, x, y)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    jstep = jax.jit(train_step, donate_argnums=(0, 1))
    yj = jnp.asarray(y)
    box = {"p": params, "loss": 0.0}
    box["s"] = tx.init(params)

    def step():
        box["p"], box["s"], loss = jstep(box["p"], box["s"], xj, yj)
        jax.block_until_ready((box["p"], box["s"], loss))
        box["loss"] = loss

    return step, lambda: [float(box["loss"])]


# --- PyTorch ---------------------------------------------------------------------------


def _torch_optimizer(torch, spec, params):
    variant = spec["variant"].removeprefix("torch_")
    kw = {}
    if variant == "loop":
        kw["foreach"] = False
    elif variant in ("foreach", "compile"):
        kw["foreach"] = True
    elif variant in ("fused", "fused_nowd"):
        kw["fused"] = True
    return BENCH[spec["opt"]].torch_optimizer(params, _decay(spec), **kw)


def _torch_subject(spec):
    import torch

    torch.set_num_threads(spec["threads"])
    if spec["variant"] == "roof":
        return _roof(spec)
    if spec["case"] == "train":
        return _torch_train(torch, spec)

    params0, grads0 = initial(spec)
    dev, dtype = torch_device(spec), getattr(torch, spec.get("dtype", "float32"))
    params = [torch.tensor(p, device=dev, dtype=dtype, requires_grad=True) for p in params0]
    for p, g in zip(params, grads0):
        p.grad = torch.tensor(g, device=dev, dtype=dtype)
    opt = _torch_optimizer(torch, spec, params)
    if spec["variant"] == "torch_compile":
        # The recipe of PyTorch's "Compiling the optimizer with torch.compile" tutorial.
        @torch.compile(fullgraph=False)
        def step():
            opt.step()
    else:
        step = opt.step
    return step, lambda: _guard_vector([p.detach().float().cpu().numpy() for p in params])


def _torch_train(torch, spec):
    import torch.nn.functional as F

    from parity import models

    x, y = _train_data(spec)
    dev = torch_device(spec)
    model = models.torch_model(spec["model"], 0).float().to(dev)
    xt = torch.tensor(models.torch_input(x, spec["model"]), device=dev)
    yt = torch.tensor(y, device=dev)
    variant = spec["variant"]
    opt_spec = dict(
        spec, opt="sgd", variant="torch_fused" if variant == "torch_compile" else variant
    )
    opt = _torch_optimizer(torch, opt_spec, list(model.parameters()))
    fwd = torch.compile(model) if variant == "torch_compile" else model
    box = {"loss": 0.0}

    def step():
        loss = F.cross_entropy(fwd(xt), yt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        box["loss"] = loss.detach()

    return step, lambda: [float(box["loss"])]


# --- main ------------------------------------------------------------------------------


def _numba_subject(spec):  # the roof kernels only
    return _roof(spec)


SUBJECTS = {"jax": _jax_subject, "torch": _torch_subject, "numba": _numba_subject}


def main(spec: dict) -> None:
    t0 = time.perf_counter()
    step, fingerprint = SUBJECTS[spec["framework"]](spec)
    step = synchronized(step, spec)
    setup_s = time.perf_counter() - t0
    # Guard: GUARD_STEPS steps from the shared start. The first also compiles (JAX jit,
    # torch.compile): its time is reported as compile time, never counted.
    t0 = time.perf_counter()
    step()
    first_s = time.perf_counter() - t0
    for _ in range(GUARD_STEPS - 1):
        step()
    guard = fingerprint()
    t0 = time.perf_counter()
    warm = 0
    while warm < 3 or time.perf_counter() - t0 < 0.3:  # warm-up: caches, allocator, threads
        step()
        warm += 1
    per_step = (time.perf_counter() - t0) / warm
    print(json.dumps({"ready": True, "setup_s": setup_s, "first_step_s": first_s,
                      "guard": guard, "per_step_s": per_step,
                      "hlo": getattr(step, "hlo", None)}), flush=True)  # fmt: skip
    for line in sys.stdin:
        if not line.strip():
            break
        times = []
        for _ in range(json.loads(line)["iters"]):
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
        print(json.dumps({"times": times}), flush=True)


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    cpus = spec.get("cpus")
    if cpus:
        os.sched_setaffinity(0, cpus)
    main(spec)
