"""The benchmark's printed table, bench.json and the log-log plot."""

from __future__ import annotations

import json
from pathlib import Path

from parity.bench.results import BenchResults, Group
from parity.bench.suite import TORCH_VARIANTS
from parity.registry import BENCH
from parity.report import save_figure


def _ms(x: float | None) -> str:
    return "—" if x is None else f"{x * 1e3:.3f}"


def _f(x: float | None, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


def _where(results: BenchResults) -> str:
    env = results.environment
    acc = env.accelerator or {}
    if env.device == "cpu":
        return f"{env.cpu}, {env.threads} threads"
    name = acc.get("name") or ", ".join(acc.get("jax_devices", [])) or env.device
    return f"{name} ({env.device}; host {env.cpu}, {env.threads} threads)"


def table(results: BenchResults) -> str:
    d = results.derived
    env = results.environment
    lines = [
        f"bench: {_where(results)}; jax {env.versions['jax']}, "
        f"torch {env.versions.get('torch', '—')}; {env.config['rounds']} rounds, median of "
        "round medians (ms); roof: the fastest kernel with the step's own access pattern at "
        "the same N (in-place, bytes = reads + writes: SGD+momentum 3R/2W = 20 B, AdamW "
        "4R/3W = 28 B per float32 parameter); ÷roof = roof time ÷ jaxreg time (1 = at the "
        "limit); HLO B/p: bytes the compiled jaxreg step (XLA path) reads and writes per "
        "parameter; jaxreg = the XLA path (optax update), fused = jaxreg.optim.fused_* (one "
        "custom call), flat = the fused step on a jaxreg.flat buffer (many-leaves case); "
        "÷best/÷fused/÷roof use the fastest of them",
    ]
    if d.stream:
        lines.append(
            f"stream (a += s·b in place, 12 B/element, n={d.stream_n:.0e}): "
            + ", ".join(f"{k} {v:.1f} GB/s" for k, v in d.stream.items())
        )
    lines += [
        "",
        f"{'case':28s} {'jaxreg':>10s} {'fused':>10s} {'flat':>10s} "
        + " ".join(f"{v.removeprefix('torch_'):>10s}" for v in TORCH_VARIANTS)
        + f" {'roof':>10s} {'÷best':>6s} {'÷fused':>6s} {'÷roof':>6s} {'HLO B/p':>7s}",
    ]
    by_label = {g.label: g for g in results.groups}

    def row_start(g: Group) -> str:  # the case and its times: jaxreg, then each torch variant
        cells = [_ms(g.time("jax", v)) for v in ("jaxreg", "jaxreg_fused", "jaxreg_flat")]
        for v in TORCH_VARIANTS:
            sub = g.subject("torch", v)
            mark = "*" if sub is not None and sub.median_s is not None and not sub.guard_ok else ""
            cells.append(_ms(sub.median_s if sub is not None else None) + mark)
        return f"{g.label:28s} " + " ".join(f"{c:>10s}" for c in cells)

    for r in d.opt:
        roof = f"{_ms(r.roof.seconds)} {r.roof.best[0]}" if r.roof else "—"
        lines.append(
            row_start(by_label[r.label])
            + f" {roof:>10s} {r.ratio_best:6.2f} {r.ratio_fused:6.2f}"
            + f" {_f(r.roof_fraction, '6.2f'):>6s} {_f(r.hlo_bytes_per_param, '7.1f'):>7s}"
        )
    for r in d.train:
        lines.append(
            row_start(by_label[r.label]) + f" {'':>10s} {r.ratio_best_eager:6.2f}  (÷ best eager)"
        )
    roofs = [r for r in d.opt if r.roof]
    if roofs:
        lines += ["", "roofs (GB/s of each implementation; the fastest is the roof):"]
        for r in roofs:
            rates = ", ".join(f"{k} {v:.1f}" for k, v in r.roof.gbps.items())
            lines.append(f"  {r.label:28s} {r.roof.pattern:6s} {rates}")
    if d.reg:
        lines += ["", f"regularization overhead (N={d.reg_params:.0e}):"]
        lines += [f"  {r.name:48s} {r.value:6.3f}" for r in d.reg]
    if d.reg_hlo_bytes:
        lines.append("  bytes per parameter in the compiled step (HLO loop fusions): " + ", ".join(
            f"{o} {on:.0f} with decay / {off:.0f} without"
            for o, (on, off) in d.reg_hlo_bytes.items()))  # fmt: skip
    if d.scaling:
        lines += ["", "scaling (jaxreg): ns/param at each N; log-log slope between sizes"]
        for opt, s in d.scaling.items():
            lines.append(
                f"  {opt:6s} " + ", ".join(f"{n:.0e}: {p:.3f}" for n, p in
                                           zip(s.params, s.ns_per_param))
                + "; slopes " + ", ".join(f"{x:.2f}" for x in s.slopes)
                + f"; linear from N≈{s.linear_from:.0e}"
            )  # fmt: skip
    lines += ["", "targets (ratios: median over rounds of the per-round ratio; in brackets its "
              "min–max over rounds; '~' = the limit lies inside that spread):"]  # fmt: skip
    for t in d.targets:
        met = {True: "MET", False: "MISSED", None: "—"}[t.met]
        if t.limit_invalid:  # a fraction > 1.05 of a limit: the limit is wrong
            met = "LIMIT INVALID (a step cannot beat the machine's limit)"
        rng = f"[{t.spread[0]:.2f}–{t.spread[1]:.2f}]" if t.spread else ""
        near = "~" if t.within_noise else ""
        lines.append(f"  {t.name:72s} {t.bound:>13s} {t.value:7.3f} {rng:>12s}  {met}{near}")
    dropped = [f"{g.label} {s.name}: {s.error}" for g in results.groups
               for s in g.subjects if s.error]  # fmt: skip
    if dropped:
        lines += ["", "not timed:"] + [f"  {x}" for x in dropped]
    if d.excluded:
        lines += ["", "* excluded by the correctness guard (not compared with the others):"]
        lines += [f"  {x}" for x in d.excluded]
    lines.append("")
    lines.append(
        "correctness guard: "
        + ("every jaxreg subject matches torch's reference" if d.guards_ok else "FAILED for jaxreg")
    )
    return "\n".join(lines)


def write(results: BenchResults, out: Path, plots: bool = True) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "bench.json"]
    (out / "bench.json").write_text(json.dumps(results.to_json(), indent=1))
    if plots:
        written.append(plot(results, out / "bench.png"))
    return written


