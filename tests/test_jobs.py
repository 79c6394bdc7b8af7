"""selrel_jax._jobs: atomic writes, settings records and the one refusal of other
settings (train, sweep and explain alike), stale temporaries, versions."""

from __future__ import annotations

import json
import os
import re

import pytest

from selrel_jax import _jobs
from selrel_jax.errors import OptionError, SelrelError

DEAD = 2**22 + 12345  # above the default pid_max: no such process


def _refusal(what: str, path, remedy: str) -> str:
    """The one shape of a refusal of other settings, as a regex."""
    return (
        rf"^{what} at {re.escape(os.fspath(path))} was made with other settings \((.+)\); "
        rf"{remedy} or choose another output$"
    )


# ---------------------------------------------------------------------------- writes


def test_a_file_write_that_raises_midway_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "a.json"
    _jobs.write_text(path, "old\n")

    def half_then_fail(temporary):
        temporary.write_text("half of the n")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        _jobs.write_file(path, half_then_fail)
    assert os.listdir(tmp_path) == ["a.json"] and path.read_text() == "old\n"

    def interrupted(temporary):  # not only errors: an interruption too
        temporary.write_text("x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _jobs.write_file(tmp_path / "new.json", interrupted)
    assert os.listdir(tmp_path) == ["a.json"]


def test_a_folder_write_that_raises_midway_leaves_the_old_folder_and_no_temporary(tmp_path):
    path = tmp_path / "out"
    _jobs.write_folder(path, lambda folder: (folder / "summary.json").write_text("{}"))

    def half_then_fail(folder):
        (folder / "summary.json").write_text('{"half')
        raise KeyboardInterrupt

    for target in (path, tmp_path / "new"):
        with pytest.raises(KeyboardInterrupt):
            _jobs.write_folder(target, half_then_fail)
    assert os.listdir(tmp_path) == ["out"] and os.listdir(path) == ["summary.json"]
    assert (path / "summary.json").read_text() == "{}"
    # without the failure the folder is replaced whole, and nothing else is left
    _jobs.write_folder(path, lambda folder: (folder / "b.txt").write_text("b"))
    assert os.listdir(tmp_path) == ["out"] and os.listdir(path) == ["b.txt"]


# ---------------------------------------------------------------------------- settings


def test_the_settings_difference_names_each_key():
    old = {"sigma": 1.0, "config": {"seed": 1, "lr": 0.1}, "gone": 3, "methods": ["a"]}
    new = {"sigma": 2.0, "config": {"seed": 2, "lr": 0.1}, "added": 4, "methods": ["a", "b"]}
    assert _jobs.changed_settings(old, new) == ["added", "config.seed", "gone", "methods", "sigma"]
    assert _jobs.changed_settings(old, old) == []
    # a record compares as JSON holds it: a tuple is the list it is stored as
    assert _jobs.changed_settings(_jobs.settings_record({"c": (1, 2)}), {"c": [1, 2]}) == []


def test_a_refusal_names_old_and_new_values_and_the_first_five_keys(tmp_path):
    old = {f"k{i}": i for i in range(7)}
    with pytest.raises(OptionError, match=_refusal("sweep", tmp_path, "rerun with its settings")):
        _jobs.refuse_other_settings("sweep", tmp_path, old, {**old, "k0": "x"})
    with pytest.raises(SelrelError) as error:
        _jobs.refuse_other_settings("run", tmp_path, old, {}, error=SelrelError, replaceable=True)
    assert (
        "(k0: 0 -> null, k1: 1 -> null, k2: 2 -> null, k3: 3 -> null, k4: 4 -> null, "
        "and 2 more); pass --overwrite to replace it or choose another output" in str(error.value)
    )
    _jobs.refuse_other_settings("sweep", tmp_path, old, dict(old))  # the same: no error


def test_train_refuses_other_settings_in_the_one_shape(tmp_path):
    from selrel_jax.train import RunDirectory

    RunDirectory(tmp_path, {"config": {"seed": 1}}).close()
    with pytest.raises(
        SelrelError, match=_refusal("run", tmp_path, "rerun with its settings")
    ) as e:
        RunDirectory(tmp_path, {"config": {"seed": 2}})
    assert "(config.seed: 1 -> 2)" in str(e.value)


def test_sweep_refuses_other_settings_in_the_one_shape(tmp_path):
    from selrel_jax.sweep import _store

    _store.write_manifest(tmp_path, {"sigmas": [1.0, 2.0]}, {}, 1, 1, {}, {})
    remedy = "rerun with its settings"
    with pytest.raises(OptionError, match=_refusal("sweep", tmp_path, remedy)) as e:
        _store.check_target(tmp_path, {"sigmas": [1.0]})
    assert "(sigmas: [1.0, 2.0] -> [1.0])" in str(e.value)


def test_explain_refuses_other_settings_in_the_one_shape(tmp_path):
    from selrel_jax.explanation_files import _Expected
    from selrel_jax.models import ModelInfo
    from selrel_jax.video_explanation import ExplainSettings

    info = ModelInfo.for_arch("c3d_small", 3)
    settings = ExplainSettings(method="gradient", sigma=2.0)
    made = {"video": "clip.mp4", "model": "m", "method": "gradient", "method_options": {},
            "sigma": 1.0, "temporal_padding": "edge", "threshold": "clip",
            "target": {"index": 1}, "predicted": {"index": 1}, "frames": 32,
            "clips": [{"start_frame": s} for s in (0, 8, 16)]}  # fmt: skip
    (tmp_path / "summary.json").write_text(json.dumps(made))
    expected = _Expected(settings, settings.options_for(info), info, "m", False, None)
    remedy = "pass --overwrite to replace it"
    with pytest.raises(OptionError, match=_refusal("explanation", tmp_path, remedy)) as e:
        expected.finished("clip.mp4", os.fspath(tmp_path))
    assert "(sigma: 1.0 -> 2.0)" in str(e.value)
    same = _Expected(ExplainSettings(method="gradient"), {}, info, "m", False, 1)
    assert same.finished("clip.mp4", os.fspath(tmp_path)) == made  # kept


# ---------------------------------------------------------------------------- temporaries


def test_a_stale_temporary_of_a_dead_writer_is_removed_and_a_live_ones_is_not(tmp_path):
    target = tmp_path / "out"
    dead_folder = tmp_path / f".out.{DEAD}.0a1b2c3d.tmp"
    dead_file = tmp_path / f".out.{DEAD}.deadbeef.tmp"
    live = _jobs.temporary_path(target)  # this process's: it runs
    others = [tmp_path / f".other.{DEAD}.0a1b2c3d.tmp", tmp_path / f".out.{DEAD}.tmp"]
    dead_folder.mkdir()
    (dead_folder / "summary.json").write_text("{")
    for path in (dead_file, live, *others):
        path.write_text("x")
    assert _jobs.temporary_target(live.name) == ("out", os.getpid())
    assert sorted(_jobs.remove_stale_temporaries(target)) == sorted([dead_folder, dead_file])
    # another target's temporary and a name not of the pattern stay too
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in (live, *others))
    assert _jobs.remove_stale_temporaries(tmp_path / "missing" / "out") == []


