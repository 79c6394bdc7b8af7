"""``selrel convert``: PyTorch weights (.pth) -> a selrel_jax checkpoint directory."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from selrel_jax.cli import app, fail

_ARCHS = ("c3d", "c3d_small", "r3d_18", "mc3_18", "r2plus1d_18")


def read_torch_state_dict(path: Path) -> dict[str, Any]:
    """torch.load(weights_only=True) -> a flat state_dict (unwraps "state_dict"/"model")."""
    try:
        import torch
    except ImportError:
        fail("converting PyTorch weights needs torch: pip install 'selrel-jax[torch]'")
    if not path.is_file():
        fail(f"weights file not found: {path}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and torch errors all mean "not a readable .pth"
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        fail(f"cannot read PyTorch weights {path}: {reason}")
    for wrapper in ("state_dict", "model"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(wrapper), Mapping):
            loaded = loaded[wrapper]
            break
    if not isinstance(loaded, Mapping) or not loaded:
        fail(f"{path} holds no state_dict (got {type(loaded).__name__})")
    return dict(loaded)


def _class_names(path: Path | None, arch: str, num_classes: int) -> tuple[str, ...]:
    from selrel_jax import models

    if path is None:
        if arch in ("r3d_18", "mc3_18", "r2plus1d_18") and num_classes == 400:
            return models.kinetics400_class_names()
        if arch == "c3d" and num_classes == 487:
            return models.sports1m_class_names()
        return models.numeric_class_names(num_classes)
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        fail(f"cannot read --class-names {path}: {e}")
    names = [n for n in names if n]
    if len(names) != num_classes:
        fail(f"--class-names {path} has {len(names)} names; the model has {num_classes} classes")
    return tuple(names)


@app.command()
def convert(
    weights: Annotated[Path, typer.Argument(help="PyTorch state_dict file (.pth).")],
    arch: Annotated[str, typer.Option(help=f"Architecture: {', '.join(_ARCHS)}.")],
    out: Annotated[Path, typer.Option(help="Checkpoint directory to write.")],
    class_names: Annotated[
        Path | None,
        typer.Option(
            help="Text file, one class name per line in head order (default: "
            "Kinetics-400 for 400-class ResNets, Sports-1M for 487-class C3D)."
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing checkpoint in OUT.")] = False,
) -> None:
    """Convert torchvision video ResNet or C3D-port weights to an orbax checkpoint + info.json.

    Keys are torchvision's (r3d_18, mc3_18, r2plus1d_18) or the C3D port's
    (conv1 ... conv5b, fc6 ... fc8). The metadata records the published
    preprocessing (torchvision: RGB in [0, 1], Kinetics mean/std, 16 frames at
    112x112; C3D: BGR in [0, 255], Sports-1M mean, std 1). Prints OUT.
    """
    if arch not in _ARCHS:
        fail(f"unknown --arch {arch!r}; expected one of {list(_ARCHS)}")
    if (out / "info.json").exists() and not force:
        fail(f"{out} already holds a checkpoint; pass --force to replace it")
    from selrel_jax import models
    from selrel_jax.errors import SelrelError

    state = read_torch_state_dict(weights)
    try:
        model, variables = models.from_torch_state_dict(arch, state)
        num_classes = variables["params"][_head(arch)]["bias"].shape[0]
        info = models.ModelInfo.for_arch(
            arch,
            num_classes,
            class_names=_class_names(class_names, arch, num_classes),
            width=model.width,
            fps=None if arch.startswith("c3d") else 15.0,
            extra={**_published(arch), "converted_from": weights.name},
        )
        target = models.save(out, info, variables)
    except SelrelError as e:
        fail(str(e))
    typer.echo(str(target))


def _head(arch: str) -> str:
    return "fc8" if arch == "c3d" else "fc"


def _published(arch: str) -> dict[str, Any]:
    """Facts about the published weights not covered by ModelInfo's fields.

    torchvision evaluates its Kinetics models on 16-frame clips resampled to
    15 fps, resized to 128x171 and centre-cropped to 112x112; C3D used the
    same resize and crop (frame rate of the source videos).
    """
    if arch == "c3d":
        return {"resize_size": [128, 171], "trained_on": "Sports-1M"}
    if arch == "c3d_small":
        return {}
    return {"resize_size": [128, 171], "trained_on": "Kinetics-400"}
