"""Shipped files reach users: checkpoints/ and class-name lists inside a built wheel."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from selrel_jax import models

REPO = Path(__file__).resolve().parents[2]


def test_class_name_lists():
    kinetics = models.kinetics400_class_names()
    assert len(kinetics) == len(set(kinetics)) == 400
    assert list(kinetics) == sorted(kinetics, key=str.lower)
    assert kinetics[0] == "abseiling" and kinetics[-1] == "zumba"
    sports = models.sports1m_class_names()
    assert len(sports) == len(set(sports)) == 487


def test_load_by_name_finds_source_tree_checkpoints(numpy_variables, tmp_path, monkeypatch):
    from selrel_jax.models import checkpoint

    fake_repo = tmp_path / "repo"
    (fake_repo / "checkpoints").mkdir(parents=True)
    _save_tiny(numpy_variables, fake_repo / "checkpoints" / "tiny_source")
    monkeypatch.setattr(checkpoint, "_checkpoint_roots", lambda: [fake_repo / "checkpoints"])
    assert "tiny_source" in models.shipped_checkpoints()
    _, _, info = models.load("tiny_source")
    assert info.extra["origin"] == "test"


def _save_tiny(numpy_variables, directory: Path) -> None:
    model = models.create("c3d_small", 3, width=0.25, clip_size=(4, 16, 16))
    variables = numpy_variables(model, (1, 4, 16, 16, 3))
    info = models.ModelInfo.for_arch(
        "c3d_small", 3, width=0.25, clip_length=4, crop_size=(16, 16), extra={"origin": "test"}
    )
    models.save(directory, info, variables)


@pytest.mark.slow
def test_wheel_ships_checkpoints_and_class_names(numpy_variables, tmp_path):
    # builds offline with the environment's setuptools (bdist_wheel built in since 70.1)
    pytest.importorskip("setuptools", minversion="70.1")
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(
        REPO / "selrel_jax",
        source / "selrel_jax",
        ignore=shutil.ignore_patterns("__pycache__", "_checkpoints"),
    )
    _save_tiny(numpy_variables, source / "checkpoints" / "tiny_wheel")
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(dist), str(source)],
        check=True, capture_output=True, cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = dist.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "selrel_jax/_checkpoints/tiny_wheel/info.json" in names
    assert any(n.startswith("selrel_jax/_checkpoints/tiny_wheel/variables/") for n in names)
    assert "selrel_jax/models/kinetics400_classes.txt" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = (
        "import json, selrel_jax; from selrel_jax import models; "
        "_, _, info = models.load('tiny_wheel'); "
        "names = models.kinetics400_class_names(); "
        "print(json.dumps([selrel_jax.__file__, info.extra, len(names)]))"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run(
        [sys.executable, "-c", probe],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    where, extra, n_kinetics = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(where).is_relative_to(site)
    assert extra == {"origin": "test"} and n_kinetics == 400
