import copy
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from cifar10 import common
from mlkit.images import ImageArrays, list_files, load_image
from mlkit.results import ROOT
from mlkit.train import load_half, parameter_count, save_half


def test_cutout_zeroes_one_square_of_the_given_size_per_sample():
    torch.manual_seed(0)
    x = torch.ones(64, 3, 32, 32)
    out = common.cutout(x, 12)
    zeros = (out[:, 0] == 0).flatten(1).sum(1)
    assert zeros.max() == 13 * 13 and zeros.min() > 0  # odd size around the centre; clipped at borders
    assert torch.equal((out == 0).all(1), (out[:, :1] == 0).squeeze(1))  # all channels together


@pytest.mark.parametrize("policy", common.Augment.POLICIES)
def test_augment_policies_keep_shape_and_range(policy):
    torch.manual_seed(0)
    x = torch.rand(8, 3, 32, 32)
    out = common.Augment(policy)(x)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, x) == (policy == "none")


def test_augment_rejects_unknown_policies():
    with pytest.raises(ValueError, match="augmentation must be one of"):
        common.Augment("autoaugment")


@pytest.mark.parametrize("name", sorted(common.ARCHITECTURES))
def test_every_architecture_maps_cifar_images_to_ten_logits(name):
    model = common.build(name)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert parameter_count(model) > 0 and common.macs_per_image(model) > 0


def test_resnet20_matches_the_paper_size():
    model = common.build("resnet20")
    assert 0.26e6 < parameter_count(model) < 0.28e6  # He et al. 2016: 0.27 M
    assert 38e6 < common.macs_per_image(model) < 44e6  # ~41 M multiply-accumulates


def test_macs_of_a_single_convolution_are_counted_exactly():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert common.macs_per_image(conv) == 32 * 32 * 8 * 3 * 9


def test_optimizer_decays_weights_but_not_norms_and_biases():
    model = common.build("resnet20")
    optimizer = common.make_optimizer("sgd_nesterov", model, lr=0.1, weight_decay=5e-4)
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 5e-4 and all(p.dim() > 1 for p in decayed["params"])
    assert plain["weight_decay"] == 0 and all(p.dim() == 1 for p in plain["params"])
    assert optimizer.defaults["nesterov"]
    with pytest.raises(ValueError, match="optimizer must be one of"):
        common.make_optimizer("lion", model, 0.1, 0)


def test_every_tta_gives_distributions_and_flip_averaging_is_mirror_symmetric():
    torch.manual_seed(0)
    model = common.build("plain_cnn")
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    p = {tta: common.predict(model, images, tta) for tta in common.TTA}
    for probabilities in p.values():
        assert probabilities.shape == (5, 10) and np.allclose(probabilities.sum(1), 1, atol=1e-5)
    assert np.allclose(common.predict(model, images[:, :, ::-1].copy(), "flip"), p["flip"], atol=1e-5)
    assert not np.allclose(p["flip_translate"], p["flip"], atol=1e-4)  # the shifted views count


def test_train_learns_a_separable_toy_problem_and_resumes_as_finished(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 64)
    images = np.where(labels[:, None, None, None] == 1, 200, 40).astype(np.uint8) * np.ones((1, 32, 32, 3), np.uint8)
    arrays = ImageArrays(images, labels, [str(i) for i in range(64)], ["a", "b"])
    data = {"train": arrays, "val": arrays, "test": arrays}
    config = common.make_config("plain_cnn", epochs=3, batch_size=16, optimizer="adamw", lr=1e-3, augmentation="none")
    _, history = common.train(config, tmp_path / "run", data)
    assert history[-1]["val_accuracy"] == 1.0
    _, again = common.train(config, tmp_path / "run", data)
    assert again == history


def test_identical_recipes_share_one_run_and_different_ones_do_not():
    architecture = common.architecture_configs(smoke=False)[2 * list(common.ARCHITECTURES).index("resnet20")]
    flip_crop = common.augmentation_configs("resnet20", False)[2 * common.Augment.POLICIES.index("flip_crop")]
    assert architecture == flip_crop  # same folder under runs/: the augmentation study reuses the comparison's run
    names = [c["name"] for c in common.augmentation_configs("resnet20", False)
             + common.learning_rate_configs("resnet20", False)]
    assert len(set(names)) == len(names)


