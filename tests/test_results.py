import json

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


def test_readme_table_is_current():
    readme = results.ROOT / "README.md"
    if not readme.exists() or BEGIN not in readme.read_text() or END not in readme.read_text():
        pytest.skip("README.md with the results markers is not written yet")
    assert results.main(["--check"]) == 0


def test_main_checks_then_rewrites_a_stale_readme(tmp_path, monkeypatch, capsys):
    table = results_table(tmp_path)
    monkeypatch.setattr(results, "ROOT", tmp_path)
    monkeypatch.setattr(results, "results_table", lambda: table)
    stale = f"# Challenges\n{BEGIN}\n| outdated |\n{END}\n"
    (tmp_path / "README.md").write_text(stale)

    assert results.main(["--check"]) == 1
    assert "stale" in capsys.readouterr().err
    assert (tmp_path / "README.md").read_text() == stale
    assert results.main([]) == 0
    assert results.main(["--check"]) == 0
    assert table in (tmp_path / "README.md").read_text()
