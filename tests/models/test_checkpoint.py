"""save -> load round trip and the errors of bad checkpoints."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from selrel_jax import models
from selrel_jax.errors import CheckpointError, SelrelError

CLIP = (4, 16, 16)


@pytest.fixture(scope="module")
def trained(numpy_variables, tmp_path_factory):
    model = models.create("c3d_small", 5, width=0.5, clip_size=CLIP)
    variables = numpy_variables(model, (1, *CLIP, 3))
    info = models.ModelInfo.for_arch(
        "c3d_small",
        5,
        width=0.5,
        clip_length=CLIP[0],
        crop_size=CLIP[1:],
        fps=25.0,
        extra={"dataset": "synthetic_motion/tiny"},
    )
    directory = models.save(tmp_path_factory.mktemp("ck") / "c3d_small", info, variables)
    return model, variables, info, directory


def _predict(model, variables, clips):
    return jax.jit(lambda v, c: model.apply(v, c, train=False))(variables, clips)


def _leaves(tree):
    return jax.tree_util.tree_flatten_with_path(tree)[0]


def test_round_trip_is_bitwise(trained):
    model, variables, info, directory = trained
    model2, variables2, info2 = models.load(directory)
    assert info2 == info
    assert model2 == model
    a, b = _leaves(variables), _leaves(variables2)
    assert [p for p, _ in a] == [p for p, _ in b]
    for (_, x), (_, y) in zip(a, b, strict=True):
        assert np.asarray(x).dtype == y.dtype
        assert np.array_equal(np.asarray(x), y)
    clips = jax.random.normal(jax.random.key(1), (2, *CLIP, 3))
    np.testing.assert_array_equal(
        _predict(model, variables, clips), _predict(model2, variables2, clips)
    )


def test_info_json_round_trip(trained):
    info = trained[2]
    assert models.ModelInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info
    assert info.class_names == tuple(f"class_{i}" for i in range(5))


def _copy(directory, tmp_path):
    return shutil.copytree(directory, tmp_path / "copy")


def test_unknown_name_or_missing_path():
    with pytest.raises(CheckpointError, match="no checkpoint named"):
        models.load("no_such_model_anywhere")


def test_missing_info(trained, tmp_path):
    d = _copy(trained[3], tmp_path)
    (d / "info.json").unlink()
    with pytest.raises(CheckpointError, match=r"no info\.json"):
        models.load(d)


def test_corrupt_info(trained, tmp_path):
    d = _copy(trained[3], tmp_path)
    (d / "info.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt metadata"):
        models.load(d)


def test_missing_variables(trained, tmp_path):
    d = _copy(trained[3], tmp_path)
    shutil.rmtree(d / "variables")
    with pytest.raises(CheckpointError, match="no variables/"):
        models.load(d)


def test_corrupt_variables(trained, tmp_path):
    d = _copy(trained[3], tmp_path)
    for f in (d / "variables").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt or incomplete"):
        models.load(d)


ZEROED_LOAD = """
import sys, time
from selrel_jax import models
try:
    models.load(sys.argv[1])
except models.CheckpointError as e:
    print(e)
