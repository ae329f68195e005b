"""Checkpoint and resume (jaxreg.checkpoint): bitwise resume, kills while saving, bad files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxreg
from jaxreg.checkpoint import Checkpointer, CheckpointError
from parity import models
from parity.data import batch_indices, load_digits

ROOT = Path(__file__).resolve().parent.parent
SEED, BATCH, STEPS = 0, 64, 40


@pytest.fixture(scope="module")
def run():
    """A small regularized training run whose state is (params, optimizer state, data)."""
    digits = load_digits()
    model = models.flax_model("mlp", jnp.float64)
    params = model.init(jax.random.key(0), jnp.zeros((2, 8, 8, 1)), train=False)["params"]
    schedule = optax.cosine_decay_schedule(1e-2, STEPS)  # the step count is the schedule position
    tx = jaxreg.optim.adamw(
        lr=schedule, weight_decay=0.05, weight_decay_mask=jaxreg.masks.exclude_names("bias")
    )

    def loss(p, x, y):
        logits = model.apply({"params": p}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss = jaxreg.regularized(loss, l1=1e-5)

    @jax.jit
    def step(p, s, x, y):
        u, s = tx.update(jax.grad(loss)(p, x, y), s, p)
        return optax.apply_updates(p, u), s

    x_all = models.flax_input(digits.x_train)
    order = batch_indices(len(digits.y_train), BATCH, STEPS, seed=SEED)

    def init():
        return {"params": params, "opt": tx.init(params), "data": {"next_batch": jnp.int32(0)}}

    def train(state, until):
        p, s = state["params"], state["opt"]
        for i in range(int(state["data"]["next_batch"]), until):
            p, s = step(p, s, x_all[order[i]], digits.y_train[order[i]])
        return {"params": p, "opt": s, "data": {"next_batch": jnp.int32(until)}}

    return init, train


def _assert_bitwise(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(la, lb):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_resume_is_bitwise_identical_to_the_uninterrupted_run(run, tmp_path):
    init, train = run
    straight = train(init(), STEPS)
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(20, train(init(), 20), metadata={"seed": SEED, "batch_size": BATCH})
    with Checkpointer(tmp_path) as ckpt:  # a new process would start here
        state, meta = ckpt.restore(like=init())
    assert meta == {"seed": SEED, "batch_size": BATCH}
    assert int(state["data"]["next_batch"]) == 20
    assert type(state["opt"][0]) is type(init()["opt"][0])  # NamedTuples come back as such
    resumed = train(state, STEPS)
    _assert_bitwise(resumed, straight)
    assert int(resumed["opt"][0].count) == STEPS


def test_keeps_the_newest_and_restores_any_kept_step(run, tmp_path):
    init, train = run
    states = {}
    with Checkpointer(tmp_path, max_to_keep=2) as ckpt:
        state = init()
        for k in (5, 10, 15):
            state = train(state, k)
            states[k] = state
            ckpt.save(k, state)
        assert ckpt.all_steps() == [10, 15]
        _assert_bitwise(ckpt.restore(init(), step=10)[0], states[10])
        with pytest.raises(CheckpointError, match=r"no checkpoint for step 5 .*have: \[10, 15\]"):
            ckpt.restore(init(), step=5)
        with pytest.raises(CheckpointError, match="already has step 15"):
            ckpt.save(15, state)


# --- killed while saving ----------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import jax, jax.numpy as jnp
    from orbax.checkpoint._src.path import atomicity
    from jaxreg.checkpoint import Checkpointer

    directory, kill_at = sys.argv[1], sys.argv[2]
    state = lambda k: {"w": jnp.full((256, 256), float(k)), "step": jnp.int32(k)}
    ckpt = Checkpointer(directory, max_to_keep=None)
    ckpt.save(1, state(1))
    if kill_at == "loop":  # save continuously; the parent kills us at some moment
        print("saving", flush=True)
        k = 2
        while True:
            ckpt.save(k, state(k))
            k += 1
    original = atomicity.AtomicRenameTemporaryPath.finalize

    async def finalize(self, *args, **kwargs):
        # the rename that would complete item `kill_at` ("state") or the step ("2")
        if str(self.get_final()).endswith(os.sep + kill_at):
            os.kill(os.getpid(), signal.SIGKILL)
        return await original(self, *args, **kwargs)

    atomicity.AtomicRenameTemporaryPath.finalize = finalize
    ckpt.save(2, state(2))
    """
)


def _child(directory, kill_at):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(directory), kill_at],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def _like():
    return {"w": jnp.zeros((256, 256), jnp.float32), "step": jnp.int32(0)}


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", ["state", "2"])
def test_kill_during_save_leaves_the_previous_checkpoint(tmp_path, kill_at):
    with _child(tmp_path, kill_at) as proc:
        assert proc.wait(timeout=120) == -signal.SIGKILL
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith("2")]
    assert leftovers and all("tmp" in name for name in leftovers), leftovers  # partial write
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.all_steps() == [1]
        state, _ = ckpt.restore(_like())
        assert int(state["step"]) == 1 and float(state["w"][0, 0]) == 1.0
        ckpt.save(2, {"w": jnp.full((256, 256), 2.0, jnp.float32), "step": jnp.int32(2)})
        assert int(ckpt.restore(_like())[0]["step"]) == 2  # the run goes on
    # the writer removed the killed save's temporary directory
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["1", "2"]


