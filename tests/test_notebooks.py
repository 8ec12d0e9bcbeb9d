"""Every notebook runs in the smoke profile; every committed notebook is executed and agrees with its results.json."""
import json
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest

from mlkit import colab
from mlkit.notebooks import STANDALONE_TAGS, compact_streams, execute, setup_cell, standalone_cells
from mlkit.results import CHALLENGES, ROOT, results_line

NOTEBOOKS = [ROOT / c / name for c in CHALLENGES for name in ("Baseline.ipynb", "Challenge.ipynb")
             if (ROOT / c / name).exists()]
CHALLENGE_NOTEBOOKS = [nb for nb in NOTEBOOKS if nb.name == "Challenge.ipynb"]


def _id(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


def _code_cells(notebook: Path):
    cells = nbformat.read(notebook, as_version=4).cells
    return [c for c in cells if c.cell_type == "code" and c.source.strip()]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=_id)
def test_notebook_runs_in_smoke_profile(notebook, tmp_path):
    executed = execute(notebook, "smoke", tmp_path)
    assert executed.parent == tmp_path
    if notebook.name == "Challenge.ipynb":
        assert json.loads((tmp_path / "results.json").read_text())["profile"] == "smoke"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=_id)
def test_committed_notebook_is_fully_executed(notebook):
    cells = _code_cells(notebook)
    assert all(c.execution_count is not None for c in cells), "unexecuted code cell"
    errors = [o for c in cells for o in c.outputs if o.output_type == "error"]
    assert not errors, f"error output: {errors[0].get('ename')}"
    parameters = next(c for c in cells if "parameters" in c.metadata.get("tags", []))
    assert 'PROFILE = "full"' in parameters.source


@pytest.mark.parametrize("notebook", CHALLENGE_NOTEBOOKS, ids=_id)
def test_results_json_matches_what_the_notebook_printed(notebook):
    saved = json.loads((notebook.parent / "results.json").read_text())
    printed = [line for c in _code_cells(notebook) for o in c.outputs if o.output_type == "stream"
               for line in o.text.splitlines() if line.startswith(f"wrote {notebook.parent.name}/results.json")]
    assert printed, "the notebook never printed that it wrote results.json"
    assert printed[-1] == results_line({k: v for k, v in saved.items() if k != "predictor"}, notebook.parent.name)
    assert saved["predictor"]["seconds_to_load_and_predict"] < 60  # added by the last cell
    assert saved["profile"] == "full"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=_id)
def test_committed_notebook_is_lean(notebook):
    assert notebook.stat().st_size < 1_500_000, "photo grids belong in JPEG, long logs in files"
    stderr = [o for c in _code_cells(notebook) for o in c.outputs if o.output_type == "stream" and o.name == "stderr"]
    assert len(stderr) <= 10, "progress bars are stored as one line each (mlkit.notebooks.compact_streams)"
    assert not any("\r" in o.text for o in stderr)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=_id)
def test_committed_notebook_holds_no_local_paths(notebook):
    assert str(ROOT) not in notebook.read_text(), "an absolute path of this checkout is stored in the notebook"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=_id)
def test_first_cell_is_the_shared_setup_cell(notebook):
    first = _code_cells(notebook)[0]
    assert first.source == setup_cell(notebook.parent.name)


SKELETON = ("Question", "Approach", "Results", "Error analysis", "Conclusions", "Predict")


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=_id)
def test_notebook_follows_the_skeleton(notebook):
    """TL;DR first; then the level-2 headings of SKELETON in its order (Question, Approach and Results in every
    notebook; Predict where the notebook predicts); no other level-2 heading."""
    cells = nbformat.read(notebook, as_version=4).cells
    assert "tldr" in cells[0].metadata.get("tags", [])
    headings = [line[3:].strip() for c in cells if c.cell_type == "markdown" for line in c.source.splitlines()
                if line.startswith("## ")]
    assert set(headings) <= set(SKELETON), f"headings outside the skeleton: {set(headings) - set(SKELETON)}"
    assert headings == sorted(headings, key=SKELETON.index) and len(headings) == len(set(headings))
    assert headings[:3] == ["Question", "Approach", "Results"]
    if any("predict" in c.metadata.get("tags", []) for c in cells):
        assert headings[-1] == "Predict"


def _toy_notebook(path: Path, sources: list[str], tags: list[list[str]]) -> Path:
    cells = [nbformat.v4.new_code_cell(source, metadata={"tags": t}) for source, t in zip(sources, tags)]
    kernel = {"kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"}}
    nbformat.write(nbformat.v4.new_notebook(cells=cells, metadata=kernel), path)
    return path


