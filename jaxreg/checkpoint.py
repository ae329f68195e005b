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
  missing, unexpected or mismatched leaf is named in one :class:`CheckpointError`.

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
import os
from typing import Any

import jax
import numpy as np

__all__ = ["Checkpointer", "CheckpointError"]

_RESERVED = "__jaxreg__"


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, corrupted, or does not fit the expected state."""


def _key_name(k: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _named_leaves(tree: Any) -> dict[str, Any]:
    """``{"opt.0.exp_avg.w": leaf}``: Orbax's own naming (NamedTuple fields by name)."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {".".join(_key_name(k) for k in path): leaf for path, leaf in flat}


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
          CheckpointError: ``step`` is not larger than the latest saved step.
        """
        ocp = self._ocp
        latest = self.latest_step()
        if latest is not None and step <= latest:
            raise CheckpointError(
                f"cannot save step {step}: {self.directory} already has step {latest}"
            )
        metadata = dict(metadata or {})
        if _RESERVED in metadata:
            raise ValueError(f"metadata key {_RESERVED!r} is reserved")
        metadata[_RESERVED] = {"sha256": {k: _digest(v) for k, v in _named_leaves(state).items()}}
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(metadata)
            ),
        )
        self._manager.wait_until_finished()

    # -- reading ----------------------------------------------------------------------

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or ``None`` if there is none."""
        self._manager.reload()
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of all complete checkpoints, oldest first (partial writes are ignored)."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

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
          CheckpointError: no checkpoint; the checkpoint is unreadable or a leaf's
            content does not match its saved checksum (naming the leaf); or its tree
            does not fit ``like`` (naming every missing, unexpected or mismatched leaf).
        """
        ocp = self._ocp
        if step is None:
            step = self.latest_step()
            if step is None:
                raise CheckpointError(f"no complete checkpoint in {self.directory}")
        elif step not in (steps := self.all_steps()):
            raise CheckpointError(
                f"no checkpoint for step {step} in {self.directory} (have: {steps or 'none'})"
            )
        where = os.path.join(self.directory, str(step))
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
        """Wait for pending writes and release the manager."""
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
