"""Training: the state and steps, the run directory, fine-tuning from given variables
(head replacement, frozen backbone), and the loop (loss goes down, a killed or
interrupted run resumes bit for bit, other settings in the same directory are refused)."""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import subprocess
import sys
import textwrap
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selrel_jax import data, models
from selrel_jax.errors import CheckpointError, OptionError, SelrelError
from selrel_jax.models.registry import ARCHS, HEADS
from selrel_jax.train import (
    Clips,
    EpochMetrics,
    RunDirectory,
    TrainConfig,
    TrainSettings,
    create_train_state,
    eval_step,
    evaluate,
    fit,
    initial_variables,
    make_optimizer,
    normalizer,
    parse_model_options,
    resolve_settings,
    run_identity,
    train_step,
)
from tests.data.folders import write_video_folder

CLIP = (8, 32, 32)  # the "tiny_biased" synthetic_motion config: a static cue, quick to learn
CONFIG = dict(batch_size=8, learning_rate=1e-2, warmup_epochs=0.5, checkpoint_every=3, seed=3)
SMALL = (4, 16, 16)  # folder clips

# Builds the model and data the same way in this process and in the killed subprocess.
SETUP = textwrap.dedent(
    """
    from selrel_jax import models
    from selrel_jax.data import synthetic_motion
    from selrel_jax.train import Clips

    def setup(**model_kwargs):
        model = models.create("c3d_small", 6, width=0.25, clip_size=(8, 32, 32), **model_kwargs)
        info = models.ModelInfo.for_arch(
            "c3d_small", 6, class_names=synthetic_motion.CLASS_NAMES, width=0.25,
            clip_length=8, crop_size=(32, 32),
        )
        tr = synthetic_motion.generate_split("tiny_biased", "train", 0, 32)
        va = synthetic_motion.generate_split("tiny_biased", "validation", 0, 12)
        return model, info, Clips(tr["video"], tr["label"]), Clips(va["video"], va["label"])
    """
)
namespace: dict = {}
exec(SETUP, namespace)
setup = namespace["setup"]


def leaves(variables) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(variables)]


