"""A job's files: atomic writes, the settings a job was made with, stale temporaries,
versions.

Every long job (train, sweep, explain, report, checkpoints, convert) writes through
here, so one rule holds for all of them: what a user reads is whole or absent. A file
or folder is built under a temporary sibling name ``.<name>.<pid>.<token>.tmp`` (hidden,
and naming its writer, so a later run can tell a dead job's leftovers from a live
one's), flushed to disk, then renamed into place. A job that resumes compares the
settings it was made with to the ones it is given, and refuses in one message shape.

Examples:
    >>> import pathlib
    >>> from selrel_jax._jobs import (
    ...     refuse_other_settings, remove_stale_temporaries, write_folder, write_text,
    ... )
    >>> pathlib.Path("out").mkdir()
    >>> write_text("out/report.md", "# Report")
    PosixPath('out/report.md')
    >>> folder = write_folder("out/clip", lambda folder: (folder / "a.json").write_text("{}"))
    >>> sorted(p.name for p in folder.iterdir())
    ['a.json']
    >>> on_disk, settings = {"sigma": 1.0, "limit": 8}, {"sigma": 2.0, "limit": 8}
    >>> refuse_other_settings("sweep", "out", on_disk, settings)
    Traceback (most recent call last):
    ...
    selrel_jax.errors.OptionError: sweep at out was made with other settings (sigma: 1.0 -> 2.0)...
    >>> remove_stale_temporaries("out/clip")   # what a killed writer left: nothing here
    []
"""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import re
import secrets
import shutil
from collections.abc import Callable, Mapping
from typing import Any

from selrel_jax.errors import OptionError, SelrelError

__all__ = [
    "changed_settings",
    "process_alive",
    "refuse_other_settings",
    "remove_stale_temporaries",
    "settings_record",
    "temporary_path",
    "temporary_target",
    "versions",
    "write_file",
    "write_folder",
    "write_text",
]

#: Settings named in a refusal (a record of an older version may differ in many).
MAX_SHOWN = 5
#: Modules whose versions every job records.
VERSIONED = ("selrel_jax", "jax", "flax", "numpy")

PathLike = str | os.PathLike
#: ``.<name>.<pid>.<token>.tmp``: hidden, naming what it becomes and who writes it.
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp")


# ---------------------------------------------------------------------------- temporaries


def temporary_path(path: PathLike) -> pathlib.Path:
    """A new hidden sibling to build ``path`` under: ``.<name>.<pid>.<token>.tmp``."""
    path = pathlib.Path(path)
    token = secrets.token_hex(4)
    return path.with_name(f".{path.name}.{os.getpid()}.{token}.tmp")


