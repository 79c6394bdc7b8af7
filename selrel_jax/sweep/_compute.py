"""The sweep's jit-compiled batch computations, sharded over this process's devices.

Per batch of clips, one function normalises the clips, runs the model (prediction,
target, frame freezing) and, per method, one function computes the relevance once
and every sigma's selection and scores from it (``jax.vmap`` over a traced sigma
array: one compilation serves all sigmas). Inputs and outputs are sharded along the
clip axis of a ``jax.sharding.Mesh`` over the local devices (one CPU, N simulated
CPU devices, a GPU, a TPU host's chips); a batch is padded to a multiple of the
device count.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from selrel_jax import metrics
from selrel_jax._checks import hashable, safe_divide, scaled_to_unit
from selrel_jax._jobs import compiling
from selrel_jax.attribution import make_explainer
from selrel_jax.metrics import _inputs, _maps, _masks
from selrel_jax.models.info import ModelInfo
from selrel_jax.selective import _nan_where, motion_mask, selective_relevance
from selrel_jax.sweep._settings import (
    FAITHFULNESS_REPLACEMENT,
    FAITHFULNESS_STEPS,
    PRECISION_FRACTION,
    SweepSettings,
)
from selrel_jax.sweep._sources import ClipBatch

DATA_AXIS = "data"
_AXES = (1, 2, 3)  # (T, H, W) of a batch of masks


class _Ranked(NamedTuple):
    """The raw map's channel-summed magnitudes (N, T, H, W) and their values sorted
    ascending (N, T*H*W): one sort per clip serves the raw Gini and every sigma's
    top-k precision (the sorts were most of the scoring time)."""

    magnitudes: jax.Array
    ascending: jax.Array


def _ranked(relevance: jax.Array) -> _Ranked:
    v = jax.vmap(_inputs.magnitudes)(relevance)
    return _Ranked(v, jax.vmap(_inputs.ascending)(v))


def _spatial_bias(ranked: _Ranked, kept: jax.Array) -> jax.Array:
    """``metrics.spatial_bias(relevance, selective)`` from the clips' magnitudes and
    ``kept``, the sum of the selective maps' magnitudes: ``sum |R|`` is the sum of the
    channel-summed magnitudes, which the other scores read anyway (summing the
    (N, T, H, W, C) maps took ~8x longer). A selection from ``selective_relevance``
    always passes spatial_bias's is-a-selection check."""
    total = jnp.sum(ranked.magnitudes, axis=_AXES)
    bias = jnp.where(total > 0, 1 - safe_divide(kept, total), 0)
    return jnp.where(jnp.isfinite(total) & jnp.isfinite(kept), bias, jnp.nan)


def _selection_ginis(ranked: _Ranked, masks: jax.Array) -> jax.Array:
    """(S, N) Gini index of every sigma's selective map from the raw map's sort (a
    sort per sigma was ~2/3 of the scoring time). NaN is the caller's: a selective
    map is NaN where its clip or sigma is invalid."""
    ginis = jax.vmap(_maps._ginis_of_selections, in_axes=(0, 0, 1), out_axes=1)
    return ginis(ranked.magnitudes, ranked.ascending, masks)


def _share_of_shown(relevance: jax.Array, mask: jax.Array) -> jax.Array:
    """Share of the magnitudes ``relevance`` (N, T, H, W) in ``mask``; NaN for a clip
    the mask is empty in (the clip shows no motion, or no static object: no share to
    read)."""
    mass = metrics.mass_in_mask(relevance, mask, layout="NTHW")
    return jnp.where(jnp.any(mask, axis=_AXES), mass, jnp.nan)


