"""The benchmark plan, the derived ratios and the targets."""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Any

from parity.bench.harness import Subject, check_guards, measure
from parity.progress import Progress
from parity.registry import BENCH

TORCH_VARIANTS = ("torch_loop", "torch_foreach", "torch_fused", "torch_compile")
EAGER = ("torch_loop", "torch_foreach", "torch_fused")
TRIAD_BYTES = 12  # a = b + s·c: read b, c, write a (STREAM's count)
# A measured fraction of a physical limit above this is refused: the limit is wrong (a
# few % for timing noise between the step's and the limit's rounds).
LIMIT_SLACK = 1.05

FULL = {
    "sizes": (100_000, 1_000_000, 10_000_000, 30_000_000),
    "reg_size": 10_000_000,
    "many": 1000,
    "models": ("mlp", "cnn"),
    "triad_n": 30_000_000,
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
    "triad_n": 10_000_000,
    "rounds": 5,
    "round_s": 0.08,
    "compile_sizes": (),  # torch.compile's cold compile alone would take most of the budget
    "ready_s": 120.0,
}


def _opt_subjects(
    opt: str, n: int, extra: bool, with_compile: bool, many: bool = False
) -> list[Subject]:
    sem = f"{opt}/wd"
    subs = [Subject("jax", "jaxreg", sem), Subject("jax", "jaxreg_fused", sem)]
    if many:  # the opt-in flat parameter buffer (jaxreg.flat) + the fused step
        subs.append(Subject("jax", "jaxreg_flat", sem))
    subs += [
        Subject("torch", v, sem) for v in TORCH_VARIANTS if with_compile or v != "torch_compile"
    ]
    if extra:  # regularization overhead, at one size
        subs += [Subject("jax", "jaxreg_nowd", f"{opt}/nowd"),
                 Subject("jax", "jaxreg_fused_nowd", f"{opt}/nowd"),
                 Subject("torch", "torch_fused_nowd", f"{opt}/nowd"),
                 Subject("jax", "jaxreg_prox", f"{opt}/wd+prox")]  # fmt: skip
        if opt == "sgd":
            subs += [Subject("jax", "penalty_in_loss", "sgd/l2"),
                     Subject("jax", "decay_transform", "sgd/l2")]  # fmt: skip
    return subs


def plan(cfg: dict, threads: int, cpus: list[int]) -> list[tuple[dict, list[Subject]]]:
    """(case spec, subjects) for every measurement group."""
    base = {"threads": threads, "cpus": cpus}
    groups = [({**base, "case": "triad", "kind": "triad", "n": cfg["triad_n"]},
               [Subject("jax", "triad", "triad"), Subject("torch", "triad", "triad")])]  # fmt: skip
    for opt in BENCH:
        for n in cfg["sizes"]:
            comp = cfg["compile_sizes"] is None or n in cfg["compile_sizes"]
            spec = {**base, "case": "opt", "kind": "opt", "opt": opt, "n": n}
            groups.append((spec, _opt_subjects(opt, n, n == cfg["reg_size"], comp)))
        if cfg["many"]:
            spec = {**base, "case": "opt", "kind": "opt", "opt": opt, "many": cfg["many"]}
            subs = _opt_subjects(opt, 0, False, cfg["compile_sizes"] is None, many=True)
            groups.append((spec, subs))
    for model in cfg["models"]:
        spec = {**base, "case": "train", "kind": "train", "model": model, "batch": 128}
        subs = [Subject("jax", "jaxreg", "train")]
        subs += [Subject("torch", v, "train") for v in TORCH_VARIANTS
                 if cfg["compile_sizes"] is None or v != "torch_compile"]  # fmt: skip
        groups.append((spec, subs))
    return groups


def _label(spec: dict) -> str:
    if spec["case"] == "triad":
        return f"triad n={spec['n']:.0e}"
    if spec["case"] == "train":
        return f"train {spec['model']} batch {spec['batch']}"
    size = f"{spec['many']} leaves" if spec.get("many") else f"N={spec['n']:.0e}"
    return f"{spec['opt']} step {size}"


def _params(spec: dict) -> int:
    from parity.bench.worker import leaf_sizes

    return sum(leaf_sizes(spec))


