"""The parity suite end to end: the --quick grid passes, planted bugs FAIL, the CLI's
exit codes and report files are right."""

from __future__ import annotations

import json

import pytest

from parity import cli
from parity.data import load_digits
from parity.run import MUTATIONS, Case, run_case
from parity.tolerances import F64_TOL


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("parity")
    code = cli.main(["--quick", "--out", str(out)])
    return code, out


@pytest.mark.slow
def test_quick_grid_passes_and_writes_the_report(quick_report):
    code, out = quick_report
    assert code == 0
    for name in ("report.json", "report.md", "loss_curves.png", "deviation.png", "effect.png"):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["failed"] == 0
    assert report["environment"]["versions"]["torch"]
    case = report["cases"][0]
    for field in (
        "loss_torch",
        "loss_jax",
        "dloss",
        "dparam",
        "dparam_layers",
        "tolerance",
        "passed",
        "train_acc",
        "test_acc",
    ):
        assert field in case
    assert len(case["dparam"]) == cli.QUICK["steps"]
    f64 = [c for c in report["cases"] if c["case_dtype"] == "float64"]
    assert max(c["max_dparam"] for c in f64) <= F64_TOL
    for c in f64:  # per-step training-batch accuracy: the same predictions in both
        assert len(c["batch_acc"]["torch"]) == cli.QUICK["steps"]
        assert c["batch_acc"]["torch"] == c["batch_acc"]["jax"], c["case"]
    f32 = [c for c in report["cases"] if c["case_dtype"] == "float32"]
    for c in f32:  # teacher-forced: JAX's step error within 4x float32's own noise
        over = [d for d in c["drift"] if d > 4 * max(c["max_noise"], 1.1920929e-07)]
        assert len(over) <= int(0.01 * len(c["drift"])) and c["passed"], c["case"]
    ids = {(i["name"], i["framework"]): i["passed"] for i in report["identities"]}
    assert ids[("sgd_l2_is_wd", "torch")] and ids[("sgd_l2_is_wd", "jax")]
    assert ids[("adam_l2_is_not_decoupled", "jax")]


# Each planted bug, on the case where it shows: the suite must flag it (power, not only pass).
MUTATED = [
    Case("mlp", "l2", "sgd", steps=10, mutation="decay_factor"),
    Case("mlp", "wd", "adam", steps=10, mutation="decay_factor"),
    Case("mlp_ln", "l1", "adam", steps=10, mutation="l1_abs_grad"),
    Case("mlp_ln", "none", "adam", steps=10, mutation="ln_eps"),
    Case("cnn", "none", "sgd", steps=10, mutation="flatten_order"),
    Case("cnn_bn", "none", "sgd", steps=10, mutation="bn_biased_var"),
    Case("mlp", "decoupled", "adamw", steps=10, mutation="adamw_default_wd"),
]


def test_every_mutation_is_covered():
    assert {c.mutation for c in MUTATED} == set(MUTATIONS)


@pytest.mark.slow
@pytest.mark.parametrize("case", MUTATED, ids=[c.name for c in MUTATED])
def test_planted_bug_is_caught(case):
    data = load_digits()
    clean = run_case(Case(case.model, case.reg, case.optimizer, steps=case.steps), data)
    assert clean.passed, f"the clean twin of {case.name} must pass"
    bad = run_case(case, data)
    assert not bad.passed
    assert bad.first_fail_step is not None and bad.first_fail_step <= 2
    assert bad.max_dparam > 1e3 * clean.max_dparam


@pytest.mark.slow
def test_float32_case_is_judged_against_torch_noise():
    r = run_case(Case("mlp", "l2", "adam", dtype="float32", steps=20))
    assert r.passed and r.noise is not None and len(r.noise) == 20 and len(r.drift) == 20
    assert r.tolerance == pytest.approx(4 * max(max(r.noise), 1.1920928955078125e-07))


