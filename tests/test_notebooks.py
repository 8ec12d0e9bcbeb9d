"""Every notebook runs in the smoke profile; every committed notebook is executed and agrees with its results.json."""
import json
from pathlib import Path

import nbformat
import pytest

from mlkit.notebooks import execute
from mlkit.results import CHALLENGES, ROOT

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
    printed = [o.text for c in _code_cells(notebook) for o in c.outputs
               if o.output_type == "stream" and o.text.startswith("wrote results.json")]
    assert printed, "the notebook never printed its results.json"
    shown, _ = json.JSONDecoder().raw_decode(printed[-1].split("\n", 1)[1])  # the cell may print more after it
    assert shown == saved
    assert saved["profile"] == "full"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=_id)
def test_committed_notebook_holds_no_local_paths(notebook):
    assert str(ROOT) not in notebook.read_text(), "an absolute path of this checkout is stored in the notebook"
