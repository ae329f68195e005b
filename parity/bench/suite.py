"""The benchmark plan, the derived ratios and roofs, and the targets."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import platform
import statistics
import time
from typing import Any

from parity.bench import roof
from parity.bench.harness import check_guards, measure
from parity.bench.results import (
    BenchResults,
    Derived,
    Environment,
    Group,
    OptRow,
    RegRatio,
    Roof,
    Scaling,
    Subject,
    Target,
    TrainRow,
)
from parity.progress import Progress
from parity.registry import BENCH

TORCH_VARIANTS = ("torch_loop", "torch_foreach", "torch_fused", "torch_compile")
EAGER = ("torch_loop", "torch_foreach", "torch_fused")
DEVICES = ("cpu", "gpu", "tpu")

FULL = {
    "sizes": (100_000, 1_000_000, 10_000_000, 30_000_000),
    "reg_size": 10_000_000,
    "many": 1000,
    "models": ("mlp", "cnn", "tblock"),
    "batches": (128,),
    "stream_n": 30_000_000,
    "rounds": 7,
    "round_s": 0.4,
    "compile_sizes": None,  # torch.compile at every size
    "ready_s": 180.0,  # set-up + compile limit per subject (torch.compile of 1000 leaves: more)
}
QUICK = {
    "sizes": (100_000, 1_000_000),
    "reg_size": 1_000_000,
    "many": 0,
    "models": ("mlp",),
    "batches": (128,),
    "stream_n": 10_000_000,
    "rounds": 5,
    "round_s": 0.08,
    "compile_sizes": (),  # torch.compile's cold compile alone would take most of the budget
    "ready_s": 120.0,
}
# On an accelerator: larger sizes (the stream at 4e8 B per array, >= 4x the 50 MB L2 of an
# H100/H200),
# float32 and bfloat16 parameters, GPU batch sizes.
GPU_FULL = {
    **FULL,
    "sizes": (1_000_000, 10_000_000, 100_000_000),
    "reg_size": 10_000_000,
    "stream_n": 100_000_000,
    "batches": (128, 1024),
    "dtypes": ("float32", "bfloat16"),
}
GPU_QUICK = {
    **QUICK,
    "sizes": (1_000_000, 30_000_000),
    "reg_size": 30_000_000,
    "stream_n": 100_000_000,
    "models": ("mlp", "cnn", "tblock"),
    "batches": (128, 1024),
    "dtypes": ("float32", "bfloat16"),
}


def config(device: str, quick: bool) -> dict[str, Any]:
    """The plan's sizes for ``device`` (``"cpu"``, ``"gpu"``, ``"tpu"``)."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "cpu":
        cfg = dict(QUICK if quick else FULL)
    else:
        cfg = dict(GPU_QUICK if quick else GPU_FULL)
    return {**cfg, "device": device}


def roof_frameworks(device: str) -> tuple[str, ...]:
    """The implementations of the roof kernels: numba (CPU only, when installed), torch
    (not on a TPU), jax."""
    out = []
    if device == "cpu" and importlib.util.find_spec("numba") is not None:
        out.append("numba")
    if device != "tpu":
        out.append("torch")
    return (*out, "jax")


def _opt_subjects(
    opt: str,
    extra: bool,
    with_compile: bool,
    device: str,
    many: bool = False,
    dtype: str = "float32",
) -> list[Subject]:
    sem = f"{opt}/wd"
    # The fused steps and the roof kernels are float32 (numba kernels: CPU only; on an
    # accelerator XLA's path is jaxreg's).
    f32 = dtype == "float32"
    fused_ok, torch_ok = device == "cpu" and f32, device != "tpu"
    subs = [Subject("jax", "jaxreg", sem)]
    if fused_ok:  # the fused steps are numba kernels: on an accelerator XLA's path is jaxreg's
        subs.append(Subject("jax", "jaxreg_fused", sem))
    if many and fused_ok:  # the opt-in flat parameter buffer (jaxreg.flat) + the fused step
        subs.append(Subject("jax", "jaxreg_flat", sem))
    if torch_ok:
        subs += [Subject("torch", v, sem) for v in TORCH_VARIANTS
                 if with_compile or v != "torch_compile"]  # fmt: skip
    if not many and f32:  # the roof: the step's access pattern at the same size
        subs += [Subject(fw, "roof", f"{opt}/roof") for fw in roof_frameworks(device)]
    if extra:  # regularization overhead, at one size
        subs.append(Subject("jax", "jaxreg_nowd", f"{opt}/nowd"))
        if fused_ok:
            subs.append(Subject("jax", "jaxreg_fused_nowd", f"{opt}/nowd"))
        if torch_ok:
            subs.append(Subject("torch", "torch_fused_nowd", f"{opt}/nowd"))
        subs.append(Subject("jax", "jaxreg_prox", f"{opt}/wd+prox"))
        if opt == "sgd":  # λ·Σw² in the loss ≡ coupled decay 2λ: plain SGD's identity
            subs += [Subject("jax", "penalty_in_loss", "sgd/l2"),
                     Subject("jax", "decay_transform", "sgd/l2")]  # fmt: skip
    return subs