def test_versions_name_the_library_and_what_a_job_adds():
    found = _jobs.versions("pyarrow")
    assert set(found) == {"selrel_jax", "jax", "flax", "numpy", "pyarrow"}
    assert all(isinstance(v, str) and v for v in found.values())


# ---------------------------------------------------------------------------- JSON


def test_json_text_is_strict_json_and_finite_json_names_each_null():
    value = {"a": float("nan"), "b": [1.0, float("inf"), {"c": -float("inf")}], "d": "x"}
    text = _jobs.json_text(value)
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c}")) == {
        "a": None, "b": [1.0, None, {"c": None}], "d": "x"}  # fmt: skip
    _, nulls = _jobs.finite_json(value)
    assert nulls == {"a": "not a finite number (NaN)", "b[1]": "not a finite number (Infinity)",
                     "b[2].c": "not a finite number (-Infinity)"}  # fmt: skip


# ---------------------------------------------------------------------------- ownership


def _marked(folder):
    _jobs.write_folder(folder, lambda f: ((f / "a.txt").write_text("a"), (f / "sub").mkdir(),
                                          (f / "sub" / "b.bin").write_bytes(b"b"),
                                          _jobs.write_marker(f, "explain")))  # fmt: skip
    return folder


def test_only_a_folder_with_its_marker_and_nothing_else_is_owned(tmp_path):
    folder = _marked(tmp_path / "out")
    assert _jobs.ownership_problem(folder, "explain") is None
    assert _jobs.ownership_problem(tmp_path / "absent", "explain") is None
    assert _jobs.ownership_problem(folder, "sweep") == (
        "was written by selrel explain, not by selrel sweep"
    )
    (folder / "sub" / "b.bin").unlink()  # a file gone: what is left is still its own
    assert _jobs.ownership_problem(folder, "explain") is None
    (folder / "sub" / "thesis.txt").write_text("mine")
    assert _jobs.ownership_problem(folder, "explain") == (
        "holds files selrel explain did not write (sub/thesis.txt)"
    )
    (folder / "sub" / "thesis.txt").unlink()
    (folder / "a.txt").write_text("edited")
    assert _jobs.ownership_problem(folder, "explain") == (
        "holds files changed since selrel explain wrote them (a.txt)"
    )
    (folder / ".selrel-output.json").write_text("{")
    with pytest.raises(
        OptionError,
        match=r"^output .*out was not written by selrel explain \(it "
        r"has no readable \.selrel-output\.json\); selrel replaces only what",
    ):
        _jobs.check_owned(folder, "explain")  # fmt: skip
    (tmp_path / "link").symlink_to(_marked(tmp_path / "other"))
    assert "a link" in _jobs.ownership_problem(tmp_path / "link", "explain")


