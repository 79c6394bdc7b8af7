"""Checkpoint io: an orbax checkpoint of the variables plus ``info.json``.

A checkpoint directory holds ``info.json`` (:class:`ModelInfo`) and
``variables/`` (orbax). ``load`` rebuilds the model from the metadata, checks
the stored arrays against the parameters that model needs, and returns
``(model, variables, info)``. Names resolve to ``checkpoints/<name>/`` in the
source tree first, then to the copy installed with the package.

Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from selrel_jax import models
    >>> model = models.create("c3d_small", 4, width=0.25, clip_size=(8, 32, 32))
    >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 32, 32, 3)), train=False)
    >>> clips = jax.random.normal(jax.random.key(1), (1, 8, 32, 32, 3))
    >>> from pathlib import Path
    >>> from selrel_jax.models import ModelInfo, load, save
    >>> info = ModelInfo.for_arch("c3d_small", 4, width=0.25, clip_length=8, crop_size=(32, 32))
    >>> save("runs/c3d_small", info, variables)
    PosixPath('.../runs/c3d_small')
    >>> sorted(p.name for p in Path("runs/c3d_small").iterdir())
    ['.selrel-output.json', 'info.json', 'variables']
    >>> model, loaded, info = load("runs/c3d_small")
    >>> bool(jnp.array_equal(loaded["params"]["fc"]["kernel"], variables["params"]["fc"]["kernel"]))
    True
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import sys
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from selrel_jax._jobs import (
    MARKER_FILE,
    check_owned,
    json_text,
    remove_stale_temporaries,
    write_folder,
    write_marker,
)
from selrel_jax.errors import CheckpointError, SelrelError
from selrel_jax.models.info import ModelInfo
from selrel_jax.models.registry import create

__all__ = [
    "checkpoint_target",
    "load",
    "load_info",
    "save",
    "shipped_checkpoints",
    "writable_directory",
]

INFO_FILE = "info.json"
VARIABLES_DIR = "variables"
#: What a checkpoint's marker file says wrote it (``selrel checkpoint save``).
MARKER_KIND = "checkpoint save"


def _plain(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {str(k): _plain(v) for k, v in tree.items()}
    return tree


def _flat(tree: Any) -> dict[str, Any]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(getattr(k, "key", k)) for k in path): leaf for path, leaf in leaves}


def build(info: ModelInfo) -> nn.Module:
    """The model ``info`` describes: arch, classes, width, clip, ``extra["model_kwargs"]``."""
    # JSON turns tuples (e.g. C3DSmall's channels) into lists; modules want tuples.
    kw = {
        k: tuple(v) if isinstance(v, list) else v
        for k, v in dict(info.extra.get("model_kwargs", {})).items()
    }
    return create(info.arch, info.num_classes, width=info.width, clip_size=info.clip_size, **kw)


def expected_shapes(model: nn.Module, info: ModelInfo) -> dict[str, tuple[tuple[int, ...], Any]]:
    """Path -> (shape, dtype) of every variable ``model`` needs for ``info``'s clips."""
    clips = jax.ShapeDtypeStruct((1, *info.clip_size, 3), np.float32)
    abstract = jax.eval_shape(lambda c: model.init(jax.random.key(0), c, train=False), clips)
    return {k: (tuple(v.shape), v.dtype) for k, v in _flat(_plain(abstract)).items()}


def check_variables(model: nn.Module, info: ModelInfo, variables: Any, where: str) -> None:
    """Raise CheckpointError listing every missing, unexpected or misshaped array."""
    want = expected_shapes(model, info)
    have = {
        k: (tuple(np.shape(v)), np.asarray(v).dtype) for k, v in _flat(_plain(variables)).items()
    }
    missing = sorted(set(want) - set(have))
    unexpected = sorted(set(have) - set(want))
    wrong = sorted(
        f"{k}: {have[k][0]} vs {want[k][0]}"
        for k in set(want) & set(have)
        if have[k][0] != want[k][0]
    )
    if missing or unexpected or wrong:
        parts = [
            f"missing {missing}" if missing else "",
            f"unexpected {unexpected}" if unexpected else "",
        ]
        parts.append(f"wrong shapes (stored vs expected) {wrong}" if wrong else "")
        raise CheckpointError(
            f"variables in {where} do not match {info.arch} (num_classes={info.num_classes}, "
            f"width={info.width}, clip {info.clip_size}): " + "; ".join(p for p in parts if p)
        )