def plan(cfg: dict, threads: int, cpus: list[int]) -> list[tuple[dict, list[Subject]]]:
    """(case spec, subjects) for every measurement group."""
    device = cfg.get("device", "cpu")
    base = {"threads": threads, "cpus": cpus, "device": device}
    stream = [Subject(fw, "roof", "stream") for fw in roof_frameworks(device)]
    groups = [({**base, "case": "stream", "kind": "opt", "n": cfg["stream_n"]}, stream)]
    for dtype in cfg.get("dtypes", ("float32",)):
        for opt in BENCH:
            for n in cfg["sizes"]:
                comp = cfg["compile_sizes"] is None or n in cfg["compile_sizes"]
                spec = {**base, "case": "opt", "kind": "opt", "opt": opt, "n": n}
                if dtype != "float32":
                    spec["dtype"] = dtype
                extra = n == cfg["reg_size"] and dtype == "float32"
                groups.append((spec, _opt_subjects(opt, extra, comp, device, dtype=dtype)))
            if cfg["many"] and dtype == "float32":
                spec = {**base, "case": "opt", "kind": "opt", "opt": opt, "many": cfg["many"]}
                subs = _opt_subjects(opt, False, cfg["compile_sizes"] is None, device, many=True)
                groups.append((spec, subs))
    for model in cfg["models"]:
        for batch in cfg.get("batches", (128,)):
            spec = {**base, "case": "train", "kind": "train", "model": model, "batch": batch}
            subs = [Subject("jax", "jaxreg", "train")]
            if device != "tpu":
                subs += [Subject("torch", v, "train") for v in TORCH_VARIANTS
                         if cfg["compile_sizes"] is None or v != "torch_compile"]  # fmt: skip
            groups.append((spec, subs))
    return groups


def _label(spec: dict) -> str:
    if spec["case"] == "stream":
        return f"stream a += s·b n={spec['n']:.0e}"
    if spec["case"] == "train":
        return f"train {spec['model']} batch {spec['batch']}"
    size = f"{spec['many']} leaves" if spec.get("many") else f"N={spec['n']:.0e}"
    dtype = f" {spec['dtype']}" if spec.get("dtype", "float32") != "float32" else ""
    return f"{spec['opt']} step {size}{dtype}"


def _params(spec: dict) -> int:
    from parity.bench.worker import leaf_sizes

    return sum(leaf_sizes(spec))


def run(cfg: dict, progress: bool = False) -> BenchResults:
    """Measure every group of ``cfg`` (from :func:`config`); return the results.

    With ``progress``, each finished group is reported on stderr (:class:`parity.progress.Progress`:
    a live bar on a terminal, one line per group otherwise).
    """
    cpus = sorted(os.sched_getaffinity(0))
    threads = len(cpus)
    groups = plan(cfg, threads, cpus)
    t0 = time.time()
    out = []
    bar = Progress(len(groups), "bench") if progress else None
    for spec, subjects in groups:
        measure(spec, subjects, cfg["rounds"], cfg["round_s"], cfg["ready_s"])
        check_guards(spec["kind"], subjects, spec.get("dtype", "float32"))
        params = _params(spec) if spec["case"] == "opt" else None
        out.append(Group(_label(spec), spec, subjects, params))
        if bar is not None:
            bar.done(out[-1].label)
    if bar is not None:
        bar.close()
    env = environment(threads, cpus, cfg)
    return BenchResults(env, out, derive(out), time.time() - t0)