def test_study_configs_share_one_length_and_two_seeds():
    configs = common.architecture_configs(False) + common.augmentation_configs("vgg", False)
    assert {c["epochs"] for c in configs} == {common.STUDY_EPOCHS}
    assert [c["seed"] for c in configs[:2]] == list(common.STUDY_SEEDS)
    assert {c["epochs"] for c in common.learning_rate_configs("vgg", False)} == {common.SWEEP_EPOCHS}
    smoke = common.make_config("vgg", smoke=True, epochs=7)
    assert smoke["epochs"] == 1 and smoke["smoke"] and smoke["name"].endswith("-1ep-s0")
    assert common.make_config("resnet20", optimizer="adamw")["weight_decay"] == common.WEIGHT_DECAY["adamw"]
    assert common.upstream_configs(smoke=True) == [] and len(common.upstream_configs(smoke=False)) == 3


def test_validation_split_holds_out_the_same_images_of_every_class():
    labels = np.repeat(np.arange(3), 10)
    arrays = ImageArrays(np.arange(30, dtype=np.uint8).reshape(30, 1, 1), labels, [str(i) for i in range(30)],
                         ["a", "b", "c"])
    train, val = common.split_validation(arrays, 4)
    assert np.bincount(val.labels).tolist() == [4, 4, 4] and len(train) == 18
    assert not set(train.paths) & set(val.paths) and sorted(train.paths + val.paths, key=int) == arrays.paths
    assert common.split_validation(arrays, 4)[1].paths == val.paths  # fixed: every run holds out the same images


def _row(name, val, test, seed=0, **extra):
    config = {"name": f"{name}-s{seed}", "architecture": "airbench96", "seed": seed, "epochs": 40,
              "tta": "flip_translate", "optimizer": "sgd_nesterov", "lr": 0.1, "augmentation": "flip_crop",
              "smoke": False}
    return {"config": config, "val_accuracy": val - 0.01, "val_tta_accuracy": val, "accuracy": test - 0.01,
            "tta_accuracy": test, "macro_f1": test, "train_seconds": 20.0, "hardware": "gpu",
            "train_images_per_second": 1000.0 * (seed + 1), "predictions": np.zeros(4, np.uint8)} | extra


def test_choices_read_validation_never_test():
    a = [_row("a", 0.90, 0.80, 0), _row("a", 0.92, 0.80, 1)]
    b = [_row("b", 0.89, 0.99, 0), _row("b", 0.90, 0.99, 1)]
    assert common.best_recipe([*a, *b], key="val_tta_accuracy") == a  # mean 0.91 > 0.895, whatever test says
    assert common.choose_final({"a": a, "b": b}) == "a"
    assert common.shipped_run(a) is a[1]
    assert list(common.by_recipe([a[0], b[0], a[1]])) == ["a", "b"]


def test_ensemble_averages_its_members_probabilities(tmp_path, monkeypatch):
    labels = np.array([0, 1, 2, 3])
    arrays = ImageArrays(np.zeros((4, 32, 32, 3), np.uint8), labels, list("wxyz"), common.CLASSES)
    monkeypatch.setattr(common, "study_data", lambda smoke: {"train": arrays, "val": arrays, "test": arrays})
    members = [common.make_config("plain_cnn", seed=seed, smoke=True) | {"tta": "flip"} for seed in (0, 1)]
    right, wrong = np.eye(10)[labels], np.eye(10)[(labels + 1) % 10]
    for member, first in zip(members, (right * 0.6 + wrong * 0.4, right * 0.3 + wrong * 0.7)):
        folder = common.experiment_folder(tmp_path, member)
        folder.mkdir()
        for split in ("val", "test"):
            np.save(folder / f"{split}_probabilities.npy", np.stack([first, first]))
    config = common.ensemble_config(members)
    result = common.ensemble_run(config, common.experiment_folder(tmp_path, config))
    assert result["accuracy"] == 0.0 and result["val_tta_accuracy"] == 0.0  # mean 0.45 right vs 0.55 wrong
    assert result["tta_confidence"].tolist() == [55] * 4 and config["name"].endswith("-ensemble-of-2")


def test_speed_and_accuracy_takes_the_fastest_run_and_the_mean_accuracy():
    runs = [_row("a", 0.9, 0.93, 0), _row("a", 0.9, 0.95, 1)]
    assert common.speed_and_accuracy(runs) == pytest.approx(
        {"test_accuracy": 0.94, "seeds": 2, "images_per_second": 2000.0})


