"""parity.bench beyond the CPU defaults: the roof kernels, device selection and
synchronisation, bfloat16 -- everything device-agnostic, tested on the CPU (CI has no
accelerator; nothing here needs one)."""

from __future__ import annotations

import subprocess

import jax
import numpy as np
import pytest

from parity.bench import __main__ as bench_cli
from parity.bench import roof, suite, worker
from parity.bench.harness import JAX_PLATFORMS, _Worker, check_guards, measure
from parity.bench.results import Subject
from parity.registry import BENCH

N = 1000


def _reference(pattern: str, steps: int) -> np.ndarray:
    """The pattern's first written array after ``steps`` passes, in float64 (closed-form
    recurrences written out; the kernels compute them in float32)."""
    arrays = [a.astype(np.float64) for a in roof._arrays(pattern, N)]
    for _ in range(steps):
        if pattern == "axpy":
            a, b = arrays
            a += roof.S * b
        elif pattern == "sgd":
            p, m, g = arrays
            m[:] = roof.MU * m + g
            p -= roof.LR * m
        else:
            p, m, v, g = arrays
            m[:] = roof.B1 * m + g
            v[:] = roof.B2 * v + g
            p[:] = p - roof.LR * m - roof.LR * v
    return arrays[0]


@pytest.mark.parametrize("pattern", list(roof.PATTERNS))
@pytest.mark.parametrize("framework", ["numba", "torch", "jax"])
def test_every_roof_kernel_computes_the_pattern(framework, pattern):
    """Each implementation of a roof kernel does the pattern's arithmetic (vs float64 to
    float32 round-off after 5 passes), so they move the same bytes for the same result."""
    if framework == "numba":
        pytest.importorskip("numba")
    step, written = roof.make(framework, pattern, N, threads=1)
    for _ in range(5):
        step()
    got = np.asarray(written()[0], np.float64)
    ref = _reference(pattern, 5)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * np.max(np.abs(ref)))


@pytest.mark.parametrize("pattern,xla_bytes", [("axpy", 12), ("sgd", 24), ("adamw", 40)])
def test_what_the_jax_roof_kernel_moves(pattern, xla_bytes):
    """The jax kernel's compiled HLO (an independent count: operands and results of its
    loops): one pass for axpy; XLA:CPU writes each further output in a loop of its own, so
    for SGD's and AdamW's patterns it moves more than the credited 20/28 B -- never less,
    so it can only make the roof slower (the numba kernel is one pass by construction)."""
    from parity.bench.worker import hlo_traffic

    args = [jax.numpy.ones(N, np.float32) for _ in range(roof.PATTERNS[pattern][0])]
    hlo = roof.jax_kernel(pattern).lower(*args).compile().as_text()
    moved = hlo_traffic(hlo, N, 1)["bytes_per_param"]
    assert moved >= roof.bytes_per_element(pattern)
    assert moved == xla_bytes


def test_the_benchmarked_steps_and_their_roofs_count_the_same_bytes():
    """BENCH's nominal bytes per parameter = its roof pattern's (3R/2W = 20 B for SGD with
    momentum, 4R/3W = 28 B for AdamW): the fraction compares like with like."""
    for name, entry in BENCH.items():
        assert entry.bytes_per_param == roof.bytes_per_element(name), name


def test_unknown_roof_pattern_or_framework_is_named():
    with pytest.raises(ValueError, match="unknown roof pattern 'lion'"):
        roof.make("jax", "lion", 10)
    with pytest.raises(ValueError, match="numba roof kernels run on the CPU only"):
        roof.make("numba", "sgd", 10, device="gpu")


# --- devices ---------------------------------------------------------------------------


def _kinds(groups):
    return {(s.framework, s.variant) for _, subs in groups for s in subs}


def test_the_gpu_plan_times_torch_on_cuda_and_jaxs_xla_path():
    cfg = suite.config("gpu", quick=True)
    assert cfg["device"] == "gpu" and cfg["dtypes"] == ("float32", "bfloat16")
    assert cfg["batches"] == (128, 1024)
    groups = suite.plan(cfg, threads=2, cpus=[0, 1])
    kinds = _kinds(groups)
    assert ("jax", "jaxreg") in kinds and ("torch", "torch_fused") in kinds
    # the numba kernels (fused steps, numba roof) are CPU-only
    assert not {k for k in kinds if k[0] == "numba" or k[1].startswith("jaxreg_fused")}
    assert all(spec["device"] == "gpu" for spec, _ in groups)
    specs = [spec for spec, _ in groups]
    assert {s.get("dtype", "float32") for s in specs if s["case"] == "opt"} == {
        "float32", "bfloat16"}  # fmt: skip
    assert {s["batch"] for s in specs if s["case"] == "train"} == {128, 1024}
    # the stream (HBM roof) arrays are 4e8 B each: >= 4x an H100's/H200's 50 MB L2
    assert specs[0]["case"] == "stream" and specs[0]["n"] * 4 >= 4 * 50 * 2**20
    tpu = _kinds(suite.plan(suite.config("tpu", quick=True), 1, [0]))
    assert tpu and all(fw == "jax" for fw, _ in tpu)  # torch has no TPU here