def environment(threads: int, cpus: list[int], cfg: dict) -> Environment:
    import jax
    import optax

    versions = {"jax": jax.__version__, "optax": optax.__version__}
    try:
        import torch

        versions["torch"] = torch.__version__
    except ImportError:
        torch = None
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    device = cfg.get("device", "cpu")
    return Environment(
        cpu=cpu,
        device=device,
        accelerator=accelerator_info(device, torch),
        threads=threads,
        affinity=cpus,
        python=platform.python_version(),
        versions=versions,
        config=json.loads(json.dumps(cfg)),  # JSON's form (lists), as bench.json reads back
        date=time.strftime("%Y-%m-%d"),
    )


def accelerator_info(device: str, torch: Any = None) -> dict[str, Any] | None:
    """The accelerator's name, driver and memory (``None`` on the CPU)."""
    if device == "cpu":
        return None
    import jax

    info: dict[str, Any] = {"jax_devices": [str(d) for d in jax.devices()]}
    if device == "gpu" and torch is not None and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            name=props.name,
            memory_GiB=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            capability=f"{props.major}.{props.minor}",
        )
        try:
            import subprocess

            info["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=10,
            ).stdout.strip()  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            info["driver"] = None
    return info


# --- derived ---------------------------------------------------------------------------

Key = tuple[str, str]  # (framework, variant)


def _per_round(g: Group, a: Key, b: Key) -> list[float]:
    sa, sb = g.subject(*a), g.subject(*b)
    ra, rb = (sa.rounds if sa else None), (sb.rounds if sb else None)
    return [x / y for x, y in zip(ra, rb)] if ra and rb and len(ra) == len(rb) else []


def _ratio(g: Group, a: Key, b: Key) -> float:
    """Time of subject ``a`` ÷ time of ``b``, paired by round: the median over rounds of
    round-median(a) ÷ round-median(b). Subjects of one round run seconds apart, so the
    ratio cancels the machine's slower drift (round medians of every subject rise and
    fall together on this VM, by up to ±30% over a case). Without per-round data (or with
    unequal rounds): the ratio of the medians."""
    per_round = _per_round(g, a, b)
    if per_round:
        return float(statistics.median(per_round))
    return g.time(*a) / g.time(*b)


def _spread(g: Group, a: Key, b: Key) -> list[float] | None:
    """[min, max] over rounds of the per-round ratio ``a ÷ b`` (None without rounds)."""
    per_round = _per_round(g, a, b)
    return [min(per_round), max(per_round)] if per_round else None


def _roof(g: Group, pattern: str, n: int) -> Roof | None:
    """The fastest correct roof kernel of a group, and every implementation's rate."""
    kernels = [s for s in g.subjects if s.variant == "roof" and s.usable]
    if not kernels:
        return None
    nbytes = roof.bytes_per_element(pattern)
    best = min(kernels, key=lambda s: s.median_s)
    gbps = {s.framework: nbytes * n / s.median_s / 1e9 for s in kernels}
    return Roof(roof.label(pattern), nbytes, best.framework, best.median_s, gbps)