def test_architecture_costs_reports_size_compute_speed_and_latency():
    costs = common.architecture_costs(["resnet20"], latency_runs=3)
    row = costs.loc["resnet20"]
    assert row["params"] == parameter_count(common.build("resnet20"))
    assert row["MACs per image"] > 0 and row["train images/s (1 thread)"] > 0 and row["latency ms (1 thread)"] > 0


def test_p_values_against_best_are_one_for_the_best_and_small_for_a_clearly_worse_run():
    labels = np.arange(200) % 10
    good = {"val_accuracy": 0.95, "predictions": np.where(np.arange(200) < 190, labels, (labels + 1) % 10)}
    bad = {"val_accuracy": 0.70, "predictions": np.where(np.arange(200) < 140, labels, (labels + 1) % 10)}
    p_good, p_bad = common.p_values_against_best([good, bad], labels)
    assert p_good == 1.0 and p_bad < 1e-10


def test_whitening_stem_decorrelates_image_patches():
    x = torch.rand(64, 3, 16, 16) * torch.tensor([1.0, 0.5, 2.0]).view(1, 3, 1, 1)
    x[:, 1] += x[:, 0]  # correlated channels
    conv = torch.nn.Conv2d(3, 24, 2, bias=False)
    common.init_whitening(conv, x, eps=0.0)
    whitened = conv(x)[:, :12].permute(0, 2, 3, 1).reshape(-1, 12).double()
    covariance = whitened.T @ whitened / len(whitened)
    assert torch.allclose(covariance, torch.eye(12, dtype=torch.float64), atol=1e-3)
    assert torch.equal(conv.weight[12:], -conv.weight[:12])


def test_triangle_schedule_rises_to_one_then_falls():
    assert common.triangle(0, 100) == pytest.approx(0.2)
    assert common.triangle(23, 100) == pytest.approx(1.0)
    assert common.triangle(100, 100) == pytest.approx(0.07)
    assert common.triangle(10, 100) < common.triangle(20, 100)


