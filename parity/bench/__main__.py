"""``python -m parity.bench``: time jaxreg against PyTorch, side by side, in one run.

Exit status: 0 when every subject passed the correctness guard (targets missed or met are
reported, not judged), 1 when a guard failed or a worker crashed, 2 on bad arguments, a
missing dependency or a ``--device`` this machine does not have (one line on stderr).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one clear line, exit 2
        self.exit(2, f"parity.bench: error: {message}\n")


def device_problem(device: str) -> str | None:
    """Why ``device`` cannot be benchmarked here, or ``None`` (checked in a subprocess:
    JAX's platform is fixed at its first use)."""
    if device == "cpu":
        return None
    import subprocess

    from parity.bench.harness import JAX_PLATFORMS

    platform = JAX_PLATFORMS[device]
    code = (
        "import jax\n"
        "try:\n"
        "    jax.devices()\n"
        "except Exception as e:\n"
        f"    raise SystemExit('JAX has no {platform} backend (jax.devices() raised '\n"
        "                     + (type(e).__name__ + ' ' + str(e)).strip() + ')')\n"
    )
    if device == "gpu":
        code += (
            "import torch\n"
            "if not torch.cuda.is_available():\n"
            "    raise SystemExit('torch.cuda.is_available() is False')\n"
        )
    env = {**os.environ, "JAX_PLATFORMS": platform}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if proc.returncode == 0:
        return None
    last = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
    return f"--device {device}: no {device.upper()} visible here: {last[:200]}"


def main(argv=None) -> int:
    p = _Parser(prog="python -m parity.bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes (~2.5 min on 2 CPU cores)")
    p.add_argument(
        "--rounds", type=int, default=None, help="rounds per subject (default 7; quick 5)"
    )
    p.add_argument(
        "--device",
        choices=("cpu", "gpu", "tpu"),
        default="cpu",
        help="where the timed steps run (gpu: torch on CUDA and JAX on the GPU; tpu: JAX)",
    )
    p.add_argument("--out", type=Path, default=Path("bench-report"))
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.rounds is not None and args.rounds < 5:
        p.error("--rounds must be at least 5")
    from parity.cli import missing_extra

    problem = missing_extra()
    if problem:
        sys.stderr.write(f"parity.bench: error: {problem}\n")
        return 2
    from parity.bench import report, suite
    from parity.bench.harness import BenchError

    problem = device_problem(args.device)
    if problem:
        sys.stderr.write(f"parity.bench: error: {problem}\n")
        return 2
    cfg = suite.config(args.device, args.quick)
    if args.rounds:
        cfg["rounds"] = args.rounds
    try:
        results = suite.run(cfg, progress=True)
    except BenchError as e:
        sys.stderr.write(f"parity.bench: error: {e}\n")
        return 1
    print(report.table(results))
    written = report.write(results, args.out, plots=not args.no_plots)
    print("written: " + ", ".join(str(w) for w in written))
    print(f"total {results.seconds:.0f}s")
    return 0 if results.derived.guards_ok else 1


if __name__ == "__main__":
    sys.exit(main())