def _opt_row(g: Group) -> OptRow | None:
    spec, n = g.spec, g.params
    jx_xla, jx_fused = g.time("jax", "jaxreg"), g.time("jax", "jaxreg_fused")
    jx_flat = g.time("jax", "jaxreg_flat")
    # jaxreg's time: its fastest path -- the fused step (jaxreg.optim.fused_*) on a
    # jaxreg.flat buffer where measured (many leaves), else on the per-leaf tree; the XLA
    # path on an accelerator or without numba. The others are reported beside it.
    tree: Key = ("jax", "jaxreg_fused") if jx_fused is not None else ("jax", "jaxreg")
    jx_key: Key = ("jax", "jaxreg_flat") if jx_flat is not None else tree
    path = {"jaxreg_flat": "flat", "jaxreg_fused": "fused", "jaxreg": "xla"}[jx_key[1]]
    jx, jx_tree = g.time(*jx_key), g.time(*tree)
    torch_t = {v: g.time("torch", v) for v in TORCH_VARIANTS if g.time("torch", v)}
    if jx is None or "torch_fused" not in torch_t:
        return None  # not comparable: listed under "excluded" / "not timed"
    best = min(torch_t, key=torch_t.get)
    best_key: Key = ("torch", best)
    fused_key: Key = ("torch", "torch_fused")
    row = OptRow(
        label=g.label, opt=spec["opt"], params=n, many=bool(spec.get("many")), jaxreg=path,
        jaxreg_s=jx, torch_s=torch_t, best_torch=best,
        ratio_best=_ratio(g, jx_key, best_key), ratio_fused=_ratio(g, jx_key, fused_key),
        spread_best=_spread(g, jx_key, best_key), spread_fused=_spread(g, jx_key, fused_key),
        jaxreg_xla_s=jx_xla, jaxreg_fused_s=jx_fused, jaxreg_flat_s=jx_flat,
        jaxreg_tree_s=jx_tree,
        ratio_tree_best=_ratio(g, tree, best_key) if jx_tree else None,
        ratio_fused_xla=_ratio(g, ("jax", "jaxreg"), fused_key) if jx_xla else None,
        dropped={s.name: s.error for s in g.subjects if s.error},
        ns_per_param=jx / n * 1e9, dtype=spec.get("dtype", "float32"),
    )  # fmt: skip
    row.roof = None if row.many else _roof(g, spec["opt"], n)
    if row.roof is not None:
        best_roof: Key = (row.roof.best, "roof")
        row.roof_fraction = _ratio(g, best_roof, jx_key)
        row.torch_fused_roof_fraction = _ratio(g, best_roof, fused_key)
    hlo = (g.subject("jax", "jaxreg").hlo or {}) if g.subject("jax", "jaxreg") else {}
    if hlo:  # what XLA actually moves: one loop per output array on CPU
        row.hlo_fusions_per_leaf = hlo["fusions_per_leaf"]
        row.hlo_bytes_per_param = hlo["bytes_per_param"]
    fused = g.subject("jax", "jaxreg_fused")
    if fused is not None and fused.hlo:
        row.fused_hlo_bytes_per_param = fused.hlo["bytes_per_param"]
    return row


def _reg_ratios(g: Group, row: OptRow) -> list[RegRatio]:
    """The regularization-overhead ratios of a group that has its subjects."""
    opt = row.opt
    if not all(g.time(*k) for k in (("jax", "jaxreg_nowd"), ("jax", "jaxreg_prox"))):
        return []

    def ratio(what: str, a: Key, b: Key) -> RegRatio:
        return RegRatio(opt, what, _ratio(g, a, b), _spread(g, a, b))

    out = []
    if row.jaxreg_fused_s and g.time("jax", "jaxreg_fused_nowd"):
        out.append(ratio("decay_on_off", ("jax", "jaxreg_fused"), ("jax", "jaxreg_fused_nowd")))
        out.append(ratio("decay_on_off_xla", ("jax", "jaxreg"), ("jax", "jaxreg_nowd")))
    else:
        out.append(ratio("decay_on_off", ("jax", "jaxreg"), ("jax", "jaxreg_nowd")))
    if g.time("torch", "torch_fused_nowd"):
        out.append(
            ratio("torch_decay_on_off", ("torch", "torch_fused"), ("torch", "torch_fused_nowd"))
        )
    out.append(ratio("prox_over_plain", ("jax", "jaxreg_prox"), ("jax", "jaxreg")))
    if g.time("jax", "penalty_in_loss") and g.time("jax", "decay_transform"):
        out.append(
            ratio("penalty_over_decay", ("jax", "penalty_in_loss"), ("jax", "decay_transform"))
        )
    return out


def _train_row(g: Group) -> TrainRow | None:
    jx = g.time("jax", "jaxreg")
    eager = {v: g.time("torch", v) for v in EAGER if g.time("torch", v)}
    if jx is None or not eager:
        return None
    best = min(eager, key=eager.get)
    comp = g.time("torch", "torch_compile")
    return TrainRow(
        label=g.label, jaxreg_s=jx, best_eager=best,
        ratio_best_eager=_ratio(g, ("jax", "jaxreg"), ("torch", best)),
        spread_best_eager=_spread(g, ("jax", "jaxreg"), ("torch", best)),
        ratio_compile=_ratio(g, ("jax", "jaxreg"), ("torch", "torch_compile")) if comp else None,
    )  # fmt: skip