def test_the_cpu_plan_is_unchanged_by_the_device_option():
    cfg = suite.config("cpu", quick=True)
    kinds = _kinds(suite.plan(cfg, 2, [0, 1]))
    assert ("jax", "jaxreg_fused") in kinds and ("numba", "roof") in kinds
    with pytest.raises(ValueError, match="device must be one of"):
        suite.config("ipu", quick=True)


def test_workers_get_their_devices_platform(monkeypatch):
    seen = {}

    class FakePopen:
        def __init__(self, argv, env, **kw):
            seen["env"] = env

    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    for device, platform in JAX_PLATFORMS.items():
        _Worker({"device": device, "framework": "jax", "variant": "jaxreg"})
        assert seen["env"]["JAX_PLATFORMS"] == platform
        assert "XLA_FLAGS" not in seen["env"]
        assert (seen["env"].get("XLA_PYTHON_CLIENT_PREALLOCATE") == "false") == (device != "cpu")


def test_torch_steps_on_a_gpu_are_synchronised(monkeypatch):
    """torch's CUDA kernels are asynchronous: each timed step ends with
    torch.cuda.synchronize() on a GPU, and with nothing on the CPU."""
    import torch

    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: calls.append("sync"))

    def step():
        calls.append("step")

    timed = worker.synchronized(step, {"framework": "torch", "device": "gpu"})
    timed()
    timed()
    assert calls == ["step", "sync", "step", "sync"]
    assert worker.synchronized(step, {"framework": "torch", "device": "cpu"}) is step
    assert worker.synchronized(step, {"framework": "jax", "device": "gpu"}) is step
    assert worker.torch_device({"device": "gpu"}) == "cuda"
    assert worker.torch_device({"device": "cpu"}) == "cpu"


@pytest.mark.parametrize("device", ["gpu", "tpu"])
def test_an_absent_device_exits_2_with_one_line(device, capsys):
    if bench_cli.device_problem(device) is None:
        pytest.skip(f"this machine has a {device}")  # the check below needs its absence
    assert bench_cli.main(["--device", device, "--quick"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"parity.bench: error: --device {device}: no {device.upper()} visible")


@pytest.mark.slow
def test_bfloat16_steps_pass_the_guard_and_a_wrong_lr_does_not():
    """bfloat16 parameters on the CPU: jaxreg's XLA step and torch's kernels agree within
    the bfloat16 guard; a step with a 10x learning rate posing as the same does not."""
    case = {"case": "opt", "kind": "opt", "opt": "sgd", "n": 100_000, "threads": 1,
            "cpus": None, "dtype": "bfloat16"}  # fmt: skip
    subjects = [Subject("torch", "torch_loop", "sgd/wd"), Subject("torch", "torch_fused", "sgd/wd"),
                Subject("jax", "jaxreg", "sgd/wd")]  # fmt: skip
    measure(case, subjects, rounds=1, round_s=0.001)
    check_guards("opt", subjects, "bfloat16")
    assert [s.guard_ok for s in subjects] == [True, True, True], [
        s.guard_err_over_tol for s in subjects
    ]
    # a 10x lr slip moves elements by ~8e-3 of the largest (measured); here 1e-2
    ref = np.asarray(subjects[0].guard)
    wrong = Subject("jax", "jaxreg", "sgd/wd", guard=list(ref + 0.01 * np.abs(ref).max()))
    check_guards("opt", [subjects[0], wrong], "bfloat16")
    assert not wrong.guard_ok


@pytest.mark.slow
def test_the_transformer_block_trains_like_torch():
    """The third training model (one nn.TransformerEncoderLayer, an nnx twin loaded by
    parity.convert.from_torch): jaxreg's jitted step and torch's pass the training guard."""
    case = {"case": "train", "kind": "train", "model": "tblock", "batch": 128, "threads": 1,
            "cpus": None}  # fmt: skip
    subjects = [Subject("torch", "torch_loop", "train"), Subject("jax", "jaxreg", "train")]
    measure(case, subjects, rounds=1, round_s=0.001)
    check_guards("train", subjects)
    assert all(s.guard_ok for s in subjects), [s.guard for s in subjects]
    assert 2.0 < subjects[0].guard[0] < 2.7  # ~ln(10) after 3 SGD steps: a real loss


def test_the_accelerator_script_runs_both_jobs_into_one_folder():
    """tools/accelerator_check.sh: parity on the GPU (reduced grid) and the quick GPU
    benchmark, outputs under one folder; on a machine without a GPU it stops at once with
    the benchmark's one-line reason (exit 2) -- nothing requires a GPU."""
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "tools" / "accelerator_check.sh"
    text = script.read_text()
    assert "python -m parity --device gpu" in text
    assert "python -m parity.bench --device gpu --quick" in text
    if bench_cli.device_problem("gpu") is not None:
        proc = subprocess.run(["bash", str(script), "/tmp/jaxreg-acc-test"], capture_output=True,
                              text=True, timeout=120)  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert "no GPU visible" in proc.stderr
