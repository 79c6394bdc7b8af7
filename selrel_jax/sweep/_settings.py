"""What a sweep computes, checked once: :class:`SweepSettings` and the methods' options."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from selrel_jax._checks import integer, one_of, positive_int, real
from selrel_jax.attribution import registry
from selrel_jax.data import SPLIT_NAMES, parse_dataset
from selrel_jax.errors import OptionError
from selrel_jax.metrics import FARNEBACK
from selrel_jax.models.info import ModelInfo
from selrel_jax.selective import TEMPORAL_PADDINGS, THRESHOLDS

#: The split of a ``folder:PATH`` sweep that is every video under PATH, in any folder
#: (labelled where its folder is one of the model's classes).
ALL_VIDEOS = "all"
#: ``"label"``: explain the dataset's label; ``"predicted"``: the model's prediction.
TARGETS = ("label", "predicted")
#: The methods of a sweep of a 3D CNN unless given (a video transformer or X3D: ``lrp.attn``,
#: :func:`selrel_jax.attribution.registry.default_method`).
DEFAULT_METHODS = ("lrp.epsilon_plus_flat",)
#: The sigmas of a sweep unless given.
DEFAULT_SIGMAS = (0.5, 1.0, 2.0, 3.0)
#: Edge padding: with the paper's zero padding the first and last frame of every clip
#: count as motion wherever there is relevance, crediting static relevance as motion.
DEFAULT_TEMPORAL_PADDING = "edge"
#: Faithfulness curves: steps (11 forward passes each) and what deleted voxels become.
FAITHFULNESS_STEPS = 10
#: What deleted voxels become in a sweep's faithfulness curves.
FAITHFULNESS_REPLACEMENT = "temporal_mean"
#: Share of a map's maximum above which a voxel counts as selected (``*_at_threshold``).
PRECISION_FRACTION = 0.1
#: Pixels the exact motion mask is widened by in each frame for the ``*_tolerant_*``
#: scores (``metrics.dilate_mask``): the selection's 3x3 smoothing puts its voxels in
#: the one-pixel band around the motion, where the model's evidence also lies.
DEFAULT_MASK_TOLERANCE = 1
#: Where the motion columns' ground truth comes from: ``"exact"``, the dataset's own
#: mask (synthetic_motion; a folder has none, so its motion columns are NaN), or
#: ``"flow"``, :func:`~selrel_jax.metrics.flow_motion_mask` of each clip (the authors'
#: Farneback rule, OpenCV's ``flow`` extra), for videos without ground truth.
MOTION_MASKS = ("exact", "flow")
#: The flow mask's floor on its threshold (pixels per frame): 0 is the authors' rule.
DEFAULT_FLOW_MIN_FLOW = 0.0


@dataclasses.dataclass(frozen=True)
class SweepSettings:
    """The settings that define a sweep's table; a rerun in the same directory must
    repeat them (the output folder, data cache and progress bar are not among them).

    Checked on creation: every field's type and range, every method known, every
    ``method_options`` key taken by at least one method."""

    dataset: str
    split: str = "test"
    model: str = "c3d_small_motion"
    methods: tuple[str, ...] = DEFAULT_METHODS
    sigmas: tuple[float, ...] = DEFAULT_SIGMAS
    method_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    target: str = "label"
    data_seed: int | None = None
    faithfulness: bool = False
    batch_size: int = 8
    limit: int | None = None
    temporal_padding: str = DEFAULT_TEMPORAL_PADDING
    threshold: str = "clip"
    mask_tolerance: int = DEFAULT_MASK_TOLERANCE
    motion_mask: str = "exact"
    flow_min_flow: float = DEFAULT_FLOW_MIN_FLOW

    def __post_init__(self) -> None:
        put = object.__setattr__
        if not isinstance(self.dataset, str) or not self.dataset:
            raise OptionError(f"dataset must be a dataset name; got {self.dataset!r}")
        kind, _ = parse_dataset(self.dataset)
        _check_split(self.split, kind, self.dataset)
        put(self, "model", str(self.model))
        put(self, "methods", _checked_methods(self.methods))
        put(self, "sigmas", _checked_sigmas(self.sigmas))
        put(self, "method_options", _checked_option_keys(self.method_options, self.methods))
        one_of("target", self.target, TARGETS)
        if self.data_seed is not None:
            if kind != "synthetic_motion":
                raise OptionError(
                    f"data_seed works only with synthetic_motion[/config]; got {self.dataset!r}"
                )
            put(self, "data_seed", integer("data_seed", self.data_seed, minimum=0))
        if not isinstance(self.faithfulness, bool | np.bool_):
            raise OptionError(f"faithfulness must be True or False; got {self.faithfulness!r}")
        put(self, "faithfulness", bool(self.faithfulness))
        put(self, "batch_size", positive_int("batch_size", self.batch_size))
        if self.limit is not None:
            put(self, "limit", positive_int("limit", self.limit))
        one_of("temporal_padding", self.temporal_padding, TEMPORAL_PADDINGS)
        one_of("threshold", self.threshold, THRESHOLDS)
        put(self, "mask_tolerance", integer("mask_tolerance", self.mask_tolerance, minimum=0))
        one_of("motion_mask", self.motion_mask, MOTION_MASKS)
        put(self, "flow_min_flow", real("flow_min_flow", self.flow_min_flow, minimum=0.0))


def _check_split(split: Any, kind: str, dataset: str) -> None:
    """A dataset's split; ``all`` (every video, any folder) only of a folder."""
    if split == ALL_VIDEOS and kind != "folder":
        raise OptionError(f"split 'all' works only with folder:PATH datasets; got {dataset!r}")
    one_of("split", split, (*SPLIT_NAMES, ALL_VIDEOS) if kind == "folder" else SPLIT_NAMES)


