"""``run_sweep``: check everything, claim the directory, then score shard after shard.

Examples:
    :func:`run_sweep`:

    >>> from selrel_jax.sweep import read_table, run_sweep
    >>> settings = dict(dataset="synthetic_motion", data_seed=7, limit=4, batch_size=2,
    ...                 methods=["gradient"], sigmas=[1.0])
    >>> run_sweep("sweeps/motion", **settings)["shards_written"]
    2
    >>> run_sweep("sweeps/motion", **settings)["shards_written"]   # done: nothing to do
    0
    >>> read_table("sweeps/motion").num_rows
    4
    >>> run_sweep("sweeps/motion", **{**settings, "sigmas": [2.0]})
    Traceback (most recent call last):
    ...
    selrel_jax.errors.OptionError: sweep at .../sweeps/motion was made with other settings ...
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from selrel_jax import models
from selrel_jax._checks import integer, positive_int, real
from selrel_jax._jobs import check_memory, file_sha256, output_lock, progress_bar, versions
from selrel_jax._worker import DEFAULT_DECODE_TIMEOUT
from selrel_jax.attribution import registry
from selrel_jax.errors import DataError, OptionError
from selrel_jax.sweep import _store
from selrel_jax.sweep._compute import BatchScorer
from selrel_jax.sweep._settings import (
    DEFAULT_FLOW_MIN_FLOW,
    DEFAULT_MASK_TOLERANCE,
    DEFAULT_SIGMAS,
    DEFAULT_TEMPORAL_PADDING,
    SweepSettings,
    identity,
    options_of,
)
from selrel_jax.sweep._sources import ClipBatch, ClipSource, open_source

#: Columns of every table, in order (``clip_id`` is int64, or a string for folders).
KEY_COLUMNS = {"label": "int32", "target": "int32", "predicted": "int32", "method": "string",
               "sigma": "float64"}  # fmt: skip
#: The score columns of every table, in order, after the key columns.
SCORE_COLUMNS = (
    "spatial_bias",
    "kept_voxels",
    "gini_raw",
    "gini_selective",
    "entropy_raw",
    "entropy_selective",
    "motion_precision_raw",
    "motion_precision_selective",
    "motion_precision_at_threshold_raw",
    "motion_precision_at_threshold_selective",
    "motion_mass_raw",
    "motion_mass_selective",
    "motion_precision_tolerant_raw",
    "motion_precision_tolerant_selective",
    "motion_precision_at_threshold_tolerant_raw",
    "motion_precision_at_threshold_tolerant_selective",
    "motion_mass_tolerant_raw",
    "motion_mass_tolerant_selective",
    "static_mass_raw",
    "static_mass_selective",
    "box_mass_raw",
    "box_mass_selective",
)
#: Added with ``faithfulness=True``.
FAITHFULNESS_COLUMNS = (
    "target_probability",
    "frozen_probability",
    "motion_reliance",
    "deletion_auc_raw",
    "deletion_auc_selective",
    "insertion_auc_raw",
    "insertion_auc_selective",
)


#: Columns whose every value is a share: in [0, 1], or NaN (a score a clip cannot have).
SHARE_COLUMNS = (
    "spatial_bias", "kept_voxels", "gini_raw", "gini_selective", "motion_precision_raw",
    "motion_precision_selective", "motion_precision_at_threshold_raw",
    "motion_precision_at_threshold_selective", "motion_mass_raw", "motion_mass_selective",
    "motion_precision_tolerant_raw", "motion_precision_tolerant_selective",
    "motion_precision_at_threshold_tolerant_raw",
    "motion_precision_at_threshold_tolerant_selective", "motion_mass_tolerant_raw",
    "motion_mass_tolerant_selective", "static_mass_raw", "static_mass_selective",
    "box_mass_raw", "box_mass_selective", "target_probability", "frozen_probability",
    "deletion_auc_raw", "deletion_auc_selective", "insertion_auc_raw",
    "insertion_auc_selective",
)  # fmt: skip
#: Rounding a share may carry past 0 or 1 (then it is clipped to the bound).
SHARE_TOLERANCE = 1e-5


def checked_shares(columns: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Clip each share column's rounding past 0 or 1 to the bound, and set a value
    farther outside [0, 1] to NaN (a share cannot be 1.39); returns ``{"clip_id",
    "method", "sigma", "column", "value"}`` of each one set, its reason."""
    bad = []
    for name in SHARE_COLUMNS:
        if name not in columns:
            continue
        values = columns[name]
        with np.errstate(invalid="ignore"):
            outside = (values < -SHARE_TOLERANCE) | (values > 1 + SHARE_TOLERANCE)
        for row in np.flatnonzero(outside):
            bad.append({"clip_id": _plain(columns["clip_id"][row]),
                        "method": str(columns["method"][row]),
                        "sigma": float(columns["sigma"][row]), "column": name,
                        "value": float(values[row])})  # fmt: skip
        columns[name] = np.where(outside, np.nan, np.clip(values, 0, 1)).astype(values.dtype)
    return bad


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def columns_of(id_type: str, faithfulness: bool) -> dict[str, str]:
    """Column name -> Parquet type of a sweep's table."""
    scores = SCORE_COLUMNS + (FAITHFULNESS_COLUMNS if faithfulness else ())
    return {"clip_id": id_type, **KEY_COLUMNS, **dict.fromkeys(scores, "float32")}


