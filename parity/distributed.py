"""Data-parallel training on the real distributed engines, on localhost.

``python -m parity --distributed N`` launches

- N JAX processes joined by ``jax.distributed.initialize`` (CPU collectives over gloo),
  one CPU device each, training the Flax twin with jaxreg on a global mesh: parameters
  and optimizer state replicated, each global batch of 128 split across the processes
  (``jax.make_array_from_process_local_data``), the step ``jit``-compiled once for the
  whole mesh;
- N PyTorch processes with ``DistributedDataParallel`` over gloo, each rank taking the
  same shard of every batch;

and checks, at every step, for each case (L2 penalty, coupled and decoupled weight decay,
a masked decay on the CNN):

(a) the distributed JAX run equals the single-process JAX run on the same global batches;
(b) the DDP run equals the distributed JAX run;
(c) every rank of each framework holds the same parameters.

(a)-(b) to the float64 parity tolerance. Ports are chosen free on 127.0.0.1, the workers
are killed if any fails or the run exceeds its time limit. BatchNorm is left out on
purpose: under DDP it normalizes with per-rank statistics unless converted to
``SyncBatchNorm``, which is a different computation from the global batch.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GLOBAL_BATCH = 128
DEFAULT_STEPS = 50
CASES = (  # (model, reg, optimizer) -- parity.run.Case fields
    ("mlp", "l2", "sgd_nesterov"),
    ("mlp", "wd", "sgd"),
    ("mlp", "decoupled", "adam"),
    ("cnn", "masked", "adamw"),
)


def _case(spec, steps, mutation=None):
    from parity.run import Case

    model, reg, opt = spec
    return Case(model, reg, opt, "float64", steps=steps, batch_size=GLOBAL_BATCH,
                mutation=mutation)  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- workers ---------------------------------------------------------------------------


def _local(batch: np.ndarray, rank: int, world: int) -> np.ndarray:
    """This rank's contiguous shard of a global batch of indices."""
    per = len(batch) // world
    return batch[rank * per : (rank + 1) * per]


