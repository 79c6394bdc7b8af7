"""The Colab notebooks, run top to bottom in a real Jupyter kernel (nbclient + ipykernel).

Each run starts the kernel in a working directory laid out as on Colab: the repository
is a folder named ``selrel_jax`` beside where the kernel starts, so a plain ``import
selrel_jax`` there finds the repository folder as an empty namespace package (this
checkout is an editable install, whose import hook comes after the path search). The
parameter cell (tagged ``parameters``) is followed by an injected cell with smaller
values, as papermill does. Outputs must be stripped in the repository.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = {name: REPO / "colab" / f"{name}.ipynb" for name in ("quickstart", "tpu_sweep")}
KERNEL = "selrel-notebook-test"
FAKE_COLAB = 'import sys, types\nsys.modules["google.colab"] = types.ModuleType("google.colab")'


@pytest.fixture
def content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Colab's ``/content``: the repository as ``./selrel_jax``; a kernel spec that runs
    this interpreter; no pip index; inline figures (CI sets ``MPLBACKEND=Agg``)."""
    content = tmp_path / "content"
    content.mkdir()
    (content / "selrel_jax").symlink_to(REPO, target_is_directory=True)
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "language": "python",
                                                  "display_name": KERNEL}))  # fmt: skip
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("SELREL_DATA_DIR", str(tmp_path / "tensorflow_datasets"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)
    return content


def prepared(name: str, parameters: dict, *, prelude: str = "",
             extra_cells: tuple[str, ...] = ()) -> nbformat.NotebookNode:  # fmt: skip
    """Notebook ``name`` with ``parameters`` injected in a cell after its parameter cell
    (``prelude`` first), as papermill does, and ``extra_cells`` appended."""
    nb = nbformat.read(NOTEBOOKS[name], as_version=4)
    lines = [prelude] + [f"{key} = {value!r}" for key, value in parameters.items()]
    injected = nbformat.v4.new_code_cell("\n".join(lines).strip(),
                                         metadata={"tags": ["injected-parameters"]})  # fmt: skip
    nb.cells.insert(parameter_cell(nb) + 1, injected)
    nb.cells.extend(nbformat.v4.new_code_cell(source) for source in extra_cells)
    return nb


def execute(nb: nbformat.NotebookNode, workdir: Path) -> nbformat.NotebookNode:
    """Run ``nb`` top to bottom in a fresh kernel started in ``workdir``, in place; a cell
    that raises stops the run with CellExecutionError."""
    NotebookClient(nb, kernel_name=KERNEL, timeout=600,
                   resources={"metadata": {"path": str(workdir)}}).execute()  # fmt: skip
    return nb


def parameter_cell(nb: nbformat.NotebookNode) -> int:
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "a notebook needs exactly one cell tagged 'parameters'"
    return tagged[0]


def printed(cell: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.output_type == "stream")


def displayed(cell: nbformat.NotebookNode, mime: str) -> list[str]:
    kinds = ("display_data", "execute_result")
    return [o.data[mime] for o in cell.get("outputs", []) if o.output_type in kinds
            and mime in o.data]  # fmt: skip


def cell_with(nb: nbformat.NotebookNode, text: str) -> nbformat.NotebookNode:
    [cell] = [c for c in nb.cells if c.cell_type == "code" and text in c.source]
    return cell


def results_of(nb: nbformat.NotebookNode) -> dict:
    line = next(ln for ln in printed(nb.cells[-1]).splitlines() if ln.startswith("RESULTS "))
    return json.loads(line.removeprefix("RESULTS "))


def is_animation(html: str) -> bool:
    return "<script" in html and "anim" in html and "data:image/png;base64" in html


# ---------------------------------------------------------------------------- the repository


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_stored_without_outputs_or_downloads(name):
    nb = nbformat.read(NOTEBOOKS[name], as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]
        assert not cell.get("attachments"), cell.source[:60]
    assert set(nb.metadata) <= {"kernelspec", "language_info", "colab", "accelerator"}
    assert nb.metadata.get("colab", {}).get("provenance", []) == []
    defaults: dict = {}
    exec(nb.cells[parameter_cell(nb)].source, defaults)
    assert defaults["REPO"] == "selrel_jax" and defaults["CLONE_URL"] == ""
    assert defaults["PIP_SOURCE"] == ""
    # the first cell says how to install: both parameters, a wheel and a git+ URL
    first = nb.cells[0].source
    assert all(word in first for word in ("`CLONE_URL`", "`PIP_SOURCE`", ".whl", '"git+https'))
    assert defaults.get("DOWNLOAD_UCF101", False) is False
    sources = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "%pip" not in sources and "!pip" not in sources  # installs raise when they fail


# ---------------------------------------------------------------------------- the notebooks


@pytest.mark.slow
def test_quickstart_runs_in_colab_layout(content):
    report = (
        "import json\n"
        "print('RESULTS ' + json.dumps({'module': sr.__file__,\n"
        "    'predicted': {m: r.predicted_name for m, r in results.items()},\n"
        "    'bias': {m: r.scores()['spatial_bias'] for m, r in results.items()},\n"
        "    'biased': biased.scores()['spatial_bias'],\n"
        "    'biased_predicted': biased.predicted_name,\n"
        "    'grad_bias': grad_bias.tolist(), 'grad_shape': list(relevance.shape)}))"
    )
    nb = execute(prepared("quickstart", {}, extra_cells=(report,)), content)
    out = results_of(nb)
    assert Path(out["module"]) == REPO / "selrel_jax" / "__init__.py"
    assert out["predicted"] == {"lrp.epsilon_plus_flat": "translate_right",
                                "gradient_x_input": "translate_right"}  # fmt: skip
    assert all(0.0 <= b <= 1.0 for b in out["bias"].values())
    assert 0.2 < out["bias"]["lrp.epsilon_plus_flat"] < 0.35  # docs/explain.md's table: 0.27
    # docs/explain.md's sample-clip table: the shortcut model loses more to selection (0.46 vs 0.27).
    assert out["biased_predicted"] == "rotate_counterclockwise"
    assert out["biased"] > out["bias"]["lrp.epsilon_plus_flat"] + 0.1
    assert out["grad_shape"] == [1, 16, 48, 48, 3] and 0.0 < out["grad_bias"][0] < 1.0
    animations = [h for c in nb.cells for h in displayed(c, "text/html") if is_animation(h)]
    assert len(animations) == 3  # the clip's maps, the two models, the jax.grad map
    [view] = [h for h in displayed(cell_with(nb, "results[METHODS[0]]  #"), "text/html")]
    assert view.count("<img") == 4 and 'class="sigma"' in view  # the interactive view
    assert len(displayed(cell_with(nb, "viz.filmstrip"), "image/png")) == 2


@pytest.mark.slow
def test_tpu_sweep_shards_over_devices_and_runs_optional_cells(content, tmp_path, monkeypatch):
    import torch

    from selrel_jax.sweep import read_manifest, read_table
    from tests.torch_reference_models import build

    weights = tmp_path / "r2plus1d_18_thin.pth"  # torchvision's layout, 400 classes, thin
    torch.save(build("r2plus1d_18", num_classes=400, width=0.125).state_dict(), weights)
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    small = {"METHODS": ["gradient_x_input"], "SIGMAS": [1.0, 2.0], "CLIPS": 4,
             "CLIPS_PER_DEVICE": 2, "WEIGHTS_FILE": str(weights), "EXPLAIN_FRAMES": 16,
             "EXPLAIN_BATCH": 1}  # fmt: skip
    stored = nbformat.read(NOTEBOOKS["tpu_sweep"], as_version=4)
    convert_source = cell_with(stored, "convert_torch_file(").source
    rerun_without_weights = ('WEIGHTS_FILE = "absent.pth"', convert_source)
    nb = execute(prepared("tpu_sweep", small, extra_cells=rerun_without_weights), content)

    assert printed(cell_with(nb, "jax.device_count(), ")).startswith("2 devices: [")
    for model in ("c3d_small_motion", "c3d_small_biased"):
        manifest = read_manifest(content / "sweeps" / model)
        assert manifest["complete"] and manifest["settings"]["batch_size"] == 2 * 2
        assert read_table(content / "sweeps" / model).num_rows == 4 * 1 * 2
    report_cell = cell_with(nb, "report.load_sweeps")
    assert printed(report_cell).count("spatial bias") == 2 * 2  # models x sigmas
    assert len(displayed(report_cell, "image/png")) == 3
    info = json.loads((content / "sweeps" / "models" / "r2plus1d_18" / "info.json").read_text())
    assert info["arch"] == "r2plus1d_18" and info["num_classes"] == 400
    convert_cell = next(c for c in nb.cells if "convert_torch_file(" in c.source)
    assert "predicted " in printed(convert_cell) and "spatial bias" in printed(convert_cell)
    skipped = "skipped: no weights file absent.pth (upload it, or set WEIGHTS_FILE)\n"
    assert printed(nb.cells[-1]) == skipped
    ucf = printed(cell_with(nb, "load_tfds_videos"))
    if importlib.util.find_spec("tensorflow") is None:
        assert ucf.startswith("skipped: reading UCF-101 needs TensorFlow")
    else:
        assert ucf.startswith("skipped: ucf101 is not prepared")


# ---------------------------------------------------------------------------- failures


def ran(nb: nbformat.NotebookNode) -> list[bool]:
    return [c.execution_count is not None for c in nb.cells if c.cell_type == "code"]


def failure(nb: nbformat.NotebookNode, workdir: Path) -> CellExecutionError:
    with pytest.raises(CellExecutionError) as raised:
        execute(nb, workdir)
    return raised.value


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_install_without_the_repository_stops_the_notebook(content, name):
    nb = prepared(name, {"REPO": "missing"}, prelude=FAKE_COLAB)
    error = failure(nb, content)
    assert error.ename == "FileNotFoundError"
    assert re.fullmatch(f"no selrel_jax repository at {content}/missing: clone it there, upload "
                        "it in the Files pane, or set CLONE_URL or PIP_SOURCE, then run this "
                        "cell again", error.evalue)  # fmt: skip
    assert ran(nb) == [True, True, True] + [False] * (len(ran(nb)) - 3)  # parameters, install


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_failed_pip_install_stops_the_notebook(content, name):
    upload = content / "upload"
    upload.mkdir()
    (upload / "pyproject.toml").write_text("[project\n")  # an upload cut short
    nb = prepared(name, {"REPO": "upload"}, prelude=FAKE_COLAB)
    error = failure(nb, content)
    assert error.ename == "RuntimeError"
    first, rest = error.evalue.split("\n", 1)
    assert re.fullmatch(rf"\S+ -m pip install -q -e {upload} failed \(exit [1-9]\d*\):", first)
    assert "TOMLDecodeError" in rest  # pip's own reason, not only "failed"
    assert ran(nb) == [True, True, True] + [False] * (len(ran(nb)) - 3)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_a_pip_source_is_installed_without_a_repository_folder(content, name):
    wheel = content / "selrel_jax-0.0-py3-none-any.whl"  # not there: pip fails, naming it
    nb = prepared(name, {"REPO": "missing", "PIP_SOURCE": str(wheel)}, prelude=FAKE_COLAB)
    error = failure(nb, content)
    assert error.ename == "RuntimeError"  # pip ran; no "no selrel_jax repository" error
    first = error.evalue.split("\n", 1)[0]
    assert re.fullmatch(rf"\S+ -m pip install -q {wheel} failed \(exit [1-9]\d*\):", first)
    assert ran(nb) == [True, True, True] + [False] * (len(ran(nb)) - 3)


def test_import_check_names_the_namespace_package(content):
    # Not on Colab and REPO not the clone: `import selrel_jax` beside the clone finds the
    # repository folder, and the notebook says so instead of failing later. (Only an
    # editable install, as the README's, is shadowed: its import hook runs after the path
    # search; a regular install in site-packages wins over a namespace folder.)
    if not any("__editable__" in getattr(f, "__module__", "") for f in sys.meta_path):
        pytest.skip("selrel_jax is not an editable install here, so nothing shadows it")
    error = failure(prepared("quickstart", {"REPO": "elsewhere"}), content)
    assert error.ename == "ImportError"
    assert error.evalue.startswith(
        f"`import selrel_jax` found the folder ['{content}/selrel_jax'], not the package"
    )
