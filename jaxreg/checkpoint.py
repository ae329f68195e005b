"""Save and resume a training state exactly: params, optimizer state, data position.

A thin layer over Orbax (``orbax-checkpoint``, which Flax already depends on) that adds
what a long regularized run needs to resume *bit for bit*:

- the whole state is one pytree (params, jaxreg/Optax optimizer state with its step
  counts — which is also the schedule position — and anything else, e.g. the data
  position), saved atomically: Orbax writes into a temporary directory and renames it
  when complete, so a process killed while saving leaves the previous checkpoint as
  the latest one;
- a JSON ``metadata`` dict saved alongside (e.g. the data seed and batch index);
- every leaf's SHA-256 stored at save time and checked at restore, so a damaged file
  is an error, never silently different numbers (leaves not fully addressable from this
  process, in multi-host runs, are left to Orbax's own checks);
- before restoring, the checkpoint's tree is compared with the expected one, and every
  missing, unexpected or mismatched leaf is named in one :class:`CheckpointError`;
- one writer per directory: the first :meth:`Checkpointer.save` takes an exclusive lock
  (``.jaxreg-writer.lock``, held until :meth:`Checkpointer.close`), and a second process
  saving there gets a :class:`CheckpointError` at once;
- only complete checkpoints count: a step directory missing any of the files a finished
  save writes (an empty directory, a half-deleted old step) is never listed or restored,
  and the writer removes such leftovers, and the temporary directory of a save that
  failed, before it saves.

Example:
  >>> import tempfile, jax.numpy as jnp, jaxreg
  >>> from jaxreg.checkpoint import Checkpointer
  >>> tx = jaxreg.optim.adamw(1e-3)
  >>> params = {"w": jnp.ones(3)}
  >>> state = {"params": params, "opt": tx.init(params)}
  >>> with Checkpointer(tempfile.mkdtemp()) as ckpt:
  ...     ckpt.save(0, state, metadata={"batch": 0})
  ...     restored, meta = ckpt.restore(like=state)
  >>> meta
  {'batch': 0}
"""

from __future__ import annotations

import hashlib
import numbers
import os
import re
import shutil
from typing import Any

import jax
import numpy as np

from jaxreg._tree import key_str

__all__ = ["Checkpointer", "CheckpointError"]

_RESERVED = "__jaxreg__"
_LOCK = ".jaxreg-writer.lock"
# The files a finished save has written; a step directory lacking one is not complete.
_COMPLETE = ("_CHECKPOINT_METADATA", "state/_METADATA", "state/manifest.ocdbt", "meta/metadata")
_TMP = re.compile(r"^\d+\.orbax-checkpoint-tmp")


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, corrupted, or does not fit the expected state."""


def _named_leaves(tree: Any) -> dict[str, Any]:
    """``{"opt.0.exp_avg.w": leaf}``: Orbax's own naming (NamedTuple fields by name).

    Raises:
      CheckpointError: two leaves get the same name (a key containing "." can make
        ``{"l": [x], "l.0": y}`` collide), naming both paths; Orbax would store one.
    """
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    out: dict[str, Any] = {}
    paths: dict[str, str] = {}
    clashes = []
    for path, leaf in flat:
        name = ".".join(key_str(k) for k in path)
        if name in out:
            clashes.append(f"{paths[name]} and {jax.tree_util.keystr(path)} (both {name!r})")
        out[name] = leaf
        paths[name] = jax.tree_util.keystr(path)
    if clashes:
        raise CheckpointError(
            "leaves whose names collide in a checkpoint (Orbax joins keys with '.'): "
            + "; ".join(clashes)
            + " -- rename the keys so that no joined path repeats"
        )
    return out


class _held_logs:  # noqa: N801 - a context manager used like a function
    """Hold Orbax's log records (absl logger) during a save.

    A failed save makes Orbax log the same failure as several tracebacks from its
    threads before the exception reaches the caller; the caller gets the exception, so
    those records are dropped. After a successful save they are passed on
    (:meth:`release`).
    """

    def __enter__(self) -> _held_logs:
        import logging

        self._logger = logging.getLogger("absl")
        self.records: list[Any] = []

        class _Hold(logging.Filter):
            def filter(inner, record):  # noqa: N805
                self.records.append(record)
                return False

        self._filter = _Hold()
        self._logger.addFilter(self._filter)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._logger.removeFilter(self._filter)

    def release(self) -> None:
        for record in self.records:
            self._logger.handle(record)


def _check_step(step: Any) -> int:
    """A checkpoint number: a non-negative integer (``bool`` and floats refused)."""
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
        raise ValueError(f"a checkpoint step must be a non-negative int, got {step!r}")
    return int(step)


def _missing(path: str) -> list[str]:
    """The files of a finished save that the step directory ``path`` lacks."""
    return [f for f in _COMPLETE if not os.path.isfile(os.path.join(path, f))]


def _digest(leaf: Any) -> str | None:
    """SHA-256 of a leaf's dtype, shape and bytes; None if not all of it is on this host."""
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        return None
    a = np.ascontiguousarray(np.asarray(leaf))
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def _dtype(x: Any) -> np.dtype:
    return np.dtype(x.dtype) if hasattr(x, "dtype") else np.asarray(x).dtype