def run(cfg: dict, progress: bool = False) -> dict[str, Any]:
    """Measure every group of ``cfg`` (``FULL`` or ``QUICK``); return the results.

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
        check_guards(spec["kind"], subjects)
        by_key = {f"{s.framework}:{s.variant}": s.result for s in subjects}
        entry = {"label": _label(spec), "spec": spec, "subjects": by_key}
        if spec["case"] == "opt":
            entry["params"] = _params(spec)
        out.append(entry)
        if bar is not None:
            bar.done(entry["label"])
    if bar is not None:
        bar.close()
    results = {"environment": environment(threads, cpus, cfg), "groups": out}
    results["derived"] = derive(results)
    results["seconds"] = time.time() - t0
    return results


def environment(threads: int, cpus: list[int], cfg: dict) -> dict:
    import jax
    import optax
    import torch

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu,
        "gpu": gpu,
        "device": "cpu",
        "threads": threads,
        "affinity": cpus,
        "python": platform.python_version(),
        "versions": {
            "jax": jax.__version__,
            "optax": optax.__version__,
            "torch": torch.__version__,
        },  # fmt: skip
        "config": {k: v for k, v in cfg.items()},
        "date": time.strftime("%Y-%m-%d"),
    }


def _med(group: dict, key: str) -> float | None:
    """A subject's median time; None if it was not timed or failed the correctness guard."""
    s = group["subjects"].get(key)
    return s.get("median_s") if s and s.get("guard_ok") else None


def _ratio(group: dict, a: str, b: str) -> float:
    """Time of subject ``a`` ÷ time of ``b``, paired by round: the median over rounds of
    round-median(a) ÷ round-median(b). Subjects of one round run seconds apart, so the
    ratio cancels the machine's slower drift (round medians of every subject rise and
    fall together on this VM, by up to ±30% over a case). Without per-round data (or with
    unequal rounds): the ratio of the medians."""
    per_round = _per_round(group, a, b)
    if per_round:
        return float(statistics.median(per_round))
    return _med(group, a) / _med(group, b)


def _per_round(group: dict, a: str, b: str) -> list[float]:
    ra = group["subjects"][a].get("rounds")
    rb = group["subjects"][b].get("rounds")
    return [x / y for x, y in zip(ra, rb)] if ra and rb and len(ra) == len(rb) else []


def _spread(group: dict, a: str, b: str) -> list[float] | None:
    """[min, max] over rounds of the per-round ratio ``a ÷ b`` (None without rounds)."""
    per_round = _per_round(group, a, b)
    return [min(per_round), max(per_round)] if per_round else None


