"""Tables, report.json / report.md and PNG plots for a parity run."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

from parity.effect import EffectResult, effect_table
from parity.identities import IdentityResult
from parity.run import CaseResult
from parity.tolerances import F32_MAX_EXCEEDING_FRACTION, F32_NOISE_FACTOR, F64_TOL


def environment(device: str, notes: list[str]) -> dict[str, Any]:
    import flax
    import jax
    import optax
    import sklearn
    import torch

    import jaxreg

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu,
        "device": device,
        "jax_devices": [str(d) for d in jax.devices()],
        "torch_device": "cuda" if device == "gpu" else "cpu",
        "versions": {
            "jaxreg": jaxreg.__version__, "jax": jax.__version__, "flax": flax.__version__,
            "optax": optax.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "scikit-learn": sklearn.__version__,
        },
        "notes": notes,
    }  # fmt: skip


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.1e}"


def summary_table(results: list[CaseResult]) -> str:
    head = (
        "| case | dtype | steps | max Δloss | max rel Δparam JAX vs torch "
        "| f32 step error JAX vs f64 | f32 noise (torch) | tolerance | steps over | verdict |\n"
        "|---|---|---|---|---|---|---|---|---|---|"
    )
    rows = []
    for r in results:
        c = r.case
        case = f"{c.model}/{c.reg}/{c.optimizer}" + (f" ✱{c.mutation}" if c.mutation else "")
        rows.append(
            f"| {case} | {c.dtype} | {c.steps} | {_fmt(r.max_dloss)} | {_fmt(r.max_dparam)} "
            f"| {_fmt(r.max_drift)} | {_fmt(r.max_noise)} | {r.tolerance:.1e} "
            f"| {len(r.exceeding_steps)} | {'PASS' if r.passed else 'FAIL'} |"
        )
    return head + "\n" + "\n".join(rows)


def identity_table(ids: list[IdentityResult]) -> str:
    rows = [
        "| identity | claim | framework | measured | criterion | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for i in ids:
        rows.append(
            f"| {i.name} | {i.claim} | {i.framework} | {i.measured:.1e} | {i.criterion} "
            f"| {'PASS' if i.passed else 'FAIL'} |"
        )
    return "\n".join(rows)


def text_summary(results: list[CaseResult], ids: list[IdentityResult]) -> str:
    n_fail = sum(not r.passed for r in results) + sum(not i.passed for i in ids)
    worst64 = max((r.max_dparam for r in results if r.case.dtype == "float64"), default=None)
    f32 = [r for r in results if r.case.dtype != "float64" and r.noise]
    ratios = [
        d / max(n, 1e-300) for r in f32 for d, n in zip(r.drift, r.noise)
    ]  # per step: JAX-f32's single-step error / float32's own noise
    lines = [
        f"{len(results)} cases, {len(ids)} identity checks: "
        f"{len(results) + len(ids) - n_fail} passed, {n_fail} failed",
        f"float64: worst max relative parameter difference {_fmt(worst64)} (tolerance {F64_TOL:g})",
    ]
    if ratios:
        over = [(r.case.name, s) for r in f32 for s in r.exceeding_steps]
        lines.append(
            f"float32 (teacher-forced single steps vs float64): JAX-f32 error / float32 noise "
            f"median {np.median(ratios):.2f}, 99th percentile {np.percentile(ratios, 99):.2f} "
            f"over {len(ratios)} steps (tolerance {F32_NOISE_FACTOR:g} at >= "
            f"{100 * (1 - F32_MAX_EXCEEDING_FRACTION):g}% of each case's steps); "
            f"{len(over)} isolated step(s) over: "
            + (
                ", ".join(f"{n}@{s}" for n, s in over[:8]) + (" ..." if len(over) > 8 else "")
                if over
                else "none"
            )
        )
    return "\n".join(lines)


def _run_line(env: dict) -> str:
    run = env.get("run")
    if not run:
        return ""
    done = f"{run.get('cases_done', 0)} of {run['cases_planned']} cases"
    when = f"started {run['started']}" + (f", ended {run['finished']}" if "finished" in run else "")
    args = " ".join(run["argv"]) or "(defaults)"
    return f"Run: `python -m parity {args}`; {when}; {run['status']} ({done})."


def write_stub(out: Path, env: dict) -> list[Path]:
    """Replace any earlier report in ``out`` by one saying that this run has not finished.

    A run killed before :func:`write_report` thus leaves a report marked running (with
    its start time and arguments), never an earlier run's that looks like its own.
    """
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("loss_curves.png", "deviation.png", "effect.png"):
        (out / stale).unlink(missing_ok=True)
    (out / "report.json").write_text(json.dumps({"environment": env}, indent=1, default=float))
    md = ["# jaxreg parity report — NOT FINISHED", "", _run_line(env), ""]
    (out / "report.md").write_text("\n".join(md))
    return [out / "report.json", out / "report.md"]


def write_report(
    out: Path,
    env: dict,
    results: list[CaseResult],
    ids: list[IdentityResult],
    effect: list[EffectResult],
    plots: bool = True,
) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    data = {
        "environment": env,
        "summary": {
            "cases": len(results),
            "failed": sum(not r.passed for r in results),
            "identities_failed": sum(not i.passed for i in ids),
        },
        "cases": [r.summary() for r in results],
        "identities": [vars(i) for i in ids],
        "regularization_effect": [vars(e) for e in effect],
    }
    (out / "report.json").write_text(json.dumps(data, indent=1, default=float))
    status = env.get("run", {}).get("status", "complete")
    title = "# jaxreg parity report" + ("" if status == "complete" else f" — {status.upper()}")
    md = [
        title,
        "",
        _run_line(env),
        "",
        "```",
        text_summary(results, ids),
        "```",
        "",
        "Environment: "
        + ", ".join(f"{k} {v}" for k, v in env["versions"].items())
        + f"; device {env['device']} ({env['cpu']}).",
        "",
        *[f"- {n}" for n in env["notes"]],
        "",
        "## Cases",
        "",
        summary_table(results),
        "",
        "## Identities",
        "",
        identity_table(ids),
        "",
        "## Regularization effect (Flax MLP on digits, jaxreg)",
        "",
        effect_table(effect),
        "",
    ]
    written = [out / "report.json", out / "report.md"]
    if plots:
        written += _plots(out, results, effect)
        md += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in written[2:]]
    (out / "report.md").write_text("\n".join(md) + "\n")
    return written


def save_figure(fig, path: Path) -> Path:
    """Lay out, write (PNG, 110 dpi) and close a matplotlib figure; return ``path``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plots(out: Path, results: list[CaseResult], effect: list[EffectResult]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    # 1. Loss curves, torch vs JAX overlaid: one representative case per model.
    reps = {}
    for r in results:
        if r.case.dtype == "float64" and not r.case.mutation:
            reps.setdefault(r.case.model, r)
    if reps:
        fig, axes = plt.subplots(1, len(reps), figsize=(4 * len(reps), 3.2), squeeze=False)
        for ax, (model, r) in zip(axes[0], reps.items()):
            ax.plot(r.loss_torch, lw=2.5, alpha=0.5, label="PyTorch")
            ax.plot(r.loss_jax, "--", lw=1, color="k", label="JAX + jaxreg")
            ax.set_title(f"{model}/{r.case.reg}/{r.case.optimizer}", fontsize=9)
            ax.set_xlabel("step")
            ax.set_ylabel("training loss")
            ax.legend(fontsize=8)
        paths.append(save_figure(fig, out / "loss_curves.png"))
    # 2. Deviation per step, log scale, per dtype.
    dtypes = sorted({r.case.dtype for r in results if not r.case.mutation}, reverse=True)
    if dtypes:
        fig, axes = plt.subplots(1, len(dtypes), figsize=(6 * len(dtypes), 3.6), squeeze=False)
        for ax, dt in zip(axes[0], dtypes):
            rs = [r for r in results if r.case.dtype == dt and not r.case.mutation]
            for r in rs:
                ax.plot(np.maximum(r.drift or r.dparam, 1e-17), lw=0.6, alpha=0.5, color="C0")
                if r.noise:
                    ax.plot(np.maximum(r.noise, 1e-17), lw=0.6, alpha=0.4, color="C1")
            if dt == "float64":
                ax.axhline(F64_TOL, color="r", ls="--", lw=1, label=f"tolerance {F64_TOL:g}")
                ax.plot([], [], color="C0", label="JAX vs torch")
            else:
                ax.plot([], [], color="C0", label="JAX f32 vs torch f64")
                ax.plot([], [], color="C1", label="torch f32 vs torch f64")
            ax.set_yscale("log")
            what = "vs torch" if dt == "float64" else "from the float64 reference"
            ax.set_title(
                f"{dt}: max relative parameter difference {what} ({len(rs)} cases)", fontsize=9
            )
            ax.set_xlabel("step")
            ax.legend(fontsize=8)
        paths.append(save_figure(fig, out / "deviation.png"))
    # 3. The regularization effect.
    if effect:
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
        names = [e.reg for e in effect]
        x = np.arange(len(names))
        axes[0].bar(x - 0.2, [e.train_acc for e in effect], 0.4, label="train")
        axes[0].bar(x + 0.2, [e.test_acc for e in effect], 0.4, label="test")
        axes[0].set_ylim(0.9, 1.0)
        axes[0].set_title("accuracy", fontsize=9)
        axes[0].legend(fontsize=8)
        axes[1].bar(x, [e.weight_norm for e in effect])
        axes[1].set_title("‖W‖₂ of the kernels", fontsize=9)
        axes[2].bar(x, [100 * e.zero_fraction for e in effect])
        axes[2].set_title("exact zeros in the kernels (%)", fontsize=9)
        for ax in axes:
            ax.set_xticks(x, names, fontsize=8)
        paths.append(save_figure(fig, out / "effect.png"))
    return paths