def plot(results: BenchResults, path: Path) -> Path:
    """Time per step against N, log-log, per optimizer: jaxreg's paths, torch's variants
    and the roof measured at each N (the step's own access pattern)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    d = results.derived
    fig, axes = plt.subplots(1, len(BENCH), figsize=(5.5 * len(BENCH), 4.5))
    by_label = {g.label: g for g in results.groups}
    for ax, opt in zip(np.atleast_1d(axes), BENCH):
        rows = [r for r in d.opt if r.opt == opt and not r.many and r.dtype == "float32"]
        rows.sort(key=lambda r: r.params)
        if not rows:
            continue
        series = [("jaxreg", "jax", "jaxreg"), ("jaxreg fused", "jax", "jaxreg_fused")]
        series += [(v.removeprefix("torch_"), "torch", v) for v in TORCH_VARIANTS]
        for name, fw, variant in series:
            subs = [(r.params, by_label[r.label].subject(fw, variant)) for r in rows]
            pts = [(n, s) for n, s in subs if s is not None and s.usable]
            if not pts:
                continue
            x = np.array([n for n, _ in pts], float)
            y = np.array([s.median_s for _, s in pts])
            lo = y - np.array([s.min_s for _, s in pts])
            hi = np.array([s.max_s for _, s in pts]) - y
            lw = 2.5 if name.startswith("jaxreg") else 1.2
            ax.errorbar(x, y, yerr=[lo, hi], marker="o", lw=lw, label=name, capsize=2)
        roofs = [(r.params, r.roof.seconds) for r in rows if r.roof]
        if roofs:
            pattern = next(r.roof.pattern for r in rows if r.roof)
            name = f"roof at each N ({pattern}, {BENCH[opt].bytes_per_param} B/param)"
            ax.plot([n for n, _ in roofs], [t for _, t in roofs], "k--", marker="s", label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("parameters (10 float32 leaves)")
        ax.set_ylabel("seconds per optimizer step")
        ax.set_title(BENCH[opt].title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{_where(results)} — median over rounds, bars min–max")
    return save_figure(fig, path)
