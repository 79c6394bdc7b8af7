"""Synthetic motion benchmark: classes that only motion tells apart, with exact motion masks.

Each clip shows one textured object on a textured, slowly varying background with mild
noise. The class is the object's motion (translation direction or rotation sense); its
shape, texture, colours, size, speed, position and orientation, and the background, are
drawn independently of the class. The scene is a torus: an object leaving one edge
re-enters at the opposite one, so the object's position is uniform over the frame at
*every* time step for every class, and the orientation is uniform too. Hence no single
frame, at any index, carries class information (only the ``biased`` configs add a static
cue, the background hue, in their train and validation splits).

Two variants separate appearance from motion. ``distractors`` adds one to three static
objects drawn from the moving object's own shape, texture, colour and size distribution:
they never move and do not overlap the moving object at the middle frame, which is drawn
on top of them, and no object carries noise (the background still drifts and carries
noise), so the only thing that tells the moving object from the others is its motion.
``biased_still`` is ``biased`` on a background that does not change over time (no drift,
no brightness ramp, no per-frame noise): its hue cue is static in the strict sense.

Everything is procedural and deterministic: example ``index`` of ``split`` under ``seed``
is drawn from ``np.random.default_rng([seed, split_id, index])`` (static objects from
``[seed, split_id, index, 1]``), so the same config and seed give the same bytes, and any
example can be regenerated alone. The variants draw the same numbers as their base: example
``i`` of ``distractors`` is example ``i`` of ``default`` (object, motion, background,
background noise) plus static objects, and ``biased_still`` example ``i`` shows the object
and background hue of ``biased`` example ``i``.

Per example (layout THWC, as everywhere in selrel_jax):

- ``video``: uint8 (T, H, W, 3) RGB.
- ``label``: int32 class index into :data:`CLASS_NAMES`.
- ``mask``: bool (T, H, W), the exact motion mask: pixels where the rendered layer of the
  moving object (its RGB plus coverage; background and static objects excluded) at frame
  t differs from frame t-1 or t+1 (the first and last frames use their one neighbour).
  In-place rotation counts.
- ``boxes``: float32 (T, 4), the moving object's axis-aligned extent per frame as
  ``(y0, x0, y1, x1)`` in pixels (pixel centres at ``i + 0.5``). Because the scene wraps,
  the box may extend past the frame edge; the part beyond reappears on the opposite side.
- ``static_mask``: bool (T, H, W), the visible pixels of the static objects at frame t
  (where the moving object does not cover them); all False in configs without them.

Examples:
    >>> from selrel_jax.data import synthetic_motion as sm
    >>> data = sm.generate_split("tiny", "test", seed=1, count=4)
    >>> data["video"].shape, data["mask"].shape, data["boxes"].shape
    ((4, 8, 32, 32, 3), (4, 8, 32, 32), (4, 8, 4))
    >>> sm.CLASS_NAMES[data["label"][0]] in sm.CLASS_NAMES
    True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from selrel_jax._checks import integer, one_of
from selrel_jax.errors import DataError

__all__ = [
    "CLASS_NAMES",
    "CONFIGS",
    "SPLITS",
    "MotionConfig",
    "example_scene",
    "generate_example",
    "generate_split",
    "get_config",
    "motion_mask_from_layer",
    "render_object_layer",
]

#: The six classes, in label order.
CLASS_NAMES: tuple[str, ...] = (
    "translate_left",
    "translate_right",
    "translate_up",
    "translate_down",
    "rotate_clockwise",
    "rotate_counterclockwise",
)

#: The splits of every config.
SPLITS: tuple[str, ...] = ("train", "validation", "test")

# Unit displacement per class in (y, x) pixels with y pointing down, and rotation sense
# (+1 is clockwise on screen because y points down).
_DIRECTIONS = np.array([[0, -1], [0, 1], [-1, 0], [1, 0], [0, 0], [0, 0]], dtype=np.float64)
_SPIN = np.array([0, 0, 0, 0, 1, -1], dtype=np.float64)


@dataclasses.dataclass(frozen=True)
class MotionConfig:
    """Parameters of one synthetic_motion variant.

    Speeds are in units of the frame's shorter side per frame (translation) and degrees
    per frame (rotation); ``noise_std`` is on the 0..255 scale. ``static_objects`` is the
    inclusive range of the number of static objects per clip (``(0, 0)``: none); a config
    with static objects adds no noise to any object. ``still_background`` freezes the
    background: no drift, no brightness ramp and no noise on it.
    """

    name: str
    frames: int = 16
    height: int = 48
    width: int = 48
    biased: bool = False
    seed: int = 0
    split_sizes: Mapping[str, int] = dataclasses.field(
        default_factory=lambda: {"train": 4800, "validation": 600, "test": 1200}
    )
    speed_range: tuple[float, float] = (0.03, 0.05)
    spin_range: tuple[float, float] = (9.0, 16.0)
    size_range: tuple[float, float] = (0.16, 0.24)
    noise_std: float = 3.0
    static_objects: tuple[int, int] = (0, 0)
    still_background: bool = False
    description: str = ""


#: The dataset's configs by name.
CONFIGS: dict[str, MotionConfig] = {
    "default": MotionConfig(
        name="default",
        description="16 frames of 48x48; 6 motion classes; no static cue.",
    ),
    "biased": MotionConfig(
        name="biased",
        biased=True,
        description=(
            "As default, but in train and validation the background hue determines the "
            "class; in test the hue is random, so a model that took the shortcut fails."
        ),
    ),
    "tiny": MotionConfig(
        name="tiny",
        frames=8,
        height=32,
        width=32,
        split_sizes={"train": 48, "validation": 12, "test": 24},
        speed_range=(0.05, 0.08),
        description="8 frames of 32x32, a few dozen examples: for tests.",
    ),
    "tiny_biased": MotionConfig(
        name="tiny_biased",
        frames=8,
        height=32,
        width=32,
        biased=True,
        split_sizes={"train": 48, "validation": 12, "test": 24},
        speed_range=(0.05, 0.08),
        description="tiny with the biased config's static cue: for tests.",
    ),
    "distractors": MotionConfig(
        name="distractors",
        static_objects=(1, 3),
        description=(
            "As default, plus one to three static objects like the moving one (which is "
            "drawn on top); no object carries noise, so only motion tells them apart."
        ),
    ),
    "biased_still": MotionConfig(
        name="biased_still",
        biased=True,
        still_background=True,
        description=(
            "As biased, but the background does not change over time (no drift, no "
            "brightness ramp, no noise on it): the hue cue is strictly static."
        ),
    ),
    "tiny_distractors": MotionConfig(
        name="tiny_distractors",
        frames=8,
        height=32,
        width=32,
        static_objects=(1, 3),
        split_sizes={"train": 48, "validation": 12, "test": 24},
        speed_range=(0.05, 0.08),
        description="tiny with the distractors config's static objects: for tests.",
    ),
    "tiny_biased_still": MotionConfig(
        name="tiny_biased_still",
        frames=8,
        height=32,
        width=32,
        biased=True,
        still_background=True,
        split_sizes={"train": 48, "validation": 12, "test": 24},
        speed_range=(0.05, 0.08),
        description="tiny_biased on a background that does not change: for tests.",
    ),
}


def get_config(config: str | MotionConfig) -> MotionConfig:
    """The :class:`MotionConfig` named ``config`` (or ``config`` itself)."""
    if isinstance(config, MotionConfig):
        return config
    return CONFIGS[one_of("synthetic_motion config", config, sorted(CONFIGS))]


def _split_id(split: str) -> int:
    return SPLITS.index(one_of("split", split, SPLITS))


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB in [0, 1]; the last axis of the result is the channel."""
    h = np.asarray(h, dtype=np.float64) % 1.0
    k = (np.array([5.0, 3.0, 1.0]) + 6.0 * h[..., None]) % 6.0
    f = np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return np.asarray(v)[..., None] * (1.0 - np.asarray(s)[..., None] * f)