def assert_bitwise_equal(a, b) -> None:
    la, lb = leaves(a), leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b) and len(la) > 0
    for x, y in zip(la, lb, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(x.view(np.uint8), y.view(np.uint8))  # -0.0 is not 0.0


def small_model(num_classes: int, arch: str = "c3d_small", **kw):
    model = models.create(arch, num_classes, width=kw.pop("width", 0.25), clip_size=SMALL, **kw)
    info = models.ModelInfo.for_arch(
        arch, num_classes, width=model.width, clip_length=SMALL[0], crop_size=SMALL[1:]
    )
    return model, info


def random_init(model, seed: int):
    init = jax.jit(lambda k: model.init(k, jnp.zeros((1, *SMALL, 3)), train=False))
    return jax.tree.map(np.array, init(jax.random.key(seed, impl="rbg")))  # writable copies


def test_public_names_stay_importable():
    assert Clips is data.Clips
    from selrel_jax.train import batch_rows, epoch_order, predict

    assert batch_rows is data.batch_indices and epoch_order is data.epoch_order
    assert callable(predict)


def test_config_rejects_bad_values():
    with pytest.raises(OptionError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(OptionError, match="learning_rate"):
        TrainConfig(epochs=1, learning_rate=0.0)
    with pytest.raises(OptionError, match="seed must be an int >= 0"):
        TrainConfig(epochs=1, seed=-1)
    with pytest.raises(OptionError, match="freeze_backbone must be a bool"):
        TrainConfig(epochs=1, freeze_backbone="yes")
    assert TrainConfig(epochs=1, learning_rate=1).learning_rate == 1.0


def test_epoch_metrics():
    zero = EpochMetrics.zeros()
    assert zero.means() == (0.0, 0.0)
    logits = jnp.array([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    m = zero.add(jnp.float32(0.5), logits, jnp.array([0, 0, 0]))
    assert int(m.seen) == 3 and int(m.correct) == 2
    assert m.means() == pytest.approx((0.5, 2 / 3))


def test_every_arch_has_its_head_in_the_table():
    for arch in ARCHS:
        model = models.create(arch, 7, width=0.25, clip_size=(16, 32, 32))
        shapes = jax.eval_shape(
            lambda m=model: m.init(jax.random.key(0), jnp.zeros((1, 16, 32, 32, 3)), train=False)
        )
        head = shapes["params"][HEADS[arch]]
        assert head["kernel"].shape[-1] == head["bias"].shape[0] == 7, arch


def test_create_train_state_replaces_a_head_of_another_class_count():
    config = TrainConfig(epochs=1, seed=2)
    model3, info3 = small_model(3)
    model5, _ = small_model(5)
    fresh = create_train_state(model3, info3, config, 4)
    assert int(fresh.step) == 0 and fresh.head_only is None and int(fresh.metrics.seen) == 0
    given = random_init(model5, seed=9)  # a "checkpoint" of the same backbone, 5 classes

    state = create_train_state(model3, info3, config, 4, init_variables=given)
    assert state.params["fc"]["kernel"].shape[-1] == 3
    assert_bitwise_equal(state.params["fc"], fresh.params["fc"])  # the seed's fresh head
    for name in ("conv1", "conv2", "conv3", "conv4"):
        assert_bitwise_equal(state.params[name], given["params"][name])

    _, info5 = small_model(5)
    kept = create_train_state(model5, info5, config, 4, init_variables=given)
    assert_bitwise_equal(kept.params, given["params"])  # same class count: head kept

    narrow, _ = small_model(5, channels=(8, 16, 32, 32))
    with pytest.raises(CheckpointError, match=r"wrong shapes.*conv1"):
        create_train_state(model5, info5, config, 4, init_variables=random_init(narrow, 0))
    with pytest.raises(OptionError, match="freeze_backbone needs init_variables"):
        create_train_state(model3, info3, TrainConfig(epochs=1, freeze_backbone=True), 4)


def test_optimizer_with_train_only_gives_the_rest_no_update_and_no_state():
    params = {"body": {"kernel": jnp.ones((3, 4))}, "fc": {"kernel": jnp.ones((4, 2))}}
    grads = jax.tree.map(jnp.ones_like, params)
    config = TrainConfig(epochs=2, learning_rate=0.1)
    tx = make_optimizer(config, 5, train_only="fc")
    opt_state = tx.init(params)
    for _ in range(3):  # past the warmup's zero learning rate
        updates, opt_state = tx.update(grads, opt_state, params)
    assert not np.any(np.asarray(updates["body"]["kernel"]))
    assert np.all(np.asarray(updates["fc"]["kernel"]) < 0)
    moment_shapes = [x.shape for x in jax.tree.leaves(opt_state) if np.ndim(x) > 0]
    assert moment_shapes == [(4, 2), (4, 2)]  # Adam's mu and nu of the head only


def test_train_step_and_eval_step():
    model, info = small_model(3)
    state = create_train_state(model, info, TrainConfig(epochs=1, learning_rate=0.1), 2)
    video = np.random.default_rng(0).integers(0, 256, (4, *SMALL, 3), dtype=np.uint8)
    label = np.array([0, 1, 2, 0], np.int32)
    step = jax.jit(functools.partial(train_step, prepare=normalizer(info)))
    new = step(state, video, label)
    new = step(new, video, label)  # the first step's learning rate is 0 (warmup)
    assert int(new.step) == 2 and int(new.metrics.seen) == 8
    assert not np.array_equal(new.params["fc"]["kernel"], state.params["fc"]["kernel"])
    logits = eval_step(model, new.variables, video, prepare=normalizer(info))
    x = data.normalize(video, mean=info.mean, std=info.std)
    np.testing.assert_allclose(logits, model.apply(new.variables, x, train=False), rtol=1e-5)


def test_frozen_backbone_keeps_parameters_and_batch_stats_bitwise(tmp_path):
    model, info = small_model(3, arch="r3d_18", width=0.125, blocks=(1, 1, 1, 1))
    given = random_init(model, seed=1)
    given["params"]["stem_conv"]["kernel"][0, 0, 0, 0, 0] = -0.0  # its sign must survive too
    rng = np.random.default_rng(1)
    clips = Clips(rng.integers(0, 256, (8, *SMALL, 3), dtype=np.uint8), np.arange(8) % 3)
    frozen = TrainConfig(epochs=2, batch_size=4, learning_rate=0.05, freeze_backbone=True)
    result = fit(model, info, clips, clips, config=frozen, out_dir=tmp_path / "frozen",
                 progress=False, init_variables=given)  # fmt: skip
    final = result.final_variables
    assert_bitwise_equal(final["batch_stats"], given["batch_stats"])
    backbone = {k: v for k, v in given["params"].items() if k != "fc"}
    assert_bitwise_equal({k: final["params"][k] for k in backbone}, backbone)
    assert not np.array_equal(final["params"]["fc"]["kernel"], given["params"]["fc"]["kernel"])

    # the same state unfrozen moves the backbone and its statistics: the checks above can fail
    state = create_train_state(model, info, TrainConfig(epochs=1), 2, init_variables=given)
    moved = jax.jit(functools.partial(train_step, prepare=normalizer(info)))(
        state, clips.video[:4], clips.label[:4]
    )
    assert not np.array_equal(moved.model_state["batch_stats"]["stem_bn"]["mean"],
                              given["batch_stats"]["stem_bn"]["mean"])  # fmt: skip


class Tiny(NamedTuple):
    step: jax.Array
    weight: jax.Array


def test_run_directory_claims_saves_restores_and_refuses_other_settings(tmp_path):
    identity = {"config": {"seed": 1, "lr": 0.1}, "model": {"width": 0.5}}
    state = Tiny(jnp.int32(3), jnp.arange(4.0))
    with RunDirectory(tmp_path / "run", identity) as run:
        assert run.restore_latest(state) is None
        run.save_latest(state, {"history": [1]})
        run.save_best(state, {"history": [2]})
        run.save_latest(state, {"history": ["replayed"]})  # step 3 is there: not rewritten
    assert (tmp_path / "run" / "run.json").is_file()
    with RunDirectory(tmp_path / "run", identity) as run:
        restored, meta = run.restore_latest(Tiny(jnp.int32(0), jnp.zeros(4)))
        assert int(restored.step) == 3 and meta == {"history": [1]}
        np.testing.assert_array_equal(restored.weight, np.arange(4.0))
        assert run.restore_best(state)[1] == {"history": [2]}
    other = {"config": {"seed": 2, "lr": 0.1}, "model": {"width": 0.5, "channels": [8]}}
    with pytest.raises(SelrelError, match="other settings") as e:
        RunDirectory(tmp_path / "run", other)
    assert "config.seed: 1 -> 2" in str(e.value)
    assert "model.channels: null -> [8]" in str(e.value)
    assert "lr" not in str(e.value)
    many = {"config": {f"k{i}": i for i in range(8)}}
    with pytest.raises(SelrelError, match=r"config\.k4: null -> 4, and 6 more\); rerun with"):
        RunDirectory(tmp_path / "run", many)


def test_training_lowers_the_loss(tmp_path):
    model, info, train, val = setup()
    result = fit(
        model, info, train, val, config=TrainConfig(epochs=4, **CONFIG), out_dir=tmp_path,
        progress=False,
    )  # fmt: skip
    losses = [h["train_loss"] for h in result.history]
    assert len(losses) == 4
    assert losses[-1] < losses[0] - 0.05, losses
    # and the trained model fits its training clips better than the initial one did
    init = jax.jit(lambda key: model.init(key, np.zeros((1, *CLIP, 3), np.float32)))
    before = evaluate(model, init(jax.random.key(0, impl="rbg")), info, train)["loss"]
    after = evaluate(model, result.final_variables, info, train)["loss"]
    assert after < before - 0.05, (before, after)
    assert (tmp_path / "checkpoints" / "best").is_dir()
    assert 1 <= result.best_epoch <= 4
    assert result.best_val_accuracy == max(h["val_accuracy"] for h in result.history)


KILLED_RUN = SETUP + textwrap.dedent(
    """
    import os, signal, sys
    from selrel_jax.train import TrainConfig, fit

    kill_at = int(sys.argv[2])
    def on_step(step):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    model, info, train, val = setup()
    config = TrainConfig(epochs=3, **{config!r})
    fit(model, info, train, val, config=config, out_dir=sys.argv[1], progress=False,
        on_step=on_step)
    """
).format(config=CONFIG)


def strip_seconds(history):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


@pytest.mark.slow
def test_killed_run_resumes_to_bitwise_identical_parameters(tmp_path):
    model, info, train, val = setup()
    config = TrainConfig(epochs=3, **CONFIG)  # 4 steps per epoch, 12 steps
    straight = fit(model, info, train, val, config=config, out_dir=tmp_path / "a", progress=False)

    # SIGKILL after step 7: the last checkpoint is step 6, so step 7 is replayed.
    out = tmp_path / "b"
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, str(out), "7"], capture_output=True, text=True
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert sorted(os.listdir(out / "checkpoints" / "latest")) == ["6"]

    # An in-process interruption (an exception) after step 10, then the same call again.
    def interrupt(step):
        if step == 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(model, info, train, val, config=config, out_dir=out, progress=False,
            on_step=interrupt)  # fmt: skip
    resumed = fit(model, info, train, val, config=config, out_dir=out, progress=False)

    assert_bitwise_equal(resumed.final_variables, straight.final_variables)
    assert_bitwise_equal(resumed.best_variables, straight.best_variables)
    assert strip_seconds(resumed.history) == strip_seconds(straight.history)
    assert resumed.best_epoch == straight.best_epoch

    # A finished run only reloads; other settings in the same directory are refused by name.
    again = fit(model, info, train, val, config=config, out_dir=out, progress=False)
    assert_bitwise_equal(again.final_variables, straight.final_variables)
    other = TrainConfig(epochs=3, **{**CONFIG, "seed": 4})
    with pytest.raises(SelrelError, match=r"other settings \(config\.seed: 3 -> 4\)"):
        fit(model, info, train, val, config=other, out_dir=out, progress=False)
    # the same parameter shapes but another architecture (a strided stem) is another run
    strided, *_ = setup(stem_stride=(1, 2, 2))
    with pytest.raises(SelrelError, match=r"model\.stem_stride: \[1, 1, 1\] -> "):
        fit(strided, info, train, val, config=config, out_dir=out, progress=False)


@pytest.mark.slow  # a fine-tune interrupted and resumed on decoded videos (13 s)
def test_fine_tune_on_lazy_folder_clips_resumes_bitwise(tmp_path):
    root = write_video_folder(tmp_path / "videos")
    train, names = data.load_clips(f"folder:{root}", "train", clip_size=SMALL)
    val, _ = data.load_clips(f"folder:{root}", "validation", clip_size=SMALL)
    assert isinstance(train.video, data.LazyVideos) and len(train.label) == 6
    model, info = small_model(len(names))
    given = random_init(small_model(5)[0], seed=7)
    config = TrainConfig(epochs=3, batch_size=2, learning_rate=0.01, checkpoint_every=2)
    run = functools.partial(fit, model, info, train, val, config=config, progress=False,
                            init_variables=given)  # fmt: skip
    straight = run(out_dir=tmp_path / "a")

    def interrupt(step):
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(out_dir=tmp_path / "b", on_step=interrupt)
    resumed = run(out_dir=tmp_path / "b")
    assert_bitwise_equal(resumed.final_variables, straight.final_variables)
    assert strip_seconds(resumed.history) == strip_seconds(straight.history)

    in_memory = Clips(np.asarray(val.video), val.label)
    assert evaluate(model, straight.final_variables, info, val) == evaluate(
        model, straight.final_variables, info, in_memory
    )
    with pytest.raises(SelrelError, match=r"other settings \(init"):
        run(out_dir=tmp_path / "b", init_variables=random_init(small_model(5)[0], seed=8))
    frozen = TrainConfig(epochs=3, batch_size=2, learning_rate=0.01, checkpoint_every=2,
                         freeze_backbone=True)  # fmt: skip
    with pytest.raises(SelrelError, match=r"config\.freeze_backbone: false -> true"):
        run(out_dir=tmp_path / "b", config=frozen)


def test_fit_rejects_mismatched_clips(tmp_path):
    model, info, train, val = setup()
    wrong = Clips(np.zeros((16, 8, 16, 16, 3), np.uint8), np.zeros(16, np.int32))
    with pytest.raises(SelrelError, match=r"\(8, 16, 16\)"):
        fit(model, info, wrong, val, config=TrainConfig(epochs=1), out_dir=tmp_path)
    with pytest.raises(OptionError, match="batch size"):
        fit(model, info, train, val, config=TrainConfig(epochs=1, batch_size=64), out_dir=tmp_path)
    assert not (tmp_path / "run.json").exists()


def test_initial_variables_list_every_mismatch():
    model, _ = small_model(3)
    fresh = random_init(model, seed=0)
    given = random_init(model, seed=1)
    given["params"]["extra_layer"] = {"kernel": np.zeros(2, np.float32)}
    del given["params"]["conv2"]
    with pytest.raises(CheckpointError, match=r"missing \['params/conv2/bias'.*unexpected"):
        initial_variables(fresh, given, "fc")
    same = initial_variables(fresh, random_init(model, seed=1), "fc")
    assert_bitwise_equal(same, random_init(model, seed=1))


def test_run_identity_holds_the_model_configuration_data_and_initial_bytes():
    model, info = small_model(3, stem_stride=(1, 2, 2))
    clips = Clips(np.zeros((4, *SMALL, 3), np.uint8), np.arange(4) % 3)
    config = TrainConfig(epochs=1)
    given = random_init(model, seed=0)
    identity = run_identity(model, info, clips, clips, config, given, {"dataset": "folder:x"})
    assert identity["model"]["module"] == "C3DSmall"
    assert identity["model"]["stem_stride"] == [1, 2, 2] and identity["model"]["width"] == 0.25
    assert identity["info"]["mean"] == list(info.mean) and "extra" not in identity["info"]
    assert identity["config"]["freeze_backbone"] is False and identity["train"]["n"] == 4
    assert identity["run"] == {"dataset": "folder:x"}
    given["params"]["fc"]["bias"][0] += 1.0
    changed = run_identity(model, info, clips, clips, config, given)
    assert changed["init"] != identity["init"]
    assert run_identity(model, info, clips, clips, config)["init"] is None


def test_resolve_settings_fills_defaults_or_takes_the_checkpoints():
    scratch = resolve_settings(TrainSettings("folder:videos", "run"), None)
    assert (scratch.arch, scratch.width, scratch.model_option) == ("c3d_small", 1.0, ())
    assert (scratch.clip_length, scratch.frame_step, scratch.crop_size) == (16, 1, (112, 112))
    assert scratch.resize == 112
    synthetic = resolve_settings(TrainSettings("synthetic_motion", "run"), None)
    assert synthetic.clip_length is synthetic.crop_size is synthetic.resize is None

    info = models.ModelInfo.for_arch(
        "r3d_18", 400, width=0.5, clip_length=8, frame_step=2, crop_size=(96, 128),
        resize_size=128, extra={"model_kwargs": {"blocks": [1, 1, 1, 1]}},
    )  # fmt: skip
    settings = TrainSettings("folder:v", "run", init_from="ck", model_option=("blocks=[1,1,1,1]",))
    tuned = resolve_settings(settings, info)
    assert (tuned.arch, tuned.width, tuned.model_option) == ("r3d_18", 0.5, ("blocks=[1,1,1,1]",))
    assert (tuned.clip_length, tuned.frame_step, tuned.crop_size) == (8, 2, (96, 128))
    assert tuned.resize == 128  # the checkpoint's resize (converted weights: the published one)
    assert resolve_settings(tuned, info) == tuned
    with pytest.raises(OptionError, match="--frame-step 1 conflicts with --init-from ck"):
        resolve_settings(dataclasses.replace(settings, frame_step=1), info)
    with pytest.raises(OptionError, match="--resize applies only to folder:PATH"):
        resolve_settings(TrainSettings("synthetic_motion", "run", resize=64), None)
    with pytest.raises(OptionError, match="--model-option must be KEY=JSON"):
        TrainSettings("synthetic_motion", "run", model_option=("blocks",))
    assert parse_model_options(["a=[1,2]", "b=0.5", 'c="x"']) == {"a": (1, 2), "b": 0.5, "c": "x"}


def test_train_settings_defaults_are_train_config_defaults():
    from selrel_jax.train._jobs import CONFIG_FIELDS

    settings = {f.name: f.default for f in dataclasses.fields(TrainSettings)}
    config = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    assert set(CONFIG_FIELDS.values()) <= set(config)
    for setting, field in CONFIG_FIELDS.items():
        if config[field] is not dataclasses.MISSING:  # epochs: TrainConfig has no default
            assert settings[setting] == config[field], setting
    assert TrainSettings("synthetic_motion", "run", epochs=3).config() == TrainConfig(epochs=3)


def test_train_settings_errors_name_the_command_flags():
    with pytest.raises(OptionError, match="--batch-size must be a positive int; got 0"):
        TrainSettings("synthetic_motion", "run", batch_size=0)
    with pytest.raises(OptionError, match="--seed must be an int >= 0; got -2"):
        TrainSettings("synthetic_motion", "run", seed=-2)
    with pytest.raises(OptionError, match=r"--crop-size must be two ints \(H W\); got \(8, 8, 8\)"):
        TrainSettings("folder:v", "run", crop_size=(8, 8, 8))


def test_default_resize_is_the_models_resize_size():
    from selrel_jax.train._jobs import default_resize

    assert default_resize(None, (96, 128)) == 128
    assert default_resize(models.ModelInfo.for_arch("r3d_18", 3), (112, 112)) == 128
    assert default_resize(models.ModelInfo.for_arch("c3d_small", 3), (64, 48)) == 64


def test_run_directory_below_a_file_or_with_a_corrupt_run_json(tmp_path):
    (tmp_path / "notes.txt").write_text("a regular file\n")
    with pytest.raises(CheckpointError, match=r"run directory .*notes\.txt/run is below"):
        RunDirectory(tmp_path / "notes.txt" / "run", {"config": {}})
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text('{"config": {"se')
    with pytest.raises(CheckpointError, match=r"run\.json is corrupt .*use a new --out"):
        RunDirectory(tmp_path / "run", {"config": {}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "run"]


def test_a_second_run_into_an_open_run_directory_is_refused(tmp_path):
    identity = {"config": {"seed": 1}}
    with RunDirectory(tmp_path / "run", identity):
        with pytest.raises(OptionError, match=r"run is being written by selrel train \(pid "):
            RunDirectory(tmp_path / "run", identity)
    RunDirectory(tmp_path / "run", identity).close()  # closed: free again
    assert not (tmp_path / "run" / ".selrel.lock").exists()
