"""Every challenge exposes one small interface (see "Adding a challenge" in README.md): RECIPE, make_config, run,
summarize, load_predictor; and RECIPE is what its committed predictor was trained with."""
import importlib
import inspect
import json
import re

import pytest

from mlkit.results import CHALLENGES, ROOT

INTERFACE = ("RECIPE", "make_config", "run", "summarize", "load_predictor")


def common_of(name: str):
    return importlib.import_module(f"{name}.common")


def manifest_of(name: str) -> dict:
    return json.loads((ROOT / name / "checkpoints" / "predictor.json").read_text())


def per_model(recipe: dict) -> bool:
    """A challenge that ships several models (vv_tasks: one per task) keys RECIPE by model."""
    return all(isinstance(value, dict) for value in recipe.values())


# where each committed predictor records the configurations of its models, by label ...
SHIPPED = {
    "cifar10": lambda m: {"": m["source"]["recipe"]},
    "distillation": lambda m: {"": {"name": m["student"]["run"].split("(")[1].split(")")[0]}},
    "doom_crossing": lambda m: {"": m["source"]["runs"][0]},
    "indoor_scene": lambda m: {"": m["source"]["recipe"] | {"model": {"SceneResNet": "scene_resnet"}[
        m["model"]["architecture"]]}},
    "mlm": lambda m: {"": m["source"]["recipe"] | {"epochs": m["source"]["epochs"]}},
    "tale": lambda m: {ontology: entry["config"] for ontology, entry in m["ontologies"].items()},
    "vv_tasks": lambda m: {entry["run"]["task"]: entry["run"] for entry in m["checkpoints"].values()},
}
# ... and how make_config builds the configuration of the model with that label
DEFAULT = {"tale": lambda common, label: common.make_config(ontology=label),
           "vv_tasks": lambda common, label: common.make_config(label)}


def test_every_challenge_is_covered():
    assert sorted(SHIPPED) == CHALLENGES


@pytest.mark.parametrize("name", CHALLENGES)
def test_challenge_exposes_the_interface(name):
    common = common_of(name)
    assert not [n for n in INTERFACE if not hasattr(common, n)], f"{name}.common lacks part of {INTERFACE}"
    assert isinstance(common.RECIPE, dict) and common.RECIPE
    assert list(inspect.signature(common.run).parameters)[:2] == ["config", "run_dir"]
    assert all(callable(getattr(common, n)) for n in INTERFACE[1:])


@pytest.mark.parametrize("name", CHALLENGES)
def test_make_config_without_a_choice_is_the_shipped_recipe(name):
    common = common_of(name)
    recipes = common.RECIPE if per_model(common.RECIPE) else {None: common.RECIPE}
    for model, recipe in recipes.items():
        config = common.make_config(model) if model else common.make_config()
        assert recipe.items() <= config.items(), f"{name}: make_config({model or ''}) is not RECIPE"
        assert not config.get("smoke"), "the default is the full profile"


@pytest.mark.parametrize("name", CHALLENGES)
def test_recipe_is_what_the_committed_predictor_was_trained_with(name):
    common = common_of(name)
    shipped = SHIPPED[name](manifest_of(name))
    assert len(shipped) == (len(common.RECIPE) if per_model(common.RECIPE) else len(shipped))
    for label, recorded in shipped.items():
        default = DEFAULT.get(name, lambda common, label: common.make_config())(common, label)
        shared = recorded.keys() & default.keys()
        assert shared, "the manifest records none of the configuration"
        assert {k: default[k] for k in shared} == {k: recorded[k] for k in shared}, f"{name}: {label or 'model'}"


@pytest.mark.parametrize("name", CHALLENGES)
def test_results_json_is_built_by_summarize(name):
    notebook = json.loads((ROOT / name / "Challenge.ipynb").read_text())
    cells = ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]
    saving = [c for c in cells if re.search(r"^_? ?=? ?save_results\(", c, re.M)]
    assert len(saving) == 1 and "common.summarize(" in saving[0], "results.json comes from common.summarize"


@pytest.mark.parametrize("name", CHALLENGES)
def test_configurations_say_what_they_train_not_their_names(name):
    source = inspect.getsource(common_of(name))
    assert not re.search(r"""config\[["']name["']\]\s*(==|!=|in\b)""", source), "branch on a config's model"


@pytest.mark.parametrize("name", CHALLENGES)
def test_load_predictor_names_what_is_missing(name, tmp_path):
    with pytest.raises(FileNotFoundError, match="predictor.json"):
        common_of(name).load_predictor(tmp_path)