def render_object_layer(
    height: int,
    width: int,
    centers: np.ndarray,
    angles: np.ndarray,
    half_size: tuple[float, float],
    shape: str,
    cell: tuple[float, float],
    colors: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Render the object alone, frame by frame, on the torus.

    Args:
      height: frame height.
      width: frame width.
      centers: (T, 2) object centre per frame in pixels (y, x); wrapped modulo the size.
      angles: (T,) orientation per frame in radians (positive turns clockwise on screen).
      half_size: the object's half extents (a, b) along its own axes (u, v).
      shape: "ellipse", "rectangle" or "diamond".
      cell: checker cell size (along u, along v) of the texture, in pixels.
      colors: (2, 3) uint8 colours of the checker.

    Returns:
      ``(coverage, rgb)``: bool (T, H, W) and uint8 (T, H, W, 3), zero outside the object.
    """
    centers = np.asarray(centers, dtype=np.float64)
    angles = np.asarray(angles, dtype=np.float64)
    ys = np.arange(height, dtype=np.float64) + 0.5
    xs = np.arange(width, dtype=np.float64) + 0.5
    # Shortest displacement on the torus from the centre to each pixel centre.
    dy = (ys[None, :] - centers[:, 0:1] + height / 2) % height - height / 2  # (T, H)
    dx = (xs[None, :] - centers[:, 1:2] + width / 2) % width - width / 2  # (T, W)
    dy, dx = dy.astype(np.float32), dx.astype(np.float32)
    cos = np.cos(angles).astype(np.float32)[:, None, None]
    sin = np.sin(angles).astype(np.float32)[:, None, None]
    # Object coordinates: rotate the displacement by -angle.
    u = cos * dx[:, None, :] + sin * dy[:, :, None]
    v = -sin * dx[:, None, :] + cos * dy[:, :, None]
    a, b = half_size
    if shape == "ellipse":
        coverage = (u / a) ** 2 + (v / b) ** 2 <= 1.0
    elif shape == "rectangle":
        coverage = (np.abs(u) <= a) & (np.abs(v) <= b)
    elif shape == "diamond":
        coverage = np.abs(u) / a + np.abs(v) / b <= 1.0
    else:
        one_of("object shape", shape, _SHAPES)
    parity = (np.floor(u / cell[0]) + np.floor(v / cell[1])).astype(np.int64) % 2
    rgb = np.asarray(colors, dtype=np.uint8)[parity]
    rgb[~coverage] = 0
    return coverage, rgb


def motion_mask_from_layer(coverage: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """Pixels where the object layer at frame t differs from frame t-1 or t+1.

    ``coverage`` bool (T, H, W) and ``rgb`` (T, H, W, C) form the object layer; the first
    and last frames compare with their one neighbour. Returns bool (T, H, W).
    """
    layer = np.concatenate([coverage[..., None].astype(np.int16), rgb.astype(np.int16)], -1)
    changed = np.any(layer[1:] != layer[:-1], axis=-1)  # (T-1, H, W): t vs t+1
    mask = np.zeros(coverage.shape, dtype=bool)
    mask[:-1] |= changed
    mask[1:] |= changed
    return mask


def _object_extent(shape: str, a: float, b: float, angles: np.ndarray) -> np.ndarray:
    """Half extents (ey, ex) of the rotated shape's bounding box, per angle: (T, 2)."""
    c, s = np.abs(np.cos(angles)), np.abs(np.sin(angles))
    if shape == "ellipse":
        ex = np.sqrt((a * c) ** 2 + (b * s) ** 2)
        ey = np.sqrt((a * s) ** 2 + (b * c) ** 2)
    elif shape == "rectangle":
        ex = a * c + b * s
        ey = a * s + b * c
    else:  # diamond: the extreme points are the four vertices
        ex = np.maximum(a * c, b * s)
        ey = np.maximum(a * s, b * c)
    return np.stack([ey, ex], axis=-1)


_SHAPES = ("ellipse", "rectangle", "diamond")


def _background(rng: np.random.Generator, cfg: MotionConfig, hue: float) -> np.ndarray:
    """Textured, slowly varying background, float32 (T, H, W, 3) in [0, 1].

    With ``cfg.still_background`` every frame is the same: the drift and the brightness
    ramp are still drawn (so the rest of the example matches its moving-background twin)
    but not applied.
    """
    t_count, h, w = cfg.frames, cfg.height, cfg.width
    ys = (np.arange(h) + 0.5) / h
    xs = (np.arange(w) + 0.5) / w
    t = np.arange(t_count, dtype=np.float64)
    # Three plane waves drifting slowly in random directions; each is separable as
    # Re(e^{i ky y} e^{i kx x} e^{i (phase + drift t)}), which keeps this cheap.
    waves = np.zeros((t_count, h, w), dtype=np.complex64)
    for _ in range(3):
        fy, fx = rng.integers(-3, 4, size=2)
        phase = rng.uniform(0, 2 * np.pi)
        drift = rng.uniform(-0.06, 0.06)  # radians per frame
        if cfg.still_background:
            drift = 0.0
        ey = np.exp(2j * np.pi * fy * ys).astype(np.complex64)
        ex = np.exp(2j * np.pi * fx * xs).astype(np.complex64)
        et = np.exp(1j * (phase + drift * t)).astype(np.complex64)
        waves += et[:, None, None] * (ey[:, None] * ex[None, :])[None]
    pattern = waves.real / 3
    grain = rng.uniform(-1.0, 1.0, size=(h, w)).astype(np.float32)  # static fine texture
    base = _hsv_to_rgb(hue, rng.uniform(0.25, 0.5), rng.uniform(0.3, 0.55)).astype(np.float32)
    tint = _hsv_to_rgb(hue + 0.5, 0.5, 0.5).astype(np.float32) - 0.25
    ramp = 1.0 + rng.uniform(-0.08, 0.08) * (t / max(t_count - 1, 1) - 0.5)
    if cfg.still_background:
        ramp = np.ones_like(ramp)
    shade = ramp.astype(np.float32)[:, None, None] * (1.0 + 0.25 * pattern + 0.08 * grain)
    background = shade[..., None] * base + 0.08 * pattern[..., None] * tint
    return np.clip(background, 0.0, 1.0)


def _draw_appearance(rng: np.random.Generator, cfg: MotionConfig) -> dict:
    """An object's shape, size, checker texture and colours, independent of any class."""
    side = float(min(cfg.height, cfg.width))
    shape = _SHAPES[rng.integers(len(_SHAPES))]
    a = rng.uniform(*cfg.size_range) * side
    b = a * rng.uniform(0.45, 0.7)
    if shape == "diamond":
        a, b = a * 1.2, b * 1.2
    cell = (rng.uniform(0.18, 0.35) * a * 2, rng.uniform(0.3, 0.6) * b * 2)
    hue = rng.uniform()
    colors = _hsv_to_rgb(
        np.array([hue, hue + rng.uniform(0.3, 0.7)]),
        np.array([rng.uniform(0.6, 1.0), rng.uniform(0.5, 1.0)]),
        np.array([rng.uniform(0.85, 1.0), rng.uniform(0.55, 0.8)]),
    )
    return {
        "shape": shape,
        "half_size": (a, b),
        "cell": cell,
        "colors": np.round(colors * 255).astype(np.uint8),
    }


def _render(cfg: MotionConfig, centers: np.ndarray, angles: np.ndarray, look: dict):
    """``render_object_layer`` of an object whose appearance is the dict ``look``."""
    return render_object_layer(
        cfg.height,
        cfg.width,
        centers,
        angles,
        look["half_size"],
        look["shape"],
        look["cell"],
        look["colors"],
    )


def _grow(mask: np.ndarray) -> np.ndarray:
    """``mask`` (H, W) plus its 8 neighbours on the torus: keeps a one-pixel gap."""
    grown = mask.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            grown |= np.roll(mask, (dy, dx), axis=(0, 1))
    return grown


# Poses tried per appearance, and appearances per static object, before giving up. In the
# registered configs 99% of objects fit within about 20 poses, but a large object in a
# crowded clip may find no free place at all: it is then redrawn (about 1 object in 600).
_POSES_PER_LOOK = 100
_LOOKS_PER_OBJECT = 100


def _place(
    cfg: MotionConfig, rng: np.random.Generator, occupied: np.ndarray
) -> tuple[dict, np.ndarray] | None:
    """A new object at a pose clear of ``occupied`` and its (H, W) coverage, or None."""
    for _ in range(_LOOKS_PER_OBJECT):
        look = _draw_appearance(rng, cfg)
        for _ in range(_POSES_PER_LOOK):
            center = rng.uniform(0.0, 1.0, size=2) * np.array([cfg.height, cfg.width])
            angle = rng.uniform(0.0, 2 * np.pi)
            coverage = _render(cfg, center[None], np.array([angle]), look)[0][0]
            if not (coverage & occupied).any():
                return {"center": center, "angle": angle, **look}, coverage
    return None


def _draw_static_objects(
    cfg: MotionConfig, split_id: int, seed: int, index: int, moving: dict
) -> list[dict]:
    """The example's static objects, from their own random stream.

    ``moving`` holds the moving object's appearance and its ``center`` and ``angle`` at
    the middle frame. Each static object is placed (uniformly on the torus, uniform
    orientation) where it keeps a one-pixel gap to that pose of the moving object and to
    the static objects placed before.
    """
    low = integer("MotionConfig static_objects[0]", cfg.static_objects[0], minimum=0)
    high = integer("MotionConfig static_objects[1]", cfg.static_objects[1], minimum=low)
    if high == 0:
        return []
    rng = np.random.default_rng([seed, split_id, index, 1])
    occupied = _grow(
        _render(cfg, moving["center"][None], np.array([moving["angle"]]), moving)[0][0]
    )
    objects = []
    for number in range(int(rng.integers(low, high + 1))):
        placed = _place(cfg, rng, occupied)
        if placed is None:
            raise DataError(
                f"synthetic_motion config {cfg.name!r}: no free place for static object "
                f"{number + 1} of example {index}; make size_range or static_objects smaller"
            )
        objects.append(placed[0])
        occupied |= _grow(placed[1])
    return objects


def _draw_scene(
    cfg: MotionConfig, split: str, seed: int, index: int
) -> tuple[dict, np.random.Generator]:
    """Draw the example's objects and motion; returns them and the rng (for the rest)."""
    seed, index = integer("seed", seed, minimum=0), integer("index", index, minimum=0)
    rng = np.random.default_rng([seed, _split_id(split), index])
    num_classes = len(CLASS_NAMES)
    label = int(index) % num_classes
    h, w = cfg.height, cfg.width
    side = float(min(h, w))
    t = np.arange(cfg.frames, dtype=np.float64)

    # Motion: the class decides direction / rotation sense only.
    speed = rng.uniform(*cfg.speed_range) * side
    spin = np.deg2rad(rng.uniform(*cfg.spin_range))
    start = rng.uniform(0.0, 1.0, size=2) * np.array([h, w])
    velocity = speed * _DIRECTIONS[label]
    centers = (start[None, :] + t[:, None] * velocity[None, :]) % np.array([h, w], float)
    angular_velocity = _SPIN[label] * spin
    angles = rng.uniform(0.0, 2 * np.pi) + angular_velocity * t

    look = _draw_appearance(rng, cfg)  # independent of the class
    if cfg.biased and split != "test":
        bg_hue = (label + rng.uniform(-0.3, 0.3)) / num_classes
    else:
        bg_hue = rng.uniform()
    middle = {"center": centers[cfg.frames // 2], "angle": angles[cfg.frames // 2], **look}
    scene = {
        "label": label,
        "centers": centers,
        "angles": angles,
        "velocity": velocity,
        "angular_velocity": angular_velocity,
        **look,
        "background_hue": bg_hue % 1.0,
        "static_objects": _draw_static_objects(cfg, _split_id(split), seed, index, middle),
    }
    return scene, rng


def example_scene(config: str | MotionConfig, split: str, seed: int, index: int) -> dict:
    """The hidden parameters of an example: what its frames were rendered from.

    Keys: ``label``; ``centers`` (T, 2) object centre (y, x) in pixels, wrapped;
    ``angles`` (T,) orientation in radians (increasing = clockwise on screen);
    ``velocity`` (2,) in pixels per frame (y, x); ``angular_velocity`` in radians per
    frame; ``shape``, ``half_size``, ``cell``, ``colors`` (the object's appearance);
    ``background_hue`` in [0, 1); ``static_objects``, a list (empty without them) of
    dicts with ``center`` (2,), ``angle`` and the same four appearance keys, in drawing
    order, placed clear of the moving object's pose at the middle frame
    (``centers[T // 2]``, ``angles[T // 2]``).
    """
    return _draw_scene(get_config(config), split, seed, index)[0]


def _compose(
    cfg: MotionConfig, scene: dict, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The video and the layers it was made of: ``(video, coverage, rgb, static_mask)``.

    ``coverage`` and ``rgb`` are the moving object's layer; static objects go between
    the background and it. Noise goes on the background unless it is still, and on the
    objects unless there are static objects (they must stay exactly the same, and the
    moving object must look like them).
    """
    background = _background(rng, cfg, scene["background_hue"])
    coverage, obj_rgb = _render(cfg, scene["centers"], scene["angles"], scene)
    backdrop = background * 255.0
    static_coverage = np.zeros((cfg.height, cfg.width), bool)
    for thing in scene["static_objects"]:
        covers, rgb = _render(cfg, thing["center"][None], np.array([thing["angle"]]), thing)
        backdrop = np.where(covers[..., None], rgb.astype(np.float32), backdrop)
        static_coverage |= covers[0]
    frames = np.where(coverage[..., None], obj_rgb.astype(np.float32), backdrop)
    noise = np.float32(cfg.noise_std) * rng.standard_normal(frames.shape, dtype=np.float32)
    objects_noisy, background_noisy = cfg.static_objects[1] == 0, not cfg.still_background
    if objects_noisy and background_noisy:
        frames += noise
    else:
        noisy = np.where(coverage | static_coverage[None], objects_noisy, background_noisy)
        frames = np.where(noisy[..., None], frames + noise, frames)
    video = np.clip(np.round(frames), 0, 255).astype(np.uint8)
    return video, coverage, obj_rgb, static_coverage[None] & ~coverage


def generate_example(
    config: str | MotionConfig, split: str, seed: int, index: int
) -> dict[str, np.ndarray]:
    """Example ``index`` of ``split`` under ``seed``: dict of video, label, mask, boxes and
    static_mask."""
    cfg = get_config(config)
    scene, rng = _draw_scene(cfg, split, seed, index)
    video, coverage, obj_rgb, static_mask = _compose(cfg, scene, rng)
    extent = _object_extent(scene["shape"], *scene["half_size"], scene["angles"])
    centers = scene["centers"]
    boxes = np.concatenate([centers - extent, centers + extent], axis=-1).astype(np.float32)
    return {
        "video": video,
        "label": np.int32(scene["label"]),
        "mask": motion_mask_from_layer(coverage, obj_rgb),
        "boxes": boxes,
        "static_mask": static_mask,
    }


def generate_split(
    config: str | MotionConfig, split: str, seed: int, count: int | None = None
) -> dict[str, np.ndarray]:
    """The first ``count`` examples of ``split`` under ``seed``, stacked.

    Returns ``{"video": uint8 (N,T,H,W,3), "label": int32 (N,), "mask": bool (N,T,H,W),
    "boxes": float32 (N,T,4), "static_mask": bool (N,T,H,W)}``. ``count`` defaults to the
    config's split size; labels cycle through the classes, so any ``count`` that is a
    multiple of ``len(CLASS_NAMES)`` is balanced. The TFDS builder stores exactly
    ``generate_split(config, split, config.seed)``.
    """
    cfg = get_config(config)
    _split_id(split)
    seed = integer("seed", seed, minimum=0)  # NumPy seeds are non-negative
    n = cfg.split_sizes[split] if count is None else integer("count", count, minimum=0)
    t_count, h, w = cfg.frames, cfg.height, cfg.width
    out = {
        "video": np.empty((n, t_count, h, w, 3), np.uint8),
        "label": np.empty((n,), np.int32),
        "mask": np.empty((n, t_count, h, w), bool),
        "boxes": np.empty((n, t_count, 4), np.float32),
        "static_mask": np.empty((n, t_count, h, w), bool),
    }
    for i in range(n):
        example = generate_example(cfg, split, seed, i)
        for key, value in example.items():
            out[key][i] = value
    return out