def test_progress_bars_are_stored_as_their_last_state():
    cell = nbformat.v4.new_code_cell("train()", outputs=[
        nbformat.v4.new_output("stream", name="stderr", text="\rruns:   0%| 0/2"),
        nbformat.v4.new_output("stream", name="stderr", text="\rruns:  50%| 1/2\rruns: 100%| 2/2"),
        nbformat.v4.new_output("stream", name="stderr", text="\n\rbatches: 10%\r          \r"),
        nbformat.v4.new_output("stream", name="stdout", text="accuracy 0.9\n"),
        nbformat.v4.new_output("stream", name="stderr", text="\n")])
    notebook = nbformat.v4.new_notebook(cells=[cell, nbformat.v4.new_markdown_cell("text")])
    compact_streams(notebook)
    assert [(o.name, o.text) for o in cell.outputs] == [("stderr", "runs: 100%| 2/2\n"), ("stdout", "accuracy 0.9\n")]
    assert "outputs" not in notebook.cells[1]


def test_standalone_cells_are_setup_parameters_approach_export_and_predict(tmp_path):
    path = _toy_notebook(tmp_path / "Challenge.ipynb",
                         ["a = 1", "PROFILE = 'full'", "show()", "b = train()", "c = 3", "d = 4"],
                         [[], ["parameters"], ["approach"], [], ["export"], ["predict"]])
    assert standalone_cells(nbformat.read(path, as_version=4)) == [0, 1, 2, 4, 5]


def test_a_failing_notebook_leaves_the_committed_one_untouched(tmp_path):
    path = _toy_notebook(tmp_path / "Challenge.ipynb", ["PROFILE = 'full'", "print('fine')", "raise ValueError('x')"],
                         [["parameters"], [], []])
    before = path.read_bytes()
    with pytest.raises(Exception, match="ValueError"):
        execute(path, "full")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["Challenge.ipynb"]


def test_standalone_execution_fills_only_its_cells(tmp_path):
    path = _toy_notebook(tmp_path / "Challenge.ipynb", ["x = 2", "PROFILE = 'full'", "raise RuntimeError('training')",
                                                        "print(x * 21)"], [[], ["parameters"], [], ["predict"]])
    execute(path, "full", only=STANDALONE_TAGS)
    cells = nbformat.read(path, as_version=4).cells
    assert cells[3].outputs[0].text == "42\n"
    assert cells[2].outputs == [] and cells[2].execution_count is None


def test_colab_installs_only_missing_distributions(tmp_path):
    (tmp_path / "requirements.txt").write_text("numpy==0.0.1\nno-such-distribution==1.0\ntensorflow-cpu==9\n")
    missing = colab.missing_requirements(tmp_path / "requirements.txt")
    assert missing[0] == "no-such-distribution==1.0"
    assert "numpy==0.0.1" not in missing  # installed in another version: Colab's stays


def _fresh_clone(folder: Path) -> Path:
    """The committed files of this checkout's work tree (no runs/, no records beyond what is tracked), with the
    prepared data and the shared pretrained-weight cache that `make setup` provides linked in."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True)
    for name in filter(None, tracked.stdout.split("\0")):
        if (ROOT / name).is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, folder / name)
    for shared in ("data", "checkpoints"):
        for item in (ROOT / shared).iterdir():
            if not (folder / shared / item.name).exists():
                (folder / shared / item.name).symlink_to(item)
    return folder


@pytest.mark.parametrize("notebook", CHALLENGE_NOTEBOOKS, ids=_id)
def test_last_cell_predicts_on_a_fresh_clone_after_the_setup_cell_alone(notebook, tmp_path):
    clone = _fresh_clone(tmp_path / "clone")
    copy = clone / notebook.relative_to(ROOT)
    execute(copy, "full", only=("parameters", "predict"))
    cells = nbformat.read(copy, as_version=4).cells
    last = next(c for c in reversed(cells) if c.cell_type == "code")
    assert "predict" in last.metadata.get("tags", [])
    assert last.outputs, "the last cell showed nothing"
    assert not (clone / notebook.parent.name / "runs").exists() or not any(
        (clone / notebook.parent.name / "runs").glob("*/history.json")), "the last cell trained"
    seconds = json.loads((copy.parent / "results.json").read_text())["predictor"]["seconds_to_load_and_predict"]
    assert seconds < 60
