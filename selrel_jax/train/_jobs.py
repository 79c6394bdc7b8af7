"""Whole jobs on named datasets, as the ``selrel train`` and ``selrel evaluate`` commands run
them: load the data, build or load the model, fit, evaluate, export (like Flax's
``train_and_evaluate``)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from selrel_jax import data, models
from selrel_jax._checks import key_json_pairs, positive_int, real
from selrel_jax.errors import CheckpointError, DataError, OptionError
from selrel_jax.models.checkpoint import checkpoint_target, writable_directory
from selrel_jax.models.info import ModelInfo
from selrel_jax.train._fit import evaluate, fit
from selrel_jax.train._state import TrainConfig, check_config_value

# Settings that only a folder dataset takes (the others' clips have a fixed size).
FOLDER_SETTINGS = ("split_file", "clip_length", "frame_step", "crop_size", "resize")
# Settings that come from the --init-from checkpoint when not given.
MODEL_SETTINGS = ("arch", "width", "model_option")
CLIP_SETTINGS = ("clip_length", "frame_step", "crop_size")
# Settings that are TrainConfig fields: setting -> field. Their defaults and checks are
# TrainConfig's.
CONFIG_FIELDS = {
    "epochs": "epochs", "batch_size": "batch_size", "lr": "learning_rate",
    "weight_decay": "weight_decay", "warmup_epochs": "warmup_epochs", "seed": "seed",
    "checkpoint_every": "checkpoint_every", "freeze_backbone": "freeze_backbone",
}  # fmt: skip
_CONFIG_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def parse_model_options(pairs: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``KEY=JSON`` strings -> ``models.create`` keywords (JSON lists become tuples)."""
    return key_json_pairs("--model-option", pairs)


def _model_options(kwargs: Mapping[str, Any]) -> tuple[str, ...]:
    """The canonical ``KEY=JSON`` spelling of model keywords, sorted by key."""
    return tuple(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in sorted(kwargs.items()))


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """One ``selrel train`` run; the field names are the command's options.

    None means "from the ``init_from`` checkpoint's info.json, else the default":
    arch ``c3d_small``, width 1, no model options; for folder datasets 16-frame
    clips, frame step 1, 112 x 112 crops of frames resized to a shorter side of
    ``resize`` (default: the checkpoint's resize, else the larger crop side).
    ``model_option`` holds ``KEY=JSON`` strings for ``models.create``. The
    training settings' defaults and checks are :class:`TrainConfig`'s; errors
    name the command's flags (``--batch-size must be a positive int``).
    """

    dataset: str
    out: Path
    epochs: int = 10
    init_from: str | None = None
    freeze_backbone: bool = _CONFIG_DEFAULTS["freeze_backbone"]
    split_file: Path | None = None
    arch: str | None = None
    width: float | None = None
    model_option: tuple[str, ...] = ()
    clip_length: int | None = None
    frame_step: int | None = None
    crop_size: tuple[int, int] | None = None
    resize: int | None = None
    batch_size: int = _CONFIG_DEFAULTS["batch_size"]
    lr: float = _CONFIG_DEFAULTS["learning_rate"]
    weight_decay: float = _CONFIG_DEFAULTS["weight_decay"]
    warmup_epochs: float = _CONFIG_DEFAULTS["warmup_epochs"]
    seed: int = _CONFIG_DEFAULTS["seed"]
    checkpoint_every: int = _CONFIG_DEFAULTS["checkpoint_every"]
    limit: int | None = None
    data_dir: Path | None = None
    export: Path | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        put = object.__setattr__
        put(self, "out", Path(self.out))
        for name in ("split_file", "data_dir", "export"):
            if getattr(self, name) is not None:
                put(self, name, Path(getattr(self, name)))
        put(self, "model_option", tuple(self.model_option or ()))
        parse_model_options(self.model_option)
        for name in ("limit", "clip_length", "frame_step", "resize"):
            if getattr(self, name) is not None:
                put(self, name, positive_int(_flag(name), getattr(self, name)))
        if self.width is not None:
            put(self, "width", real("--width", self.width, above=0.0))
        if self.crop_size is not None:
            crop = tuple(self.crop_size) if isinstance(self.crop_size, tuple | list) else ()
            if len(crop) != 2:
                raise OptionError(f"--crop-size must be two ints (H W); got {self.crop_size!r}")
            put(self, "crop_size", tuple(positive_int("--crop-size", s) for s in crop))
        for setting, field in CONFIG_FIELDS.items():
            put(self, setting, check_config_value(field, getattr(self, setting), _flag(setting)))

    def config(self) -> TrainConfig:
        """The training settings as :class:`TrainConfig`."""
        return TrainConfig(**{field: getattr(self, s) for s, field in CONFIG_FIELDS.items()})

    @property
    def is_folder(self) -> bool:
        return data.parse_dataset(self.dataset)[0] == "folder"