def _motion_scores(v: jax.Array, truth: Mapping[str, jax.Array], suffix: str) -> dict:
    """A map's share of mass in the motion mask (NaN for a clip without motion) and its
    precision at a fixed threshold, against the exact mask and the widened one, from its
    channel-summed magnitudes ``v`` (N, T, H, W): ``metrics.mass_in_mask`` and
    ``metrics.overlap_at_threshold(...).precision`` without a pass over the map each
    (the selective maps' ``v`` are the raw map's in their motion mask)."""
    total = jnp.sum(v, axis=_AXES)
    top = jnp.max(v, axis=_AXES, keepdims=True)
    selected = (v > 0) & (v >= jnp.asarray(PRECISION_FRACTION, v.dtype) * top)
    chosen = jnp.sum(selected, axis=_AXES, dtype=jnp.int32).astype(v.dtype)
    out = {}
    for name, mask in (("", truth["mask"]), ("_tolerant", truth["tolerant_mask"])):
        inside = jnp.sum(jnp.where(mask, v, 0), axis=_AXES)
        shown = jnp.any(mask, axis=_AXES) & jnp.isfinite(total)
        out[f"motion_mass{name}_{suffix}"] = jnp.where(shown, safe_divide(inside, total), jnp.nan)
        hits = jnp.sum(selected & mask, axis=_AXES, dtype=jnp.int32).astype(v.dtype)
        precision = safe_divide(hits, chosen)
        out[f"motion_precision_at_threshold{name}_{suffix}"] = jnp.where(
            jnp.isfinite(total), precision, jnp.nan
        )
    return out


def _map_scores(v: jax.Array, truth: Mapping[str, jax.Array], suffix: str, gini) -> dict:
    """The scores of one map that need no motion mask of its own, named ``*_suffix``
    (``v``: its channel-summed magnitudes (N, T, H, W); ``gini``: its Gini index)."""
    # Every score here reads the channel-summed magnitudes: from ``v``, not the
    # (N, T, H, W, C) map, which summed the channels again for each score and sigma.
    out = {f"gini_{suffix}": gini, f"entropy_{suffix}": metrics.entropy(v, layout="NTHW")}
    if "mask" in truth:
        out |= _motion_scores(v, truth, suffix)
    if "static_mask" in truth:
        out[f"static_mass_{suffix}"] = _share_of_shown(v, truth["static_mask"])
    if "boxes" in truth:
        _, _, h, w = v.shape
        out[f"box_mass_{suffix}"] = metrics.mass_in_mask(
            v, metrics.box_mask(truth["boxes"], h, w), layout="NTHW"
        )
    return out


def _sigma_scores(ranked: _Ranked, sigma, mask, gini, truth) -> dict:
    """Every score of one sigma's selection, (N,) each (``gini``: the selective map's
    Gini index from :func:`_selection_ginis`)."""
    # The selective map's magnitudes are the raw map's inside ``mask``: its mass from
    # them, with no selective map computed (each was another temporal-gradient pass).
    # NaN where selective_relevance's map is: a clip with NaN/Inf, an invalid sigma.
    invalid = ~jnp.isfinite(jnp.sum(ranked.magnitudes, axis=_AXES)) | ~(sigma >= 0)
    kept_magnitudes = jnp.where(mask, ranked.magnitudes, 0)
    mass = _nan_where(invalid, jnp.sum(kept_magnitudes, axis=_AXES))
    gini = jnp.where(jnp.isfinite(mass), gini, jnp.nan)
    kept = jnp.sum(mask, axis=_AXES)
    # The selective map's magnitudes, NaN where the map is (an invalid sigma or clip).
    v = _nan_where(~jnp.isfinite(mass), kept_magnitudes)
    out = {
        "spatial_bias": _spatial_bias(ranked, mass),
        "kept_voxels": metrics.kept_voxels(mask),
        **_map_scores(v, truth, "selective", gini),
    }
    if "mask" in truth:
        for name, truth_mask in (("", truth["mask"]), ("_tolerant", truth["tolerant_mask"])):
            scores = _matched_sparsity(ranked, mask, kept, truth_mask, name)
            # A broken clip's or sigma's empty selection is no precision of 0.
            scores[f"motion_precision{name}_selective"] = _nan_where(
                ~jnp.isfinite(mass), scores[f"motion_precision{name}_selective"]
            )
            out |= scores
    return out


def _matched_sparsity(ranked: _Ranked, mask, kept, truth_mask, name: str) -> dict:
    """Precision against ``truth_mask`` of the voxels a sigma's motion ``mask`` keeps
    and of the raw map's top ``kept`` voxels (the same sparsity)."""
    top_k = jax.vmap(_masks._overlap_at_k_of_magnitudes)(
        ranked.magnitudes, truth_mask, kept, ranked.ascending
    )
    hits = jnp.sum(mask & truth_mask, axis=_AXES)
    selective = safe_divide(hits.astype(jnp.float32), kept.astype(jnp.float32))
    return {f"motion_precision{name}_raw": top_k.precision,
            f"motion_precision{name}_selective": selective}  # fmt: skip


