"""A training run's directory: its identity (run.json) and its orbax checkpoints."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp

from selrel_jax._jobs import (
    json_text,
    output_lock,
    refuse_other_settings,
    remove_stale_temporaries,
    settings_record,
    write_text,
)
from selrel_jax.errors import CheckpointError, SelrelError
from selrel_jax.models.checkpoint import first_words, writable_directory

RUN_FILE = "run.json"


class RunDirectory:
    """``run.json`` plus ``checkpoints/latest`` and ``checkpoints/best`` (orbax managers).

    Opening a directory takes its lock (``.selrel.lock``: a second run into it is
    refused until :meth:`close`; a killed run's lock is taken over) and writes
    ``identity`` to ``run.json``, or, when one is there already, refuses any other
    identity with one SelrelError naming each setting that differs. Saves are
    synchronous and atomic (a killed save leaves the previous checkpoint), each
    manager keeps one step, and a step already saved is not
    written again (a replay after an interruption produces the same bytes).

    Examples:
        >>> import flax.struct
        >>> import jax.numpy as jnp
        >>> from selrel_jax.train._run_directory import RunDirectory
        >>> @flax.struct.dataclass
        ... class State:   # any pytree with a step; fit saves its TrainState
        ...     step: jnp.ndarray
        ...     w: jnp.ndarray
        >>> identity = {"model": "c3d_small", "seed": 0}
        >>> state = State(jnp.array(0), jnp.zeros(3))
        >>> with RunDirectory("runs/a", identity) as run:
        ...     state, meta = run.restore_latest(state) or (state, {"history": []})
        ...     run.save_latest(State(jnp.array(1), jnp.ones(3)), {"history": [0.5]})
        >>> with RunDirectory("runs/a", identity) as run:   # a rerun resumes
        ...     state, meta = run.restore_latest(state)
        >>> int(state.step), meta["history"]
        (1, [0.5])
        >>> RunDirectory("runs/a", {"model": "c3d_small", "seed": 1})
        Traceback (most recent call last):
        ...
        selrel_jax.errors.SelrelError: run at ... was made with other settings (seed: 0 -> 1)...
    """

    def __init__(self, path: str | os.PathLike, identity: Mapping[str, Any]):
        self.path = writable_directory(path, "run directory")  # absolute, as orbax wants
        self._lock = output_lock(self.path, "train")
        with self._writing("open"):
            self._lock.__enter__()  # a second run into the same directory is refused
        try:
            with self._writing("open"):
                self._claim(settings_record(identity))
                self.latest = self._manager("latest")
                self.best = self._manager("best")
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise

    @contextlib.contextmanager
    def _writing(self, what: str) -> Iterator[None]:
        """Turn the storage layer's errors (OSError, orbax's and tensorstore's own) into
        one CheckpointError naming the run directory."""
        try:
            yield
        except SelrelError:
            raise
        except Exception as e:  # orbax and tensorstore raise many types for io failures
            reason = getattr(e, "strerror", None) or first_words(e)
            raise CheckpointError(f"cannot {what} run directory {self.path}: {reason}") from None

    def _claim(self, identity: dict[str, Any]) -> None:
        run_file = self.path / RUN_FILE
        remove_stale_temporaries(run_file)
        if not run_file.exists():
            write_text(run_file, json_text(identity))
            return
        try:
            previous = json.loads(run_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(
                f"{run_file} is corrupt ({e}); use a new --out directory"
            ) from None
        refuse_other_settings("run", self.path, previous, identity, error=SelrelError)

    def _manager(self, name: str) -> ocp.CheckpointManager:
        options = ocp.CheckpointManagerOptions(
            max_to_keep=1, enable_async_checkpointing=False, cleanup_tmp_directories=True
        )
        return ocp.CheckpointManager(
            self.path / "checkpoints" / name, options=options, item_names=("state", "meta")
        )

    @staticmethod
    def _save(manager: ocp.CheckpointManager, state: Any, meta: Mapping[str, Any]) -> None:
        step = int(state.step)
        if step in manager.all_steps():
            return  # written before an interruption; a replay produces the same bytes
        manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(dict(meta))
            ),
        )

    @staticmethod
    def _restore(manager: ocp.CheckpointManager, template: Any) -> tuple[Any, dict] | None:
        step = manager.latest_step()
        if step is None:
            return None
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], restored["meta"]

    def save_latest(self, state: Any, meta: Mapping[str, Any]) -> None:
        """Checkpoint ``state`` (a pytree with a ``step``) and JSON ``meta`` as the latest."""
        with self._writing("save into"):
            self._save(self.latest, state, meta)

    def save_best(self, state: Any, meta: Mapping[str, Any]) -> None:
        """Checkpoint ``state`` and ``meta`` as the best so far."""
        with self._writing("save into"):
            self._save(self.best, state, meta)

    def restore_latest(self, template: Any) -> tuple[Any, dict] | None:
        """(state, meta) of the latest checkpoint in ``template``'s structure, or None."""
        return self._restore(self.latest, template)

    def restore_best(self, template: Any) -> tuple[Any, dict] | None:
        """(state, meta) of the best checkpoint, or None."""
        return self._restore(self.best, template)

    def close(self) -> None:
        try:
            for manager in (self.latest, self.best):
                manager.wait_until_finished()
                manager.close()
        finally:
            self._lock.__exit__(None, None, None)

    def __enter__(self) -> RunDirectory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
