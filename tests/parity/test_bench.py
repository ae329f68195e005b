"""parity.bench: the harness, the correctness guard, the derived ratios and the CLI.

Nothing here asserts a speed (speed goals live in the benchmark's own report); these tests
check that the harness measures what it says and refuses to count wrong results.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from parity.bench import __main__ as bench_cli
from parity.bench import report, suite
from parity.bench.harness import check_guards, measure
from parity.bench.results import LIMIT_SLACK, BenchResults, Group, OptRow, Subject, Target
from tests.helpers import BLOCK_TORCH

TINY = {
    "sizes": (100_000,),
    "reg_size": 100_000,
    "many": 30,
    "models": ("mlp",),
    "stream_n": 100_000,
    "rounds": 5,
    "round_s": 0.005,
    "compile_sizes": (),
    "ready_s": 120.0,
}


@pytest.fixture(scope="module")
def tiny_run():  # the tests using it are marked slow: a real (tiny) benchmark run
    return suite.run(TINY)


@pytest.mark.slow
def test_every_group_is_measured_in_alternating_rounds(tiny_run):
    labels = [g.label for g in tiny_run.groups]
    assert labels[0].startswith("stream")
    assert "sgd step 30 leaves" in labels and "train mlp batch 128" in labels
    for g in tiny_run.groups:
        for s in g.subjects:
            assert len(s.rounds) == 5, s.name
            assert s.min_s <= s.median_s <= s.max_s
            assert s.compile_s > 0 and s.iters >= 3
            assert s.guard_ok, (g.label, s.name, s.guard_err_over_tol)
    assert tiny_run.derived.guards_ok
    # every roof implementation ran and agreed with the others (same values, same bytes)
    sgd = next(g for g in tiny_run.groups if g.label == "sgd step N=1e+05")
    assert {s.framework for s in sgd.subjects if s.variant == "roof"} == {"numba", "torch", "jax"}
    row = next(r for r in tiny_run.derived.opt if r.label == "sgd step N=1e+05")
    assert row.roof.pattern == "3R/2W" and row.roof.bytes_per_param == 20
    assert row.roof.seconds == min(s.median_s for s in sgd.subjects if s.variant == "roof")


def test_many_leaves_case_has_a_thousand_style_size_spread():
    sizes = __import__("parity.bench.worker", fromlist=["leaf_sizes"]).leaf_sizes({"many": 1000})
    assert len(sizes) == 1000 and min(sizes) >= 1024 and max(sizes) <= 65536


@pytest.mark.slow
def test_report_and_files(tiny_run, tmp_path):
    text = report.table(tiny_run)
    assert "correctness guard: every jaxreg subject matches torch's reference" in text
    assert "targets (ratios: median over rounds" in text and ("MISSED" in text or "MET" in text)
    assert "roofs (GB/s of each implementation" in text
    written = report.write(tiny_run, tmp_path)
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["environment"]["threads"] >= 1 and data["environment"]["versions"]["torch"]
    assert data["environment"]["device"] == "cpu" and data["environment"]["accelerator"] is None
    assert (tmp_path / "bench.png").stat().st_size > 10_000 and len(written) == 2
    # bench.json reads back into the same results
    again = BenchResults.from_json(data)
    assert again == tiny_run
    assert report.table(again) == text


@pytest.mark.slow
def test_guard_catches_a_semantic_difference():
    """A step without weight decay posing as the same semantics must fail the guard."""
    case = {"case": "opt", "kind": "opt", "opt": "sgd", "n": 10_000, "threads": 1, "cpus": None}
    subjects = [
        Subject("jax", "jaxreg", "sgd/wd"),
        Subject("torch", "torch_fused", "sgd/wd"),
        Subject("torch", "torch_fused_nowd", "sgd/wd"),  # wrong on purpose
    ]
    measure(case, subjects, rounds=1, round_s=0.001)
    check_guards("opt", subjects)
    ok = [s.guard_ok for s in subjects]
    assert ok == [True, True, False]
    assert subjects[1].guard_err_over_tol < 1.0 < subjects[2].guard_err_over_tol


def _sub(key: str, med: float, ok: bool = True, rounds=None, **kw) -> Subject:
    framework, variant = key.split(":")
    return Subject(framework, variant, "x", median_s=med, min_s=med, max_s=med, guard_ok=ok,
                   rounds=rounds or [], **kw)  # fmt: skip


def _fake(med: dict[str, float], n: int, opt: str = "sgd") -> Group:
    spec = {"case": "opt", "kind": "opt", "opt": opt, "n": n}
    return Group(f"{opt} {n}", spec, [_sub(k, v) for k, v in med.items()], params=n)


def _stream(**med: float) -> Group:
    spec = {"case": "stream", "kind": "opt", "n": 1_000_000}
    return Group("stream", spec, [_sub(f"{k}:roof", v) for k, v in med.items()])


def test_derived_ratios_by_hand():
    g = _fake({"jax:jaxreg": 0.010, "jax:jaxreg_nowd": 0.008, "jax:jaxreg_prox": 0.011,
               "jax:penalty_in_loss": 0.0105, "jax:decay_transform": 0.010,
               "torch:torch_loop": 0.04, "torch:torch_foreach": 0.02,
               "torch:torch_fused": 0.008, "torch:torch_fused_nowd": 0.008,
               "numba:roof": 0.009, "torch:roof": 0.012, "jax:roof": 0.0095},
              10_000_000)  # fmt: skip
    g.subjects.append(  # fastest, but wrong: must not count
        _sub("torch:torch_compile", 0.001, ok=False, guard_vs="torch/torch_loop",
             guard_err_over_tol=37.0))  # fmt: skip
    d = suite.derive([_stream(numba=0.002, torch=0.003), g])
    assert d.excluded == [
        "sgd 10000000 torch/torch_compile: differs from torch/torch_loop by 37.0× the guard "
        "tolerance"
    ]
    assert d.guards_ok  # judged on jaxreg's subjects
    assert d.stream == pytest.approx({"numba": 12 * 1e6 / 0.002 / 1e9, "torch": 4.0})
    row = d.opt[0]
    assert row.best_torch == "torch_fused" and row.jaxreg == "xla"
    assert row.ratio_best == pytest.approx(1.25) and row.ratio_fused == pytest.approx(1.25)
    # the roof: the fastest kernel of the step's pattern, 20 B/param at 1e7 in 9 ms
    assert (row.roof.best, row.roof.pattern, row.roof.seconds) == ("numba", "3R/2W", 0.009)
    assert row.roof.gbps == pytest.approx({"numba": 20e7 / 0.009 / 1e9,
                                           "torch": 20e7 / 0.012 / 1e9,
                                           "jax": 20e7 / 0.0095 / 1e9})  # fmt: skip
    assert row.roof_fraction == pytest.approx(0.9)  # roof 9 ms ÷ jaxreg 10 ms
    assert row.torch_fused_roof_fraction == pytest.approx(1.125)  # torch fused beats it
    reg = {r.name: r.value for r in d.reg}
    assert reg["sgd: weight decay on ÷ off"] == pytest.approx(1.25)
    assert reg["sgd: L2 penalty in the loss ÷ decay transform"] == pytest.approx(1.05)
    targets = {t.name: t for t in d.targets}
    assert targets["sgd: weight decay on ÷ off"].met is False
    assert targets["large-N sgd 10000000: jaxreg ÷ torch fused"].value == 1.25
    roof = targets["large-N sgd 10000000: fraction of the roof (3R/2W)"]
    assert (roof.met, roof.bound, roof.limit_invalid) == (True, "≥ 0.85", False)


def test_a_step_faster_than_its_roof_is_not_judged():
    """A jaxreg step 2x faster than the fastest kernel moving its bytes: the roof is wrong
    (mis-measured), and the target says so instead of MET."""
    g = _fake({"jax:jaxreg": 0.005, "torch:torch_fused": 0.008, "numba:roof": 0.010},
              10_000_000)  # fmt: skip
    d = suite.derive([g])
    (t,) = [t for t in d.targets if "roof" in t.name]
    assert t.value == pytest.approx(2.0)
    assert t.met is None and t.limit_invalid and t.bound == "limit invalid"
    # within the 5% timing slack it is still judged
    g = _fake({"jax:jaxreg": 0.0097, "torch:torch_fused": 0.008, "numba:roof": 0.010}, 10**7)
    (t,) = [t for t in suite.derive([g]).targets if "roof" in t.name]
    assert t.met is True and not t.limit_invalid


def test_a_roof_kernel_that_fails_the_guard_is_not_the_roof():
    g = _fake({"jax:jaxreg": 0.010, "torch:torch_fused": 0.008, "torch:roof": 0.011},
              10_000_000)  # fmt: skip
    g.subjects.append(_sub("numba:roof", 0.001, ok=False, guard_vs="torch/roof",
                           guard_err_over_tol=5.0))  # fmt: skip
    row = suite.derive([g]).opt[0]
    assert row.roof.best == "torch" and set(row.roof.gbps) == {"torch"}


def test_scaling_slope_and_linear_onset():
    rows = [OptRow(label=f"sgd {n}", opt="sgd", params=int(n), many=False, jaxreg="xla",
                   jaxreg_s=t, torch_s={}, best_torch="", ratio_best=1, ratio_fused=1,
                   spread_best=None, spread_fused=None, jaxreg_xla_s=t, jaxreg_fused_s=None,
                   jaxreg_flat_s=None, jaxreg_tree_s=t, ratio_tree_best=None,
                   ratio_fused_xla=None, dropped={}, ns_per_param=t / n * 1e9)
            for n, t in [(1e5, 1e-3), (1e6, 2e-3), (1e7, 1e-2), (1e8, 1e-1)]]  # fmt: skip
    s = suite._scaling(rows)["sgd"]
    assert s.slopes == pytest.approx([0.30103, 0.69897, 1.0], abs=1e-5)
    assert s.linear_from == 1e7  # 1 ns/param from 1e7 on; 10 and 2 ns/param before


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--rounds", "3"], "--rounds must be at least 5"),
        (["--bogus"], "unrecognized arguments"),
    ],  # fmt: skip
)
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        bench_cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


@pytest.mark.slow
def test_missing_extra_names_it():
    code = BLOCK_TORCH + "from parity.bench.__main__ import main; sys.exit(main(['--quick']))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        'parity.bench: error: missing torch: install the parity extra, pip install -e ".[parity]"'
    )


def test_hlo_traffic_counts_loop_fusions_and_their_bytes():
    import jax
    import jax.numpy as jnp

    from parity.bench.worker import hlo_traffic

    n = 1000
    a, b = jnp.ones(n, jnp.float32), jnp.ones(n, jnp.float32)
    hlo = jax.jit(lambda a, b: a * 2 + b).lower(a, b).compile().as_text()
    t = hlo_traffic(hlo, n, 1)
    assert t["fusions"] == 1
    assert t["bytes_per_param"] == 12  # reads a and b, writes the result: 3 × 4 B
    two = jax.jit(lambda a, b: (a * 2 + b, a - b)).lower(a, b).compile().as_text()
    assert hlo_traffic(two, n, 1)["bytes_per_param"] in (16, 24)  # one 2-output loop, or two


def test_derived_uses_the_fused_step_when_present():
    """jaxreg's time is its fastest path (jaxreg.optim.fused_*); the XLA path stays reported."""
    g = _fake({"jax:jaxreg": 0.010, "jax:jaxreg_nowd": 0.008, "jax:jaxreg_prox": 0.011,
               "jax:jaxreg_fused": 0.007, "jax:jaxreg_fused_nowd": 0.007,
               "torch:torch_loop": 0.04, "torch:torch_fused": 0.008,
               "torch:torch_fused_nowd": 0.008}, 10_000_000)  # fmt: skip
    d = suite.derive([g])
    row = d.opt[0]
    assert row.jaxreg_s == 0.007 and row.jaxreg_xla_s == 0.010 and row.jaxreg == "fused"
    assert row.ratio_fused == pytest.approx(0.875)
    assert row.ratio_fused_xla == pytest.approx(1.25)
    reg = {r.name: r.value for r in d.reg}
    assert reg["sgd: weight decay on ÷ off"] == pytest.approx(1.0)
    assert reg["sgd: weight decay on ÷ off (XLA path)"] == pytest.approx(1.25)
    assert reg["sgd: + proximal L1 ÷ plain step"] == pytest.approx(1.1)  # vs the XLA step
    targets = {t.name: t for t in d.targets}
    assert targets["sgd: weight decay on ÷ off"].met is True
    assert targets["sgd: weight decay on ÷ off (XLA path)"].met is None  # reported only
    assert targets["large-N sgd 10000000: jaxreg ÷ torch fused"].met is True
    assert row.roof is None and not any("roof" in t.name for t in d.targets)  # none measured