def check_finite_variables(variables: Any, where: str, limit: int = 5) -> None:
    """Raise CheckpointError naming each array of ``variables`` that holds NaN or
    infinite values (the first ``limit``, then a count): such weights make every
    logit and every relevance map NaN, so they are refused where they are read."""
    bad = []
    for name, leaf in _flat(_plain(variables)).items():
        array = np.asarray(leaf)
        if not np.issubdtype(array.dtype, np.inexact):
            continue
        nan, inf = int(np.isnan(array).sum()), int(np.isinf(array).sum())
        if nan or inf:
            bad.append(f"{name} ({nan} NaN, {inf} infinite of {array.size})")
    if bad:
        more = f" and {len(bad) - limit} more" if len(bad) > limit else ""
        raise CheckpointError(
            f"variables in {where} hold non-finite values: {'; '.join(bad[:limit])}{more}"
        )


def writable_directory(
    path: str | os.PathLike,
    what: str,
    error: type[SelrelError] = CheckpointError,
    *,
    writable: bool = True,
) -> pathlib.Path:
    """``path`` made absolute, if a directory can be there: it is one already, or its
    nearest existing ancestor is a directory (this process may write in, unless
    ``writable=False``).

    ``what`` names the path in the error (``"--out"``, ``"checkpoint directory"``),
    raised as ``error`` before anything is written.
    """
    path = pathlib.Path(path).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise error(f"{what} {path} is a file, not a directory")
    ancestor = next(p for p in (path, *path.parents) if p.exists())
    if not ancestor.is_dir():
        raise error(f"{what} {path} is below {ancestor}, which is a file, not a directory")
    if writable and not os.access(ancestor, os.W_OK | os.X_OK):
        raise error(f"{what} {path} cannot be written: no write permission in {ancestor}")
    return path


def checkpoint_target(
    directory: str | os.PathLike, what: str = "checkpoint directory"
) -> pathlib.Path:
    """``directory`` made absolute, if :func:`save` may write a checkpoint there: a new
    or empty directory, or one that holds a checkpoint :func:`save` wrote, unchanged
    since (its marker file lists every file; save replaces it). ``what`` names the
    path in the CheckpointError."""
    directory = writable_directory(directory, what)
    entries = sorted(os.listdir(directory)) if directory.is_dir() else []
    others = [name for name in entries if name not in (INFO_FILE, VARIABLES_DIR, MARKER_FILE)]
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise CheckpointError(
            f"{what} {directory} holds other files than a checkpoint ({shown}); save a "
            "checkpoint into a new directory or over an existing checkpoint"
        )
    if entries:  # replaced only if provably one this library saved, unchanged since
        check_owned(directory, MARKER_KIND, what, CheckpointError)
    return directory


def _make_parents(directory: pathlib.Path) -> list[pathlib.Path]:
    """Create ``directory`` and its missing parents; return the ones created, deepest first."""
    created = [p for p in (directory, *directory.parents) if not p.exists()]
    directory.mkdir(parents=True, exist_ok=True)
    return created


def save(directory: str | os.PathLike, info: ModelInfo, variables: Any) -> pathlib.Path:
    """Write ``variables`` (orbax) and ``info`` (``info.json``) to ``directory``; returns it.

    The variables are checked against the model ``info`` describes first, so a
    saved checkpoint always loads. The checkpoint is written into a temporary
    directory next to ``directory`` and renamed into place at the end, so a
    failure (a full disk, an interruption) leaves nothing behind and a checkpoint
    already in ``directory`` intact; that one is replaced on success (temporaries a
    killed save left beside ``directory`` are removed first). A directory
    that holds other files than a checkpoint is refused (see
    :func:`checkpoint_target`), as is one that cannot be written.
    """
    import orbax.checkpoint as ocp

    if not isinstance(info, ModelInfo):
        raise SelrelError(f"save needs a ModelInfo; got {type(info).__name__}")
    directory = checkpoint_target(directory)
    tree = jax.tree_util.tree_map(np.asarray, _plain(variables))
    check_variables(build(info), info, tree, "save()")
    check_finite_variables(tree, "save()")

    def fill(staging: pathlib.Path) -> None:
        with ocp.PyTreeCheckpointer() as checkpointer:
            checkpointer.save(staging / VARIABLES_DIR, tree)
        (staging / INFO_FILE).write_text(json_text(info.to_dict(), sort_keys=False) + "\n")
        write_marker(staging, MARKER_KIND, {"arch": info.arch})

    created = []
    try:
        created = _make_parents(directory.parent)
        remove_stale_temporaries(directory)
        write_folder(directory, fill)
    except BaseException as error:
        for parent in created:  # deepest first; stops at one that is not empty
            with contextlib.suppress(OSError):
                parent.rmdir()
        if isinstance(error, Exception) and not isinstance(error, SelrelError):
            reason = getattr(error, "strerror", None) or first_words(error)
            raise CheckpointError(f"cannot write checkpoint {directory}: {reason}") from None
        raise
    return directory


