"""Run the challenge notebooks headless with papermill, and the profile they run under.

    python -m mlkit.notebooks [--profile smoke|full] [challenge ...]

`smoke` writes executed notebooks and their outputs under `runs/smoke/<challenge>/` and never
touches committed files; `full` executes the notebooks in place, writing `<challenge>/results.json`
and checkpoints: the real reproduction.
"""
import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .results import CHALLENGES, ROOT

NOTEBOOK_ORDER = ("Baseline.ipynb", "Challenge.ipynb")


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


def execute(notebook: Path, profile: str, output_dir: Path | None = None) -> Path:
    """Execute one notebook in its own folder; returns the executed copy's path."""
    import papermill

    if profile == "full":
        target, params = notebook, {"PROFILE": "full"}
    else:
        output_dir = Path(output_dir or ROOT / "runs" / profile / notebook.parent.name)
        output_dir.mkdir(parents=True, exist_ok=True)
        target, params = output_dir / notebook.name, {"PROFILE": profile, "OUTPUT_DIR": str(output_dir)}
    papermill.execute_notebook(str(notebook), str(target), parameters=params, cwd=str(notebook.parent),
                               kernel_name="python3", progress_bar=False)
    _drop_local_paths(target)
    return target


def _drop_local_paths(notebook: Path) -> None:
    """Papermill records absolute input/output paths; they mean nothing on another machine."""
    import nbformat

    executed = nbformat.read(notebook, as_version=4)
    for key in ("input_path", "output_path"):
        executed.metadata.get("papermill", {}).pop(key, None)
    nbformat.write(executed, notebook)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("challenges", nargs="*", help=f"default: all of {', '.join(CHALLENGES)}")
    parser.add_argument("--profile", default="smoke", choices=["smoke", "full"])
    args = parser.parse_args(argv)
    unknown = set(args.challenges) - set(CHALLENGES)
    if unknown:
        parser.error(f"unknown challenge(s): {', '.join(sorted(unknown))}")
    summary = []
    for challenge in args.challenges or CHALLENGES:
        for notebook in challenge_notebooks(challenge):
            started = time.perf_counter()
            print(f"running {challenge}/{notebook.name} ({args.profile}) ...", flush=True)
            execute(notebook, args.profile)
            print(f"  done in {time.perf_counter() - started:.0f} s", flush=True)
        out = ROOT / challenge if args.profile == "full" else ROOT / "runs" / args.profile / challenge
        if (out / "results.json").exists():
            summary.append((challenge, (out / "results.json").read_text()))
    print(f"\n== results ({args.profile} profile) ==")
    for challenge, text in summary:
        print(f"--- {challenge}/results.json\n{text}")
    if not summary:
        print("no notebook wrote results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
