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
    assert info.resize_size == 128 and info.crop_size == (112, 112)
    assert info.extra == {"trained_on": "Kinetics-400", "converted_from": "mc3.pth"}
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
    code, stdout, stderr = _run(junk, "--arch", "c3d", "--out", tmp_path / "a")
    _assert_one_line_error(code, stdout, stderr, "junk.pth is not a PyTorch weights file")
    missing = tmp_path / "missing.pth"
    _assert_one_line_error(*_run(missing, "--arch", "c3d", "--out", tmp_path / "b"), "not found")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    code, stdout, stderr = _run(tmp_path / "list.pth", "--arch", "c3d", "--out", tmp_path / "c")
    _assert_one_line_error(code, stdout, stderr, "holds no state_dict")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.pth", "list.pth"]


def test_text_file_is_not_a_pytorch_weights_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("hello, these are notes\n")
    code, stdout, stderr = _run("notes.txt", "--arch", "c3d", "--out", "ck")
    _assert_one_line_error(
        code, stdout, stderr, "notes.txt is not a PyTorch weights file (torch.load: KeyError: "
    )
    (tmp_path / "empty.pth").write_bytes(b"")
    code, stdout, stderr = _run("empty.pth", "--arch", "c3d", "--out", "ck")
    _assert_one_line_error(code, stdout, stderr, "empty.pth is empty, not a PyTorch weights file")
    # a real torch file holding objects weights_only refuses: named as such, no warnings
    torch.save({"a": torch.nn.Linear(1, 1)}, tmp_path / "module.pth", pickle_protocol=4)
    code, stdout, stderr = _run("module.pth", "--arch", "c3d", "--out", "ck")
    _assert_one_line_error(
        code, stdout, stderr, "cannot read PyTorch weights module.pth: weights_only=True refuses"
    )
    assert not (tmp_path / "ck").exists()


def test_weights_path_that_is_a_directory_without_weights(tmp_path):
    code, stdout, stderr = _run(tmp_path, "--arch", "c3d", "--out", tmp_path / "ck")
    _assert_one_line_error(
        code, stdout, stderr, "is a folder without model.safetensors or pytorch_model.bin"
    )


def test_a_file_needs_arch(weights, tmp_path):
    code, stdout, stderr = _run(weights[0], "--out", tmp_path / "ck")
    _assert_one_line_error(code, stdout, stderr, "mc3.pth: pass --arch (one of c3d, ")
    assert not (tmp_path / "ck").exists()


def test_existing_checkpoint_needs_overwrite(weights, tmp_path):
    from selrel_jax.errors import CheckpointError
    from selrel_jax.models.torch_import import convert_torch_file

    out = tmp_path / "ck"
    assert _run(weights[0], "--arch", "mc3_18", "--out", out)[0] == 0
    _assert_one_line_error(
        *_run(weights[0], "--arch", "mc3_18", "--out", out),
        "ck already holds a checkpoint; pass --overwrite",
    )
    assert _run(weights[0], "--arch", "mc3_18", "--out", out, "--overwrite")[0] == 0
    assert _run(weights[0], "--arch", "mc3_18", "--out", out, "--force")[0] == 2  # no old name
    with pytest.raises(CheckpointError, match=r"overwrite=True"):
        convert_torch_file(weights[0], "mc3_18", out)
    assert convert_torch_file(weights[0], "mc3_18", out, overwrite=True) == out.resolve()
    assert "--overwrite" in runner.invoke(app, ["convert", "--help"]).stdout


def _regular_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("a regular file\n")
    return path


@pytest.mark.parametrize("out", ["{file}/ck", "{file}", "{file}/a/b"])
def test_out_below_a_regular_file_is_one_line_error_and_writes_nothing(weights, tmp_path, out):
    out = out.format(file=_regular_file(tmp_path))
    code, stdout, stderr = _run(weights[0], "--arch", "mc3_18", "--out", out)
    _assert_one_line_error(code, stdout, stderr, "is a file, not a directory")
    assert code == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_out_holding_other_files_is_refused(weights, tmp_path):
    (tmp_path / "keep.txt").write_text("mine\n")
    code, stdout, stderr = _run(weights[0], "--arch", "mc3_18", "--out", tmp_path)
    _assert_one_line_error(code, stdout, stderr, "holds other files than a checkpoint (keep.txt)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_an_os_error_the_library_did_not_foresee_is_one_line(weights, tmp_path, monkeypatch):
    import errno

    from selrel_jax.models import torch_import

    def unplugged(path):
        raise OSError(errno.EIO, "Input/output error", str(path))

    monkeypatch.setattr(torch_import, "read_torch_state_dict", unplugged)
    code, stdout, stderr = _run(weights[0], "--arch", "mc3_18", "--out", tmp_path / "ck")
    _assert_one_line_error(code, stdout, stderr, f"{weights[0]}: Input/output error")
    assert code == 2


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


def test_convert_refuses_weights_holding_nan_or_inf_naming_the_file_and_key(weights, tmp_path):
    # A checkpoint with NaN weights used to be saved; every explanation of it was NaN.
    state = weights[1]
    bad = {k: v.clone() for k, v in state.items()}
    bad["layer1.0.conv1.0.weight"][0, 0, 0, 0, 0] = float("nan")
    bad["fc.bias"][3] = float("inf")
    torch.save(bad, tmp_path / "nan.pth")
    code, stdout, stderr = _run(tmp_path / "nan.pth", "--arch", "mc3_18", "--out", tmp_path / "ck")
    _assert_one_line_error(code, stdout, stderr, "nan.pth")
    assert "['layer1.0.conv1.0.weight'] holds 1 non-finite values (1 NaN, 0 infinite)" in stderr
    assert not (tmp_path / "ck").exists()


def test_convert_refuses_repeated_class_names_naming_the_file(weights, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("".join(f"action {i}\n" for i in range(399)) + "action 7\n")
    code, stdout, stderr = _run(
        weights[0], "--arch", "mc3_18", "--out", tmp_path / "ck", "--class-names", names
    )
    _assert_one_line_error(code, stdout, stderr, "names.txt repeat 'action 7' (lines 8 and 400)")
    assert not (tmp_path / "ck").exists()
