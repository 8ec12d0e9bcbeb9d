"""Run the challenge notebooks headless with papermill, and the profile they run under.

    python -m mlkit.notebooks [--profile smoke|full] [--standalone] [challenge ...]

`smoke` writes executed notebooks and their outputs under `runs/smoke/<challenge>/` and never
touches committed files; `full` executes the notebooks in place, writing `<challenge>/results.json`
and checkpoints: the real reproduction. A notebook is executed into a temporary file that replaces
it only when every cell ran, so an interrupted run never leaves a half-executed notebook.

`--standalone` executes only the cells of a Challenge notebook that must work on a fresh clone: the
setup cell, the parameters cell, and the cells tagged `approach` (prints the recipe and the training code),
`export` (writes the predictor from the saved weights) and `predict` (uses it); their outputs replace those
cells' outputs in place.
"""
import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

from .results import CHALLENGES, REPOSITORY, ROOT, load_results, results_line
from .runtime import atomic_path

NOTEBOOK_ORDER = ("Baseline.ipynb", "Challenge.ipynb")
SETUP_CELL = """\
# Setup: run this cell first. In Colab it clones the repository (set REPO_URL to use a fork) and installs
# only what Colab lacks; elsewhere the project is installed in this kernel's environment by `make setup`.
import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

if "google.colab" in sys.modules and find_spec("mlkit") is None:
    REPO_URL = os.environ.get("REPO_URL", "https://github.com/{repository}.git")
    if not Path("/content/repo/mlkit").is_dir():
        clone = subprocess.run(["git", "clone", "-q", "--depth", "1", REPO_URL, "/content/repo"],
                               capture_output=True, text=True)
        if clone.returncode:
            raise RuntimeError(f"git clone {{REPO_URL}} failed: {{clone.stderr.strip()}}")
    os.chdir("/content/repo/{challenge}")
    sys.path.insert(0, "/content/repo")  # a running kernel does not see a fresh pip install -e
    from mlkit.colab import install

    install("{challenge}")
elif find_spec("mlkit") is None:
    raise ModuleNotFoundError("this kernel cannot import the project: run `make setup` in the repository, then "
                              "choose its environment (.venv) as the kernel, or `pip install -e <repository>`")"""


def setup_cell(challenge: str) -> str:
    """The first code cell of every notebook of `challenge`."""
    return SETUP_CELL.format(repository=REPOSITORY, challenge=challenge)

STANDALONE_TAGS = ("parameters", "approach", "export", "predict")


def show_source(module, *parts) -> None:
    """Print what a reader should see of a challenge's approach, as written in `module`: module-level assignments
    by name (e.g. "RECIPE", comments included) and functions or classes (their source)."""
    import ast
    import inspect

    text = inspect.getsource(module)
    lines = text.splitlines()
    assignments = {target.id: node for node in ast.parse(text).body if isinstance(node, ast.Assign)
                   for target in node.targets if isinstance(target, ast.Name)}
    for part in parts:
        if isinstance(part, str):
            node = assignments[part]
            print("\n".join(lines[node.lineno - 1:node.end_lineno]))
        else:
            print(inspect.getsource(part).rstrip())
        print()


@dataclass(frozen=True)
class Profile:
    """Where a notebook writes: `out` (results.json, checkpoints) and `runs` (experiment cache)."""

    name: str
    out: Path
    runs: Path

    @property
    def smoke(self) -> bool:
        return self.name == "smoke"

    @property
    def records(self) -> Path:
        """`out/records`: the runs' committed records (see `mlkit.experiments`)."""
        return self.out / "records"

    @property
    def checkpoints(self) -> Path:
        """`out/checkpoints`, created on first use."""
        folder = self.out / "checkpoints"
        folder.mkdir(exist_ok=True)
        return folder


def notebook_profile(name: str, output_dir: str | None = None) -> Profile:
    """The profile a notebook's parameters cell selects; `full` writes beside the notebook."""
    if name not in ("smoke", "full"):
        raise ValueError(f"PROFILE must be 'smoke' or 'full', not {name!r}")
    out = Path(output_dir or (Path.cwd() if name == "full" else ROOT / "runs" / "smoke" / Path.cwd().name))
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    return Profile(name, out, out / "runs")


def challenge_notebooks(challenge: str) -> list[Path]:
    folder = ROOT / challenge
    return [folder / name for name in NOTEBOOK_ORDER if (folder / name).exists()]