def temporary_target(entry: str) -> tuple[str, int] | None:
    """``(name, writer's pid)`` if ``entry`` is a temporary of a file or folder ``name``
    (as :func:`temporary_path` names them), else None."""
    match = _TEMPORARY.fullmatch(entry)
    return (match.group("name"), int(match.group("pid"))) if match else None


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (another user's counts)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # OverflowError: above any pid there is
        return False
    except PermissionError:  # it runs, as another user
        return True
    return True


def _remove(path: pathlib.Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_stale_temporaries(*paths: PathLike) -> list[pathlib.Path]:
    """Remove the temporaries of ``paths`` whose writer no longer runs (what a killed job
    left); a live process's, this one's included, stay. Each folder is listed once.
    Returns those removed."""
    wanted: dict[pathlib.Path, set[str]] = {}
    for path in map(pathlib.Path, paths):
        wanted.setdefault(path.parent, set()).add(path.name)
    removed = []
    for folder, names in wanted.items():
        try:
            entries = os.listdir(folder)
        except OSError:  # no folder yet, or a file where it should be: the writer says so
            continue
        for entry in entries:
            target = temporary_target(entry)
            if target is not None and target[0] in names and not process_alive(target[1]):
                _remove(folder / entry)
                removed.append(folder / entry)
    return removed


# ---------------------------------------------------------------------------- atomic writes


def _fsync(path: pathlib.Path) -> None:
    """Flush a file, or every file below a folder, to disk."""
    if path.is_dir():
        for folder, _, names in os.walk(path):
            for name in names:
                _fsync(pathlib.Path(folder, name))
        return
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_file(path: PathLike, write: Callable[[pathlib.Path], Any]) -> pathlib.Path:
    """``write(temporary)``, then the temporary flushed to disk and renamed to ``path``:
    ``path`` is the old file or the whole new one, never part of one. If anything
    raises, the temporary is removed and the error goes on. Returns ``path``."""
    path = pathlib.Path(path)
    temporary = temporary_path(path)
    try:
        write(temporary)
        _fsync(temporary)
        os.replace(temporary, path)
    except BaseException:
        _remove(temporary)
        raise
    return path


def write_text(path: PathLike, text: str) -> pathlib.Path:
    """``text`` written to ``path`` atomically (:func:`write_file`)."""
    return write_file(path, lambda temporary: temporary.write_text(text))


def _swap_in(staging: pathlib.Path, path: pathlib.Path) -> None:
    """Rename ``staging`` to ``path``; what is there already is moved aside first, put
    back if the rename fails, and removed once the new folder is in place."""
    if not os.path.lexists(path):
        os.replace(staging, path)
        return
    previous = temporary_path(path)
    os.replace(path, previous)
    try:
        os.replace(staging, path)
    except BaseException:
        os.replace(previous, path)
        raise
    _remove(previous)


def write_folder(path: PathLike, fill: Callable[[pathlib.Path], Any]) -> pathlib.Path:
    """``fill(temporary)`` builds the folder in a new temporary sibling, which is then
    flushed to disk and renamed to ``path``; an existing ``path`` (the caller decides
    whether one may be replaced) goes only once the new folder is complete. If anything
    raises, the temporary is removed and the error goes on. Returns ``path``."""
    path = pathlib.Path(path)
    staging = temporary_path(path)
    staging.mkdir()  # not mkdtemp: its mode 0700 would hide the output from other users
    try:
        fill(staging)
        _fsync(staging)
        _swap_in(staging, path)
    except BaseException:
        _remove(staging)
        raise
    return path


# ---------------------------------------------------------------------------- settings


def settings_record(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` as a JSON file holds them (tuples become lists, keys strings): the
    form a job stores and compares."""
    return json.loads(json.dumps(dict(settings)))


def _changes(old: Any, new: Any, key: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, old value, new value)`` wherever two records differ."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out = []
        for name in sorted(old.keys() | new.keys()):
            out += _changes(old.get(name), new.get(name), f"{key}.{name}" if key else name)
        return out
    return [] if old == new else [(key or "(everything)", old, new)]


def changed_settings(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The dotted keys (``config.seed``, ``method_options.epsilon``) where two settings
    records differ, sorted; a key missing on one side differs from any value."""
    return [key for key, _, _ in _changes(old, new)]


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def refuse_other_settings(
    what: str,
    path: PathLike,
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    *,
    error: type[SelrelError] = OptionError,
    replaceable: bool = False,
) -> None:
    """Raise ``error`` if the settings record ``old`` (on disk at ``path``) differs from
    ``new``: ``<what> at <path> was made with other settings (<key>: <old> -> <new>,
    ...); <remedy>``, the remedy offering ``--overwrite`` where the job can replace
    ``what`` (``replaceable``)."""
    changes = _changes(old, new)
    if not changes:
        return
    shown = [f"{key}: {_shown(a)} -> {_shown(b)}" for key, a, b in changes[:MAX_SHOWN]]
    if len(changes) > MAX_SHOWN:
        shown.append(f"and {len(changes) - MAX_SHOWN} more")
    remedy = "pass --overwrite to replace it" if replaceable else "rerun with its settings"
    raise error(
        f"{what} at {os.fspath(path)} was made with other settings ({', '.join(shown)}); "
        f"{remedy} or choose another output"
    )


# ---------------------------------------------------------------------------- versions


def versions(*modules: str) -> dict[str, str]:
    """``{module: version}`` of selrel_jax, jax, flax and numpy, and of ``modules``: what
    a job records beside its results."""
    return {name: importlib.import_module(name).__version__ for name in (*VERSIONED, *modules)}