def default_resize(info: ModelInfo | None, crop_size: tuple[int, int]) -> int:
    """Shorter side frames are resized to before the centre crop: the model's
    ``resize_size`` when its info.json has one, else the larger crop side."""
    if info is not None and info.resize_size is not None:
        return info.resize_size
    return max(crop_size)


def resolve_settings(settings: TrainSettings, init_info: ModelInfo | None) -> TrainSettings:
    """``settings`` with every None filled in; conflicts with the checkpoint are errors.

    ``init_info`` is the ``init_from`` checkpoint's metadata (None without one).
    An explicit setting that differs from the checkpoint's raises OptionError
    naming both.
    """
    if settings.freeze_backbone and settings.init_from is None:
        raise OptionError("--freeze-backbone needs --init-from (a trained backbone to keep)")
    if not settings.is_folder:
        given = [n for n in FOLDER_SETTINGS if getattr(settings, n) is not None]
        if given:
            raise OptionError(
                f"{_flag(given[0])} applies only to folder:PATH datasets; got {settings.dataset!r}"
            )
    if init_info is None:
        wanted: dict[str, Any] = {"arch": "c3d_small", "width": 1.0, "model_option": ()}
        wanted |= {"clip_length": 16, "frame_step": 1, "crop_size": (112, 112)}
    else:
        kwargs = init_info.extra.get("model_kwargs", {})
        wanted = {"arch": init_info.arch, "width": init_info.width}
        wanted |= {"model_option": _model_options(kwargs), "clip_length": init_info.clip_length}
        wanted |= {"frame_step": init_info.frame_step, "crop_size": init_info.crop_size}
        _refuse_conflicts(settings, wanted)
    names = MODEL_SETTINGS + (CLIP_SETTINGS if settings.is_folder else ())
    filled = {n: getattr(settings, n) or wanted[n] for n in names}
    filled["model_option"] = _model_options(parse_model_options(filled["model_option"]))
    if settings.is_folder and settings.resize is None:
        filled["resize"] = default_resize(init_info, filled["crop_size"])
    elif settings.is_folder and settings.resize < min(filled["crop_size"]):
        # a shorter side below the crop cannot hold it: frames would be scaled up anyway
        raise OptionError(
            f"--resize {settings.resize} is smaller than the crop {filled['crop_size']}; "
            "the shorter side must hold the crop"
        )
    return dataclasses.replace(settings, **filled)


def _refuse_conflicts(settings: TrainSettings, checkpoint: Mapping[str, Any]) -> None:
    for name, theirs in checkpoint.items():
        ours = getattr(settings, name)
        if not ours:
            continue
        if name == "model_option":
            same = parse_model_options(ours) == parse_model_options(theirs)
        else:
            same = ours == theirs
        if not same:
            raise OptionError(
                f"{_flag(name)} {ours} conflicts with --init-from {settings.init_from}, "
                f"whose {name} is {theirs}; leave it out to use the checkpoint's"
            )


def _load_splits(
    settings: TrainSettings, init_info: ModelInfo | None
) -> dict[str, tuple[data.Clips, tuple[str, ...]]]:
    folder: dict[str, Any] = {}
    if settings.is_folder:
        folder = dict(
            clip_size=(settings.clip_length, *settings.crop_size),
            frame_step=settings.frame_step,
            size=settings.resize,
            split_file=settings.split_file,
        )
    elif init_info is not None:
        folder = {"clip_size": init_info.clip_size}  # refuse other clip sizes before reading
    return {
        split: data.load_clips(
            settings.dataset,
            split,
            data_dir=settings.data_dir,
            limit=settings.limit,
            progress=settings.progress,
            **folder,
        )
        for split in data.SPLIT_NAMES
    }


