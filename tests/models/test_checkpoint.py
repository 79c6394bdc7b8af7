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
