"""A sweep's directory: ``manifest.json`` and the Parquet shards under ``tables/``.

Each shard holds the rows of one batch of clips and is written to a temporary name
and renamed into place (:mod:`selrel_jax._jobs`), so a shard file is complete or
absent. A shard's Parquet metadata records its index, clips, rows and the clips that
failed to decode; the manifest records every shard's sha256 and row count. Nothing on
disk is trusted unchecked: a listed shard whose bytes no longer match is recomputed
by a rerun and refused by :func:`read_table`; a shard file the manifest does not list
is taken only if its own record is that shard's (a sweep killed between writing a
shard and the manifest), and a file of no shard of this sweep is never read.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from selrel_jax._jobs import (
    LOCK_FILE,
    file_sha256,
    json_text,
    refuse_other_settings,
    remove_stale_temporaries,
    temporary_target,
    write_file,
)
from selrel_jax.errors import DataError, OptionError
from selrel_jax.models.checkpoint import writable_directory

#: A sweep's manifest, in its output folder.
MANIFEST_FILE = "manifest.json"
#: The folder of a sweep's Parquet shards, in its output folder.
TABLES_DIR = "tables"
#: 2: the manifest records each shard's sha256 and rows (``shards.files``).
FORMAT = 2
#: Every key a manifest has, with its type; and every key of its settings.
_MANIFEST_KEYS = {"format": int, "settings": dict, "versions": dict, "clips": int,
                  "columns": list, "shards": dict, "rows": int, "failed": list,
                  "complete": bool}  # fmt: skip
_SHARDS_KEYS = {"total": int, "done": list, "files": dict}
_SETTINGS_KEYS = ("dataset", "split", "model", "methods", "sigmas", "method_options", "target",
                  "data_seed", "faithfulness", "batch_size", "limit", "temporal_padding",
                  "threshold", "mask_tolerance")  # fmt: skip
_SHARD = re.compile(r"shard-(\d{6})\.parquet")
_META_KEY = b"selrel_sweep"
_SORT = [("clip_id", "ascending"), ("method", "ascending"), ("sigma", "ascending")]


def shard_name(shard: int) -> str:
    return f"shard-{shard:06d}.parquet"


def _written(path: pathlib.Path, write: Callable[[pathlib.Path], Any]) -> None:
    """``path`` written atomically by ``write(temporary)``; a failed write (a full disk)
    leaves no temporary and is a DataError naming ``path``."""
    try:
        write_file(path, write)
    except OSError as e:
        raise DataError(f"cannot write {path}: {e.strerror or e}") from None


def _write_json(path: pathlib.Path, value: Any) -> None:
    text = json_text(value) + "\n"
    _written(path, lambda temporary: temporary.write_text(text))


def _is_manifest_temporary(name: str) -> bool:
    target = temporary_target(name)
    return target is not None and target[0] == MANIFEST_FILE


def read_manifest(directory: str | os.PathLike, *, whole_settings: bool = True) -> dict[str, Any]:
    """The manifest of a sweep directory; DataError if it has none, it is corrupt, of
    another format or misses a key (named; a key of its settings too unless
    ``whole_settings=False``: a rerun's refusal names those)."""
    path = pathlib.Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise DataError(f"{directory} is not a sweep directory: it has no {MANIFEST_FILE}")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is corrupt ({e}); use a new --out directory") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("settings"), dict):
        raise DataError(f"{path} is not a sweep manifest (no settings)")
    if manifest.get("format") != FORMAT:
        raise DataError(
            f"{path} is of format {manifest.get('format')!r}, not {FORMAT} (older ones record "
            "no shard checksums); rerun the sweep into a new --out directory"
        )
    _check_keys(path, manifest, _MANIFEST_KEYS, "")
    _check_keys(path, manifest["shards"], _SHARDS_KEYS, "shards.")
    missing = [key for key in _SETTINGS_KEYS if key not in manifest["settings"]]
    if missing and whole_settings:
        raise DataError(f"{path} is not a whole sweep manifest: it has no settings.{missing[0]}")
    return manifest


def _check_keys(path: pathlib.Path, record: dict, keys: Mapping[str, type], prefix: str) -> None:
    for key, kind in keys.items():
        if key not in record:
            raise DataError(f"{path} is not a whole sweep manifest: it has no {prefix}{key}")
        if not isinstance(record[key], kind) or isinstance(record[key], bool) != (kind is bool):
            raise DataError(
                f"{path} is not a sweep manifest: {prefix}{key} is not a {kind.__name__}"
            )


def check_target(directory: str | os.PathLike, settings: Mapping[str, Any]) -> pathlib.Path:
    """``directory`` made absolute after checking that a sweep of ``settings`` may write
    there: a new or empty directory, or one holding a sweep of the same settings (an
    OptionError names each setting that differs). Writes nothing."""
    path = writable_directory(directory, "--out", OptionError)
    if not path.is_dir():
        return path
    # A sweep killed while writing its first manifest leaves only that temporary file.
    if all(_is_manifest_temporary(p.name) or p.name == LOCK_FILE for p in path.iterdir()):
        return path
    if not (path / MANIFEST_FILE).is_file():
        raise OptionError(
            f"--out {path} holds other files than a sweep (no {MANIFEST_FILE}); use a new directory"
        )
    manifest = read_manifest(path, whole_settings=False)
    refuse_other_settings("sweep", path, manifest["settings"], dict(settings))
    return path


def done_shards(directory: pathlib.Path) -> set[int]:
    """Indices of the shard files there are (each whole: renamed into place), whether
    or not this sweep wrote them (see :func:`verified_shards`)."""
    tables = directory / TABLES_DIR
    names = os.listdir(tables) if tables.is_dir() else []
    return {int(m.group(1)) for m in map(_SHARD.fullmatch, names) if m}


def _listed_problem(path: pathlib.Path, listed: Mapping[str, Any]) -> str | None:
    """Why the shard file ``path`` is not the one the manifest lists, or None."""
    if not path.is_file():
        return "is missing"
    if file_sha256(path) != listed.get("sha256"):
        return "does not match the sha256 the manifest records (changed or damaged)"
    return None


def _own_record(path: pathlib.Path, shard: int, total: int) -> dict[str, Any] | None:
    """The record of a shard file the manifest does not list, if it is whole and its
    own record says it is shard ``shard`` of this sweep (a killed sweep wrote it and
    not yet the manifest); else None."""
    try:
        meta = pq.read_metadata(path)
        record = json.loads((meta.metadata or {}).get(_META_KEY, b"null"))
    except (OSError, pa.ArrowException, ValueError):
        return None
    ok = isinstance(record, dict) and record.get("shard") == shard < total
    return record if ok and record.get("rows") == meta.num_rows else None


def verified_shards(
    directory: pathlib.Path, files: Mapping[str, Any], total: int
) -> tuple[dict[int, dict[str, Any]], dict[int, str]]:
    """``(records, bad)``: the record (with ``sha256``) of every shard this sweep wrote
    whole (listed in the manifest's ``files`` and matching its sha256, or unlisted and
    recording itself as that shard), and why each listed or claimed one is not. A
    shard file of an index past ``total`` is no shard of this sweep: neither."""
    records, bad = {}, {}
    for shard in sorted(done_shards(directory) | {_index(n) for n in files}):
        name = shard_name(shard)
        path = directory / TABLES_DIR / name
        if name in files:
            problem = _listed_problem(path, files[name])
        elif shard < total:
            problem = None if _own_record(path, shard, total) else "was not written by this sweep"
        else:
            continue
        record = None if problem else _own_record(path, shard, total)
        if record is None:
            bad[shard] = problem or "holds no record of this sweep"
        else:
            records[shard] = record | {"sha256": file_sha256(path)}
    return records, bad


def _index(name: str) -> int:
    match = _SHARD.fullmatch(name)
    return int(match.group(1)) if match else -1


def remove_stale(directory: pathlib.Path, shards: Iterable[int], manifest: bool) -> None:
    """Delete the temporary files a killed sweep left for ``shards`` (shards this process
    is about to write, so no other process is writing them) and, with ``manifest``
    (the process that writes it), of the manifest."""
    paths = [directory / TABLES_DIR / shard_name(k) for k in shards]
    remove_stale_temporaries(*paths, *([directory / MANIFEST_FILE] if manifest else []))


def schema(columns: Mapping[str, str]) -> pa.Schema:
    """The Parquet schema of ``columns`` (name -> ``"int32"``, ``"float32"``, ...)."""
    return pa.schema([(name, pa.type_for_alias(kind)) for name, kind in columns.items()])


def write_shard(
    directory: pathlib.Path,
    shard: int,
    columns: Mapping[str, np.ndarray | list],
    table_schema: pa.Schema,
    record: Mapping[str, Any],
) -> pathlib.Path:
    """Write one shard's rows atomically (temporary name, then rename), ``record`` (its
    clips, failures) in the file's metadata; returns its path."""
    tables = directory / TABLES_DIR
    tables.mkdir(parents=True, exist_ok=True)
    meta = {_META_KEY: json_text(dict(record), indent=None).encode()}
    table = pa.table({name: columns[name] for name in table_schema.names}, schema=table_schema)
    table = table.replace_schema_metadata(meta)
    _written(tables / shard_name(shard), lambda temporary: pq.write_table(table, temporary))
    return tables / shard_name(shard)


def write_manifest(
    directory: pathlib.Path,
    settings: Mapping[str, Any],
    versions: Mapping[str, str],
    shards_total: int,
    clips: int,
    records: Mapping[int, Mapping[str, Any]],
    columns: Mapping[str, str],
) -> dict[str, Any]:
    """Write ``manifest.json`` from the records of the shards done; ``columns`` is the
    tables' column name -> type."""
    failed = [f for k in sorted(records) for f in records[k].get("failed", [])]
    files = {shard_name(k): {"sha256": records[k]["sha256"], "rows": int(records[k]["rows"])}
             for k in sorted(records)}  # fmt: skip
    manifest = {
        "format": FORMAT,
        "settings": dict(settings),
        "versions": dict(versions),
        "clips": clips,
        "columns": [[name, kind] for name, kind in columns.items()],
        "shards": {"total": shards_total, "done": sorted(records), "files": files},
        "rows": sum(int(r.get("rows", 0)) for r in records.values()),
        "failed": failed,
        "out_of_range": [v for k in sorted(records) for v in records[k].get("out_of_range", [])],
        "complete": len(records) == shards_total,
    }
    _write_json(directory / MANIFEST_FILE, manifest)
    return manifest


def read_table(directory: str | os.PathLike) -> pa.Table:
    """Every row a sweep in ``directory`` has written, sorted by (``clip_id``, ``method``,
    ``sigma``), as a ``pyarrow.Table``.

    A sweep still running or interrupted gives the rows of the shards its manifest
    lists (``read_manifest(directory)["complete"]`` says whether it is done). Each
    shard is checked against the sha256 and row count the manifest records: one that
    does not match is a DataError naming it (rerun the same sweep to recompute it);
    files the manifest does not list are not read. Convert with
    ``table.to_pandas()`` (pandas installed), ``table.to_pydict()``, or
    ``table_columns(table)`` for a dict of NumPy columns.

    Examples:
        >>> from selrel_jax.sweep import read_table, run_sweep
        >>> _ = run_sweep("sweeps/c3d_small_motion", dataset="synthetic_motion", data_seed=7,
        ...               limit=2, methods=["gradient"], sigmas=[1.0])
        >>> table = read_table("sweeps/c3d_small_motion")
        >>> table.num_rows, table.column_names[:3]
        (2, ['clip_id', 'label', 'target'])
    """
    path = pathlib.Path(directory)
    manifest = read_manifest(path)
    files = manifest["shards"]["files"]
    if not files:
        return schema(dict(manifest["columns"])).empty_table()
    tables = []
    for name in sorted(files):
        problem = _listed_problem(path / TABLES_DIR / name, files[name])
        if problem is not None:
            raise DataError(
                f"shard {path / TABLES_DIR / name} {problem}; rerun the same selrel sweep "
                "command to recompute it"
            )
        try:
            table = pq.read_table(path / TABLES_DIR / name)
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"cannot read the tables of sweep {path}: {e}") from None
        if table.num_rows != files[name].get("rows"):
            raise DataError(f"shard {path / TABLES_DIR / name} has {table.num_rows} rows; its "
                            f"manifest records {files[name].get('rows')}")  # fmt: skip
        tables.append(table.replace_schema_metadata(None))
    return pa.concat_tables(tables).sort_by(_SORT)


def warn_bad_shards(directory: pathlib.Path, bad: Mapping[int, str]) -> None:
    """One warning per shard a rerun recomputes, naming it and why."""
    for shard, problem in sorted(bad.items()):
        warnings.warn(f"shard {directory / TABLES_DIR / shard_name(shard)} {problem}; "
                      "it is computed again", UserWarning, stacklevel=3)  # fmt: skip


def table_columns(table: pa.Table) -> dict[str, np.ndarray]:
    """A table's columns as NumPy arrays (strings as an object array)."""
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
