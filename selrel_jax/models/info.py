"""Model metadata: what a checkpoint expects of its input and what its outputs mean.

Data pipelines take these values as plain parameters (data code never imports
models), so a :class:`ModelInfo` is the one place that says how to prepare
clips for a model: clip length and frame step, crop size, channel order, the
range raw pixels are scaled to, the per-channel mean and std, and the shorter
side frames are resized to before the centre crop.

Examples:
    >>> import json
    >>> import numpy as np
    >>> from selrel_jax.models import ModelInfo, kinetics400_class_names
    >>> info = ModelInfo.for_arch("r3d_18", num_classes=400, class_names=kinetics400_class_names())
    >>> record = json.dumps(info.to_dict())   # JSON-ready
    >>> ModelInfo.from_dict(json.loads(record)) == info
    True
    >>> clips = np.zeros((1, 16, 112, 112, 3), np.uint8)
    >>> x = info.normalize(clips)           # uint8 clips -> the model's float32 input
    >>> x.dtype, x[0, 0, 0, 0].round(3)
    (dtype('float32'), array([-1.895, -1.782, -1.735], dtype=float32))
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from selrel_jax._checks import one_of, positive_int, real
from selrel_jax.data import MAX_FRAME_SIDE, normalize
from selrel_jax.errors import SelrelError

__all__ = [
    "C3D_MEAN_BGR",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "KINETICS_MEAN",
    "KINETICS_STD",
    "X3D_MEAN",
    "X3D_STD",
    "ModelInfo",
    "numeric_class_names",
    "published_clip_size",
]

#: Per-channel (RGB) mean of torchvision's Kinetics-400 video models, which were
#: trained on RGB clips scaled to [0, 1].
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
#: Per-channel (RGB) std of torchvision's Kinetics-400 video models, in [0, 1].
KINETICS_STD = (0.22803, 0.22145, 0.216989)
#: The Sports-1M C3D weights expect BGR pixels in [0, 255] minus the Caffe mean
#: cube (per channel, BGR order, as the common PyTorch ports use it), std 1.
C3D_MEAN_BGR = (90.0, 98.0, 102.0)
# torchvision evaluates its Kinetics models on frames resized to 128x171 and
# centre-cropped to 112x112; the C3D port used the same resize and crop.
# Bounds of what a model's metadata may say; beyond them the first clip would not fit in
# memory (a crop of 20000x20000 aborted XLA) or the file is not metadata of a real model.
MAX_CROP_SIDE = 1024
MAX_CLIP_LENGTH = 1024
MAX_WIDTH = 64.0
MAX_CLASSES = 1_000_000
_PUBLISHED_RESIZE = {"c3d": 128, "r3d_18": 128, "mc3_18": 128, "r2plus1d_18": 128}
#: ImageNet's per-channel (RGB) mean in [0, 1]: what transformers'
#: VideoMAEImageProcessor normalises with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
#: ImageNet's per-channel (RGB) std in [0, 1] (VideoMAEImageProcessor's).
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Per-channel mean of pytorchvideo's Kinetics-400 X3D models, in [0, 1].
X3D_MEAN = (0.45, 0.45, 0.45)
#: Per-channel std of pytorchvideo's Kinetics-400 X3D models, in [0, 1].
X3D_STD = (0.225, 0.225, 0.225)
# Clips of the archs whose published evaluation is not torchvision's 16x112x112 of
# frames resized to 128: (clip length, frame step, crop side, resize side). VideoMAE
# (transformers' processor, Kinetics fine-tuning): 16 frames every 4th, 224 crops of
# frames resized to 224; pytorchvideo's X3D hub: 4 frames every 12th (XS), 13 every
# 6th (S), 182 crops of frames resized to 182.
_PUBLISHED_CLIPS = {
    "videomae_vit_s": (16, 4, 224, 224),
    "videomae_vit_b": (16, 4, 224, 224),
    "x3d_xs": (4, 12, 182, 182),
    "x3d_s": (13, 6, 182, 182),
}
# Trained here from scratch: (clip length, crop side), mean 0.5, std 0.25.
_SMALL_CLIPS = {"c3d_small": None, "vit_small": (16, 48)}


def numeric_class_names(num_classes: int) -> tuple[str, ...]:
    """Placeholder names ``class_0 ... class_{n-1}`` for heads without a label list."""
    return tuple(f"class_{i}" for i in range(num_classes))


def _floats(values: Sequence[float], what: str, length: int) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        out = ()
    if len(out) != length or not all(math.isfinite(v) for v in out):
        raise SelrelError(f"ModelInfo {what} must be {length} finite numbers; got {values!r}")
    return out


def _class_names(names: Sequence[Any], num_classes: int) -> tuple[str, ...]:
    """``names`` as strings, one per class and each once (a target given by name must
    name one class); none given: :func:`numeric_class_names`."""
    positive_int("ModelInfo num_classes", num_classes, SelrelError)
    if num_classes > MAX_CLASSES:
        raise SelrelError(f"ModelInfo num_classes must be 1 to {MAX_CLASSES}; got {num_classes}")
    out = tuple(str(n) for n in names) or numeric_class_names(num_classes)
    if len(out) != num_classes:
        raise SelrelError(f"ModelInfo has {len(out)} class names for num_classes={num_classes}")
    first: dict[str, int] = {}
    for index, name in enumerate(out):
        if name in first:
            raise SelrelError(
                f"ModelInfo class_names repeat {name!r} (indices {first[name]} and {index}); "
                "each class needs its own name"
            )
        first[name] = index
    return out


def _crop_size(crop_size: Any) -> tuple[int, int]:
    """``crop_size`` as (H, W), each side 1 to :data:`MAX_CROP_SIDE`."""
    try:
        crop = tuple(positive_int("crop_size", v, SelrelError) for v in crop_size)
    except (SelrelError, TypeError):
        crop = ()
    if len(crop) != 2:
        raise SelrelError(f"ModelInfo crop_size must be (H, W) > 0; got {crop_size!r}")
    if max(crop) > MAX_CROP_SIDE:
        raise SelrelError(
            f"ModelInfo crop_size must be (H, W) of 1 to {MAX_CROP_SIDE} pixels a side; got "
            f"{list(crop)}"
        )
    return crop


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """Metadata stored next to every checkpoint (``info.json``).

    ``class_names`` may be given empty: it is then filled with
    :func:`numeric_class_names` so that ``len(class_names) == num_classes``.
    ``value_range`` is the range raw uint8 pixels are scaled to before the
    mean is subtracted and the std divided; ``mean``/``std`` are in that range
    and in ``channel_order``. ``resize_size`` is the shorter side video frames
    are resized to before the centre crop of ``crop_size``; None means the
    crop's larger side (frames are only scaled as far as the crop needs).

    Every field is checked when the metadata is made or read (SelrelError naming the
    field): class names unique, crop sides up to :data:`MAX_CROP_SIDE`, clip length up
    to :data:`MAX_CLIP_LENGTH`, ``resize_size`` up to the largest frame side, width in
    (0, :data:`MAX_WIDTH`], ``value_range`` low < high, ``std`` positive.
    """

    arch: str
    num_classes: int
    class_names: tuple[str, ...] = ()
    width: float = 1.0
    clip_length: int = 16
    frame_step: int = 1
    fps: float | None = None
    crop_size: tuple[int, int] = (112, 112)
    resize_size: int | None = None
    channel_order: str = "RGB"
    value_range: tuple[float, float] = (0.0, 1.0)
    mean: tuple[float, float, float] = KINETICS_MEAN
    std: tuple[float, float, float] = KINETICS_STD
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        put = object.__setattr__
        put(self, "class_names", _class_names(self.class_names, self.num_classes))
        width = real("ModelInfo width", self.width, above=0, error=SelrelError)
        if width > MAX_WIDTH:
            raise SelrelError(
                f"ModelInfo width must be above 0 and at most {MAX_WIDTH}; got {width}"
            )
        put(self, "width", width)
        for field in ("clip_length", "frame_step"):
            positive_int(f"ModelInfo {field}", getattr(self, field), SelrelError)
        if self.clip_length > MAX_CLIP_LENGTH:
            raise SelrelError(f"ModelInfo clip_length must be 1 to {MAX_CLIP_LENGTH}; got "
                              f"{self.clip_length}")  # fmt: skip
        if self.fps is not None:
            put(self, "fps", real("ModelInfo fps", self.fps, above=0, error=SelrelError))
        put(self, "crop_size", _crop_size(self.crop_size))
        if self.resize_size is not None:
            resize = positive_int("ModelInfo resize_size", self.resize_size, SelrelError)
            if resize > MAX_FRAME_SIDE:
                raise SelrelError(
                    f"ModelInfo resize_size must be 1 to {MAX_FRAME_SIDE}; got {resize}"
                )
            put(self, "resize_size", resize)
        one_of("ModelInfo channel_order", self.channel_order, ("RGB", "BGR"), SelrelError)
        low, high = _floats(self.value_range, "value_range", 2)
        if not low < high:  # pixels would all map to one value, or divide by 0
            raise SelrelError(
                f"ModelInfo value_range must be (low, high) with low < high; got {[low, high]}"
            )
        put(self, "value_range", (low, high))
        put(self, "mean", _floats(self.mean, "mean", 3))
        std = _floats(self.std, "std", 3)
        if min(std) <= 0:
            raise SelrelError(f"ModelInfo std must be positive; got {self.std!r}")
        put(self, "std", std)
        put(self, "extra", dict(self.extra))

    @property
    def clip_size(self) -> tuple[int, int, int]:
        """(T, H, W) of the clips the model takes."""
        return (self.clip_length, *self.crop_size)

    @property
    def resize_side(self) -> int:
        """The shorter side frames are resized to before the centre crop:
        ``resize_size`` where the metadata records one, else the crop's larger side."""
        return self.resize_size if self.resize_size is not None else max(self.crop_size)

    @property
    def normalization(self) -> dict[str, Any]:
        """The keywords of :func:`selrel_jax.data.normalize` that prepare this model's
        input (``hashable(info.normalization)`` keys a cache of compiled functions)."""
        return {"mean": self.mean, "std": self.std, "value_range": self.value_range,
                "channel_order": self.channel_order}  # fmt: skip

    def normalize(self, clips_uint8: Any) -> Any:
        """uint8 RGB clips (N, T, H, W, 3) or (T, H, W, 3) -> the model's float32 input
        (:func:`selrel_jax.data.normalize` with :attr:`normalization`; jit-friendly)."""
        return normalize(clips_uint8, **self.normalization)

    def input_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """The normalised input range per channel, ``(low, high)`` each (3,) float32:
        pixels 0 and 255 after :meth:`normalize` (the natural ``low``/``high`` of
        ``lrp.epsilon_gamma_box``)."""
        low, high = self.value_range
        mean, std = np.asarray(self.mean), np.asarray(self.std)
        return ((low - mean) / std).astype(np.float32), ((high - mean) / std).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["extra"] = dict(self.extra)
        return json.loads(json.dumps(out))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelInfo:
        """Inverse of :meth:`to_dict`; unknown or missing keys raise SelrelError."""
        if not isinstance(data, Mapping):
            raise SelrelError(f"ModelInfo data must be a mapping; got {type(data).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise SelrelError(f"ModelInfo has unknown keys {unknown}")
        missing = sorted(k for k in ("arch", "num_classes") if k not in data)
        if missing:
            raise SelrelError(f"ModelInfo is missing keys {missing}")
        kw = dict(data)
        for key in ("class_names", "crop_size", "value_range", "mean", "std"):
            if key in kw:
                if not isinstance(kw[key], Sequence) or isinstance(kw[key], str):
                    raise SelrelError(f"ModelInfo {key} must be a list; got {kw[key]!r}")
                kw[key] = tuple(kw[key])
        if not isinstance(kw.get("extra", {}), Mapping):
            raise SelrelError(f"ModelInfo extra must be a mapping; got {kw['extra']!r}")
        return cls(**kw)

    @classmethod
    def for_arch(cls, arch: str, num_classes: int, **overrides: Any) -> ModelInfo:
        """Defaults of the published weights for ``arch``, with ``overrides`` applied.

        torchvision ResNets: RGB in [0, 1], Kinetics-400 mean/std, 16 frames,
        112x112 crops of frames resized to a shorter side of 128. ``c3d``: BGR in
        [0, 255], Sports-1M mean, std 1, the same clip, resize and crop.
        ``c3d_small`` and ``vit_small`` (16x48x48): RGB in [0, 1], mean 0.5 and
        std 0.25 (trained here from scratch), ``resize_size`` None. VideoMAE
        (``videomae_vit_s``/``_b``): RGB in [0, 1], ImageNet mean/std, 16 frames
        every 4th, 224x224 crops of frames resized to 224. X3D (``x3d_xs``,
        ``x3d_s``): RGB in [0, 1], mean 0.45, std 0.225, 4 frames every 12th
        (XS) or 13 every 6th (S), 182x182 crops of frames resized to 182. The
        published resize goes with the published crop: with another
        ``crop_size`` it is None unless given.
        """
        defaults: dict[str, Any] = _published_clip(arch, overrides)
        published_crop = tuple(overrides.get("crop_size", (112, 112))) == (112, 112)
        if arch in _PUBLISHED_RESIZE and published_crop:
            defaults["resize_size"] = _PUBLISHED_RESIZE[arch]
        if arch == "c3d":
            defaults |= dict(
                channel_order="BGR",
                value_range=(0.0, 255.0),
                mean=C3D_MEAN_BGR,
                std=(1.0, 1.0, 1.0),
            )
        elif arch in _SMALL_CLIPS:
            defaults |= dict(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
        elif arch.startswith("videomae"):
            defaults |= dict(mean=IMAGENET_MEAN, std=IMAGENET_STD)
        elif arch.startswith("x3d"):
            defaults |= dict(mean=X3D_MEAN, std=X3D_STD)
        return cls(arch=arch, num_classes=num_classes, **{**defaults, **overrides})


def published_clip_size(arch: str) -> tuple[int, int, int]:
    """(T, H, W) of the clips ``arch``'s published weights (or, trained here, its
    default) take: what :meth:`ModelInfo.for_arch` records without overrides."""
    return ModelInfo.for_arch(arch, 1).clip_size


def _published_clip(arch: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Clip length, frame step, crop and (with that crop) resize of ``arch``'s
    published evaluation, for the archs with their own."""
    if arch in _PUBLISHED_CLIPS:
        length, step, crop, resize = _PUBLISHED_CLIPS[arch]
        out = {"clip_length": length, "frame_step": step, "crop_size": (crop, crop)}
        if tuple(overrides.get("crop_size", (crop, crop))) == (crop, crop):
            out["resize_size"] = resize
        return out
    if _SMALL_CLIPS.get(arch):
        length, side = _SMALL_CLIPS[arch]
        return {"clip_length": length, "crop_size": (side, side)}
    return {}