def airbench94_steps(model, lookahead, steps: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.rand(8, 3, 32, 32, generator=generator), torch.randint(0, 10, (8,), generator=generator)
        lookahead.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        lookahead.step()


def airbench94_with_lookahead(seed: int = 0):
    torch.manual_seed(seed)
    model = common.Normalized(common.airbench94())
    config = common.published_config("airbench94", epochs=2)
    lookahead, _ = common.airbench_optimizer(model, config, steps_per_epoch=3)
    lookahead.start_step, lookahead.every = 1, 1
    return model, lookahead


def test_lookahead_ends_training_on_its_average_and_resumes_exactly():
    model, lookahead = airbench94_with_lookahead()
    airbench94_steps(model, lookahead, 3)
    saved_model, saved_optimizer = copy.deepcopy(model.state_dict()), copy.deepcopy(lookahead.state_dict())
    airbench94_steps(model, lookahead, 3, seed=1)  # the last of the 2 x 3 steps
    assert all(torch.equal(model.state_dict()[k], v) for k, v in lookahead.average.items())

    resumed, resumed_lookahead = airbench94_with_lookahead(seed=5)
    resumed.load_state_dict(saved_model)
    resumed_lookahead.load_state_dict(saved_optimizer)
    airbench94_steps(resumed, resumed_lookahead, 3, seed=1)
    for key, value in model.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


def test_airbench_optimizer_freezes_the_stem_and_speeds_up_batchnorm_shifts():
    model = common.Normalized(common.airbench94())
    config = common.published_config("airbench94", epochs=4)
    lookahead, scheduler = common.airbench_optimizer(model, config, steps_per_epoch=10)
    weights, shifts, stem_bias = lookahead.param_groups
    assert shifts["lr"] == pytest.approx(64 * weights["lr"])
    assert not model.net[0].weight.requires_grad and all(p is not model.net[0].weight for p in weights["params"])
    for _ in range(30):
        lookahead.optimizer.step()  # no gradients: moves nothing, keeps the scheduler's call order
        scheduler.step()
    assert stem_bias["lr"] == 0 and weights["lr"] > 0  # the stem's bias trains for the first 3 epochs only


def test_committed_best_checkpoint_loads_into_the_architecture_its_results_name():
    recipe = json.loads((ROOT / "cifar10" / "results.json").read_text())["best_recipe"]
    model = common.build(recipe["architecture"])
    model.load_state_dict(load_half(ROOT / "cifar10" / "checkpoints" / "best.pt"))
    probabilities = common.predict(model, np.zeros((2, 32, 32, 3), np.uint8), recipe["tta"])
    assert probabilities.shape == (2, 10)


def test_airbench96_adds_a_residual_pair_to_every_stage():
    model = common.build("airbench96")
    assert sum(isinstance(m, common.Residual) for m in model.modules()) == 3
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("architecture,has_cutout", [("airbench94", False), ("airbench96", True)])
def test_published_augmentation_cuts_out_only_where_the_recipe_does(architecture, has_cutout):
    torch.manual_seed(0)
    x = torch.rand(16, 3, 32, 32) + 0.1  # no zeros before augmentation; reflected borders add none
    out = common.published_augmentation(common.published_config(architecture))(x)
    assert out.shape == x.shape and bool((out == 0).any()) == has_cutout


# ---------------------------------------------------------------- the committed predictor

@pytest.fixture(scope="module")
def predictor():
    return common.load_predictor()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return common.demo_inputs(tmp_path_factory.mktemp("demo") / "inputs")


@pytest.fixture(scope="module")
def demo_table(predictor, demo):
    return predictor.predict(demo)


def test_committed_predictor_names_its_model_weights_and_tta(predictor):
    manifest = predictor.manifest
    assert manifest["classes"] == common.CLASSES and manifest["input"]["size"] == [32, 32]
    assert (common.CHECKPOINTS / manifest["weights"]["file"]).is_file()
    results = json.loads((ROOT / "cifar10" / "results.json").read_text())
    assert manifest["source"]["run"] == results["best_model"]
    assert manifest["tta"]["name"] == results["best_recipe"]["tta"]
    assert repr(predictor) == "cifar10 airbench96 predictor, 10 classes, flip+translate TTA"


def test_committed_predictor_answers_every_demo_file(demo_table, demo):
    table = demo_table
    assert list(table["file"]) == [p.name for p in list_files(demo)]
    good = table[table["error"] == ""]
    samples = good[good["file"].isin([p.name for p in common.DEMO.glob("*.jpg")])]
    assert len(samples) == len(list(common.DEMO.glob("*.jpg"))) >= 4
    assert (samples["prediction"] == samples["file"].str.split("_").str[0]).all()  # the demo images are right
    assert set(good["file"]) >= {"rgba.png", "grayscale.png", "16bit.png", "exif_rotated.jpg"}
    assert good["prediction"].isin(common.CLASSES).all() and good["probability"].between(0, 1).all()
    bad = table.set_index("file").loc[["empty.jpg", "corrupt.jpg", "notes.txt.jpg", "notes.txt", "photo.heic",
                                       "huge.png"], "error"]
    assert (bad != "").all()


def test_a_batch_of_only_bad_files_gives_rows_with_errors(predictor, demo, tmp_path):
    bad = [demo / "empty.jpg", demo / "notes.txt", tmp_path / "missing.png"]
    table = predictor.predict(bad)
    assert len(table) == 3 and (table["error"] != "").all() and (table["prediction"] == "").all()
    assert predictor.predict([]).empty
    assert common.prediction_grid(table, bad) is None


def test_prediction_grid_shows_the_readable_inputs(demo_table, demo):
    import matplotlib.pyplot as plt

    figure = common.prediction_grid(demo_table, demo)
    assert sum(1 for ax in figure.axes if ax.images) == (demo_table["error"] == "").sum()
    plt.close(figure)


def test_missing_manifest_or_weights_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="predictor.json is missing"):
        common.load_predictor(tmp_path)
    (tmp_path / "predictor.json").write_text(json.dumps({"weights": {"file": "best.pt"}}))
    with pytest.raises(FileNotFoundError, match="best.pt is missing"):
        common.load_predictor(tmp_path)
    with pytest.raises(FileNotFoundError, match="best.pt is missing"):
        common.export_predictor(tmp_path)


def test_export_writes_a_predictor_that_loads_from_its_folder_alone(tmp_path):
    torch.manual_seed(0)
    save_half(common.build("plain_cnn"), tmp_path / "checkpoints" / common.WEIGHTS)
    (tmp_path / "results.json").write_text(json.dumps({
        "best_model": "plain_cnn-s0", "best_recipe": {"architecture": "plain_cnn", "tta": "flip"},
        "shipped": {"hardware": "CPU", "train_seconds": 1.0, "val_tta_accuracy": 0.5, "accuracy": 0.4,
                    "tta_accuracy": 0.5}, "data": "toy", "profile": "smoke"}))
    manifest = json.loads(common.export_predictor(tmp_path / "checkpoints", smoke=True).read_text())
    assert manifest["smoke"] and manifest["model"]["parameters"] == parameter_count(common.build("plain_cnn"))
    loaded = common.load_predictor(tmp_path / "checkpoints")
    assert repr(loaded) == "cifar10 plain_cnn predictor, 10 classes, flip TTA"
    image = tmp_path / "car.png"
    Image.fromarray(np.full((40, 50, 3), 128, np.uint8)).save(image)
    assert loaded.predict(image)["prediction"].isin(common.CLASSES).all()