def _relevance_scores(
    relevance: jax.Array, truth: Mapping, sigmas: jax.Array, select, tolerance: int = 0
) -> dict:
    """The raw maps' scores (N,) and every sigma's (N, S) of a batch of relevance maps
    (``tolerance``: the pixels the motion mask is widened by for the ``*_tolerant_*``
    scores).

    Each map is first scaled by the power of two that brings its largest value to
    [1, 2): every score is a share, a ratio or an order of voxels, the same at any scale
    (power-of-two scaling is exact), and on the scaled map no sum overflows (a map of
    1e36 gave NaN) and no std underflows (1e-20 kept every voxel)."""
    relevance = jax.vmap(scaled_to_unit)(relevance)
    ranked = _ranked(relevance)
    if "mask" in truth:
        wide = _masks._dilate(truth["mask"], tolerance) if tolerance else truth["mask"]
        truth = {**truth, "tolerant_mask": wide}
    masks = jax.vmap(lambda s: motion_mask(relevance, s, **select))(sigmas)
    per_sigma = jax.vmap(lambda s, m, g: _sigma_scores(ranked, s, m, g, truth), out_axes=1)
    gini = jax.vmap(_maps._gini_of_sorted)(ranked.ascending)
    return {
        **_map_scores(ranked.magnitudes, truth, "raw", gini),
        **per_sigma(sigmas, masks, _selection_ginis(ranked, masks)),
    }


def _aucs(apply_fn: Callable, x, relevance, target, suffix: str) -> dict:
    options = {"steps": FAITHFULNESS_STEPS, "replacement": FAITHFULNESS_REPLACEMENT}
    deletion = metrics.deletion_curve(apply_fn, x, relevance, target, **options)
    insertion = metrics.insertion_curve(apply_fn, x, relevance, target, **options)
    return {f"deletion_auc_{suffix}": deletion.auc, f"insertion_auc_{suffix}": insertion.auc}


def method_function(
    model: Any, method: str, options: Mapping[str, Any], settings: SweepSettings
) -> Callable:
    """``(variables, x, target, truth, sigmas) -> {column: (N,) or (N, S)}`` of one method:
    its relevance once, the raw map's scores (N,), and every sigma's (N, S)."""
    explainer = make_explainer(model, method, **options)
    select = {"temporal_padding": settings.temporal_padding, "threshold": settings.threshold}

    def run(variables, x, target, truth, sigmas):
        relevance = explainer(variables, x, target)
        out = _relevance_scores(relevance, truth, sigmas, select, settings.mask_tolerance)
        if settings.faithfulness:
            apply_fn = functools.partial(model.apply, variables)

            def selective_aucs(sigma):
                selective = selective_relevance(relevance, sigma, **select)
                return _aucs(apply_fn, x, selective, target, "selective")

            out |= _aucs(apply_fn, x, relevance, target, "raw")
            out |= jax.vmap(selective_aucs, out_axes=1)(sigmas)
        return out

    return run


def clip_function(model: Any, info: ModelInfo, settings: SweepSettings) -> Callable:
    """``(variables, video uint8, label) -> {"x", "predicted", "target", ...}``: the
    normalised clips, the prediction, the class explained and (faithfulness) the
    target probability on the clip and on the clip frozen to its middle frame."""
    prepare = info.normalize

    def run(variables, video, label):
        x = prepare(video)
        logits = model.apply(variables, x)
        predicted = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        target = label if settings.target == "label" else predicted
        out = {"x": x, "predicted": predicted, "target": target}
        if settings.faithfulness:
            frozen = metrics.frame_freezing(functools.partial(model.apply, variables), x, target)
            out |= {
                "target_probability": frozen.original,
                "frozen_probability": frozen.frozen,
                "motion_reliance": frozen.drop,
            }
        return out

    return run


_COMPILED: dict[Any, Callable] = {}


def _jitted(key: tuple, sharding: NamedSharding, build: Callable[[], Callable]) -> Callable:
    """``jax.jit(build(), out_shardings=sharding)``, kept for the next sweep with the same
    model and settings (a notebook's rerun, a resumed sweep): compiled once per process."""
    key = (*key, sharding)
    try:
        hash(key)
    except TypeError:  # an unhashable model or option: compile for this sweep only
        return jax.jit(build(), out_shardings=sharding)
    if key not in _COMPILED:
        if len(_COMPILED) >= 16:
            _COMPILED.pop(next(iter(_COMPILED)))
        _COMPILED[key] = jax.jit(build(), out_shardings=sharding)
    return _COMPILED[key]


