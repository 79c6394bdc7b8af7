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

import contextlib
import hashlib
import importlib
import json
import math
import os
import pathlib
import re
import secrets
import shutil
import socket
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from selrel_jax.errors import DataError, OptionError, SelrelError

__all__ = [
    "LOCK_FILE",
    "MARKER_FILE",
    "available_memory",
    "changed_settings",
    "check_memory",
    "check_not_input",
    "check_owned",
    "compiling",
    "file_sha256",
    "finite_json",
    "json_text",
    "output_lock",
    "ownership_problem",
    "process_alive",
    "progress_bar",
    "refuse_other_settings",
    "remove_stale_temporaries",
    "settings_record",
    "temporary_path",
    "temporary_target",
    "versions",
    "write_file",
    "write_folder",
    "write_marker",
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


# ---------------------------------------------------------------------------- JSON


def _finite(value: Any, key: str, nulls: dict[str, str]) -> Any:
    if isinstance(value, Mapping):
        return {
            str(k): _finite(v, f"{key}.{k}" if key else str(k), nulls) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_finite(v, f"{key}[{i}]", nulls) for i, v in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        sign = "-" if value < 0 else ""
        nulls[key or "(value)"] = (
            f"not a finite number ({'NaN' if value != value else sign + 'Infinity'})"
        )
        return None
    return value


def finite_json(value: Any) -> tuple[Any, dict[str, str]]:
    """``value`` with every NaN or infinite float replaced by None, and ``{dotted key:
    reason}`` of each one replaced: what a JSON file can hold (strict JSON has no NaN)."""
    nulls: dict[str, str] = {}
    return _finite(value, "", nulls), nulls


def json_text(value: Any, *, indent: int | None = 2, sort_keys: bool = True) -> str:
    """``value`` as strict JSON text: a NaN or infinite float becomes ``null`` (callers
    that must say why record :func:`finite_json`'s reasons beside it)."""
    clean, _ = finite_json(value)
    return json.dumps(clean, indent=indent, sort_keys=sort_keys, allow_nan=False)


# ---------------------------------------------------------------------------- ownership

#: In every folder a job writes whole (an explanation, a checkpoint): who wrote it and
#: the sha256 of each file, so the folder is replaced only while it holds just those.
MARKER_FILE = ".selrel-output.json"
#: What ``written_by`` in a marker starts with.
_WRITER = "selrel"


def file_sha256(path: PathLike, chunk: int = 1 << 20) -> str:
    """The sha256 of a file's bytes, read ``chunk`` bytes at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _entries_below(folder: pathlib.Path) -> dict[str, pathlib.Path]:
    """Relative POSIX path -> path of every file, link and empty folder below ``folder``,
    the marker left out."""
    found = {}
    for parent, folders, names in os.walk(folder):
        here = pathlib.Path(parent)
        for name in names + [d for d in folders if (here / d).is_symlink()]:
            found[(here / name).relative_to(folder).as_posix()] = here / name
        if here != folder and not names and not folders:
            found[here.relative_to(folder).as_posix() + "/"] = here
    found.pop(MARKER_FILE, None)
    return found


def write_marker(
    folder: PathLike,
    kind: str,
    identity: Mapping[str, Any] | None = None,
    unhashed: tuple[str, ...] = (),
) -> None:
    """Write ``folder``'s marker: ``written_by`` (``selrel <kind>``), ``identity`` and the
    sha256 of every file below it (None for the files ``unhashed`` names: wall times,
    which would make the marker differ between two runs of the same job). Call it
    last, in the temporary folder being filled."""
    folder = pathlib.Path(folder)
    files = {rel: None if rel in unhashed else file_sha256(path)
             for rel, path in sorted(_entries_below(folder).items())
             if path.is_file() and not path.is_symlink()}  # fmt: skip
    record = {"written_by": f"{_WRITER} {kind}", "identity": dict(identity or {}),
              "files": files}  # fmt: skip
    (folder / MARKER_FILE).write_text(json_text(record) + "\n")


def _read_marker(folder: pathlib.Path) -> dict[str, Any] | None:
    try:
        record = json.loads((folder / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(record, dict) and isinstance(record.get("files"), dict)
    return record if ok and isinstance(record.get("written_by"), str) else None


def _listed(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def ownership_problem(folder: PathLike, kind: str) -> str | None:
    """Why ``folder`` cannot be proven a whole ``selrel <kind>`` output (no marker, a
    marker of another kind, files the marker does not list, listed files changed), or
    None if it can (or does not exist)."""
    folder = pathlib.Path(folder)
    if not os.path.lexists(folder):
        return None
    if folder.is_symlink() or not folder.is_dir():
        return "is not a folder selrel wrote (a file or a link)"
    record = _read_marker(folder)
    if record is None:
        return f"was not written by selrel {kind} (it has no readable {MARKER_FILE})"
    if record["written_by"] != f"{_WRITER} {kind}":
        return f"was written by {record['written_by']}, not by selrel {kind}"
    entries = _entries_below(folder)
    listed = record["files"]
    # a folder of its own whose files were removed is still its own
    others = sorted(
        rel for rel in set(entries) - set(listed)
        if not (rel.endswith("/") and any(f.startswith(rel) for f in listed))
    )  # fmt: skip
    if others:
        return f"holds files selrel {kind} did not write ({_listed(others)})"
    changed = sorted(
        rel for rel, path in entries.items()
        if rel in listed and listed[rel] is not None
        and (not path.is_file() or file_sha256(path) != listed[rel])
    )  # fmt: skip
    if changed:
        return f"holds files changed since selrel {kind} wrote them ({_listed(changed)})"
    return None


def check_owned(folder: PathLike, kind: str, what: str = "output",
                error: type[SelrelError] = OptionError) -> None:  # fmt: skip
    """Raise ``error`` naming ``folder`` unless it is absent or provably a whole
    ``selrel <kind>`` output (:func:`ownership_problem`): selrel deletes or replaces
    only what it wrote, ``--overwrite`` or not."""
    problem = ownership_problem(folder, kind)
    if problem is not None:
        raise error(
            f"{what} {os.fspath(folder)} {problem}; selrel replaces only what it wrote: "
            "move it away or choose another output"
        )


def _inside(path: pathlib.Path, other: pathlib.Path) -> bool:
    return path == other or other in path.parents


def check_not_input(
    outputs: Iterator[PathLike] | list[PathLike], inputs: list[PathLike], flag: str = "--out"
) -> None:
    """OptionError if an output folder is, holds or lies inside one of ``inputs``: an
    output (which a run may replace) is never an input of the same run."""
    sources = [(i, pathlib.Path(os.path.abspath(os.path.realpath(i)))) for i in inputs]
    for output in outputs:
        target = pathlib.Path(os.path.abspath(os.path.realpath(output)))
        for given, source in sources:
            if _inside(target, source) or _inside(source, target):
                relation = "is" if target == source else "overlaps"
                raise OptionError(
                    f"output {os.fspath(output)} {relation} the input {os.fspath(given)}; "
                    f"choose a {flag} where no input lies"
                )


# ---------------------------------------------------------------------------- locks

#: In an output folder while a job writes it: ``{"pid", "host", "command", "token"}``.
LOCK_FILE = ".selrel.lock"


def _lock_record(lock: pathlib.Path) -> dict[str, Any] | None:
    try:
        record = json.loads(lock.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _stale(record: Mapping[str, Any]) -> bool:
    """Whether a lock's writer is provably gone: a process of this host that no longer runs."""
    pid = record.get("pid")
    return (record.get("host") == socket.gethostname() and isinstance(pid, int)
            and not process_alive(pid))  # fmt: skip


def _refuse_lock(lock: pathlib.Path, record: Mapping[str, Any] | None) -> None:
    holder = "an unreadable lock" if record is None else (
        f"selrel {record.get('command')} (pid {record.get('pid')} on {record.get('host')})"
    )  # fmt: skip
    raise OptionError(
        f"output {lock.parent} is being written by {holder}; wait for it to finish or choose "
        f"another output (if no such run is left, delete {lock})"
    )


def _try_lock(lock: pathlib.Path, record: Mapping[str, Any]) -> bool:
    """Create ``lock`` holding ``record`` whole (a link to a written file); False if
    there is one."""
    temporary = temporary_path(lock)
    temporary.write_text(json.dumps(dict(record)))
    try:
        os.link(temporary, lock)
        return True
    except FileExistsError:
        return False
    finally:
        temporary.unlink(missing_ok=True)


def _take_lock(lock: pathlib.Path, record: Mapping[str, Any]) -> None:
    for _ in range(3):
        if _try_lock(lock, record):
            return
        holder = _lock_record(lock)
        if holder == {}:  # released meanwhile
            continue
        if holder is None or not _stale(holder):
            _refuse_lock(lock, holder)
        aside = temporary_path(lock)  # a dead job's lock: moved aside (one taker wins), removed
        with contextlib.suppress(FileNotFoundError):
            os.rename(lock, aside)
            if _lock_record(aside) != holder:  # another taker's fresh lock: put it back
                os.rename(aside, lock)
                _refuse_lock(lock, _lock_record(lock))
            aside.unlink()
    _refuse_lock(lock, _lock_record(lock))


def _created_folders(folder: pathlib.Path) -> list[pathlib.Path]:
    created = [p for p in (folder, *folder.parents) if not os.path.lexists(p)]
    folder.mkdir(parents=True, exist_ok=True)
    return created


@contextlib.contextmanager
def output_lock(folder: PathLike, command: str) -> Iterator[pathlib.Path]:
    """Hold ``folder/.selrel.lock`` (the folder created if missing) while a job writes
    ``folder``: a second job into it is refused naming the holder; a lock whose process
    is gone (killed) is taken over. On exit the lock goes, and the folders created for
    it if they are still empty."""
    folder = pathlib.Path(os.path.abspath(folder))
    lock = folder / LOCK_FILE
    try:
        created = _created_folders(folder)
    except OSError as e:  # a file on the way, no permission
        raise DataError(f"cannot write output {folder}: {e.strerror or e}") from None
    record = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
              "token": secrets.token_hex(8)}  # fmt: skip
    try:
        remove_stale_temporaries(lock)
        _take_lock(lock, record)
    except BaseException:
        _remove_empty(created)
        raise
    try:
        yield lock
    finally:
        if _lock_record(lock) == record:
            lock.unlink(missing_ok=True)
        _remove_empty(created)


def _remove_empty(created: list[pathlib.Path]) -> None:
    for path in created:  # deepest first; stops at one that is not empty
        try:
            path.rmdir()
        except OSError:
            return


# ---------------------------------------------------------------------------- memory


def available_memory() -> int | None:
    """Bytes a job may still allocate where JAX computes: the first device's free memory
    on an accelerator, the machine's available memory on CPU; None if unknown."""
    import jax

    device = jax.local_devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def check_memory(needed: int, what: str, remedy: str) -> None:
    """OptionError if ``what`` needs at least ``needed`` bytes and fewer are available:
    a request that cannot fit is refused before anything is written."""
    available = available_memory()
    if available is not None and needed > available:
        raise OptionError(
            f"{what} needs at least {needed / 2**30:.1f} GiB of memory; "
            f"{max(available, 0) / 2**30:.1f} GiB are available; {remedy}"
        )


# ---------------------------------------------------------------------------- progress


def progress_bar(total: int | None, enabled: bool, desc: str, unit: str = "clip", **options: Any):
    """A tqdm bar on stderr (stdout carries the commands' JSON lines), ``desc`` saying
    what is being done to what (``a.mp4: explain``); a disabled one prints nothing."""
    import sys

    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, disable=not enabled,
                **options)  # fmt: skip


def compiling(function: Callable) -> bool:
    """Whether the next call of the jitted ``function`` compiles it (it has never run):
    tens of seconds for a large model, which a job says rather than sit at 0%."""
    cache_size = getattr(function, "_cache_size", None)
    return cache_size is not None and cache_size() == 0


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