@pytest.mark.slow
def test_kill_at_a_random_moment_of_continuous_saving(tmp_path):
    with _child(tmp_path, "loop") as proc:
        assert proc.stdout.readline().strip() == "saving"
        time.sleep(1.3)
        proc.kill()
        proc.wait(timeout=30)
    with Checkpointer(tmp_path) as ckpt:
        latest = ckpt.latest_step()
        state, _ = ckpt.restore(_like())  # checksums verified: complete and intact
    assert latest >= 1 and int(state["step"]) == latest
    np.testing.assert_array_equal(np.asarray(state["w"]), float(latest))


# --- corrupted or mismatched -------------------------------------------------------------


@pytest.fixture
def saved(run, tmp_path):
    init, train = run
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(3, train(init(), 3))
    return tmp_path


def _data_files(directory):
    return [
        p for p in (directory / "3" / "state").rglob("*") if p.is_file() and p.parent.name == "d"
    ]


# After a failed read, Orbax's pending tensorstore callbacks land on its already closed
# asyncio loop ("Event loop is closed", reported as unraisable at garbage collection).
# That is the library's cleanup noise; the error the user sees is asserted below.
ORBAX_CLEANUP_NOISE = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@ORBAX_CLEANUP_NOISE
def test_flipped_bytes_are_caught(run, saved):
    init, _ = run
    files = _data_files(saved)
    assert files
    for f in files:  # flip one byte in the middle of every data chunk
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))
    with Checkpointer(saved) as ckpt, pytest.raises(CheckpointError, match=r"checkpoint .*/3"):
        ckpt.restore(init())


@ORBAX_CLEANUP_NOISE
def test_truncated_or_missing_files_are_caught(run, saved):
    init, _ = run
    for f in _data_files(saved):
        f.write_bytes(f.read_bytes()[:10])
    with Checkpointer(saved) as ckpt, pytest.raises(CheckpointError, match="unreadable|corrupted"):
        ckpt.restore(init())
    (saved / "3" / "state" / "_METADATA").unlink()
    with Checkpointer(saved) as ckpt, pytest.raises(CheckpointError, match="unreadable"):
        ckpt.restore(init())


def test_mismatched_state_names_every_leaf_that_does_not_fit(run, saved):
    init, _ = run
    like = jax.tree.map(lambda x: x, init())  # new containers: the fixture's stay intact
    like["params"]["fc1"]["kernel"] = jnp.zeros((64, 16))  # another width
    like["params"]["fc2"]["bias"] = like["params"]["fc2"]["bias"].astype(jnp.float32)
    like["data"]["epoch"] = jnp.int32(0)
    del like["data"]["next_batch"]
    with Checkpointer(saved) as ckpt, pytest.raises(CheckpointError) as err:
        ckpt.restore(like)
    msg = str(err.value)
    assert "params.fc1.kernel: checkpoint has float64[64, 32], expected float64[64, 16]" in msg
    assert "params.fc2.bias: checkpoint has float64[10], expected float32[10]" in msg
    assert "missing in checkpoint: data.epoch" in msg
    assert "not expected: data.next_batch" in msg


def test_other_optimizer_state_is_a_mismatch(run, saved):
    init, _ = run
    like = init()
    like["opt"] = jaxreg.optim.sgd(0.1, momentum=0.9).init(like["params"])
    with Checkpointer(saved) as ckpt, pytest.raises(CheckpointError, match="momentum_buffer"):
        ckpt.restore(like)


def test_empty_directory_and_bad_arguments(tmp_path):
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(CheckpointError, match="no complete checkpoint"):
            ckpt.restore(_like())
        with pytest.raises(ValueError, match="reserved"):
            ckpt.save(0, _like(), metadata={"__jaxreg__": 1})
    with pytest.raises(ValueError, match="max_to_keep"):
        Checkpointer(tmp_path, max_to_keep=0)


def test_content_that_does_not_match_its_checksum_is_caught(tmp_path):
    """Readable files holding other numbers (the state of another save copied in): Orbax
    reads them happily; the SHA-256 saved with the checkpoint catches it."""
    import shutil

    a, b = tmp_path / "a", tmp_path / "b"
    with Checkpointer(a) as ckpt:
        ckpt.save(3, {"w": jnp.full((256, 256), 1.0, jnp.float32), "step": jnp.int32(3)})
    with Checkpointer(b) as ckpt:
        ckpt.save(3, {"w": jnp.full((256, 256), 2.0, jnp.float32), "step": jnp.int32(3)})
    shutil.rmtree(a / "3" / "state")
    shutil.copytree(b / "3" / "state", a / "3" / "state")
    with Checkpointer(a) as ckpt, pytest.raises(CheckpointError) as err:
        ckpt.restore(_like())
    assert "leaf 'w' does not match the checksum" in str(err.value)