class BatchScorer:
    """Scores batches of clips with every method and sigma of a sweep.

    Batches are padded to ``batch_rows``, ``settings.batch_size`` (at most ``clips``,
    the work there is) rounded up to a multiple of the local device count, so every
    batch has one shape (one compilation per function)."""

    def __init__(
        self,
        model: Any,
        variables: Any,
        info: ModelInfo,
        settings: SweepSettings,
        options: Mapping[str, Mapping[str, Any]],
        truth_keys: tuple[str, ...],
        clips: int | None = None,
    ):
        devices = jax.local_devices()
        self.mesh = Mesh(np.array(devices), (DATA_AXIS,))
        wanted = settings.batch_size if clips is None else min(settings.batch_size, clips)
        self.batch_rows = -(-wanted // len(devices)) * len(devices)
        self._clips = NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))
        replicated = NamedSharding(self.mesh, PartitionSpec())
        self._variables = jax.device_put(variables, replicated)
        self._sigmas = jax.device_put(np.asarray(settings.sigmas, np.float32), replicated)
        self._truth_keys = truth_keys
        key = (model, settings.target, settings.faithfulness)
        self._clip_fn = _jitted(
            ("clip", *key, hashable(info.normalization)), self._clips,
            lambda: clip_function(model, info, settings),
        )  # fmt: skip
        select = (settings.temporal_padding, settings.threshold, settings.mask_tolerance)
        self._method_fns = {
            m: _jitted(
                ("method", *key, *select, m, hashable(options[m])),
                self._clips,
                functools.partial(method_function, model, m, options[m], settings),
            )
            for m in settings.methods
        }
        self._clip_shape = (info.clip_length, *info.crop_size, 3)
        self.num_classes = info.num_classes

    def _placed(self, batch: ClipBatch) -> tuple[jax.Array, jax.Array, dict]:
        """The batch padded to ``batch_rows`` (repeating its last clip) and sharded."""
        pad = self.batch_rows - len(batch.label)

        def put(a: np.ndarray) -> jax.Array:
            a = np.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1), mode="edge")
            return jax.device_put(a, self._clips)

        truth = {k: put(batch.truth[k]) for k in self._truth_keys}
        return put(batch.video), put(batch.label), truth

    def check(self) -> None:
        """Trace every function on an abstract batch: an option a method refuses, a model
        that does not take the clips, ... raise here, before anything is computed."""
        video = jax.ShapeDtypeStruct((self.batch_rows, *self._clip_shape), jnp.uint8)
        label = jax.ShapeDtypeStruct((self.batch_rows,), jnp.int32)
        t, h, w, _ = self._clip_shape
        shapes = {"mask": (t, h, w), "static_mask": (t, h, w), "boxes": (t, 4)}
        dtypes = {"mask": jnp.bool_, "static_mask": jnp.bool_, "boxes": jnp.float32}
        truth = {k: jax.ShapeDtypeStruct((self.batch_rows, *shapes[k]), dtypes[k])
                 for k in self._truth_keys}  # fmt: skip
        clip = jax.eval_shape(self._clip_fn, self._variables, video, label)
        for fn in self._method_fns.values():
            jax.eval_shape(fn, self._variables, clip["x"], clip["target"], truth, self._sigmas)

    def score(
        self, batch: ClipBatch, note: Callable[[str], None] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
        """``(per_clip, per_method)``: NumPy arrays of the batch's clips, (n,) per clip
        and ``{method: {column: (n,) or (n, S)}}``. ``note`` is told ``"compiling
        <method> ..."`` before a function's first call, which compiles it."""
        n = len(batch.label)
        video, label, truth = self._placed(batch)
        if note is not None and compiling(self._clip_fn):
            note("compiling the model's forward pass ...")
        clip = self._clip_fn(self._variables, video, label)
        outs = {}
        for m, fn in self._method_fns.items():
            if note is not None and compiling(fn):
                note(f"compiling {m} ...")
            outs[m] = fn(self._variables, clip["x"], clip["target"], truth, self._sigmas)
        del clip["x"]
        fetched = jax.device_get((clip, outs))
        cut = jax.tree.map(lambda a: np.asarray(a)[:n], fetched)
        return cut[0], cut[1]