def _jax_worker(rank, world, port, steps, out, mutation):
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        f"127.0.0.1:{port}", num_processes=world, process_id=rank, initialization_timeout=120
    )
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from parity import convert, models
    from parity.data import batch_indices, load_digits
    from parity.run import _flat_vars, _jax_side

    data = load_digits()
    mesh = jax.make_mesh((world,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    replicated, split = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    x_all = models.flax_input(data.x_train)
    record = {}
    for spec in CASES:
        case = _case(spec, steps, mutation)
        side = _jax_side(case)
        tmodel = models.torch_model(case.model, case.seed).double()
        variables = convert.torch_to_flax(tmodel.state_dict(), side.layers, side.template)
        params = jax.device_put(variables["params"], replicated)
        opt_state = jax.jit(side.tx.init, out_shardings=replicated)(params)
        idx = batch_indices(len(data.y_train), GLOBAL_BATCH, steps, case.seed)
        losses, snaps = [], []
        for batch in idx:
            mine = _local(batch, rank, world)
            x = jax.make_array_from_process_local_data(split, x_all[mine])
            y = jax.make_array_from_process_local_data(split, data.y_train[mine])
            params, opt_state, _, loss, _ = side.step(params, opt_state, {}, x, y)
            losses.append(float(loss.addressable_data(0)))
            local = jax.tree.map(lambda a: np.asarray(a.addressable_data(0)), params)
            snaps.append(_flat_vars({"params": local}))
        record[case.name] = (losses, snaps)
    _save(out / f"jax_rank{rank}.npz", record)
    jax.distributed.shutdown()


def _torch_worker(rank, world, port, steps, out, mutation):
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from parity import convert, models
    from parity.data import batch_indices, load_digits
    from parity.run import _flat_vars, _jax_side, _torch_optimizer, _torch_step

    jax.config.update("jax_enable_x64", True)  # the Flax-layout snapshots stay float64
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    data = load_digits()
    x_all = torch.tensor(models.torch_input(data.x_train), dtype=torch.float64)
    y_all = torch.tensor(data.y_train)
    record = {}
    for spec in CASES:
        case = _case(spec, steps, mutation)
        side = _jax_side(case)  # only for the layer spec/template: snapshots in Flax layout
        model = models.torch_model(case.model, case.seed).double()
        ddp = DDP(model)  # averages gradients over ranks during backward
        opt = _torch_optimizer(case, model)
        idx = batch_indices(len(data.y_train), GLOBAL_BATCH, steps, case.seed)
        losses, snaps = [], []
        for batch in idx:
            mine = torch.as_tensor(_local(batch, rank, world))
            loss, _ = _torch_step(case, ddp, opt, x_all[mine], y_all[mine])
            total = torch.tensor(loss, dtype=torch.float64)
            dist.all_reduce(total)  # the global-batch loss: mean of the equal-size shards
            losses.append(total.item() / world)
            sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
            snaps.append(_flat_vars(convert.torch_to_flax(sd, side.layers, side.template)))
        record[case.name] = (losses, snaps)
    _save(out / f"torch_rank{rank}.npz", record)
    dist.destroy_process_group()


def _save(path: Path, record: dict) -> None:
    arrays = {}
    for name, (losses, snaps) in record.items():
        arrays[f"{name}|loss"] = np.array(losses)
        for key in snaps[0]:
            arrays[f"{name}|{key}"] = np.stack([s[key] for s in snaps])
    np.savez(path, **arrays)


def _load(path: Path) -> dict:
    out: dict = {}
    with np.load(path, allow_pickle=False) as z:
        for k in z.files:
            name, key = k.split("|")
            out.setdefault(name, {})[key] = z[k]
    return out


# --- launcher --------------------------------------------------------------------------


def _launch(
    kind: str, world: int, steps: int, out: Path, deadline: float, mutation: str | None
) -> None:
    """Run ``world`` workers of one framework; kill them all if one fails or time runs out."""
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", OMP_NUM_THREADS="1")
    env.pop("XLA_FLAGS", None)  # one CPU device per process
    procs, logs = [], []
    try:
        for rank in range(world):
            log = open(out / f"{kind}_rank{rank}.log", "w")  # noqa: SIM115 - closed below
            logs.append(log)
            cmd = [sys.executable, "-m", "parity.distributed", "--worker", kind,
                   "--rank", str(rank), "--world", str(world), "--port", str(port),
                   "--steps", str(steps), "--out", str(out)]  # fmt: skip
            if mutation:
                cmd += ["--mutation", mutation]
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env))
        while any(p.poll() is None for p in procs):
            failed = [i for i, p in enumerate(procs) if p.poll() not in (None, 0)]
            if failed:
                raise RuntimeError(f"{kind} rank {failed[0]} exited {procs[failed[0]].returncode}")
            if time.time() > deadline:
                raise TimeoutError(f"{kind} workers still running at the time limit")
            time.sleep(0.2)
        bad = [i for i, p in enumerate(procs) if p.returncode != 0]
        if bad:
            raise RuntimeError(f"{kind} rank {bad[0]} exited {procs[bad[0]].returncode}")
    except BaseException as e:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            p.wait()
        for log in logs:
            log.close()
        if not isinstance(e, Exception):  # KeyboardInterrupt/SystemExit: workers gone, re-raise
            raise
        tails = []
        for rank in range(len(procs)):
            text = (out / f"{kind}_rank{rank}.log").read_text(errors="replace")
            tails.append(f"--- {kind} rank {rank} log (tail) ---\n" + text[-2000:])
        raise RuntimeError(f"{e}\n" + "\n".join(tails)) from e
    for log in logs:
        log.close()


def _max_step_diff(a: dict, b: dict) -> tuple[float, float]:
    """(max relative parameter difference over all steps and leaves, max loss difference)."""
    from parity.compare import rel_diff

    dp = max(max(rel_diff(a[k][t], b[k][t]) for t in range(len(b[k]))) for k in b if k != "loss")
    dl = float(np.max(np.abs(a["loss"] - b["loss"]) / np.maximum(np.abs(b["loss"]), 1e-300)))
    return dp, dl


