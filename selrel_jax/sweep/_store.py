"""A sweep's directory: ``manifest.json`` and the Parquet shards under ``tables/``.

Each shard holds the rows of one batch of clips and is written to a temporary name
and renamed into place (:mod:`selrel_jax._jobs`), so a shard file is complete or
absent: the shard files are the record of what is done (a killed sweep restarts at
the first missing one). A shard's Parquet metadata also records its clips and the
clips that failed to decode, so the manifest can always be rebuilt from the shards.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from selrel_jax._jobs import (
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
FORMAT = 1
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
    text = json.dumps(value, indent=2, sort_keys=True) + "\n"
    _written(path, lambda temporary: temporary.write_text(text))


def _is_manifest_temporary(name: str) -> bool:
    target = temporary_target(name)
    return target is not None and target[0] == MANIFEST_FILE


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a sweep directory; DataError if it has none or it is corrupt."""
    path = pathlib.Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise DataError(f"{directory} is not a sweep directory: it has no {MANIFEST_FILE}")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is corrupt ({e}); use a new --out directory") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("settings"), dict):
        raise DataError(f"{path} is not a sweep manifest (no settings)")
    return manifest


def check_target(directory: str | os.PathLike, settings: Mapping[str, Any]) -> pathlib.Path:
    """``directory`` made absolute after checking that a sweep of ``settings`` may write
    there: a new or empty directory, or one holding a sweep of the same settings (an
    OptionError names each setting that differs). Writes nothing."""
    path = writable_directory(directory, "--out", OptionError)
    if not path.is_dir():
        return path
    # A sweep killed while writing its first manifest leaves only that temporary file.
    if all(_is_manifest_temporary(p.name) for p in path.iterdir()):
        return path
    if not (path / MANIFEST_FILE).is_file():
        raise OptionError(
            f"--out {path} holds other files than a sweep (no {MANIFEST_FILE}); use a new directory"
        )
    refuse_other_settings("sweep", path, read_manifest(path)["settings"], dict(settings))
    return path


def done_shards(directory: pathlib.Path) -> set[int]:
    """Indices of the shards written (complete: they were renamed into place)."""
    tables = directory / TABLES_DIR
    names = os.listdir(tables) if tables.is_dir() else []
    return {int(m.group(1)) for m in map(_SHARD.fullmatch, names) if m}


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
) -> None:
    """Write one shard's rows atomically (temporary name, then rename), ``record`` (its
    clips, failures) in the file's metadata."""
    tables = directory / TABLES_DIR
    tables.mkdir(parents=True, exist_ok=True)
    meta = {_META_KEY: json.dumps(dict(record), sort_keys=True).encode()}
    table = pa.table({name: columns[name] for name in table_schema.names}, schema=table_schema)
    table = table.replace_schema_metadata(meta)
    _written(tables / shard_name(shard), lambda temporary: pq.write_table(table, temporary))


def shard_record(directory: pathlib.Path, shard: int) -> dict[str, Any]:
    """The record a shard's metadata holds (its clips, rows and failures)."""
    meta = pq.read_schema(directory / TABLES_DIR / shard_name(shard)).metadata or {}
    return json.loads(meta.get(_META_KEY, b"{}"))


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
    manifest = {
        "format": FORMAT,
        "settings": dict(settings),
        "versions": dict(versions),
        "clips": clips,
        "columns": [[name, kind] for name, kind in columns.items()],
        "shards": {"total": shards_total, "done": sorted(records)},
        "rows": sum(int(r.get("rows", 0)) for r in records.values()),
        "failed": failed,
        "complete": len(records) == shards_total,
    }
    _write_json(directory / MANIFEST_FILE, manifest)
    return manifest


def read_table(directory: str | os.PathLike) -> pa.Table:
    """Every row a sweep in ``directory`` has written, sorted by (``clip_id``, ``method``,
    ``sigma``), as a ``pyarrow.Table``.

    A sweep still running or interrupted gives the rows of its finished shards
    (``read_manifest(directory)["complete"]`` says whether it is done). Convert with
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
    shards = sorted(done_shards(path))
    if not shards:
        return schema(dict(manifest.get("columns", []))).empty_table()
    try:
        tables = [pq.read_table(path / TABLES_DIR / shard_name(k)) for k in shards]
    except (OSError, pa.ArrowInvalid) as e:
        raise DataError(f"cannot read the tables of sweep {path}: {e}") from None
    table = pa.concat_tables([t.replace_schema_metadata(None) for t in tables])
    return table.sort_by(_SORT)


def table_columns(table: pa.Table) -> dict[str, np.ndarray]:
    """A table's columns as NumPy arrays (strings as an object array)."""
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
