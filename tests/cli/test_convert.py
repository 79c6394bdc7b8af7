"""``selrel convert``: .pth -> checkpoint directory, and its one-line errors."""

from __future__ import annotations

import sys

import jax
import numpy as np
import pytest
from typer.testing import CliRunner

torch = pytest.importorskip("torch")

from selrel_jax import models  # noqa: E402
from selrel_jax.cli import app  # noqa: E402
from tests.torch_reference_models import build  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A thin mc3_18 with a 400-class head, saved as DataParallel training output."""
    module = build("mc3_18", num_classes=400, width=0.125, seed=4)
    path = tmp_path_factory.mktemp("pth") / "mc3.pth"
    state = {f"module.{k}": v for k, v in module.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, path)
    return path, module.state_dict()


def _run(*args):
    result = runner.invoke(app, ["convert", *map(str, args)])
    return result.exit_code, result.stdout, result.stderr


def test_convert_writes_loadable_checkpoint_with_kinetics_metadata(weights, tmp_path):
    path, state = weights
    code, stdout, stderr = _run(path, "--arch", "mc3_18", "--out", tmp_path / "ck")
    assert code == 0, stderr
    assert stdout.strip() == str((tmp_path / "ck").resolve())
    _, variables, info = models.load(tmp_path / "ck")
    assert info.arch == "mc3_18" and info.num_classes == 400 and info.width == 0.125
    assert info.class_names == models.kinetics400_class_names()
    assert info.channel_order == "RGB" and info.value_range == (0.0, 1.0)
    assert info.mean == (0.43216, 0.394666, 0.37645) and info.fps == 15.0
    _, direct = models.from_torch_state_dict("mc3_18", state)
    for a, b in zip(
        jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(direct), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def test_convert_with_class_names_file(weights, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("".join(f"action {i}\n" for i in range(400)))
    code, _, stderr = _run(
        weights[0], "--arch", "mc3_18", "--out", tmp_path / "ck", "--class-names", names
    )
    assert code == 0, stderr
    assert models.load(tmp_path / "ck")[2].class_names[399] == "action 399"


def _assert_one_line_error(code, stdout, stderr, needle):
    assert code != 0
    assert stdout == ""
    assert stderr.startswith("selrel: error: ") and stderr.count("\n") == 1, stderr
    assert needle in stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--arch", "r3d_18"], "state_dict does not fit r3d_18"),
        (["--arch", "vgg"], "arch must be one of c3d, c3d_small"),
        (
            ["--arch", "mc3_18", "--class-names", "{names}"],
            "has 3 names; the model has 400 classes",
        ),
    ],
)
def test_convert_errors_leave_no_output(weights, tmp_path, args, needle):
    names = tmp_path / "names.txt"
    names.write_text("a\nb\nc\n")
    args = [a.format(names=names) for a in args]
    _assert_one_line_error(*_run(weights[0], *args, "--out", tmp_path / "ck"), needle)
    assert not (tmp_path / "ck").exists()


def test_unreadable_and_missing_weights(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    _assert_one_line_error(*_run(junk, "--arch", "c3d", "--out", tmp_path / "a"), "cannot read")
    missing = tmp_path / "missing.pth"
    _assert_one_line_error(*_run(missing, "--arch", "c3d", "--out", tmp_path / "b"), "not found")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    code, stdout, stderr = _run(tmp_path / "list.pth", "--arch", "c3d", "--out", tmp_path / "c")
    _assert_one_line_error(code, stdout, stderr, "holds no state_dict")


def test_existing_checkpoint_needs_force(weights, tmp_path):
    out = tmp_path / "ck"
    assert _run(weights[0], "--arch", "mc3_18", "--out", out)[0] == 0
    _assert_one_line_error(*_run(weights[0], "--arch", "mc3_18", "--out", out), "pass force")
    assert _run(weights[0], "--arch", "mc3_18", "--out", out, "--force")[0] == 0


def test_missing_torch_is_a_clear_error(weights, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    code, stdout, stderr = _run(weights[0], "--arch", "mc3_18", "--out", tmp_path / "ck")
    _assert_one_line_error(code, stdout, stderr, "pip install 'selrel-jax[torch]'")


def test_library_calls_raise_checkpoint_errors_and_write_nothing(weights, tmp_path):
    from selrel_jax.errors import CheckpointError
    from selrel_jax.models.torch_import import convert_torch_file, read_torch_state_dict

    path, state = weights
    assert sorted(read_torch_state_dict(path)) == sorted(f"module.{k}" for k in state)
    with pytest.raises(CheckpointError, match="does not fit r3d_18"):
        convert_torch_file(path, "r3d_18", tmp_path / "ck")
    with pytest.raises(CheckpointError, match="not found"):
        read_torch_state_dict(tmp_path / "missing.pth")
    assert not (tmp_path / "ck").exists()
    assert convert_torch_file(path, "mc3_18", tmp_path / "ck") == (tmp_path / "ck").resolve()