time.sleep(1)  # the storage library's late reports arrive while the process goes on
"""


def test_zeroed_variable_files_give_one_short_error_and_no_stray_tracebacks(trained, tmp_path):
    d = _copy(trained[3], tmp_path)
    for f in (d / "variables").rglob("*"):
        if f.is_file() and f.parent.name == "d":  # the data files; the manifest stays readable
            f.write_bytes(bytes(f.stat().st_size))
    out = subprocess.run(
        [sys.executable, "-c", ZEROED_LOAD, str(d)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("corrupt or incomplete checkpoint"), out.stdout
    assert len(out.stdout) < 400 and "tensorstore_spec" not in out.stdout, out.stdout
    assert "Traceback" not in out.stderr and "Event loop is closed" not in out.stderr, out.stderr


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"num_classes": 7, "class_names": []}, "wrong shapes"),
        ({"arch": "c3d_large"}, "no buildable"),
        ({"extra": {"model_kwargs": {"stem_stride": [1, 2, 2]}}, "arch": "r3d_18"}, "no buildable"),
    ],
)
def test_metadata_not_matching_parameters(trained, tmp_path, change, needle):
    d = _copy(trained[3], tmp_path)
    data = json.loads((d / "info.json").read_text())
    data.update(change)
    (d / "info.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=needle):
        models.load(d)


def test_save_refuses_variables_of_another_model(trained, tmp_path):
    variables = trained[1]
    other = models.ModelInfo.for_arch("c3d_small", 6, width=0.5, clip_length=4, crop_size=(16, 16))
    with pytest.raises(CheckpointError, match=r"fc/kernel"):
        models.save(tmp_path / "x", other, variables)


def test_info_validation():
    with pytest.raises(SelrelError, match="class names"):
        models.ModelInfo(arch="c3d_small", num_classes=3, class_names=("a", "b"))
    with pytest.raises(SelrelError, match="channel_order"):
        models.ModelInfo(arch="c3d_small", num_classes=1, channel_order="GBR")
    with pytest.raises(SelrelError, match="unknown keys"):
        models.ModelInfo.from_dict({"arch": "c3d", "num_classes": 1, "colour": "red"})


def test_create_rejects_unknown_arch():
    with pytest.raises(SelrelError, match="unknown model arch"):
        models.create("vgg16", 10)


def test_c3d_small_trains_mode_and_shapes(numpy_variables):
    model = models.create("c3d_small", 8, clip_size=(16, 48, 48))
    clips = jax.random.normal(jax.random.key(0), (2, 16, 48, 48, 3))
    variables = numpy_variables(model, clips.shape, seed=1)
    logits = _predict(model, variables, clips)
    assert logits.shape == (2, 8)
    train = jax.jit(lambda v, c, k: model.apply(v, c, train=True, rngs={"dropout": k}))
    dropped = train(variables, clips, jax.random.key(2))
    assert dropped.shape == (2, 8) and not np.allclose(dropped, logits)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(variables))
    assert n_params * 4 < 30e6


def _regular_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("a regular file\n")
    return path


def test_save_below_a_regular_file_is_a_checkpoint_error(trained, tmp_path):
    _, variables, info, _ = trained
    with pytest.raises(CheckpointError, match=r"notes\.txt, which is a file, not a directory"):
        models.save(_regular_file(tmp_path) / "ck", info, variables)
    with pytest.raises(CheckpointError, match=r"notes\.txt is a file, not a directory"):
        models.save(tmp_path / "notes.txt", info, variables)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_save_refuses_a_directory_holding_other_files(trained, tmp_path):
    _, variables, info, _ = trained
    (tmp_path / "run.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"holds other files than a checkpoint \(run\.json\)"):
        models.save(tmp_path, info, variables)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_save_is_atomic_a_failed_write_leaves_the_old_checkpoint_and_no_debris(
    trained, tmp_path, monkeypatch
):
    import errno
    import pathlib

    model, variables, info, directory = trained
    target = shutil.copytree(directory, tmp_path / "ck")
    other = models.ModelInfo.from_dict({**info.to_dict(), "fps": 30.0})
    real_write_text = pathlib.Path.write_text

    def full_disk(path, text, *args, **kwargs):
        if path.name == "info.json":  # after the variables were written: a disk full midway
            real_write_text(path, text[:10], *args, **kwargs)
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write_text(path, text, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", full_disk)
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint .*No space left on device"):
        models.save(target, other, variables)
    with pytest.raises(CheckpointError, match="No space left"):
        models.save(tmp_path / "new" / "deeper" / "ck", other, variables)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temporary directories
    assert sorted(p.name for p in target.iterdir()) == [".selrel-output.json", "info.json",
                                                        "variables"]  # fmt: skip
    model2, variables2, info2 = models.load(target)
    assert info2 == info and model2 == model
    for a, b in zip(_leaves(variables), _leaves(variables2), strict=True):
        assert np.array_equal(np.asarray(a[1]), b[1])
    # and without the failure the same call replaces the checkpoint
    assert models.save(target, other, variables) == target.resolve()
    assert models.load(target)[2].fps == 30.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_info_json_without_resize_size_loads_with_none(trained, tmp_path):
    d = _copy(trained[3], tmp_path)
    data = json.loads((d / "info.json").read_text())
    assert data.pop("resize_size") is None
    (d / "info.json").write_text(json.dumps(data))
    assert models.load(d)[2].resize_size is None
    for name in ("c3d_small_motion", "c3d_small_biased"):  # shipped before the field existed
        assert models.load(name)[2].resize_size is None
    # extra is free-form metadata: it never sets a field
    tuned = {"arch": "c3d_small", "num_classes": 2, "extra": {"resize": 72}}
    assert models.ModelInfo.from_dict(tuned).resize_size is None


def test_resize_size_of_the_published_preprocessing():
    for arch in ("c3d", "r3d_18", "mc3_18", "r2plus1d_18"):
        info = models.ModelInfo.for_arch(arch, 3)
        assert info.resize_size == 128 and info.crop_size == (112, 112), arch
        assert models.ModelInfo.from_dict(info.to_dict()) == info
    assert models.ModelInfo.for_arch("c3d_small", 3).resize_size is None
    # the published resize belongs to the published crop
    assert models.ModelInfo.for_arch("r3d_18", 3, crop_size=(16, 16)).resize_size is None
    assert (
        models.ModelInfo.for_arch("r3d_18", 3, crop_size=(16, 16), resize_size=20).resize_size == 20
    )
    with pytest.raises(SelrelError, match="resize_size must be a positive int"):
        models.ModelInfo(arch="c3d_small", num_classes=1, resize_size=0)


def test_truncated_info_json_is_one_checkpoint_error(trained, tmp_path):
    d = _copy(trained[3], tmp_path)
    text = (d / "info.json").read_text()
    (d / "info.json").write_text(text[: len(text) // 2])
    with pytest.raises(CheckpointError, match=r"corrupt metadata .*info\.json: Expecting"):
        models.load(d)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"crop_size": 5}, "crop_size must be a list; got 5"),
        ({"mean": ["a", "b", "c"]}, "mean must be 3 finite numbers"),
        ({"crop_size": ["a", "b"]}, r"crop_size must be \(H, W\) > 0"),
        ({"extra": [1]}, "extra must be a mapping"),
    ],
)
def test_info_json_field_of_the_wrong_type_names_the_field(trained, tmp_path, change, needle):
    d = _copy(trained[3], tmp_path)
    data = json.loads((d / "info.json").read_text())
    (d / "info.json").write_text(json.dumps({**data, **change}))
    with pytest.raises(CheckpointError, match=needle):
        models.load(d)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"crop_size": [20000, 20000]}, r"crop_size must be \(H, W\) of 1 to 1024"),
        ({"clip_length": 100000}, "clip_length must be 1 to 1024"),
        ({"resize_size": 10**9}, "resize_size must be 1 to 16384"),
        ({"value_range": [1, 1]}, r"value_range must be \(low, high\) with low < high"),
        ({"value_range": [255, 0]}, r"value_range must be \(low, high\) with low < high"),
        ({"width": 1e9}, "width must be above 0 and at most 64"),
        ({"class_names": ["a", "b", "a", "c", "d"]}, "class_names repeat 'a' .indices 0 and 2"),
    ],
)
def test_info_json_out_of_range_is_refused_at_load_naming_the_file(
    trained, tmp_path, change, needle
):
    # Each of these loaded before: crop 20000 then aborted the interpreter in XLA when a
    # video was explained, value_range [1, 1] divided by 0 in every video's normalisation.
    d = _copy(trained[3], tmp_path)
    data = json.loads((d / "info.json").read_text())
    (d / "info.json").write_text(json.dumps({**data, **change}))
    with pytest.raises(CheckpointError, match=r"invalid metadata .*info\.json: .*" + needle):
        models.load(d)
    with pytest.raises(SelrelError, match=needle):
        models.ModelInfo.from_dict({**data, **change})


def _with_bad_values(variables):
    """A copy of ``variables`` with a NaN in conv1's kernel and an inf in fc's bias."""
    bad = jax.tree_util.tree_map(np.array, variables)
    bad["params"]["conv1"]["kernel"].flat[5] = np.nan
    bad["params"]["fc"]["bias"][2] = -np.inf
    return bad


def test_nonfinite_weights_are_refused_at_load_naming_the_file_and_parameter(trained, tmp_path):
    import orbax.checkpoint as ocp

    d = _copy(trained[3], tmp_path)
    shutil.rmtree(d / "variables")
    with ocp.PyTreeCheckpointer() as checkpointer:  # written as a buggy trainer would
        checkpointer.save(d / "variables", _with_bad_values(trained[1]))
    with pytest.raises(CheckpointError) as caught:
        models.load(d)
    message = str(caught.value)
    assert str(d / "variables") in message
    assert "params/conv1/kernel (1 NaN, 0 infinite" in message
    assert "params/fc/bias (0 NaN, 1 infinite" in message


def test_save_refuses_nonfinite_weights_and_writes_nothing(trained, tmp_path):
    _, variables, info, _ = trained
    with pytest.raises(CheckpointError, match=r"params/conv1/kernel \(1 NaN"):
        models.save(tmp_path / "nan", info, _with_bad_values(variables))
    assert not (tmp_path / "nan").exists()


def test_load_of_a_regular_file_says_so(tmp_path):
    with pytest.raises(CheckpointError, match=r"notes\.txt is a file, not a checkpoint"):
        models.load(_regular_file(tmp_path))


def test_save_replaces_only_a_checkpoint_it_wrote_and_never_changed(trained, tmp_path):
    _, variables, info, directory = trained
    ours = shutil.copytree(directory, tmp_path / "ours")
    assert models.save(ours, info, variables) == ours  # its own: replaced
    foreign = shutil.copytree(directory, tmp_path / "foreign")
    (foreign / ".selrel-output.json").unlink(missing_ok=True)  # a checkpoint of unknown origin
    edited = shutil.copytree(directory, tmp_path / "edited")
    (edited / "info.json").write_text((edited / "info.json").read_text() + " ")
    for target, why in ((foreign, r"was not written by selrel checkpoint save \(it has no "),
                        (edited, r"holds files changed since selrel checkpoint save wrote them "
                                 r"\(info\.json\)")):  # fmt: skip
        before = sorted(p.name for p in target.iterdir())
        with pytest.raises(CheckpointError, match=rf"^checkpoint directory {target} {why}"):
            models.save(target, info, variables)
        assert sorted(p.name for p in target.iterdir()) == before