def derive(groups: list[Group]) -> Derived:
    """Ratios (paired by round, :func:`_ratio`), roofs, scaling and the targets."""
    stream = next((g for g in groups if g.spec["case"] == "stream"), None)
    stream_bw, stream_n = {}, None
    if stream is not None:
        stream_n = stream.spec["n"]
        nbytes = roof.bytes_per_element("axpy")
        stream_bw = {s.framework: nbytes * stream_n / s.median_s / 1e9
                     for s in stream.subjects if s.usable}  # fmt: skip
    d = Derived(stream=stream_bw, stream_n=stream_n, opt=[], train=[], reg=[], reg_params=None,
                reg_hlo_bytes={}, scaling={}, targets=[], guards_ok=True, excluded=[])  # fmt: skip
    for g in groups:
        if g.spec["case"] == "opt":
            row = _opt_row(g)
            if row is None:
                continue
            d.opt.append(row)
            reg = _reg_ratios(g, row)
            if reg:
                d.reg += reg
                d.reg_params = row.params
                nowd = g.subject("jax", "jaxreg_nowd")
                if row.hlo_bytes_per_param and nowd is not None and nowd.hlo:
                    d.reg_hlo_bytes[row.opt] = [row.hlo_bytes_per_param,
                                                nowd.hlo["bytes_per_param"]]  # fmt: skip
        elif g.spec["case"] == "train":
            row = _train_row(g)
            if row is not None:
                d.train.append(row)
    d.scaling = _scaling(d.opt)
    d.targets = _targets(d)
    # The run is judged on jaxreg: every jaxreg subject must match torch's reference. A torch
    # variant that disagrees with torch's own for-loop is excluded and listed, not fatal.
    d.guards_ok = all(
        s.guard_ok for g in groups for s in g.subjects if s.framework == "jax" and s.error is None
    )
    d.excluded = [
        f"{g.label} {s.name}: differs from {s.guard_vs} by {s.guard_err_over_tol:.1f}× the "
        "guard tolerance"
        for g in groups
        for s in g.subjects
        if s.error is None and not s.guard_ok
    ]
    return d


def _scaling(rows: list[OptRow]) -> dict[str, Scaling]:
    """Per optimizer (float32): ns/param at each N and the log-log slope between sizes."""
    out = {}
    for opt in BENCH:
        pts = sorted(
            (r.params, r.jaxreg_s)
            for r in rows
            if r.opt == opt and not r.many and r.dtype == "float32"
        )
        if len(pts) < 2:
            continue
        slopes = [math.log(t2 / t1) / math.log(n2 / n1) for (n1, t1), (n2, t2) in zip(pts, pts[1:])]
        per = [t / n * 1e9 for n, t in pts]
        floor = min(per)
        # dispatch overhead has ended where the time per parameter is within 25% of the best
        flat_from = next(n for (n, _), p in zip(pts, per) if p <= 1.25 * floor)
        out[opt] = Scaling([n for n, _ in pts], per, slopes, flat_from)
    return out


#: The bounds of the regularization-overhead targets (None: reported only).
REG_BOUNDS = {"decay_on_off": 1.02, "penalty_over_decay": 1.03}


def _targets(d: Derived) -> list[Target]:
    t = []
    big = [r for r in d.opt if not r.many]
    if big:
        n_max = max(r.params for r in big)
        for r in (r for r in big if r.params == n_max):
            name = f"large-N {r.label}: jaxreg ÷ torch fused"
            t.append(Target(name, r.ratio_fused, at_most=1.0, spread=r.spread_fused))
            if r.roof_fraction is not None:
                name = f"large-N {r.label}: fraction of the roof ({r.roof.pattern})"
                t.append(Target(name, r.roof_fraction, at_least=0.85, of_limit=True))
    for r in d.reg:
        if r.what in REG_BOUNDS:
            t.append(Target(r.name, r.value, at_most=REG_BOUNDS[r.what], spread=r.spread))
        elif r.what != "torch_decay_on_off":
            t.append(Target(r.name, r.value))
    for r in (r for r in d.opt if r.many):
        how = "flat buffer" if r.jaxreg_flat_s else "per-leaf tree"
        name = f"many small leaves, {r.opt}: jaxreg ({how}) ÷ best torch ({r.best_torch})"
        t.append(Target(name, r.ratio_best, at_most=1.0, spread=r.spread_best))
        if r.jaxreg_flat_s and r.ratio_tree_best:
            name = f"many small leaves, {r.opt}: jaxreg (per-leaf tree) ÷ best torch"
            t.append(Target(name, r.ratio_tree_best))
    for r in d.train:
        name = f"{r.label}: jaxreg ÷ best eager torch ({r.best_eager})"
        t.append(Target(name, r.ratio_best_eager, at_most=0.7, spread=r.spread_best_eager))
    return t