def shipped_checkpoints() -> dict[str, pathlib.Path]:
    """Name -> directory of every checkpoint shipped with the package.

    The source tree's top-level ``checkpoints/`` comes first; the copy an
    installed wheel carries (``selrel_jax/_checkpoints/``, put there by
    setup.py) fills in the rest.
    """
    found: dict[str, pathlib.Path] = {}
    for root in _checkpoint_roots():
        if root.is_dir():
            for child in sorted(root.iterdir()):
                if (child / INFO_FILE).is_file():
                    found.setdefault(child.name, child)
    return found


def _checkpoint_roots() -> list[pathlib.Path]:
    package = pathlib.Path(__file__).resolve().parents[1]
    repository = package.parent
    roots = []
    if (repository / "pyproject.toml").is_file():  # running from a source checkout
        roots.append(repository / "checkpoints")
    roots.append(package / "_checkpoints")  # the copy setup.py puts into wheels
    return roots


def _resolve(name_or_path: str | pathlib.Path) -> pathlib.Path:
    path = pathlib.Path(name_or_path).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists():
        raise CheckpointError(
            f"{path} is a file, not a checkpoint (a directory holding {INFO_FILE} "
            f"and {VARIABLES_DIR}/)"
        )
    shipped = shipped_checkpoints()
    if isinstance(name_or_path, str) and name_or_path in shipped:
        return shipped[name_or_path]
    raise CheckpointError(
        f"no checkpoint named or at {str(name_or_path)!r}; shipped checkpoints: {sorted(shipped)}"
    )


def _drop_closed_loop_reports() -> None:
    """After a failed restore, tensorstore still hands its pending reads to the asyncio
    loop orbax has already closed, and Python prints each refusal as an unraisable
    "Event loop is closed" traceback. Drop exactly those reports; keep every other."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_closed_loop_reports", False):
        return

    def hook(unraisable: Any) -> None:
        error = unraisable.exc_value
        if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
            previous(unraisable)

    hook.drops_closed_loop_reports = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def first_words(error: Exception, limit: int = 200) -> str:
    """The gist of a storage library's error: its first line, without the spec dump
    tensorstore appends, at most ``limit`` characters."""
    text = str(error).strip()
    first = text.splitlines()[0].split(" [tensorstore_spec=")[0] if text else ""
    first = first or type(error).__name__
    return first if len(first) <= limit else first[: limit - 3] + "..."


def read_info(directory: pathlib.Path) -> ModelInfo:
    """Parse ``directory/info.json``; any problem is a CheckpointError naming the file."""
    path = directory / INFO_FILE
    if not path.is_file():
        raise CheckpointError(f"checkpoint {directory} has no {INFO_FILE}")
    try:
        return ModelInfo.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"corrupt metadata {path}: {e}") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None
    except (SelrelError, TypeError) as e:
        raise CheckpointError(f"invalid metadata {path}: {e}") from None


def load_info(name_or_path: str | os.PathLike) -> ModelInfo:
    """A checkpoint's :class:`ModelInfo` by shipped name or directory, without reading
    its variables (what a run needs to know before it loads the model).

    Examples:
        >>> from selrel_jax.models import load_info
        >>> load_info("vit_small_motion").arch
        'vit_small'
    """
    return read_info(_resolve(name_or_path))


def load(name_or_path: str | pathlib.Path) -> tuple[nn.Module, dict[str, Any], ModelInfo]:
    """Load a checkpoint by shipped name or directory -> ``(model, variables, info)``.

    Examples:
        A checkpoint shipped with the package, by name:

        >>> import jax.numpy as jnp
        >>> from selrel_jax.models import load
        >>> model, variables, info = load("c3d_small_motion")
        >>> info.clip_size, info.class_names[:2]
        ((16, 48, 48), ('translate_left', 'translate_right'))
        >>> clips = info.normalize(jnp.zeros((1, 16, 48, 48, 3), jnp.uint8))
        >>> model.apply(variables, clips, train=False).shape
        (1, 6)
    """
    import orbax.checkpoint as ocp

    directory = _resolve(name_or_path)
    info = read_info(directory)
    try:
        model = build(info)
    except (SelrelError, TypeError) as e:  # TypeError: model_kwargs another arch does not take
        raise CheckpointError(
            f"metadata in {directory / INFO_FILE} names no buildable model: {e}"
        ) from None
    var_dir = directory / VARIABLES_DIR
    if not var_dir.is_dir():
        raise CheckpointError(f"checkpoint {directory} has no {VARIABLES_DIR}/ directory")
    try:
        with ocp.PyTreeCheckpointer() as checkpointer:
            restored = checkpointer.restore(var_dir)
    except Exception as e:  # orbax/tensorstore raise many types for broken files
        _drop_closed_loop_reports()
        raise CheckpointError(
            f"corrupt or incomplete checkpoint {var_dir}: {first_words(e)}"
        ) from None
    variables = jax.tree_util.tree_map(np.asarray, _plain(restored))
    check_variables(model, info, variables, str(var_dir))
    check_finite_variables(variables, str(var_dir))
    return model, variables, info
