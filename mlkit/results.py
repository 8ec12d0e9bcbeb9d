"""`results.json` per challenge, and the README results table generated from them.

    python -m mlkit.results          rewrite the table in README.md
    python -m mlkit.results --check  exit 1 if README.md is stale
"""
import argparse
import hashlib
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
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table}\n{END}{tail}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if README.md's table is stale")
    args = parser.parse_args(argv)
    readme_path = ROOT / "README.md"
    readme = readme_path.read_text()
    updated = render_readme(readme, results_table())
    if args.check:
        if updated != readme:
            print("README.md results table is stale: run `python -m mlkit.results`", file=sys.stderr)
            return 1
        return 0
    readme_path.write_text(updated)
    print(results_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