@pytest.mark.slow
@pytest.mark.parametrize("opt,want", [("sgd", 20), ("adamw", 28)])
def test_hlo_traffic_of_the_fused_step_is_one_pass(opt, want):
    import jax
    import jax.numpy as jnp

    import jaxreg
    from parity.bench.worker import hlo_traffic

    n = 100_000
    fo = (jaxreg.optim.fused_sgd(0.1, momentum=0.9, weight_decay=0.1) if opt == "sgd"
          else jaxreg.optim.fused_adamw(0.1))  # fmt: skip
    p = [jnp.ones(n, jnp.float32)]
    hlo = jax.jit(fo.step, donate_argnums=(0, 2)).lower(p, p, fo.init(p)).compile().as_text()
    assert "jaxreg_fused_" in hlo
    assert hlo_traffic(hlo, n, 1)["bytes_per_param"] == pytest.approx(want, abs=0.01)


def test_many_leaves_target_uses_the_flat_buffer_and_reports_the_tree():
    g = _fake({"jax:jaxreg": 0.030, "jax:jaxreg_fused": 0.020, "jax:jaxreg_flat": 0.005,
               "torch:torch_loop": 0.021, "torch:torch_fused": 0.010}, 15_000_000)  # fmt: skip
    g.spec["many"] = 1000
    d = suite.derive([g])
    row = d.opt[0]
    assert row.jaxreg_s == 0.005 and row.jaxreg_tree_s == 0.020 and row.jaxreg == "flat"
    assert row.ratio_best == pytest.approx(0.5) and row.ratio_tree_best == pytest.approx(2.0)
    targets = {t.name: t for t in d.targets}
    flat = targets["many small leaves, sgd: jaxreg (flat buffer) ÷ best torch (torch_fused)"]
    assert flat.met is True and flat.value == pytest.approx(0.5)
    tree = targets["many small leaves, sgd: jaxreg (per-leaf tree) ÷ best torch"]
    assert tree.met is None and tree.value == pytest.approx(2.0)
    # without the flat subject the per-leaf tree is what the target judges
    g.subjects = [s for s in g.subjects if s.variant != "jaxreg_flat"]
    d = suite.derive([g])
    (t,) = [t for t in d.targets if t.name.startswith("many small leaves")]
    assert "per-leaf tree" in t.name and t.value == pytest.approx(2.0) and not t.met


