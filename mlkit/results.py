"""`results.json` per challenge, and what is generated from them: the results table of README.md, and each
challenge's TL;DR (the block in `<challenge>/README.md` and the first cell of its two notebooks).

    python -m mlkit.results          rewrite every generated part that is stale
    python -m mlkit.results --check  exit 1, naming them, if any is stale

A TL;DR fills the templates of the challenge's package (`QUESTION`, `ANSWER`, `BASELINE`, `COST` in
`<challenge>/__init__.py`, e.g. "{final_ppl:.0f}") with its results.json, so every result in it is the measured one.
"""
import argparse
import hashlib
import importlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHALLENGES = sorted(path.parent.name for path in ROOT.glob("*/Challenge.ipynb"))  # a challenge: a folder with one
REPOSITORY = "ml-challenges/ml-challenges"  # GitHub owner/name: the Colab links and every setup cell clone it
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def save_results(results: dict, folder, quiet: bool = False) -> Path:
    """Write `results.json` (sorted keys, floats rounded to 4 decimals); print one line saying so, with its
    headline and a fingerprint of its content (what the notebook test matches against the committed file)."""
    path = Path(folder) / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_rounded(results), indent=2, sort_keys=True)
    path.write_text(text + "\n")
    if not quiet:
        print(results_line(json.loads(text), path.parent.name))
    return path


def results_line(results: dict, folder_name: str) -> str:
    """`wrote <folder>/results.json (<n> entries, sha256 <8 hex>): <headline>`."""
    text = json.dumps(results, indent=2, sort_keys=True)
    headline = "; ".join(f"{k} {_fmt(v)}" for k, v in results.get("headline", {}).items())
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"wrote {folder_name}/results.json ({len(results)} entries, sha256 {digest}): {headline}"


def load_results(folder) -> dict:
    return json.loads((Path(folder) / "results.json").read_text())


def _rounded(value):
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    return value


def results_table(root=ROOT) -> str:
    """Markdown table: one row per challenge with a results.json, showing its `headline` entries."""
    lines = ["| challenge | result | data | Colab |", "|---|---|---|---|"]
    for name in CHALLENGES:
        path = Path(root) / name / "results.json"
        if not path.exists():
            lines.append(f"| {name} | not yet run | | |")
            continue
        results = json.loads(path.read_text())
        headline = "; ".join(f"{k}: {_fmt(v)}" for k, v in results.get("headline", {}).items())
        links = " ".join(f"[{nb}]({colab_link(f'{name}/{nb}.ipynb')})" for nb in ("Baseline", "Challenge"))
        lines.append(f"| [{name}]({name}/Challenge.ipynb) | {headline} | {results.get('data', '')} | {links} |")
    return "\n".join(lines)


def colab_link(notebook: str) -> str:
    """The "Open in Colab" address of a committed notebook (a path from the repository root)."""
    return f"https://colab.research.google.com/github/{REPOSITORY}/blob/main/{notebook}"


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def render_readme(readme: str, table: str) -> str:
    if BEGIN not in readme or END not in readme:
        raise ValueError(f"no {BEGIN} ... {END} block to fill")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table}\n{END}{tail}"


CARD = ("QUESTION", "ANSWER", "BASELINE", "COST")
ROLES = {"Baseline": "This notebook measures the task as given; [Challenge.ipynb](Challenge.ipynb) builds the answer.",
         "Challenge": "This notebook builds and measures the answer; [Baseline.ipynb](Baseline.ipynb) measures the "
                      "task as given.",
         "README": "[Baseline.ipynb](Baseline.ipynb) measures the task as given, [Challenge.ipynb](Challenge.ipynb) "
                   "builds and measures the answer."}


class _Fields(dict):
    """results.json for `str.format_map`: nested dicts indexable in templates ("{fmax[blast][mf]:.3f}"), also
    where a key looks like a number ("{hours[74]}": JSON keys are strings, format passes an int)."""

    def __getitem__(self, key):
        value = super().__getitem__(key if key in self else str(key))
        return _Fields(value) if isinstance(value, dict) else value


def card(name: str, results: dict) -> dict[str, str]:
    """The challenge's QUESTION, ANSWER, BASELINE and COST, filled from its results."""
    package = importlib.import_module(name)
    missing = [key for key in CARD if not hasattr(package, key)]
    if missing:
        raise AttributeError(f"{name}/__init__.py must define {', '.join(missing)} "
                             "(see 'Adding a challenge' in README.md)")
    return {key: getattr(package, key).format_map(_Fields(results)) for key in CARD}


def tldr(name: str, role: str, root=ROOT) -> str:
    """The TL;DR of challenge `name` in Markdown, for its README (`role` "README") or one of its notebooks."""
    results = load_results(Path(root) / name)
    text = card(name, results)
    rows = "\n".join(f"| {key} | {_fmt(value)} |" for key, value in results.get("headline", {}).items())
    return (f"**TL;DR.** {text['QUESTION']}\n\n"
            f"**Answer.** {text['ANSWER']}\n\n"
            f"| headline | |\n|---|---|\n{rows}\n\n"
            f"**Strongest simple baseline:** {text['BASELINE']}.\n\n"
            f"**Data:** {results.get('data', '')}. **Cost:** {text['COST']}.\n\n"
            f"<sub>Generated from [results.json](results.json) (profile {results.get('profile', '?')}) by "
            f"`python -m mlkit.results`. {ROLES[role]}</sub>")


def render_notebook_tldr(notebook: dict, text: str) -> dict:
    """`notebook` (its JSON) with its first cell, the title and TL;DR cell (tagged "tldr"), set to `text` under
    the notebook's title; a notebook without one gets it above its first cell, whose title line it takes."""
    cells = notebook["cells"]
    first = cells[0]
    if "tldr" not in first.get("metadata", {}).get("tags", []):
        title, _, rest = "".join(first["source"]).partition("\n")
        first["source"] = rest.lstrip("\n").splitlines(keepends=True)
        first = {"cell_type": "markdown", "id": "tldr", "metadata": {"tags": ["tldr"]}, "source": [title]}
        cells.insert(0, first)
    title = "".join(first["source"]).split("\n", 1)[0]
    first["source"] = f"{title}\n\n{text}".splitlines(keepends=True)
    return notebook


def generated_files(root=ROOT) -> dict[Path, str]:
    """Every generated file's path -> its content as it should be now."""
    root = Path(root)
    files = {root / "README.md": render_readme((root / "README.md").read_text(), results_table(root))}
    for name in CHALLENGES:
        readme = root / name / "README.md"
        files[readme] = render_readme(readme.read_text(), tldr(name, "README", root))
        for role in ("Baseline", "Challenge"):
            path = root / name / f"{role}.ipynb"
            notebook = render_notebook_tldr(json.loads(path.read_text()), tldr(name, role, root))
            files[path] = json.dumps(notebook, indent=1, sort_keys=True, ensure_ascii=False) + "\n"  # as nbformat
    return files


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if a generated part is stale")
    args = parser.parse_args(argv)
    stale = {path: text for path, text in generated_files(ROOT).items() if path.read_text() != text}
    if args.check:
        for path in stale:
            print(f"{path.relative_to(ROOT)} is stale: run `python -m mlkit.results`", file=sys.stderr)
        return 1 if stale else 0
    for path, text in stale.items():
        path.write_text(text)
        print(f"rewrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