@pytest.mark.slow
def test_cli_mutation_fails_with_exit_1(tmp_path):
    argv = [
        "--models",
        "mlp",
        "--regs",
        "l2",
        "--optimizers",
        "sgd",
        "--dtype",
        "float64",
        "--steps",
        "5",
        "--mutation",
        "decay_factor",
        "--no-plots",
        "--workers",
        "1",
        "--out",
        str(tmp_path),
    ]
    assert cli.main(argv) == 1


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--models", "resnet"], "'resnet' not in"),
        (["--steps", "0"], "--steps must be at least 1"),
        (["--dtype", "float16"], "invalid choice"),
        (["--regs", "decoupled", "--optimizers", "sgd"], "no valid case"),
        (["--distributed", "3"], "dividing the batch 128, got 3"),
        (["--distributed", "1"], "2..16 processes"),
        (["--distributed", "2", "--quick"], "drop --quick"),
        (["--distributed", "2", "--models", "mlp", "--dtype", "float32"], "drop --models, --dtype"),
        (["--distributed", "two"], "invalid int value"),
        (["--timeout", "0"], "--timeout must be positive"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        code = cli.main(argv + ["--out", "/nonexistent/never-written"])
        raise SystemExit(code)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_gpu_request_without_gpu_exits_2(capsys):
    assert cli.main(["--device", "gpu", "--quick", "--out", "/nonexistent/x"]) == 2
    assert "--device gpu" in capsys.readouterr().err


@pytest.mark.slow
def test_missing_parity_extra_names_the_extra():
    """Without torch (simulated: the import fails) the CLI says which extra to install."""
    import subprocess
    import sys

    from tests.helpers import BLOCK_TORCH

    code = BLOCK_TORCH + "from parity import cli; sys.exit(cli.main(['--quick']))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert err == (
        'parity: error: missing torch: install the parity extra, pip install -e ".[parity]"'
    )


# --- the run's own report: arguments, time, status; --out checked first; Ctrl-C ----------


@pytest.mark.slow
def test_quick_grid_touches_every_model_and_optimizer(quick_report):
    from parity.grid import MODELS, OPTIMIZERS

    _, out = quick_report
    report = json.loads((out / "report.json").read_text())
    assert {c["case_model"] for c in report["cases"]} == set(MODELS)
    assert {c["case_optimizer"] for c in report["cases"]} == set(OPTIMIZERS)
    run = report["environment"]["run"]
    assert run["status"] == "complete" and run["argv"][0] == "--quick"
    assert run["cases_done"] == run["cases_planned"] == len(report["cases"])
    assert run["started"] <= run["finished"]
    assert "complete (" in (out / "report.md").read_text().splitlines()[2]


def test_unwritable_out_exits_2_before_running(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    t0 = __import__("time").monotonic()
    assert cli.main(["--quick", "--out", str(blocker / "report")]) == 2
    assert __import__("time").monotonic() - t0 < 30  # nothing was trained
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("parity: error: cannot write the report")


@pytest.mark.slow
def test_ctrl_c_writes_a_partial_report_and_one_line(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    out = tmp_path / "r"
    out.mkdir()
    (out / "report.md").write_text("# an earlier run's report\n")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    with subprocess.Popen(
        [sys.executable, "-m", "parity", "--quick", "--no-plots", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    ) as proc:  # fmt: skip
        seen = b""
        while b"\n[2/" not in seen:  # stderr is a pipe: one line per case; two finished
            chunk = proc.stderr.read1(4096)
            if not chunk:
                proc.kill()
            assert chunk, seen.decode(errors="replace")
            seen += chunk
        proc.send_signal(signal.SIGINT)
        rest_out, rest_err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    tail = rest_err.decode().strip()
    assert "Traceback" not in tail, tail
    assert tail.splitlines()[-1].startswith("parity: interrupted after ")
    report = json.loads((out / "report.json").read_text())
    run = report["environment"]["run"]
    assert run["status"] == "partial" and run["cases_done"] == len(report["cases"]) >= 2
    assert run["cases_planned"] > run["cases_done"]
    md = (out / "report.md").read_text()
    assert md.startswith("# jaxreg parity report — PARTIAL") and "earlier run" not in md