def test_an_output_that_is_holds_or_lies_in_an_input_is_refused(tmp_path):
    frames = tmp_path / "frames"
    for output in (frames, tmp_path, frames / "inside"):
        with pytest.raises(OptionError, match=r"the input .*frames; choose a --out where no "):
            _jobs.check_not_input([tmp_path / "elsewhere", output], [frames])
    _jobs.check_not_input([tmp_path / "frames-2", tmp_path / "x" / "frames"], [frames])


# ---------------------------------------------------------------------------- locks


def test_a_lock_refuses_a_second_holder_and_a_dead_ones_lock_is_taken(tmp_path):
    import socket

    out = tmp_path / "new" / "out"
    with _jobs.output_lock(out, "sweep") as lock:
        record = json.loads(lock.read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        with pytest.raises(
            OptionError,
            match=rf"^output {out} is being written by selrel sweep "
            rf"\(pid {os.getpid()} on .*\); wait for it to finish or choose ",
        ):
            with _jobs.output_lock(out, "explain"):  # fmt: skip
                pass
        assert json.loads(lock.read_text()) == record  # the refused one took nothing
    assert not (tmp_path / "new").exists()  # created for the lock, empty: gone again
    out.mkdir(parents=True)
    dead = {"pid": DEAD, "host": socket.gethostname(), "command": "sweep", "token": "0"}
    (out / ".selrel.lock").write_text(json.dumps(dead))
    with _jobs.output_lock(out, "explain") as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    elsewhere = dead | {"host": "another-host"}  # can't tell: refused
    (out / ".selrel.lock").write_text(json.dumps(elsewhere))
    with pytest.raises(OptionError, match=r"\(pid \d+ on another-host\)"):
        with _jobs.output_lock(out, "explain"):
            pass
    assert sorted(os.listdir(out)) == [".selrel.lock"]


def test_a_request_that_cannot_fit_in_memory_is_one_error(monkeypatch):
    monkeypatch.setattr(_jobs, "available_memory", lambda: 2**30)
    _jobs.check_memory(2**29, "a batch", "use less")
    with pytest.raises(OptionError, match=r"^a batch needs at least 2\.0 GiB of memory; 1\.0 GiB "
                       r"are available; use less$"):  # fmt: skip
        _jobs.check_memory(2**31, "a batch", "use less")
    assert _jobs.available_memory() is None or _jobs.available_memory() > 0