def shard_columns(
    ids: Sequence[Any],
    batch: ClipBatch,
    per_clip: Mapping[str, np.ndarray],
    per_method: Mapping[str, Mapping[str, np.ndarray]],
    settings: SweepSettings,
    scores: Sequence[str],
) -> dict[str, np.ndarray]:
    """One row per (clip read, method, sigma); a score a dataset can't give is NaN."""
    rows = np.array([r for r in range(len(ids)) if r not in batch.failed], np.int64)
    s = len(settings.sigmas)
    clip_ids = np.asarray(ids, dtype=object if isinstance(ids[0], str) else np.int64)

    def per_row(value: np.ndarray | None) -> np.ndarray:
        if value is None:
            return np.full(len(rows) * s, np.nan, np.float32)
        value = value[rows]
        return value.reshape(-1) if value.ndim == 2 else np.repeat(value, s)

    blocks = []
    for method in settings.methods:
        out = {**per_clip, **per_method[method], "label": batch.label}
        block = {key: per_row(out[key]) for key in ("label", "target", "predicted")}
        block["clip_id"] = np.repeat(clip_ids[rows], s)
        block["method"] = np.array([method] * (len(rows) * s), dtype=object)
        block["sigma"] = np.tile(np.asarray(settings.sigmas, np.float64), len(rows))
        block |= {name: per_row(out.get(name)).astype(np.float32) for name in scores}
        blocks.append(block)
    return {name: np.concatenate([b[name] for b in blocks]) for name in blocks[0]}


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _progress(total: int, initial: int, enabled: bool):
    # rate_noinv: always clips/s (tqdm shows s/clip below one clip a second).
    form = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_noinv_fmt}]"
    return progress_bar(total, enabled, "sweep", initial=initial, dynamic_ncols=True,
                        bar_format=form)  # fmt: skip


class _Stages:
    """What a sweep's bar says it is doing (``sweep: decode``, ``sweep: explain``,
    ``sweep: write``), and ``compiling <method> ...`` lines before the first batch."""

    def __init__(self, bar=None):
        self._bar = bar

    def stage(self, name: str) -> None:
        if self._bar is not None and not self._bar.disable:
            self._bar.set_description_str(f"sweep: {name}")

    def note(self, message: str) -> None:
        if self._bar is not None and not self._bar.disable:
            self._bar.write(message, file=sys.stderr)