def _model_info(
    settings: TrainSettings,
    init_info: ModelInfo | None,
    class_names: tuple[str, ...],
    clip_size: tuple[int, ...],
    extra: dict[str, Any],
) -> ModelInfo:
    """The trained model's metadata: the checkpoint's preprocessing, or the arch's, and
    the resize the folder's frames were prepared with."""
    if init_info is not None:
        resize = settings.resize if settings.is_folder else init_info.resize_size
        return ModelInfo.from_dict(
            {**init_info.to_dict(), "num_classes": len(class_names),
             "class_names": list(class_names), "resize_size": resize, "extra": extra}
        )  # fmt: skip
    t, h, w = clip_size
    return ModelInfo.for_arch(
        settings.arch, len(class_names), class_names=class_names, width=settings.width,
        clip_length=t, frame_step=settings.frame_step or 1, crop_size=(h, w),
        resize_size=settings.resize, extra=extra,
    )  # fmt: skip


def _records(
    settings: TrainSettings, config: TrainConfig, model_kwargs: dict, command: str | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """What run.json adds to the run's identity, and the export's info.json ``extra``."""
    split_file = None if settings.split_file is None else str(settings.split_file)
    identity = {
        "dataset": settings.dataset,
        "init_from": settings.init_from,
        "split_file": split_file,
        "resize": settings.resize,
        "limit": settings.limit,
    }
    extra: dict[str, Any] = {
        "dataset": settings.dataset,
        "command": command,
        "train_config": dataclasses.asdict(config),
        **({"model_kwargs": model_kwargs} if model_kwargs else {}),
        **({"init_from": settings.init_from} if settings.init_from else {}),
        "freeze_backbone": settings.freeze_backbone,
        **({"split_file": split_file} if split_file is not None else {}),
    }
    return identity, extra


def _check_paths(settings: TrainSettings) -> Path:
    """Refuse output paths that cannot be written before anything is; returns the export.

    ``--out`` and ``--data-dir`` must be directories or creatable ones; the export
    (default ``OUT/model``) a new directory or a checkpoint, and not the run
    directory or one that holds it.
    """
    out = writable_directory(settings.out, "--out")
    if settings.data_dir is not None:
        writable_directory(settings.data_dir, "--data-dir", DataError)
    flag = "--out" if settings.export is None else "--export"
    export = checkpoint_target(settings.out / "model" if settings.export is None
                               else settings.export, flag)  # fmt: skip
    if export == out or export in out.parents:
        raise CheckpointError(
            f"--export {export} would hold the run directory --out {out}; export elsewhere "
            "(default OUT/model)"
        )
    return export


def _check_model(settings: TrainSettings, init_info: ModelInfo | None) -> None:
    """Build the model on abstract clips before anything is written, so that an unknown
    or unusable --model-option is an OptionError now rather than a failure deep inside
    JAX after the run directory exists (models.create traces init with the options)."""
    if settings.is_folder:
        clip_size = (settings.clip_length, *settings.crop_size)
    else:  # the data's clip size is known once loaded; any size exercises the options
        clip_size = (16, 112, 112) if init_info is None else init_info.clip_size
    kwargs = parse_model_options(settings.model_option)
    models.create(settings.arch, 2, width=settings.width, clip_size=clip_size, **kwargs)


def train_and_evaluate(
    settings: TrainSettings, *, command_line: Callable[[TrainSettings], str] | None = None
) -> dict[str, Any]:
    """Train on ``settings.dataset``, evaluate the best model on its test split, export it.

    Settings are resolved first (:func:`resolve_settings`); ``command_line`` turns
    the resolved settings into the command recorded in the export's info.json.
    The run directory is ``settings.out`` (resumable, see :func:`fit`); the best
    model (by validation accuracy) goes to ``settings.export`` (default
    ``out/model``). Returns the summary: best epoch, validation and test accuracy,
    test size, training seconds, and the export's path.
    """
    init = None if settings.init_from is None else models.load(settings.init_from)
    init_info = None if init is None else init[2]
    settings = resolve_settings(settings, init_info)
    export = _check_paths(settings)
    _check_model(settings, init_info)
    config = settings.config()
    splits = _load_splits(settings, init_info)
    train_clips, class_names = splits["train"]
    if len(class_names) < 2:  # a 1-class model is always right: its accuracy says nothing
        raise DataError(
            f"{settings.dataset} has {len(class_names)} class ({', '.join(class_names)}); "
            "a classifier needs at least 2"
        )
    clip_size = tuple(train_clips.video.shape[1:4])
    model_kwargs = parse_model_options(settings.model_option)
    model = models.create(settings.arch, len(class_names), width=settings.width,
                          clip_size=clip_size, **model_kwargs)  # fmt: skip
    command = None if command_line is None else command_line(settings)
    identity, extra = _records(settings, config, model_kwargs, command)
    info = _model_info(settings, init_info, class_names, clip_size, extra)
    result = fit(
        model, info, train_clips, splits["validation"][0], config=config, out_dir=settings.out,
        progress=settings.progress, init_variables=None if init is None else init[1],
        identity=identity,
    )  # fmt: skip
    test = evaluate(model, result.best_variables, info, splits["test"][0],
                    progress=settings.progress)  # fmt: skip
    summary = {
        "best_epoch": result.best_epoch,
        "val_accuracy": result.best_val_accuracy,
        "test_accuracy": test["accuracy"],
        "test_n": test["n"],
        "train_seconds": round(result.train_seconds, 1),
        "history": result.history,
    }
    info = ModelInfo.from_dict({**info.to_dict(), "extra": {**extra, **summary}})
    target = models.save(export, info, result.best_variables)
    print(
        f"best epoch {result.best_epoch}: val {result.best_val_accuracy:.4f}, "
        f"test {test['accuracy']:.4f}; exported to {target}"
    )
    return {k: v for k, v in summary.items() if k != "history"} | {"model": str(target)}


def evaluate_dataset(
    model: str | Path,
    dataset: str,
    split: str = "test",
    *,
    data_seed: int | None = None,
    limit: int | None = None,
    data_dir: Path | None = None,
    split_file: Path | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> dict[str, Any]:
    """Accuracy of ``model`` (a shipped name or checkpoint directory) on a dataset split.

    Clips are prepared as the model's info.json says (a folder's clips are cut to
    its clip size, frame step and resize; its classes are the model's). Returns
    ``{"accuracy", "n", "loss", "model", "dataset", "split"}`` (and ``data_seed``).
    """
    batch_size = positive_int("batch_size", batch_size)
    if data_dir is not None:  # only read from (a cache may be read-only), but a directory
        writable_directory(data_dir, "data_dir", DataError, writable=False)
    module, variables, info = models.load(model)
    folder: dict[str, Any] = {}
    if data.parse_dataset(dataset)[0] == "folder":
        folder = dict(
            frame_step=info.frame_step, size=default_resize(info, info.crop_size),
            split_file=split_file, class_names=info.class_names,
        )  # fmt: skip
    elif split_file is not None:
        raise OptionError(f"split_file applies only to folder:PATH datasets; got {dataset!r}")
    clips, _ = data.load_clips(
        dataset, split, data_dir=data_dir, limit=limit, data_seed=data_seed,
        clip_size=info.clip_size, progress=progress, **folder,
    )  # fmt: skip
    if int(clips.label.max()) >= info.num_classes:
        raise OptionError(
            f"{dataset} has labels up to {int(clips.label.max())} but model {str(model)!r} "
            f"has {info.num_classes} classes"
        )
    metrics = evaluate(module, variables, info, clips, batch_size=batch_size, progress=progress)
    result = {"accuracy": metrics["accuracy"], "n": metrics["n"], "loss": metrics["loss"],
              "model": str(model), "dataset": dataset, "split": split}  # fmt: skip
    if data_seed is not None:
        result["data_seed"] = data_seed
    return result
