"""``selrel report``: the report's path on stdout, figures beside it, one-line errors."""

from __future__ import annotations

import inspect

import pytest
from typer.testing import CliRunner

from selrel_jax import report
from selrel_jax.cli import app
from selrel_jax.cli import report as report_command
from selrel_jax.sweep import run_sweep

CLIP = (8, 32, 32)
runner = CliRunner()


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory, save_tiny_model):
    """A sweep of an untrained tiny c3d_small on three clips (no faithfulness)."""
    root = tmp_path_factory.mktemp("sweep")
    model_dir = save_tiny_model(root / "tiny", 5)
    run_sweep(root / "sweep", model=model_dir, dataset="synthetic_motion/tiny", data_seed=1,
              limit=3, methods=["gradient"], sigmas=[0.5, 1.0, 2.0])  # fmt: skip
    return root / "sweep"


def test_report_prints_its_path_and_writes_figures_beside_it(sweep_dir, tmp_path):
    out = tmp_path / "out" / "study.md"
    result = runner.invoke(app, ["report", str(sweep_dir), "--out", str(out), "--resamples", "200"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == str(out)
    markdown = out.read_text()
    assert "(200 resamples of the clips, seed 0)" in markdown
    assert "where one sigma is needed it is 1." in markdown.lower()
    assert "## Relevance on static objects" not in markdown  # tiny has no static objects
    assert "## Motion reliance" not in markdown  # no faithfulness columns
    assert (out.parent / "study-spatial_bias.png").is_file()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--out", "report.txt"], "--out must be a markdown file ending in .md"),
        (["--sigma", "3"], "sigma 3 is in none of the sweeps"),
        (["--resamples", "0"], "resamples must be a positive int; got 0"),
        (["--seed", "-1"], "seed must be an int >= 0; got -1"),
    ],
)
def test_bad_flags_are_one_line(sweep_dir, tmp_path, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["report", str(sweep_dir), *extra])
    assert result.exit_code == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("selrel: error: ") and message in lines[0]
    assert not (tmp_path / "report").exists()


def test_a_directory_without_a_sweep_is_one_line(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path), "--out", str(tmp_path / "r.md")])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"selrel: error: {tmp_path} is not a sweep directory: it has no manifest.json"
    )


def test_command_defaults_are_the_librarys():
    command = inspect.signature(report_command.report).parameters
    library = inspect.signature(report.write_report).parameters
    assert command["resamples"].default == library["resamples"].default == report.RESAMPLES
    assert command["seed"].default == library["seed"].default
    assert command["sigma"].default is library["sigma"].default is None


def test_a_finished_sweep_whose_every_clip_failed_says_so(tmp_path, save_tiny_model):
    # It said "has no rows yet", as if the sweep were still running.
    from selrel_jax.data.synthetic_motion import CLASS_NAMES

    for cls in CLASS_NAMES[:2]:
        (tmp_path / "videos" / cls).mkdir(parents=True)
        for name in ("a.mp4", "b.mp4"):
            (tmp_path / "videos" / cls / name).write_bytes(b"not a video at all")
    model_dir = save_tiny_model(tmp_path / "tiny", 5)
    summary = run_sweep(tmp_path / "sweep", model=model_dir,
                        dataset=f"folder:{tmp_path / 'videos'}", methods=["gradient"],
                        sigmas=[1.0], decode_timeout=None)  # fmt: skip
    assert summary["complete"] and summary["failed"] == summary["clips"] == 2
    result = runner.invoke(app, ["report", str(tmp_path / "sweep"), "--out",
                                 str(tmp_path / "r.md")])  # fmt: skip
    assert result.exit_code == 2 and result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(
        f"selrel: error: sweep {tmp_path / 'sweep'} finished: every one of its 2 clips failed "
        f'(see "failed" in {tmp_path / "sweep" / "manifest.json"}; e.g. '
        f"{CLASS_NAMES[0]}/b.mp4#0: "
    ), line
    assert "no rows yet" not in line and not (tmp_path / "r.md").exists()


def test_a_wrong_sanity_file_is_one_line_and_nothing_is_written(tmp_path):
    sanity = tmp_path / "sanity.json"
    sanity.write_text('{"layers": ["fc"], "methods": {}, "threshold": 0.5}')
    out = tmp_path / "report" / "r.md"
    result = runner.invoke(app, ["report", str(tmp_path), "--sanity", str(sanity),
                                 "--out", str(out)])  # fmt: skip
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"selrel: error: --sanity {sanity}: it has no methods; expected the JSON line "
        "selrel sanity prints"
    )
    assert not (tmp_path / "report").exists()