def run(world: int = 2, steps: int = DEFAULT_STEPS, out: Path | None = None,
        timeout: float = 400.0, mutation: str | None = None) -> dict:  # fmt: skip
    """Launch both frameworks' workers, run the single-process reference, compare.

    ``mutation`` plants one of :data:`parity.grid.MUTATIONS` on the JAX side (workers and
    reference alike): check (b) must then fail. Raises ``RuntimeError`` (with the
    workers' log tails) when a worker fails or ``timeout`` seconds pass; every worker is
    killed first.
    """
    from parity.data import load_digits
    from parity.run import jax_history
    from parity.tolerances import F64_TOL

    deadline = time.time() + timeout
    with tempfile.TemporaryDirectory(prefix="parity-dist-") as tmp:
        work = Path(tmp)
        t0 = time.time()
        _launch("jax", world, steps, work, deadline, mutation)
        t_jax = time.time() - t0
        _launch("torch", world, steps, work, deadline, mutation)
        t_torch = time.time() - t0 - t_jax
        jax_ranks = [_load(work / f"jax_rank{r}.npz") for r in range(world)]
        torch_ranks = [_load(work / f"torch_rank{r}.npz") for r in range(world)]

    data = load_digits()
    rows = []
    for spec in CASES:
        case = _case(spec, steps, mutation)
        ref = jax_history(case, data)  # one process, one device, the same global batches
        single = {"loss": np.array(ref.losses)}
        for key in ref.snapshots[0]:
            single[key] = np.stack([s[key] for s in ref.snapshots])
        single = {k: v for k, v in single.items() if k == "loss" or k.startswith("params/")}
        dj = jax_ranks[0][case.name]
        dt = torch_ranks[0][case.name]
        a_param, a_loss = _max_step_diff(dj, single)
        b_param, b_loss = _max_step_diff(dt, dj)
        replicas = max(
            _max_step_diff(ranks[r][case.name], ranks[0][case.name])[0]
            for ranks in (jax_ranks, torch_ranks)
            for r in range(1, world)
        )
        rows.append({
            "case": case.name,
            "jax_dist_vs_single": {"param": a_param, "loss": a_loss},
            "torch_ddp_vs_jax_dist": {"param": b_param, "loss": b_loss},
            "max_rank_disagreement": replicas,
            "passed": max(a_param, a_loss, b_param, b_loss) <= F64_TOL and replicas == 0.0,
        })  # fmt: skip
    result = {
        "world": world,
        "steps": steps,
        "global_batch": GLOBAL_BATCH,
        "mutation": mutation,
        "tolerance": F64_TOL,
        "seconds": {"jax_workers": t_jax, "torch_workers": t_torch},
        "cases": rows,
        "passed": all(r["passed"] for r in rows),
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "distributed.json").write_text(json.dumps(result, indent=2))
    return result


def table(result: dict) -> str:
    lines = [
        f"distributed data parallel: {result['world']} processes per framework, "
        f"{result['steps']} float64 steps, global batch {result['global_batch']}, "
        f"tolerance {result['tolerance']:.0e} (max relative difference over all steps)",
        f"{'case':34s} {'JAX dist vs 1 proc':>19s} {'DDP vs JAX dist':>16s} {'ranks':>6s}",
    ]
    for r in result["cases"]:
        a, b = r["jax_dist_vs_single"], r["torch_ddp_vs_jax_dist"]
        lines.append(
            f"{r['case']:34s} {max(a['param'], a['loss']):19.1e} "
            f"{max(b['param'], b['loss']):16.1e} {r['max_rank_disagreement']:6.0e} "
            f"{'PASS' if r['passed'] else 'FAIL'}"
        )
    s = result["seconds"]
    lines.append(f"workers: JAX {s['jax_workers']:.0f}s, torch {s['torch_workers']:.0f}s")
    return "\n".join(lines)


def _worker_main(argv) -> int:
    p = argparse.ArgumentParser(prog="python -m parity.distributed")
    p.add_argument("--worker", choices=("jax", "torch"), required=True)
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--world", type=int, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--mutation", default=None)
    a = p.parse_args(argv)
    worker = _jax_worker if a.worker == "jax" else _torch_worker
    worker(a.rank, a.world, a.port, a.steps, a.out, a.mutation)
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
