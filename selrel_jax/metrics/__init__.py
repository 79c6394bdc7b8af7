"""Scores of relevance maps: one definition of each, for the study's three claims.

Every score here is a pure function of arrays: jit-compiled on eager calls, and
composable with ``jax.jit`` and ``jax.vmap``. Axes are read as in
:mod:`selrel_jax.selective`: without ``layout=`` the rank decides (3 is one clip
(T, H, W), 4 one clip (T, H, W, C), 5 a batch (N, T, H, W, C)); a channel-less
batch (N, T, H, W) needs ``layout="NTHW"``. Masks never have channels, so a mask
of rank 4 is a batch (N, T, H, W). A score of one clip is a scalar, of a batch (N,).

Every score reads a map through its voxels' channel-summed magnitude
``v = sum_c |R|``. Rankings (top-k, deletion, insertion) order voxels by ``v``,
largest first, equal values by increasing flat (t, h, w) index: the same result in
any batch and on any number of devices.

Invalid values follow the library's policy: an eager call with NaN or infinite
relevance raises :class:`~selrel_jax.errors.NonFiniteError` naming the count and
the clips; under ``jit`` the affected clip's score is NaN (a bool selection is
empty) and the other clips' are untouched. Ratios with a zero denominator are 0,
never NaN.

Scores:

- Selectivity against a ground-truth mask: :func:`overlap_at_threshold` and
  :func:`overlap_at_k` (precision, recall, IoU), :func:`top_k_voxels`,
  :func:`mass_in_mask`, :func:`box_mask` (the object's boxes as a mask),
  :func:`dilate_mask` (a mask with a tolerance of N pixels).
- Spatial bias: :func:`spatial_bias` (from :mod:`selrel_jax.selective`), share of
  relevance mass that selection removed; :func:`kept_voxels`, share of voxels a
  motion mask keeps.
- Simplicity: :func:`gini`, :func:`entropy`; :func:`frame_mass` per frame.
- Faithfulness (opt-in, runs the model): :func:`deletion_curve`,
  :func:`insertion_curve`, :func:`faithfulness_baseline`, :func:`frame_freezing`.
- Sanity (runs the model): :func:`cascading_randomization` (Adebayo et al.
  2018), with :func:`spearman` and :func:`ssim` of two maps.
- Real videos: :func:`flow_motion_mask` (OpenCV optical flow; optional).

For a whole video, call :func:`spatial_bias` on the video's frames
(T, H, W[, C]) or on its clips joined along time,
``spatial_bias(rel.reshape(-1, *rel.shape[2:]), sel.reshape(-1, *sel.shape[2:]))``:
one number, the per-clip values weighted by each clip's relevance mass (not their
plain mean).

Examples:
    Two clips of the synthetic motion benchmark, with their exact motion masks:

    >>> import jax.numpy as jnp
    >>> import selrel_jax as sr
    >>> from selrel_jax.data import synthetic_motion
    >>> data = synthetic_motion.generate_split("tiny", "test", seed=1, count=2)
    >>> rel = jnp.asarray(data["video"], jnp.float32) / 255   # stands in for a relevance map
    >>> sel = sr.selective_relevance(rel, sigma=2.0)
    >>> from selrel_jax import metrics
    >>> metrics.spatial_bias(rel, sel).shape             # (N,)
    (2,)
    >>> k = jnp.sum(sr.motion_mask(rel, 2.0), axis=(1, 2, 3))
    >>> raw = metrics.overlap_at_k(rel, data["mask"], k)  # raw, at selective's sparsity
    >>> raw.precision.shape, bool(((raw.iou >= 0) & (raw.iou <= 1)).all())
    ((2,), True)
    >>> bool((metrics.gini(sel) > metrics.gini(rel)).all())   # sel is sparser
    True
"""

from selrel_jax.metrics._faithfulness import (
    REPLACEMENTS,
    Curve,
    FrameFreezing,
    deletion_curve,
    faithfulness_baseline,
    frame_freezing,
    insertion_curve,
)
from selrel_jax.metrics._flow import FARNEBACK, flow_motion_mask
from selrel_jax.metrics._inputs import MASK_LAYOUTS
from selrel_jax.metrics._maps import ENTROPY_UNITS, entropy, frame_mass, gini, kept_voxels
from selrel_jax.metrics._masks import (
    Overlap,
    box_mask,
    dilate_mask,
    mass_in_mask,
    overlap_at_k,
    overlap_at_threshold,
    top_k_voxels,
)
from selrel_jax.metrics._randomization import (
    INSENSITIVE_THRESHOLD,
    SSIM_WINDOW,
    Randomization,
    cascading_randomization,
    spearman,
    ssim,
)
from selrel_jax.selective import spatial_bias

__all__ = [
    "ENTROPY_UNITS",
    "FARNEBACK",
    "INSENSITIVE_THRESHOLD",
    "MASK_LAYOUTS",
    "REPLACEMENTS",
    "SSIM_WINDOW",
    "Curve",
    "FrameFreezing",
    "Overlap",
    "Randomization",
    "box_mask",
    "cascading_randomization",
    "deletion_curve",
    "dilate_mask",
    "entropy",
    "faithfulness_baseline",
    "flow_motion_mask",
    "frame_freezing",
    "frame_mass",
    "gini",
    "insertion_curve",
    "kept_voxels",
    "mass_in_mask",
    "overlap_at_k",
    "overlap_at_threshold",
    "spatial_bias",
    "spearman",
    "ssim",
    "top_k_voxels",
]