def _checked_methods(methods: Any) -> tuple[str, ...]:
    if (
        isinstance(methods, str)
        or not isinstance(methods, Sequence | np.ndarray)
        or not len(methods)
    ):
        raise OptionError(f"methods must be a non-empty list of method names; got {methods!r}")
    for method in methods:
        registry.get(method)  # unknown: OptionError naming the known ones
    repeated = sorted({m for m in methods if list(methods).count(m) > 1})
    if repeated:
        raise OptionError(f"methods repeat {', '.join(repeated)}")
    return tuple(methods)


def _checked_sigmas(sigmas: Any) -> tuple[float, ...]:
    if isinstance(sigmas, str) or not isinstance(sigmas, Sequence | np.ndarray) or not len(sigmas):
        raise OptionError(f"sigmas must be a non-empty list of numbers >= 0; got {sigmas!r}")
    values = tuple(real("sigma", s.item() if isinstance(s, np.generic) else s, minimum=0.0)
                   for s in sigmas)  # fmt: skip
    repeated = sorted({s for s in values if values.count(s) > 1})
    if repeated:
        raise OptionError(f"sigmas repeat {', '.join(f'{s:g}' for s in repeated)}")
    return values


def _checked_option_keys(options: Any, methods: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(options, Mapping):
        raise OptionError(f"method_options must be a mapping; got {type(options).__name__}")
    for key in options:
        if not any(key in registry.get(m).options for m in methods):
            valid = "; ".join(f"{m}: {registry.get(m).describe_options()}" for m in methods)
            raise OptionError(f"method option {key!r} is taken by none of the methods ({valid})")
    return dict(options)


def options_of(method: str, settings: SweepSettings, info: ModelInfo) -> dict[str, Any]:
    """The options ``method`` gets: the sweep's options it takes, and for a method with
    ``low``/``high`` (``lrp.epsilon_gamma_box``) the model's input bounds unless given.
    Raises OptionError if a required option is still missing."""
    taken = registry.get(method).options
    options = {k: v for k, v in settings.method_options.items() if k in taken}
    options = registry.with_input_bounds(method, options, info.input_bounds())
    registry.resolve(method, options)
    return options


def _json_ready(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_json_ready(v) for v in np.asarray(value).tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def identity(settings: SweepSettings, options: Mapping[str, Mapping[str, Any]]) -> dict:
    """The JSON record of a sweep's settings (``options``: each method's resolved
    options), as the manifest stores it and a rerun must match."""
    record = dataclasses.asdict(settings)
    record["methods"] = list(settings.methods)
    record["sigmas"] = list(settings.sigmas)
    record["method_options"] = {m: _json_ready(o) for m, o in options.items()}
    if settings.faithfulness:
        record["faithfulness_steps"] = FAITHFULNESS_STEPS
        record["faithfulness_replacement"] = FAITHFULNESS_REPLACEMENT
    record["precision_fraction"] = PRECISION_FRACTION
    # The exact mask's record stays as before this option, so older sweeps still resume.
    flow_min_flow = record.pop("flow_min_flow")
    if record.pop("motion_mask") == "flow":
        record["motion_mask"] = {"flow": {"min_flow": flow_min_flow, "farneback": FARNEBACK}}
    return json.loads(json.dumps(record))


def parse_list(flag: str, text: str, kind: type) -> list:
    """``"a,b"`` -> ``["a", "b"]`` (``kind=float``: numbers), as a comma-separated
    command-line option; OptionError naming ``flag`` for an empty or unreadable entry."""
    items = [item.strip() for item in str(text).split(",")]
    if not all(items):
        raise OptionError(
            f"{flag} must be a comma-separated list without empty entries; got {text!r}"
        )
    if kind is float:
        try:
            return [float(item) for item in items]
        except ValueError:
            raise OptionError(f"{flag} must be comma-separated numbers; got {text!r}") from None
    return items
