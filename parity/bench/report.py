"""The benchmark's printed table, bench.json and the log-log plot."""

from __future__ import annotations

import json
from pathlib import Path

from parity.bench.suite import TORCH_VARIANTS
from parity.registry import BENCH
from parity.report import save_figure


def _ms(x: float | None) -> str:
    return "—" if x is None else f"{x * 1e3:.3f}"


def table(results: dict) -> str:
    d = results["derived"]
    env = results["environment"]
    lines = [
        f"bench: {env['cpu']}, {env['threads']} threads; jax {env['versions']['jax']}, "
        f"torch {env['versions']['torch']}; {env['config']['rounds']} rounds, median of "
        "round medians (ms); BW/triad: nominal fused bytes (SGD+momentum 20, AdamW 28 B/param) "
        "per step ÷ time ÷ same-run triad bandwidth; HLO B/p: bytes the compiled jaxreg step "
        "(XLA path) actually reads and writes per parameter; jaxreg = the XLA path (optax "
        "update), fused = jaxreg.optim.fused_* (one custom call), flat = the fused step on a "
        "jaxreg.flat buffer (many-leaves case); ÷best/÷fused/BW use the fastest of them",
        "triad (a = b + s·c, float32): "
        + ", ".join(f"{k} {v:.1f} GB/s" for k, v in d["triad_GBps"].items()),
        "",
        f"{'case':26s} {'jaxreg':>10s} {'fused':>10s} {'flat':>10s} "
        + " ".join(f"{v.removeprefix('torch_'):>10s}" for v in TORCH_VARIANTS)
        + f" {'÷best':>6s} {'÷fused':>6s} {'BW/triad':>8s} {'HLO B/p':>7s}",
    ]
    by_label = {g["label"]: g for g in results["groups"]}

    def row_start(label: str) -> str:  # the case and its times: jaxreg, then each torch variant
        g = by_label[label]["subjects"]
        cells = [
            _ms(g["jax:jaxreg"]["median_s"]),
            _ms(g.get("jax:jaxreg_fused", {}).get("median_s")),
            _ms(g.get("jax:jaxreg_flat", {}).get("median_s")),
        ]
        for v in TORCH_VARIANTS:
            sub = g.get(f"torch:{v}", {})
            mark = "" if sub.get("guard_ok") or "median_s" not in sub else "*"
            cells.append(_ms(sub.get("median_s")) + mark)
        return f"{label:26s} " + " ".join(f"{c:>10s}" for c in cells)

    for r in d["opt"]:
        lines.append(
            row_start(r["label"])
            + f" {r['ratio_best']:6.2f} {r['ratio_fused']:6.2f} {r['bandwidth_fraction']:8.2f}"
            + f" {r.get('hlo_bytes_per_param', float('nan')):7.1f}"
        )
    for r in d["train"]:
        lines.append(row_start(r["label"]) + f" {r['ratio_best_eager']:6.2f}  (÷ best eager)")
    if d["reg"]:
        lines += ["", f"regularization overhead (N={d.get('reg_params', 0):.0e}):"]
        lines += [f"  {k:48s} {v:6.3f}" for k, v in d["reg"].items()]
    if d.get("reg_hlo_bytes"):
        lines.append("  bytes per parameter in the compiled step (HLO loop fusions): " + ", ".join(
            f"{o} {v['on']:.0f} with decay / {v['off']:.0f} without"
            for o, v in d["reg_hlo_bytes"].items()))  # fmt: skip
    if d["scaling"]:
        lines += ["", "scaling (jaxreg): ns/param at each N; log-log slope between sizes"]
        for opt, s in d["scaling"].items():
            lines.append(
                f"  {opt:6s} " + ", ".join(f"{n:.0e}: {p:.3f}" for n, p in
                                           zip(s["params"], s["ns_per_param"]))
                + "; slopes " + ", ".join(f"{x:.2f}" for x in s["slopes"])
                + f"; linear from N≈{s['linear_from']:.0e}"
            )  # fmt: skip
    lines += ["", "targets (ratios: median over rounds of the per-round ratio; in brackets its "
              "min–max over rounds; '~' = the limit lies inside that spread):"]  # fmt: skip
    for t in d["targets"]:
        met = {True: "MET", False: "MISSED", None: "—"}[t["met"]]
        if t.get("limit_invalid"):  # a fraction > 1.05 of a limit: the limit is wrong
            met = "LIMIT INVALID (a step cannot beat the machine's limit)"
        sp = t.get("spread")
        rng = f"[{sp[0]:.2f}–{sp[1]:.2f}]" if sp else ""
        near = "~" if t.get("within_noise") else ""
        lines.append(
            f"  {t['target']:68s} {t['limit']:>10s} {t['value']:7.3f} {rng:>12s}  {met}{near}"
        )
    dropped = [f"{g['label']} {k}: {s['error']}" for g in results["groups"]
               for k, s in g["subjects"].items() if "error" in s]  # fmt: skip
    if dropped:
        lines += ["", "not timed:"] + [f"  {x}" for x in dropped]
    if d["excluded"]:
        lines += ["", "* excluded by the correctness guard (not compared with the others):"]
        lines += [f"  {x}" for x in d["excluded"]]
    lines.append("")
    lines.append(
        "correctness guard: "
        + (
            "every jaxreg subject matches torch's reference"
            if d["guards_ok"]
            else "FAILED for jaxreg"
        )
    )
    return "\n".join(lines)


def write(results: dict, out: Path, plots: bool = True) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "bench.json"]
    (out / "bench.json").write_text(json.dumps(results, indent=1))
    if plots:
        written.append(plot(results, out / "bench.png"))
    return written


def plot(results: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    d = results["derived"]
    triad = d["triad_ref_GBps"] * 1e9
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    by_label = {g["label"]: g for g in results["groups"]}
    for ax, opt in zip(axes, BENCH):
        rows = sorted((r for r in d["opt"] if r["opt"] == opt and not r["many"]),
                      key=lambda r: r["params"])  # fmt: skip
        if not rows:
            continue
        n = np.array([r["params"] for r in rows], float)
        series = {"jaxreg": "jax:jaxreg", "jaxreg fused": "jax:jaxreg_fused",
                  **{v.removeprefix("torch_"): f"torch:{v}"
                                            for v in TORCH_VARIANTS}}  # fmt: skip
        for name, key in series.items():
            pts = [(r["params"], by_label[r["label"]]["subjects"][key]) for r in rows
                   if by_label[r["label"]]["subjects"].get(key, {}).get("guard_ok")]  # fmt: skip
            if not pts:
                continue
            x = np.array([p for p, _ in pts], float)
            y = np.array([s["median_s"] for _, s in pts])
            lo = y - np.array([s["min_s"] for _, s in pts])
            hi = np.array([s["max_s"] for _, s in pts]) - y
            lw = 2.5 if name.startswith("jaxreg") else 1.2
            ax.errorbar(x, y, yerr=[lo, hi], marker="o", lw=lw, label=name, capsize=2)
        roof = BENCH[opt].bytes_per_param * n / triad
        ax.plot(n, roof, "k--", label=f"bandwidth limit ({BENCH[opt].bytes_per_param} B/param "
                                     f"at triad {triad / 1e9:.1f} GB/s)")  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("parameters (10 float32 leaves)")
        ax.set_ylabel("seconds per optimizer step")
        ax.set_title(BENCH[opt].title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    env = results["environment"]
    fig.suptitle(f"{env['cpu']}, {env['threads']} threads — median over rounds, bars min–max")
    return save_figure(fig, path)