def test_ratios_are_paired_by_round_with_their_spread():
    """Round medians that drift together: the per-round ratio is constant (1.25) while the
    ratio of the medians is not; without per-round data the medians are used."""
    a_rounds = [0.010, 0.020, 0.012, 0.030, 0.011]
    b_rounds = [x / 1.25 for x in a_rounds]
    b_rounds[3] = 0.012  # one round where a alone was slow: ratio 2.5, the median ignores it
    g = Group("g", {}, [_sub("jax:a", 0.012, rounds=a_rounds),
                        _sub("jax:b", 0.0096, rounds=b_rounds), _sub("jax:c", 0.006)])  # fmt: skip
    assert suite._ratio(g, ("jax", "a"), ("jax", "b")) == pytest.approx(1.25)
    assert suite._spread(g, ("jax", "a"), ("jax", "b")) == pytest.approx([1.25, 2.5])
    assert suite._ratio(g, ("jax", "a"), ("jax", "c")) == pytest.approx(2.0)  # no rounds for c
    assert suite._spread(g, ("jax", "a"), ("jax", "c")) is None


def test_target_rows_bounds_and_within_noise():
    t = Target("x", 1.01, at_most=1.02, spread=[0.9, 1.1])
    assert (t.bound, t.met, t.within_noise) == ("≤ 1.02", True, True)
    t = Target("x", 1.05, at_most=1.02, spread=[1.03, 1.2])
    assert (t.met, t.within_noise) == (False, False)
    t = Target("bw", 0.9, at_least=0.85)
    assert (t.bound, t.met, t.within_noise) == ("≥ 0.85", True, False)
    t = Target("r", 2.0)
    assert (t.bound, t.met, t.within_noise, t.limit_invalid) == ("(reported)", None, False, False)
    t = Target("f", 1.06, at_least=0.85, of_limit=True)  # above LIMIT_SLACK: not judged
    assert (t.bound, t.met, t.limit_invalid) == ("limit invalid", None, True)
    assert LIMIT_SLACK == 1.05