def execute(notebook: Path, profile: str, output_dir: Path | None = None, only: tuple[str, ...] = ()) -> Path:
    """Execute one notebook in its own folder, or `only` its setup cell and the cells with one of these tags
    (e.g. STANDALONE_TAGS); returns the executed copy's path (the notebook itself in the full profile)."""
    import nbformat

    if profile == "full":
        target, params = notebook, {"PROFILE": "full"}
    else:
        output_dir = Path(output_dir or ROOT / "runs" / profile / notebook.parent.name)
        output_dir.mkdir(parents=True, exist_ok=True)
        target, params = output_dir / notebook.name, {"PROFILE": profile, "OUTPUT_DIR": str(output_dir)}
    source = nbformat.read(notebook, as_version=4)
    cells = standalone_cells(source, only) if only else range(len(source.cells))
    with atomic_path(target) as tmp:
        part = nbformat.v4.new_notebook(metadata=source.metadata, cells=[source.cells[i] for i in cells])
        nbformat.write(part, tmp)
        _papermill(tmp, params, notebook.parent)
        executed = nbformat.read(tmp, as_version=4)
        if only:
            whole = nbformat.read(target, as_version=4) if target.exists() else source
            ran = [c for c in executed.cells if "injected-parameters" not in c.metadata.get("tags", [])]
            for index, cell in zip(cells, ran, strict=True):
                whole.cells[index] = cell
            executed.cells = whole.cells
        compact_images(executed)
        compact_streams(executed)
        for key in ("input_path", "output_path"):  # absolute paths mean nothing on another machine
            executed.metadata.get("papermill", {}).pop(key, None)
        nbformat.write(executed, tmp)
    return target


def compact_images(notebook, min_bytes: int = 100_000) -> None:
    """Store large PNG figures (photo grids) as JPEG quality 85: a tenth of the size, no visible change."""
    import base64
    import io

    from PIL import Image

    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if len(data.get("image/png", "")) < min_bytes:
                continue
            image = Image.open(io.BytesIO(base64.b64decode(data.pop("image/png")))).convert("RGB")
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=85)
            data["image/jpeg"] = base64.b64encode(buffer.getvalue()).decode()


def compact_streams(notebook) -> None:
    """Store each cell's consecutive stream outputs of one kind as one output, and each progress bar as its last
    state: a bar redrawn with carriage returns arrives as hundreds of fragments, of which a reader sees the last."""
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        merged = []
        for output in cell.outputs:
            if output.output_type == "stream" and merged and merged[-1].get("name") == output.name:
                merged[-1].text += output.text
            else:
                merged.append(output)
        for output in (o for o in merged if o.output_type == "stream"):
            lines = [line.rsplit("\r", 1)[-1] for line in output.text.split("\n")]
            if output.name == "stderr":  # bars that cleared themselves (leave=False) leave empty lines
                lines = [line for line in lines if line.strip()] + [""]
            output.text = "\n".join(lines)
        cell.outputs = [o for o in merged if o.output_type != "stream" or o.text.strip()]


def standalone_cells(notebook, tags=STANDALONE_TAGS) -> list[int]:
    """Indexes of the setup cell (the first code cell) and the code cells with one of `tags`."""
    code = [i for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"]
    tagged = [i for i in code if set(notebook.cells[i].metadata.get("tags", [])) & set(tags)]
    return sorted({code[0], *tagged})


def _papermill(path: Path, params: dict, cwd: Path) -> None:
    """Execute `path` in place in a kernel started in `cwd`. A notebook inside a copy of the repository imports
    that copy's code (its root first on PYTHONPATH), not the one installed in the environment."""
    import papermill

    root = cwd.resolve().parent
    env = {}
    if (root / "mlkit").is_dir():
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    with mock.patch.dict(os.environ, env):
        papermill.execute_notebook(str(path), str(path), parameters=params, cwd=str(cwd), kernel_name="python3",
                                   progress_bar=False)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("challenges", nargs="*", help=f"default: all of {', '.join(CHALLENGES)}")
    parser.add_argument("--profile", default="smoke", choices=["smoke", "full"])
    parser.add_argument("--standalone", action="store_true", help="only the Challenge notebooks' fresh-clone cells")
    args = parser.parse_args(argv)
    unknown = set(args.challenges) - set(CHALLENGES)
    if unknown:
        parser.error(f"unknown challenge(s): {', '.join(sorted(unknown))}")
    summary = []
    for challenge in args.challenges or CHALLENGES:
        for notebook in challenge_notebooks(challenge):
            if args.standalone and notebook.name != "Challenge.ipynb":
                continue
            started = time.perf_counter()
            print(f"running {challenge}/{notebook.name} ({args.profile}) ...", flush=True)
            execute(notebook, args.profile, only=STANDALONE_TAGS if args.standalone else ())
            print(f"  done in {time.perf_counter() - started:.0f} s", flush=True)
        out = ROOT / challenge if args.profile == "full" else ROOT / "runs" / args.profile / challenge
        if (out / "results.json").exists():
            summary.append(results_line(load_results(out), challenge))
    if args.profile == "full":  # new results.json files: refresh the TL;DRs and the README table made from them
        from .results import main as refresh_generated

        refresh_generated([])
    print(f"\n== results ({args.profile} profile) ==")
    print("\n".join(summary) or "no notebook wrote results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