# --- what a save refuses, one writer, incomplete steps -----------------------------------


def test_colliding_leaf_names_are_refused_at_save(tmp_path):
    # Orbax joins keys with ".": {"l": [x], "l.0": y} would store one of the two leaves.
    state = {"l": [jnp.zeros(2)], "l.0": jnp.ones(2)}
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(CheckpointError, match=r"\['l'\]\[0\] and \['l.0'\] \(both 'l.0'\)"):
            ckpt.save(0, state)
        assert ckpt.all_steps() == []
        ckpt.save(0, {"l": [jnp.zeros(2)], "l_0": jnp.ones(2)})  # renamed: fine
        out, _ = ckpt.restore({"l": [jnp.zeros(2)], "l_0": jnp.zeros(2)})
    np.testing.assert_array_equal(out["l_0"], [1.0, 1.0])


@pytest.mark.parametrize("step", [-1, 7.5, np.float64(3.0), True, "8", None])
def test_step_must_be_a_non_negative_int(tmp_path, step):
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(ValueError, match="non-negative int"):
            ckpt.save(step, _like())
        assert ckpt.all_steps() == [] and os.listdir(tmp_path) in ([], [".jaxreg-writer.lock"])
        ckpt.save(np.int64(4), _like())  # numpy integers are integers
        assert ckpt.all_steps() == [4]


LOCK_HOLDER = textwrap.dedent(
    """
    import sys, jax.numpy as jnp
    from jaxreg.checkpoint import Checkpointer
    ckpt = Checkpointer(sys.argv[1])
    ckpt.save(1, {"w": jnp.zeros((256, 256), jnp.float32), "step": jnp.int32(1)})
    print("saved", flush=True)
    sys.stdin.readline()  # hold the directory until the parent says so
    ckpt.close()
    """
)


@pytest.mark.slow
def test_a_second_writer_gets_a_named_error_at_once(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    with subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(tmp_path)],
        cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    ) as proc:  # fmt: skip
        assert proc.stdout.readline().strip() == "saved"
        with Checkpointer(tmp_path) as ckpt:
            t0 = time.monotonic()
            with pytest.raises(CheckpointError, match=rf"being written by pid {proc.pid}"):
                ckpt.save(2, _like())
            assert time.monotonic() - t0 < 5
            assert ckpt.all_steps() == [1]  # reading is allowed
            proc.stdin.write("\n")
            proc.stdin.flush()
            assert proc.wait(timeout=60) == 0
            ckpt.save(2, _like())  # the lock was released by the other writer's close
            assert ckpt.all_steps() == [1, 2]


def _state(k):
    return {"w": jnp.full((256, 256), float(k), jnp.float32), "step": jnp.int32(k)}


def test_empty_and_half_deleted_step_directories_are_not_checkpoints(tmp_path):
    with Checkpointer(tmp_path, max_to_keep=None) as ckpt:
        for k in (1, 2, 3):
            ckpt.save(k, _state(k))
    (tmp_path / "9").mkdir()  # a stray empty step directory
    (tmp_path / "1" / "state" / "_METADATA").unlink()  # an old step half deleted
    with Checkpointer(tmp_path, max_to_keep=None) as ckpt:
        assert ckpt.all_steps() == [2, 3] and ckpt.latest_step() == 3
        state, _ = ckpt.restore(_like())
        assert int(state["step"]) == 3
        ckpt.save(4, _state(4))  # the writer clears both leftovers
        assert ckpt.all_steps() == [2, 3, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".jaxreg-writer.lock", "2", "3", "4"]


def test_an_incomplete_newest_step_is_an_error_not_a_silent_fallback(tmp_path):
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, _state(1))
        ckpt.save(2, _state(2))
    (tmp_path / "2" / "state" / "manifest.ocdbt").unlink()
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(CheckpointError, match=r"/2 is incomplete.*manifest.ocdbt.*step=1"):
            ckpt.restore(_like())
        state, _ = ckpt.restore(_like(), step=1)  # explicitly the previous one
        assert int(state["step"]) == 1


def test_a_failed_save_leaves_no_temporary_directory(tmp_path, monkeypatch, caplog):
    from orbax.checkpoint._src.path import atomicity

    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, _state(1))

        async def finalize(self, *args, **kwargs):
            raise OSError("disk went away")

        monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", finalize)
        caplog.clear()
        with pytest.raises(Exception, match="disk went away"):
            ckpt.save(2, _state(2))
        assert not [r for r in caplog.records if r.levelname == "ERROR"]  # no duplicate noise
        monkeypatch.undo()
        assert sorted(p.name for p in tmp_path.iterdir()) == [".jaxreg-writer.lock", "1"]
        assert ckpt.all_steps() == [1]
        ckpt.save(2, _state(2))
        assert int(ckpt.restore(_like())[0]["step"]) == 2
