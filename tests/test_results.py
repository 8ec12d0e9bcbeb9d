import copy
import json
import sys

import pytest

from mlkit import results
from mlkit.results import BEGIN, END, load_results, render_readme, results_table, save_results


def test_save_results_rounds_floats_and_round_trips(tmp_path, capsys):
    path = save_results({"accuracy": 0.912345678, "runs": [{"loss": 1.000049}, (2, 0.33333)], "name": "cnn",
                         "headline": {"accuracy": 0.912345678}}, tmp_path / "challenge")
    assert path == tmp_path / "challenge" / "results.json"
    assert load_results(tmp_path / "challenge") == {
        "accuracy": 0.9123, "runs": [{"loss": 1.0}, [2, 0.3333]], "name": "cnn", "headline": {"accuracy": 0.9123}}
    printed = capsys.readouterr().out.strip()
    assert printed.startswith("wrote challenge/results.json (4 entries, sha256 ")
    assert printed.endswith("): accuracy 0.9123")


def test_results_line_fingerprint_changes_with_any_value():
    line = results.results_line({"a": 1, "headline": {"x": 0.5}}, "c")
    assert line != results.results_line({"a": 2, "headline": {"x": 0.5}}, "c")
    assert line == results.results_line({"headline": {"x": 0.5}, "a": 1}, "c")


def test_save_results_writes_sorted_keys(tmp_path):
    save_results({"b": 1, "a": 2}, tmp_path)
    assert list(json.loads((tmp_path / "results.json").read_text())) == ["a", "b"]


def test_results_table_lists_every_challenge(tmp_path):
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "cifar10" / "results.json").write_text(json.dumps(
        {"headline": {"test accuracy": 0.912345, "epochs": 30}, "data": "CIFAR-10, 10k test images"}))

    lines = results_table(tmp_path).splitlines()

    assert lines[:2] == ["| challenge | result | data | Colab |", "|---|---|---|---|"]
    assert len(lines) == 2 + len(results.CHALLENGES)
    colab = f"https://colab.research.google.com/github/{results.REPOSITORY}/blob/main/cifar10"
    assert (f"| [cifar10](cifar10/Challenge.ipynb) | test accuracy: 0.9123; epochs: 30 | CIFAR-10, 10k test images | "
            f"[Baseline]({colab}/Baseline.ipynb) [Challenge]({colab}/Challenge.ipynb) |") in lines
    assert "| mlm | not yet run | | |" in lines


def test_the_challenge_list_is_every_folder_with_a_challenge_notebook():
    assert results.CHALLENGES == sorted(p.parent.name for p in results.ROOT.glob("*/Challenge.ipynb"))
    assert len(results.CHALLENGES) == 7


def test_render_readme_replaces_only_the_marked_table():
    readme = f"# Title\n\nintro\n{BEGIN}\n| old | table |\n{END}\n\n## Later\ntext\n"
    rendered = render_readme(readme, "| new |")
    assert rendered == f"# Title\n\nintro\n{BEGIN}\n| new |\n{END}\n\n## Later\ntext\n"
    assert render_readme(rendered, "| new |") == rendered


def test_every_generated_part_is_current():
    assert results.main(["--check"]) == 0, "run `python -m mlkit.results`"


@pytest.fixture
def one_challenge(tmp_path, monkeypatch):
    """A repository with one challenge, `toy`, whose package defines the TL;DR templates."""
    package = tmp_path / "toy"
    package.mkdir()
    (package / "__init__.py").write_text(
        'QUESTION = "Can it count?"\nANSWER = "Yes: {accuracy:.2f}, {nested[deep][7]} deep."\n'
        'BASELINE = "guessing: {baseline:.2f}"\nCOST = "{minutes:.0f} min"\n')
    save_results({"accuracy": 0.91, "baseline": 0.5, "minutes": 3.0, "nested": {"deep": {"7": "seven"}},
                  "data": "toy data", "profile": "full", "headline": {"accuracy": 0.91}}, package, quiet=True)
    (package / "README.md").write_text(f"# Toy\n\ntext\n{BEGIN}\n{END}\n\n## Run\n")
    title = {"cell_type": "markdown", "id": "a", "metadata": {}, "source": ["# Toy — Challenge\n", "\n", "Caveats."]}
    for role in ("Baseline", "Challenge"):
        (package / f"{role}.ipynb").write_text(json.dumps({"cells": [title], "metadata": {}, "nbformat": 4,
                                                            "nbformat_minor": 5}))
    (tmp_path / "README.md").write_text(f"# Challenges\n{BEGIN}\n| outdated |\n{END}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(results, "ROOT", tmp_path)
    monkeypatch.setattr(results, "CHALLENGES", ["toy"])
    sys.modules.pop("toy", None)
    yield package
    sys.modules.pop("toy", None)


def test_tldr_fills_the_templates_from_results_json(one_challenge):
    text = results.tldr("toy", "Challenge", one_challenge.parent)
    assert "**TL;DR.** Can it count?" in text and "Yes: 0.91, seven deep." in text
    assert "guessing: 0.50" in text and "3 min" in text and "| accuracy | 0.91 |" in text and "toy data" in text
    save_results(load_results(one_challenge) | {"accuracy": 0.97}, one_challenge, quiet=True)
    assert "Yes: 0.97" in results.tldr("toy", "Challenge", one_challenge.parent)


def test_a_challenge_without_templates_gets_a_clear_error(one_challenge):
    (one_challenge / "__init__.py").write_text('QUESTION = "?"\n')
    with pytest.raises(AttributeError, match="toy/__init__.py must define ANSWER, BASELINE, COST"):
        results.tldr("toy", "README", one_challenge.parent)


def test_notebook_tldr_goes_under_the_title_and_is_replaced_in_place(one_challenge):
    notebook = json.loads((one_challenge / "Challenge.ipynb").read_text())
    once = results.render_notebook_tldr(copy.deepcopy(notebook), "first")
    assert [c["source"] for c in once["cells"]] == [["# Toy — Challenge\n", "\n", "first"], ["Caveats."]]
    assert once["cells"][0]["metadata"]["tags"] == ["tldr"]
    twice = results.render_notebook_tldr(copy.deepcopy(once), "second")
    assert len(twice["cells"]) == 2 and twice["cells"][0]["source"][-1] == "second"


def test_main_checks_then_rewrites_every_stale_part(one_challenge, capsys):
    assert results.main(["--check"]) == 1
    stale = capsys.readouterr().err
    assert all(name in stale for name in ("README.md", "toy/README.md", "toy/Baseline.ipynb", "toy/Challenge.ipynb"))
    assert results.main([]) == 0
    assert results.main(["--check"]) == 0
    assert "Yes: 0.91" in (one_challenge / "README.md").read_text()
    assert "Yes: 0.91" in "".join(json.loads((one_challenge / "Baseline.ipynb").read_text())["cells"][0]["source"])
    assert "[toy](toy/Challenge.ipynb)" in (one_challenge.parent / "README.md").read_text()
