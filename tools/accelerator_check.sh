#!/usr/bin/env bash
# The accelerator check, one command: the parity suite on the GPU (the --quick grid: every
# model and optimizer family) and the quick GPU benchmark (torch on CUDA vs jaxreg's XLA
# path, the HBM roof, float32 and bfloat16, training steps at batch 128 and 1024).
#
#   tools/accelerator_check.sh [OUT]      (default: accelerator-check)
#
# Writes OUT/parity/report.md (+ report.json, PNGs), OUT/bench/bench.json + bench.png,
# OUT/bench.txt (the benchmark's table) and OUT/times.txt. Each job has a time limit so the
# whole check stays within 8 minutes. Without a GPU it stops at once: exit 2 and one line.
set -euo pipefail
out="${1:-accelerator-check}"
mkdir -p "$out"

python - <<'PY'
import sys

from parity.bench.__main__ import device_problem

problem = device_problem("gpu")
if problem:
    sys.stderr.write(f"accelerator_check: {problem}\n")
    sys.exit(2)
PY

start=$(date +%s)
timeout 240 python -m parity --device gpu --quick --out "$out/parity"
mid=$(date +%s)
timeout 220 python -m parity.bench --device gpu --quick --out "$out/bench" | tee "$out/bench.txt"
end=$(date +%s)
printf 'parity --device gpu --quick: %ss\nparity.bench --device gpu --quick: %ss\n' \
    "$((mid - start))" "$((end - mid))" | tee "$out/times.txt"