class _Sweep:
    """One process's part of a sweep: the shards ``k`` with ``k % processes == index``."""

    def __init__(self, directory, settings, ident, source: ClipSource, scorer: BatchScorer):
        self.directory, self.settings, self.ident = directory, settings, ident
        self.source, self.scorer = source, scorer
        self.columns = columns_of(source.id_type, settings.faithfulness)
        self.schema = _store.schema(self.columns)
        self.total = -(-source.count // settings.batch_size)
        self.versions = versions("pyarrow")

    def indices(self, shard: int) -> np.ndarray:
        first = shard * self.settings.batch_size
        return np.arange(first, min(first + self.settings.batch_size, self.source.count))

    def claim(self) -> dict[int, dict]:
        """Create the directory and manifest (process 0), check an existing manifest's
        clip count, and return the records of the shards already done and whole
        (checked against the manifest's sha256s; a damaged one is computed again)."""
        files: dict[str, Any] = {}
        if (self.directory / _store.MANIFEST_FILE).is_file():
            manifest = _store.read_manifest(self.directory)
            if manifest["clips"] != self.source.count:
                raise OptionError(
                    f"{self.directory} holds a sweep of {manifest['clips']} clips; the dataset "
                    f"now gives {self.source.count}; use a new --out directory"
                )
            files = manifest["shards"]["files"]
        records, bad = _store.verified_shards(self.directory, files, self.total)
        strays = sorted(k for k in bad if _store.shard_name(k) not in files)
        if strays:  # at a name this sweep writes, but not its own: not replaced
            path = self.directory / _store.TABLES_DIR / _store.shard_name(strays[0])
            raise DataError(
                f"{path} {bad[strays[0]]} (its manifest does not list it and its own record "
                "is not that shard's); move it away and rerun"
            )
        if jax.process_index() == 0:
            _store.warn_bad_shards(self.directory, bad)
            self.directory.mkdir(parents=True, exist_ok=True)
            self.write_manifest(records)
        _barrier("selrel sweep: claimed")
        return records

    def write_manifest(self, records: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
        return _store.write_manifest(
            self.directory, self.ident, self.versions, self.total, self.source.count, records,
            self.columns,
        )  # fmt: skip

    def run_shard(self, shard: int, stages: _Stages | None = None) -> dict[str, Any]:
        stages = stages or _Stages()
        indices = self.indices(shard)
        ids = [self.source.clip_id(i) for i in indices]
        stages.stage(self.source.stage)
        batch = self.source.read(indices)
        self._check_labels(batch)
        stages.stage("explain")
        per_clip, per_method = self.scorer.score(batch, stages.note)
        stages.stage("write")
        scores = [n for n in self.columns if n not in ("clip_id", *KEY_COLUMNS)]
        columns = shard_columns(ids, batch, per_clip, per_method, self.settings, scores)
        failed = [
            {"clip_id": ids[r], "reason": reason} for r, reason in sorted(batch.failed.items())
        ]
        out_of_range = checked_shares(columns)
        record = {"shard": shard, "clips": [int(indices[0]), int(indices[-1]) + 1],
                  "rows": len(columns["sigma"]), "failed": failed}  # fmt: skip
        if out_of_range:
            record["out_of_range"] = out_of_range
        path = _store.write_shard(self.directory, shard, columns, self.schema, record)
        return record | {"sha256": file_sha256(path)}

    def run(self, progress: bool, on_shard: Callable | None, start: float) -> dict[str, Any]:
        """Hold the directory's lock (process 0), claim it, write this process's missing
        shards, finish the manifest."""
        lock = output_lock(self.directory, "sweep")
        with lock if jax.process_index() == 0 else contextlib.nullcontext():
            return self._run(progress, on_shard, start)

    def _run(self, progress: bool, on_shard: Callable | None, start: float) -> dict[str, Any]:
        new = not (self.directory / _store.MANIFEST_FILE).exists()
        records = self.claim()
        process, processes = jax.process_index(), jax.process_count()
        mine = [k for k in range(self.total) if k % processes == process and k not in records]
        _store.remove_stale(self.directory, mine, manifest=process == 0)
        done = sum(len(self.indices(k)) for k in records)
        with _progress(self.source.count, done, progress and process == 0) as bar:
            for shard in mine:
                records[shard] = self._guarded_shard(shard, new and not records, _Stages(bar))
                if process == 0:
                    self.write_manifest(records)
                bar.update(len(self.indices(shard)))
                if on_shard is not None:
                    on_shard(shard, records[shard])
            bar.set_description_str("sweep")
        _barrier("selrel sweep: shards written")
        if process == 0:  # every process's shards, as the files say
            self.write_manifest(_store.verified_shards(self.directory, {}, self.total)[0]
                                | records)  # fmt: skip
        _barrier("selrel sweep: manifest written")
        manifest = _store.read_manifest(self.directory)
        return _summary(self, manifest, mine, time.perf_counter() - start)

    def _guarded_shard(self, shard: int, first_of_new: bool, stages: _Stages) -> dict[str, Any]:
        """``run_shard(shard)``; a failure of the first shard of a new sweep (out of
        memory) takes back the manifest this run wrote, so a rerun with other settings
        is not refused, and an out-of-memory error becomes one line."""
        try:
            return self.run_shard(shard, stages)
        except BaseException as error:
            if first_of_new and jax.process_index() == 0:
                (self.directory / _store.MANIFEST_FILE).unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    (self.directory / _store.TABLES_DIR).rmdir()
            if "RESOURCE_EXHAUSTED" in str(error) or isinstance(error, MemoryError):
                raise OptionError(
                    f"out of memory computing a batch of {self.scorer.batch_rows} clips; use a "
                    "smaller --batch-size"
                ) from None
            raise

    def _check_labels(self, batch: ClipBatch) -> None:
        classes = self.scorer.num_classes
        bad = [int(v) for r, v in enumerate(batch.label) if r not in batch.failed and v >= classes]
        if self.settings.target == "label" and bad:
            raise OptionError(
                f"{self.settings.dataset} has label {bad[0]} but model {self.settings.model!r} "
                f"has {classes} classes (use target 'predicted')"
            )


def _prepare(out, settings: SweepSettings, data_dir, decode_timeout) -> _Sweep:
    """Every check that can fail on the arguments, before anything is written: the
    model, the methods' options, the output directory against an existing sweep, the
    dataset, and a trace of every batch function."""
    net, variables, info = models.load(settings.model)
    options = {m: options_of(m, settings, info) for m in settings.methods}
    ident = identity(settings, options)
    directory = _store.check_target(out, ident)
    source = open_source(settings, info, data_dir, decode_timeout)
    scorer = BatchScorer(net, variables, info, settings, options, source.truth_keys,
                         clips=source.count)  # fmt: skip
    clip_bytes = 4 * info.clip_length * int(np.prod(info.crop_size)) * 3
    check_memory(2 * scorer.batch_rows * clip_bytes,
                 f"a batch of {scorer.batch_rows} clips (batch_size {settings.batch_size})",
                 "use a smaller --batch-size")  # fmt: skip
    scorer.check()
    return _Sweep(directory, settings, ident, source, scorer)


def _summary(sweep: _Sweep, manifest: Mapping[str, Any], written: list, seconds: float) -> dict:
    clips = sum(len(sweep.indices(k)) for k in written)
    left_out = sweep.source.left_out
    return {
        "out": str(sweep.directory),
        "clips": sweep.source.count,
        "rows": manifest["rows"],
        "shards": sweep.total,
        "shards_written": len(written),
        "failed": len(manifest["failed"]),
        "complete": manifest["complete"],
        "seconds": round(seconds, 3),
        "clips_per_second": round(clips / seconds, 3) if clips and seconds > 0 else None,
    } | ({} if left_out is None else {"videos_left_out": left_out})


def _methods_for(model: str | os.PathLike, methods: Sequence[str] | None) -> Sequence[str]:
    """``methods``, or where None the default method of ``model``'s arch (read from its
    info.json alone: the settings are checked before the model is loaded)."""
    if methods is not None:
        return methods
    return (registry.default_method(models.load_info(model).arch),)


# Over 60 lines only in its signature and docstring: one keyword argument per setting,
# each documented under Args for the generated reference; the body is three calls
# (settings, _prepare, _Sweep.run), where the work is.
def run_sweep(
    out: str | os.PathLike,
    *,
    dataset: str,
    split: str = "test",
    model: str | os.PathLike = "c3d_small_motion",
    methods: Sequence[str] | None = None,
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    method_options: Mapping[str, Any] | None = None,
    target: str = "label",
    data_seed: int | None = None,
    faithfulness: bool = False,
    batch_size: int = 8,
    limit: int | None = None,
    data_dir: str | os.PathLike | None = None,
    temporal_padding: str = DEFAULT_TEMPORAL_PADDING,
    threshold: str = "clip",
    mask_tolerance: int = DEFAULT_MASK_TOLERANCE,
    motion_mask: str = "exact",
    flow_min_flow: float = DEFAULT_FLOW_MIN_FLOW,
    progress: bool = False,
    on_shard: Callable[[int, dict], None] | None = None,
    decode_timeout: float | None = DEFAULT_DECODE_TIMEOUT,
) -> dict[str, Any]:
    """Explain, select and score every clip of a dataset split; write the table to ``out``.

    One row per (clip, method, sigma) (columns: see docs/sweeps.md),
    written shard by shard (one shard per ``batch_size`` clips) as Parquet files under
    ``out/tables/``, with ``out/manifest.json``. Rerun with the same arguments after
    an interruption, it computes only the missing shards (and any whose sha256 no
    longer matches the manifest's); other settings in the same ``out`` raise
    OptionError naming them, as does a second sweep writing ``out`` at the same
    time. Every argument is checked before anything is written. Under
    ``jax.distributed`` (initialised by the caller) process ``i`` of ``n`` computes
    the shards ``k`` with ``k % n == i`` on its own devices.

    Args:
      out: the sweep directory.
      dataset: ``synthetic_motion[/config]``, ``folder:PATH`` or a prepared TFDS name.
      split: train, validation or test (a folder's: :func:`~selrel_jax.data.folder_splits`),
        or for ``folder:PATH`` ``"all"``: every video under PATH in any folder, labelled
        where its folder is one of the model's classes (else label -1, which only target
        ``"predicted"`` can explain).
      model: a shipped model name or checkpoint directory.
      methods: relevance methods (each computed once per batch, all sigmas from it);
        None: the model's default, ``lrp.epsilon_plus_flat`` for a 3D CNN, ``lrp.attn``
        for a video transformer or X3D
        (:func:`selrel_jax.attribution.registry.default_method`).
      sigmas: selectivities of selective relevance.
      method_options: options given to every method that takes them;
        ``lrp.epsilon_gamma_box``'s ``low``/``high`` default to the model's input range.
      target: ``"label"`` or ``"predicted"``: the class explained.
      data_seed: generate synthetic_motion's split afresh with this seed (no cache).
      faithfulness: add deletion/insertion AUCs and frame-freezing motion reliance.
      batch_size: clips per jit-compiled batch and per shard (padded to a multiple of
        the device count).
      limit: only the first K clips.
      data_dir: the TFDS cache (default ``$SELREL_DATA_DIR`` or ``~/.cache``).
      temporal_padding: as :func:`selrel_jax.selective_relevance` (default ``"edge"``:
        zero padding makes every clip's end frames look like motion).
      threshold: as :func:`selrel_jax.selective_relevance`.
      mask_tolerance: pixels the exact motion mask is widened by in each frame for the
        ``*_tolerant_*`` columns (:func:`selrel_jax.metrics.dilate_mask`).
      motion_mask: the motion columns' ground truth: ``"exact"``, the dataset's mask
        (a folder has none: its motion columns are NaN), or ``"flow"``, each clip's
        :func:`selrel_jax.metrics.flow_motion_mask` (needs the ``flow`` extra).
      flow_min_flow: with ``"flow"``, the mask's floor on its threshold in pixels per
        frame (0: the authors' rule, relative to each frame pair's flow).
      progress: a progress bar (clips/s, ETA) on stderr.
      on_shard: called as ``on_shard(shard, record)`` after each shard is written.
      decode_timeout: seconds a folder video may take to decode, in a separate process,
        before it is listed as failed (None: decode in this process, no limit). Not a
        setting of the table: a rerun may change it.

    Returns:
      ``{"out", "clips", "rows", "shards", "shards_written", "failed", "complete",
      "seconds", "clips_per_second"}``, and for a folder ``"videos_left_out"``: split
      name -> how many videos that other split holds (none for ``"all"``).
    """
    start = time.perf_counter()
    settings = SweepSettings(
        dataset, split, model, _methods_for(model, methods), sigmas, dict(method_options or {}),
        target, data_seed, faithfulness, batch_size, limit, temporal_padding, threshold,
        mask_tolerance, motion_mask, flow_min_flow,
    )  # fmt: skip
    if decode_timeout is not None:
        decode_timeout = real("decode_timeout", decode_timeout, above=0.0)
    return _prepare(out, settings, data_dir, decode_timeout).run(progress, on_shard, start)


def initialize_distributed(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> None:
    """``jax.distributed.initialize`` for a multi-process sweep: with no arguments the
    cluster is detected (TPU, Slurm, Open MPI); else all three are needed (process 0's
    ``host:port``, the process count, this process's index). Call it before any other
    JAX computation; then every process runs the same :func:`run_sweep`."""
    given = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
    if any(v is not None for v in given.values()):
        missing = [k for k, v in given.items() if v is None]
        if missing:
            raise OptionError(
                f"a coordinator needs num_processes and process_id; missing {missing}"
            )
        count = positive_int("num_processes", num_processes)
        index = integer("process_id", process_id, minimum=0)
        if index >= count:
            raise OptionError(f"process_id must lie in [0, {count}); got {index}")
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id)
    except (RuntimeError, ValueError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise OptionError(f"jax.distributed.initialize failed: {reason}") from None