def derive(results: dict) -> dict:
    """Ratios (paired by round, :func:`_ratio`), bandwidth fractions, scaling and the
    targets."""
    groups = results["groups"]
    triad = next(g for g in groups if g["spec"]["case"] == "triad")
    n_tri = triad["spec"]["n"]
    bw = {
        k.split(":")[0]: TRIAD_BYTES * n_tri / v["median_s"] for k, v in triad["subjects"].items()
    }
    triad_bw = max(bw.values())
    d: dict[str, Any] = {"triad_GBps": {k: v / 1e9 for k, v in bw.items()},
                         "triad_ref_GBps": triad_bw / 1e9,
                         "opt": [], "train": [], "reg": {}, "reg_spread": {},
                         "reg_hlo_bytes": {}}  # fmt: skip
    for g in groups:
        spec = g["spec"]
        if spec["case"] == "opt":
            # jaxreg's time: the fused step (jaxreg.optim.fused_*) on a jaxreg.flat buffer where
            # measured (many leaves), else on the per-leaf tree -- the fastest jaxreg paths on
            # CPU; the per-leaf tree and the unfused XLA path are reported next to it.
            jx_xla, jx_fused = _med(g, "jax:jaxreg"), _med(g, "jax:jaxreg_fused")
            jx_flat = _med(g, "jax:jaxreg_flat")  # many leaves: the opt-in flat buffer
            tree_key = "jax:jaxreg_fused" if jx_fused is not None else "jax:jaxreg"
            jx_key = "jax:jaxreg_flat" if jx_flat is not None else tree_key
            jx, jx_tree = _med(g, jx_key), _med(g, tree_key)
            torch_t = {v: _med(g, f"torch:{v}") for v in TORCH_VARIANTS if _med(g, f"torch:{v}")}
            if jx is None or "torch_fused" not in torch_t:
                continue  # not comparable: listed under "excluded" / "not timed"
            best = min(torch_t, key=torch_t.get)
            best_key, fused_key = f"torch:{best}", "torch:torch_fused"
            n = g["params"]
            row = {
                "label": g["label"], "opt": spec["opt"], "params": n,
                "many": bool(spec.get("many")), "jaxreg_s": jx, "torch_s": torch_t,
                "best_torch": best, "ratio_best": _ratio(g, jx_key, best_key),
                "ratio_fused": _ratio(g, jx_key, fused_key),
                "spread_best": _spread(g, jx_key, best_key),
                "spread_fused": _spread(g, jx_key, fused_key),
                "jaxreg_xla_s": jx_xla, "jaxreg_fused_s": jx_fused, "jaxreg_flat_s": jx_flat,
                "jaxreg_tree_s": jx_tree,
                "ratio_tree_best": _ratio(g, tree_key, best_key) if jx_tree else None,
                "ratio_fused_xla": _ratio(g, "jax:jaxreg", fused_key) if jx_xla else None,
                "dropped": {k: v["error"] for k, v in g["subjects"].items() if "error" in v},
                "bandwidth_fraction": BENCH[spec["opt"]].bytes_per_param * n / jx / triad_bw,
                "fused_bandwidth_fraction":
                    BENCH[spec["opt"]].bytes_per_param * n / torch_t["torch_fused"] / triad_bw,
                "ns_per_param": jx / n * 1e9,
            }  # fmt: skip
            hlo = g["subjects"]["jax:jaxreg"].get("hlo")
            if hlo:  # what XLA actually moves: one loop per output array on CPU
                row["hlo_fusions_per_leaf"] = hlo["fusions_per_leaf"]
                row["hlo_bytes_per_param"] = hlo["bytes_per_param"]
                row["hlo_bandwidth_fraction"] = hlo["bytes_per_param"] * n / jx_xla / triad_bw
            fused_hlo = g["subjects"].get("jax:jaxreg_fused", {}).get("hlo")
            if fused_hlo:
                row["fused_hlo_bytes_per_param"] = fused_hlo["bytes_per_param"]
            d["opt"].append(row)
            reg_keys = ("jax:jaxreg_nowd", "torch:torch_fused_nowd", "jax:jaxreg_prox")
            if all(_med(g, k) for k in reg_keys):
                opt = spec["opt"]
                xla_on_off = _ratio(g, "jax:jaxreg", "jax:jaxreg_nowd")
                if jx_fused and _med(g, "jax:jaxreg_fused_nowd"):
                    fused_on_off = _ratio(g, "jax:jaxreg_fused", "jax:jaxreg_fused_nowd")
                    d["reg"][f"{opt}: weight decay on ÷ off"] = fused_on_off
                    d["reg_spread"][f"{opt}: weight decay on ÷ off"] = _spread(
                        g, "jax:jaxreg_fused", "jax:jaxreg_fused_nowd"
                    )
                    d["reg"][f"{opt}: weight decay on ÷ off (XLA path)"] = xla_on_off
                else:
                    d["reg"][f"{opt}: weight decay on ÷ off"] = xla_on_off
                nowd_hlo = g["subjects"]["jax:jaxreg_nowd"].get("hlo")
                if hlo and nowd_hlo:
                    d["reg_hlo_bytes"][opt] = {"on": hlo["bytes_per_param"],
                                               "off": nowd_hlo["bytes_per_param"]}  # fmt: skip
                d["reg"][f"{opt}: torch fused, decay on ÷ off"] = _ratio(
                    g, fused_key, "torch:torch_fused_nowd"
                )
                d["reg"][f"{opt}: + proximal L1 ÷ plain step"] = _ratio(
                    g, "jax:jaxreg_prox", "jax:jaxreg"
                )
                if (
                    opt == "sgd"
                    and _med(g, "jax:penalty_in_loss")
                    and _med(g, "jax:decay_transform")
                ):
                    d["reg"]["sgd: L2 penalty in the loss ÷ decay transform"] = _ratio(
                        g, "jax:penalty_in_loss", "jax:decay_transform"
                    )
                    d["reg_spread"]["sgd: L2 penalty in the loss ÷ decay transform"] = _spread(
                        g, "jax:penalty_in_loss", "jax:decay_transform"
                    )
                d["reg_params"] = n
        elif spec["case"] == "train":
            jx = _med(g, "jax:jaxreg")
            eager = {v: _med(g, f"torch:{v}") for v in EAGER if _med(g, f"torch:{v}")}
            if jx is None or not eager:
                continue
            best = min(eager, key=eager.get)
            comp = _med(g, "torch:torch_compile")
            d["train"].append({
                "label": g["label"], "jaxreg_s": jx, "best_eager": best,
                "ratio_best_eager": _ratio(g, "jax:jaxreg", f"torch:{best}"),
                "spread_best_eager": _spread(g, "jax:jaxreg", f"torch:{best}"),
                "ratio_compile": _ratio(g, "jax:jaxreg", "torch:torch_compile") if comp else None,
            })  # fmt: skip
    d["scaling"] = _scaling(d["opt"])
    d["targets"] = _targets(d)
    # The run is judged on jaxreg: every jaxreg subject must match torch's reference. A torch
    # variant that disagrees with torch's own for-loop is excluded and listed, not fatal.
    d["guards_ok"] = all(
        s.get("guard_ok", False)
        for g in groups
        for k, s in g["subjects"].items()
        if k.startswith("jax:") and "error" not in s
    )
    d["excluded"] = [
        f"{g['label']} {k}: differs from {s['guard_vs']} by {s['guard_err_over_tol']:.1f}× the "
        "guard tolerance"
        for g in groups
        for k, s in g["subjects"].items()
        if "error" not in s and not s.get("guard_ok")
    ]
    return d