def test_committed_manifest_is_what_export_writes_from_the_committed_files(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    shutil.copy(common.CHECKPOINTS / common.WEIGHTS, folder)
    shutil.copy(ROOT / "cifar10" / "results.json", tmp_path)
    exported = json.loads(common.export_predictor(folder).read_text())
    committed = json.loads((common.CHECKPOINTS / "predictor.json").read_text())
    assert {k: v for k, v in exported.items() if k != "written"} == {k: v for k, v in committed.items()
                                                                    if k != "written"}


def test_demo_images_are_small_committed_test_images():
    files = sorted(p for p in common.DEMO.iterdir() if p.suffix == ".jpg")
    assert 4 <= len(files) <= 6 and sum(p.stat().st_size for p in common.DEMO.iterdir()) < 150_000
    assert all(p.name.split("_")[0] in common.CLASSES for p in files)
    assert all(load_image(p).shape == (32, 32, 3) for p in files)


def test_summarize_reports_the_choices_made_on_validation():
    import pandas as pd

    single = [_row("airbench96-40ep", 0.93, 0.93, seed) for seed in (0, 1, 2)]
    single[1]["val_tta_accuracy"] = 0.94
    ensemble = _row("airbench96-40ep-ensemble-of-3", 0.95, 0.94)
    study = [_row(f"{name}-flip_crop", 0.8, 0.8, seed) | {"config": {
        "name": f"{name}-flip_crop-s{seed}", "architecture": name, "seed": seed, "epochs": common.STUDY_EPOCHS,
        "augmentation": "flip_crop", "optimizer": "sgd_nesterov", "lr": 0.1}} for name in common.ARCHITECTURES
        for seed in (0, 1)]
    sweep = [_row("vgg-sweep", 0.7, 0.7) | {"config": {"name": f"vgg-{o}-s0", "optimizer": o, "lr": lr, "epochs": 4}}
             for o, lr in (("adam", 1e-3), ("adam", 3e-3))]
    everything = {
        "study": {"architectures": study, "architecture": "vgg", "augmentations": study[2:4],
                  "augmentation": "flip_crop", "sweep": sweep, "learning_rates": {"adam": 3e-3}, "best": study[2:4]},
        "published": {"airbench94": [_row("airbench94-10ep", 0.9, 0.9, s) for s in (0, 1)], "airbench96": single},
        "upstream": [_row("upstream-airbench96", 0.93, 0.931) | {"config": {
            "name": "upstream-airbench96-s0", "architecture": "airbench96", "epochs": 40}}],
        "ensemble": ensemble, "baseline": _row("plain_cnn", 0.74, 0.74)}
    costs = pd.DataFrame({"params": 1, "MACs per image": 2, "latency ms (1 thread)": 0.5},
                         index=list(common.ARCHITECTURES))
    results = common.summarize(profile="full", smoke=False, everything=everything, costs=costs, cpu_hours=5.0)
    assert results["final_model"]["name"] == "airbench96 port, ensemble of its 3 seeds"
    assert results["selected_on"] == "validation"
    assert results["best_model"] == "airbench96-40ep-s1" and results["best_recipe"]["tta"] == "flip_translate"
    assert results["airbench96_test_accuracy"]["mean"] == pytest.approx(0.93)
    assert results["upstream_airbench"] == {"airbench96": pytest.approx(
        {"test_accuracy": 0.931, "seeds": 1, "images_per_second": 1000.0})}
    assert "airbench94" not in results["upstream_airbench"] and results["port"]["airbench96"]["seeds"] == 3
    assert results["optimizers"] == {"adam": {"lr": 3e-3, "epochs": 4, "val_accuracy": pytest.approx(0.69)}}
    assert [a["seeds"] for a in results["architectures"]] == [2] * len(common.ARCHITECTURES)
    assert results["headline"]["baseline"] == "0.7300 (plain CNN, 10 epochs)"
    assert results["headline"]["equal-epoch study"].startswith("0.7900 (vgg, the best of 6 architectures on validation")
