"""A sweep's directory: ``manifest.json`` and the Parquet shards under ``tables/``.

Each shard holds the rows of one batch of clips and is written to a temporary name
and renamed into place, so a shard file is complete or absent: the shard files are
the record of what is done (a killed sweep restarts at the first missing one).
A shard's Parquet metadata also records its clips and the clips that failed to
decode, so the manifest can always be rebuilt from the shards.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from selrel_jax.errors import DataError, OptionError
from selrel_jax.models.checkpoint import writable_directory

MANIFEST_FILE = "manifest.json"
TABLES_DIR = "tables"
FORMAT = 1
_SHARD = re.compile(r"shard-(\d{6})\.parquet")
_MANIFEST_TMP = re.compile(rf"\.{re.escape(MANIFEST_FILE)}\.\d+\.tmp")
_META_KEY = b"selrel_sweep"
_SORT = [("clip_id", "ascending"), ("method", "ascending"), ("sigma", "ascending")]
MAX_SHOWN = 5  # settings named in a refusal


def shard_name(shard: int) -> str:
    return f"shard-{shard:06d}.parquet"


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two JSON values differ (``sigmas``, ``method_options.gradient``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(old.keys() | new.keys()):
            out += differences(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else key)
        return out
    return [] if old == new else [prefix or "(everything)"]


def _shown(tree: Any, path: str) -> str:
    for key in path.split("."):
        tree = tree.get(key) if isinstance(tree, dict) else None
    text = json.dumps(tree)
    return text if len(text) <= 40 else text[:37] + "..."


def _written(path: pathlib.Path, tmp: pathlib.Path, write: Any) -> None:
    """``write(tmp)``, then ``tmp`` renamed to ``path``; a failed write (a full disk)
    removes ``tmp`` and is a DataError naming ``path``."""
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DataError(f"cannot write {path}: {e.strerror or e}") from None


def _write_json(path: pathlib.Path, value: Any) -> None:
    text = json.dumps(value, indent=2, sort_keys=True) + "\n"
    _written(path, path.with_name(f".{path.name}.{os.getpid()}.tmp"), lambda t: t.write_text(text))


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
    if all(_MANIFEST_TMP.fullmatch(p.name) for p in path.iterdir()):
        return path
    if not (path / MANIFEST_FILE).is_file():
        raise OptionError(
            f"--out {path} holds other files than a sweep (no {MANIFEST_FILE}); use a new directory"
        )
    previous = read_manifest(path)["settings"]
    changed = differences(previous, dict(settings))
    if changed:
        details = ", ".join(
            f"{p} ({_shown(previous, p)} there, {_shown(settings, p)} now)"
            for p in changed[:MAX_SHOWN]
        )
        more = f" and {len(changed) - MAX_SHOWN} more" if len(changed) > MAX_SHOWN else ""
        raise OptionError(
            f"{path} holds a sweep with other settings: {details}{more}; use a new --out "
            "directory or the original settings"
        )
    return path


def done_shards(directory: pathlib.Path) -> set[int]:
    """Indices of the shards written (complete: they were renamed into place)."""
    tables = directory / TABLES_DIR
    names = os.listdir(tables) if tables.is_dir() else []
    return {int(m.group(1)) for m in map(_SHARD.fullmatch, names) if m}


def remove_stale(directory: pathlib.Path, shards: Iterable[int], manifest: bool) -> None:
    """Delete temporary files a killed sweep left for ``shards`` (shards this process
    is about to write, so no other process is writing them) and, with ``manifest``
    (the process that writes it), of the manifest."""
    if manifest:
        for path in directory.iterdir():
            if _MANIFEST_TMP.fullmatch(path.name):
                path.unlink(missing_ok=True)
    tables = directory / TABLES_DIR
    prefixes = tuple(f".{shard_name(k)}." for k in shards)
    for name in os.listdir(tables) if tables.is_dir() else []:
        if name.startswith(prefixes) and name.endswith(".tmp"):
            (tables / name).unlink(missing_ok=True)


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
    target = tables / shard_name(shard)
    tmp = tables / f".{shard_name(shard)}.{os.getpid()}.tmp"
    _written(target, tmp, lambda t: pq.write_table(table, t))


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

    Example::

        table = read_table("sweeps/c3d_small_motion")
        table.num_rows, table.column_names
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