def _scaling(rows: list[dict]) -> dict:
    """Per optimizer: ns/param at each N and the log-log slope between neighbouring N."""
    out = {}
    for opt in BENCH:
        pts = sorted(
            (r["params"], r["jaxreg_s"]) for r in rows if r["opt"] == opt and not r["many"]
        )
        if len(pts) < 2:
            continue
        import math

        slopes = [math.log(t2 / t1) / math.log(n2 / n1) for (n1, t1), (n2, t2) in zip(pts, pts[1:])]
        per = [t / n * 1e9 for n, t in pts]
        floor = min(per)
        # dispatch overhead has ended where the time per parameter is within 25% of the best
        flat_from = next(n for (n, _), p in zip(pts, per) if p <= 1.25 * floor)
        out[opt] = {"params": [n for n, _ in pts], "ns_per_param": per, "slopes": slopes,
                    "linear_from": flat_from}  # fmt: skip
    return out


def _target(
    name: str,
    value: float,
    *,
    at_most: float | None = None,
    at_least: float | None = None,
    spread: list[float] | None = None,
    of_limit: bool = False,
) -> dict:
    """One row of the targets: a bound (``at_most`` / ``at_least``), or none (reported
    only). ``within_noise``: the bound lies inside the per-round spread of the ratio.

    ``of_limit``: the value is a fraction of a physical limit (bytes moved ÷ time ÷ a
    measured bandwidth). A step cannot beat the machine's limit, so a fraction above
    :data:`LIMIT_SLACK` means the limit was mis-measured: the row is not judged
    (``met`` None) and says ``limit_invalid``."""
    if of_limit and value > LIMIT_SLACK:
        return {"target": name, "limit": "limit invalid", "value": value, "met": None,
                "limit_invalid": True}  # fmt: skip
    if at_most is None and at_least is None:
        return {"target": name, "limit": "(reported)", "value": value, "met": None}
    bound = at_most if at_most is not None else at_least
    return {
        "target": name,
        "limit": f"{'≤' if at_most is not None else '≥'} {bound}",
        "value": value,
        "met": value <= bound if at_most is not None else value >= bound,
        "spread": spread,
        "within_noise": bool(spread) and spread[0] <= bound <= spread[1],
    }


def _targets(d: dict) -> list[dict]:
    t = []
    big = [r for r in d["opt"] if not r["many"]]
    if big:
        n_max = max(r["params"] for r in big)
        for r in (r for r in big if r["params"] == n_max):
            name = f"large-N {r['opt']} step (N={n_max:.0e}): jaxreg ÷ torch fused"
            t.append(_target(name, r["ratio_fused"], at_most=1.0, spread=r.get("spread_fused")))
            name = f"large-N {r['opt']} step: bandwidth ÷ same-run triad"
            t.append(_target(name, r["bandwidth_fraction"], at_least=0.85, of_limit=True))
    for key, v in d["reg"].items():
        if "torch" in key:
            continue
        if "proximal" in key or "XLA path" in key:
            t.append(_target(key, v))
        else:
            limit = 1.03 if "penalty" in key else 1.02
            t.append(_target(key, v, at_most=limit, spread=d.get("reg_spread", {}).get(key)))
    for r in (r for r in d["opt"] if r["many"]):
        how = "flat buffer" if r.get("jaxreg_flat_s") else "per-leaf tree"
        name = f"many small leaves, {r['opt']}: jaxreg ({how}) ÷ best torch ({r['best_torch']})"
        t.append(_target(name, r["ratio_best"], at_most=1.0, spread=r.get("spread_best")))
        if r.get("jaxreg_flat_s") and r.get("ratio_tree_best"):
            name = f"many small leaves, {r['opt']}: jaxreg (per-leaf tree) ÷ best torch"
            t.append(_target(name, r["ratio_tree_best"]))
    for r in d["train"]:
        name = f"{r['label']}: jaxreg ÷ best eager torch ({r['best_eager']})"
        t.append(
            _target(name, r["ratio_best_eager"], at_most=0.7, spread=r.get("spread_best_eager"))
        )
    return t