def _describe(shape: Any, dtype: Any) -> str:
    return f"{np.dtype(dtype).name}{list(shape)}"


class Checkpointer:
    """Numbered checkpoints of one training run in ``directory``.

    Args:
      directory: where the checkpoints live (created if missing); one subdirectory
        per saved step.
      max_to_keep: how many of the newest checkpoints to keep (older ones are deleted
        once a newer one is complete); ``None`` keeps all.

    The object is a context manager; :meth:`close` waits for pending writes.
    """

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int | None = 3):
        import orbax.checkpoint as ocp

        if max_to_keep is not None and (not isinstance(max_to_keep, int) or max_to_keep < 1):
            raise ValueError(f"max_to_keep must be a positive int or None, got {max_to_keep!r}")
        self._ocp = ocp
        self._lock_file = None
        self.directory = os.path.abspath(os.fspath(directory))
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler(),
            },
        )

    # -- writing ----------------------------------------------------------------------

    def save(self, step: int, state: Any, *, metadata: dict | None = None) -> None:
        """Write ``state`` (any pytree of arrays) as checkpoint ``step``; block until done.

        Args:
          step: the checkpoint's number (e.g. the optimizer step); must be new and
            larger than every saved one.
          state: the pytree to save (params, optimizer state, data position, ...).
          metadata: JSON-serializable dict saved alongside (returned by :meth:`restore`).

        Raises:
          ValueError: ``step`` is not a non-negative ``int``.
          CheckpointError: ``step`` is not larger than the latest saved step; another
            process is writing to the directory; two leaves' names collide.
        """
        ocp = self._ocp
        step = _check_step(step)
        named = _named_leaves(state)
        self._lock()
        self._remove_leftovers()
        latest = self.latest_step()
        if latest is not None and step <= latest:
            raise CheckpointError(
                f"cannot save step {step}: {self.directory} already has step {latest}"
            )
        metadata = dict(metadata or {})
        if _RESERVED in metadata:
            raise ValueError(f"metadata key {_RESERVED!r} is reserved")
        metadata[_RESERVED] = {"sha256": {k: _digest(v) for k, v in named.items()}}
        try:
            with _held_logs() as held:
                saved = self._manager.save(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(metadata)
                    ),
                )
                self._manager.wait_until_finished()
        except BaseException:
            self._remove_leftovers()
            raise  # the exception says what failed: Orbax's logged tracebacks are dropped
        held.release()
        if saved is False:  # Orbax declines silently (e.g. a newer step it still lists)
            raise CheckpointError(f"Orbax did not save step {step} in {self.directory}")

    def _lock(self) -> None:
        """Take the one-writer lock of the directory (once; held until :meth:`close`)."""
        if self._lock_file is not None or jax.process_index() != 0:
            return  # processes of one multi-host run save together through Orbax
        import fcntl

        f = open(os.path.join(self.directory, _LOCK), "a+")  # noqa: SIM115 - held open
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise CheckpointError(
                f"{self.directory} is being written by {holder}: one writer per checkpoint "
                "directory (give each run its own directory)"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        self._lock_file = f

    def _step_dirs(self) -> dict[int, list[str]]:
        """``{step: missing files}`` for every non-empty numbered directory."""
        if not os.path.isdir(self.directory):
            return {}
        out = {}
        for name in os.listdir(self.directory):
            path = os.path.join(self.directory, name)
            if name.isdigit() and os.path.isdir(path) and os.listdir(path):
                out[int(name)] = _missing(path)
        return out

    def _remove_leftovers(self) -> None:
        """Delete what no finished save left (writer only): Orbax temporaries, empty step
        directories, and incomplete steps older than the newest complete one (an old step
        whose deletion was cut short). An incomplete step *newer* than every complete one
        is kept: it may be a damaged checkpoint, and :meth:`restore` names it."""
        if self._lock_file is None:
            return
        newest = self.latest_step()
        for name in os.listdir(self.directory):
            path = os.path.join(self.directory, name)
            if not os.path.isdir(path):
                continue
            stale = bool(_TMP.match(name))
            if name.isdigit():
                empty = not os.listdir(path)
                old_partial = newest is not None and int(name) < newest and _missing(path)
                stale = empty or bool(old_partial)
            if stale:
                shutil.rmtree(path, ignore_errors=True)
        self._manager.reload()

    # -- reading ----------------------------------------------------------------------

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or ``None`` if there is none."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def all_steps(self) -> list[int]:
        """Steps of all complete checkpoints, oldest first.

        A step directory counts once every file a finished save writes is there: a save
        still in progress, one killed midway, an empty directory and a half-deleted old
        step are not listed.
        """
        return sorted(step for step, missing in self._step_dirs().items() if not missing)

    def restore(self, like: Any, step: int | None = None) -> tuple[Any, dict]:
        """Read checkpoint ``step`` (default: the latest) into the structure of ``like``.

        Args:
          like: a pytree with the expected structure, shapes and dtypes (e.g. the freshly
            initialised state); arrays in it also give the shardings to restore onto.
          step: which checkpoint; ``None`` for the latest complete one.

        Returns:
          ``(state, metadata)``: the restored pytree (same structure as ``like``) and the
          metadata dict given to :meth:`save`.

        Raises:
          CheckpointError: no checkpoint; the checkpoint (by default the newest step
            directory, complete or not) is incomplete or unreadable, or a leaf's
            content does not match its saved checksum (naming the leaf); or its tree
            does not fit ``like`` (naming every missing, unexpected or mismatched leaf).
        """
        ocp = self._ocp
        found = self._step_dirs()
        if step is None:
            if not found:
                raise CheckpointError(f"no complete checkpoint in {self.directory}")
            step = max(found)  # an incomplete newest step is an error, never skipped
        else:
            step = _check_step(step)
        where = os.path.join(self.directory, str(step))
        if step not in found:
            steps = self.all_steps()
            raise CheckpointError(
                f"no checkpoint for step {step} in {self.directory} (have: {steps or 'none'})"
            )
        if found[step]:
            older = [s for s, missing in found.items() if s < step and not missing]
            hint = f"; restore(step={max(older)}) reads the previous one" if older else ""
            raise CheckpointError(
                f"checkpoint {where} is incomplete or unreadable (missing "
                f"{', '.join(found[step])}){hint}"
            )
        try:
            saved = self._manager.item_metadata(step)["state"]
            saved_tree = getattr(saved, "tree", saved)
        except Exception as e:  # noqa: BLE001 - any failure here means an unreadable checkpoint
            raise CheckpointError(f"checkpoint {where} is unreadable: {e}") from e
        if saved_tree is None:
            raise CheckpointError(f"checkpoint {where} is unreadable: its tree metadata is missing")
        self._check_fits(where, _named_leaves(saved_tree), _named_leaves(like))

        def abstract(x):
            sharding = x.sharding if isinstance(x, jax.Array) else None
            return jax.ShapeDtypeStruct(np.shape(x), _dtype(x), sharding=sharding)

        target = jax.tree.map(abstract, like)
        try:
            out = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
                ),
            )
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"checkpoint {where} is unreadable: {e}") from e
        state = jax.tree.unflatten(jax.tree.structure(like), jax.tree.leaves(out["state"]))
        meta = dict(out["meta"] or {})
        digests = meta.pop(_RESERVED, {}).get("sha256")
        if digests is None:
            raise CheckpointError(f"checkpoint {where} has no checksums (not written by jaxreg)")
        for name, leaf in _named_leaves(state).items():
            expected, actual = digests.get(name), _digest(leaf)
            if expected is not None and actual is not None and expected != actual:
                raise CheckpointError(
                    f"checkpoint {where}: leaf {name!r} does not match the checksum saved "
                    "with it (the files are corrupted)"
                )
        return state, meta

    @staticmethod
    def _check_fits(where: str, saved: dict[str, Any], expected: dict[str, Any]) -> None:
        problems = []
        for name in expected.keys() - saved.keys():
            problems.append(f"  missing in checkpoint: {name}")
        for name in saved.keys() - expected.keys():
            problems.append(f"  not expected: {name}")
        for name in expected.keys() & saved.keys():
            meta, want = saved[name], expected[name]
            have_shape, have_dtype = tuple(meta.shape), np.dtype(meta.dtype)
            want_shape, want_dtype = tuple(np.shape(want)), _dtype(want)
            if have_shape != want_shape or have_dtype != want_dtype:
                problems.append(
                    f"  {name}: checkpoint has {_describe(have_shape, have_dtype)}, "
                    f"expected {_describe(want_shape, want_dtype)}"
                )
        if problems:
            raise CheckpointError(
                f"checkpoint {where} does not fit the expected state:\n"
                + "\n".join(sorted(problems))
            )

    # -- lifetime ---------------------------------------------------------------------

    def close(self) -> None:
        """Wait for pending writes, release the manager and the writer lock."""
        try:
            self._manager.wait_until_finished()
            self._manager.close()
        finally:
            if self._lock_file is not None:
                self._lock_file.close()  # closing the file releases the flock
                self._lock_file = None

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
