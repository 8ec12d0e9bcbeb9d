import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import balanced_accuracy_score

from indoor_scene import common
from mlkit.images import ImageArrays, list_files
from mlkit.models import BasicBlock
from mlkit.predictors import load_arrays
from mlkit.results import ROOT


def arrays(images, labels):
    return ImageArrays(np.asarray(images, np.uint8), np.asarray(labels), [f"f{i}.jpg" for i in range(len(labels))],
                       ["a", "b"])


def test_deduplicate_keeps_one_copy_and_drops_copies_with_conflicting_labels():
    unique = [np.full((4, 4), v) for v in (1, 2, 3)]
    images = [unique[0], unique[0], unique[1], unique[1], unique[2]]
    data, groups = common.deduplicate(arrays(images, [0, 0, 0, 1, 1]))
    assert data.paths == ["f0.jpg", "f4.jpg"]  # f1 is f0's copy; f2 and f3 disagree on the label
    assert sorted(len(g) for g in groups) == [2, 2]


def test_split_is_stratified_seeded_and_disjoint():
    labels = np.repeat(np.arange(5), [40, 50, 60, 70, 80])
    train, val = common.split(labels, seed=1)
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == len(labels)
    assert np.allclose(np.bincount(labels[val]) / np.bincount(labels), 0.2, atol=0.02)
    assert np.array_equal(common.split(labels, seed=1)[1], val)
    assert not np.array_equal(common.split(labels, seed=2)[1], val)


def test_random_resized_crop_of_the_full_image_is_the_image_or_its_mirror():
    torch.manual_seed(0)
    x = torch.rand(16, 1, 8, 8)
    out = common.random_resized_crop(x, 8, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    same = torch.isclose(out, x, atol=1e-5).flatten(1).all(1)
    mirrored = torch.isclose(out, x.flip(3), atol=1e-5).flatten(1).all(1)
    assert (same | mirrored).all() and same.any() and mirrored.any()


def test_random_resized_crop_zooms_in_on_part_of_the_image():
    torch.manual_seed(0)
    x = torch.zeros(32, 1, 32, 32)
    x[:, :, :, 16:] = 1  # right half bright
    out = common.random_resized_crop(x, 16, scale=(0.1, 0.1))
    fractions = out.mean((1, 2, 3))
    assert out.shape == (32, 1, 16, 16)
    assert ((fractions < 0.05) | (fractions > 0.95)).float().mean() > 0.5  # most small crops see one half only


def test_jitter_stays_in_range_and_changes_brightness():
    torch.manual_seed(0)
    x = torch.full((64, 1, 4, 4), 0.5)
    out = common.jitter(x)
    assert out.min() >= 0 and out.max() <= 1 and out.mean((1, 2, 3)).std() > 0.01


def test_mixup_mixes_inputs_and_returns_both_label_sets():
    torch.manual_seed(0)
    loader = [(torch.eye(4).view(4, 1, 2, 2), torch.arange(4))]
    x, (labels, partners, lam) = next(iter(common.Mixup(loader, alpha=0.4)))
    expected = lam[0] * torch.eye(4).view(4, 1, 2, 2) + (1 - lam[0]) * torch.eye(4)[partners].view(4, 1, 2, 2)
    assert torch.allclose(x, expected) and torch.equal(labels, torch.arange(4))


def test_mixed_cross_entropy_is_the_lam_weighted_sum_and_plain_ce_for_labels():
    logits, a, b = torch.randn(6, 5), torch.randint(0, 5, (6,)), torch.randint(0, 5, (6,))
    loss = common.MixedCrossEntropy(label_smoothing=0.1)
    lam = torch.full((6,), 0.3)
    expected = 0.3 * torch.nn.functional.cross_entropy(logits, a, label_smoothing=0.1) + \
        0.7 * torch.nn.functional.cross_entropy(logits, b, label_smoothing=0.1)
    assert torch.allclose(loss(logits, (a, b, lam)), expected)
    assert torch.allclose(loss(logits, a), torch.nn.functional.cross_entropy(logits, a, label_smoothing=0.1))


@pytest.mark.parametrize("channels", [1, 3])
def test_models_take_grayscale_or_colour(channels):
    x = torch.rand(2, channels, 64, 64)
    assert common.SceneResNet(channels, 15, width=8)(x).shape == (2, 15)
    assert common.SimpleCNN(channels, 67)(x).shape == (2, 67)


def test_scene_resnet_blocks_start_as_identity_functions():
    blocks = [m for m in common.SceneResNet(1, 15, width=8).modules() if isinstance(m, BasicBlock)]
    assert blocks and all(torch.count_nonzero(block.bn2.weight) == 0 for block in blocks)


def test_load_pool_rejects_unknown_datasets():
    with pytest.raises(ValueError, match="DATASET must be one of"):
        common.load_pool("places365")


@pytest.mark.parametrize("mode, size", [("RGBA", (300, 200)), ("L", (50, 80)), ("RGB", (128, 128))])
def test_preprocess_gives_the_model_input_for_any_image(tmp_path, mode, size):
    path = tmp_path / "image.png"
    Image.new(mode, size).save(path)
    assert common.preprocess(path, 96, "L").shape == (1, 96, 96)
    assert common.preprocess(path, 64, "RGB").shape == (3, 64, 64)


# ---------------------------------------------------------------- the committed predictor

BAD = ["empty.jpg", "corrupt.jpg", "notes.txt.jpg", "notes.txt", "photo.heic", "huge.png"]
HAS_DATA = (ROOT / "data" / "scene15" / "train").is_dir()


@pytest.fixture(scope="module")
def predictor():
    """The committed predictor: the fp16 model and the training-split hashes."""
    return common.load_predictor()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return common.demo_inputs(tmp_path_factory.mktemp("indoor_demo"))


def test_committed_predictor_answers_every_demo_file(predictor, demo, capsys):
    table = predictor.predict(demo)
    assert list(table.columns) == common.TABLE_COLUMNS
    assert list(table["file"]) == [p.name for p in list_files(demo)]
    good = table[table["error"] == ""]
    assert set(good["file"]) == {p.name for p in common.DEMO.glob("*.jpg")} | {"rgba.png", "grayscale.png",
                                                                               "16bit.png", "exif_rotated.jpg"}
    assert good["prediction"].isin(predictor.classes).all() and good["probability"].between(0, 1).all()
    samples = good[good["file"].str.endswith("_1.jpg")]
    assert (samples["prediction"] == samples["file"].str.split("_").str[0]).mean() >= 0.5
    assert (table.set_index("file").loc[BAD, "error"] != "").all()
    assert not table["in training split"].any() and "WARNING" not in capsys.readouterr().out
    assert repr(predictor).startswith("indoor_scene SceneResNet predictor") and len(predictor.classes) == 15


def test_a_batch_of_only_bad_files_gives_rows_with_errors(predictor, demo, tmp_path):
    table = predictor.predict([demo / "empty.jpg", demo / "notes.txt", tmp_path / "missing.png"])
    assert len(table) == 3 and (table["error"] != "").all() and (table["prediction"] == "").all()
    assert not table["in training split"].any()
    assert predictor.predict([]).empty


def test_missing_weights_or_hashes_give_a_clear_error(tmp_path):
    shutil.copy(common.CHECKPOINTS / "predictor.json", tmp_path)
    with pytest.raises(FileNotFoundError, match="is missing"):
        common.load_predictor(tmp_path)


def test_files_of_the_training_split_are_flagged_and_named(predictor, tmp_path, capsys):
    seen, unseen = tmp_path / "seen.jpg", tmp_path / "unseen.jpg"
    shutil.copy(common.DEMO / "kitchen_1.jpg", seen)
    shutil.copy(common.DEMO / "store_1.jpg", unseen)
    flagged = common.IndoorScenePredictor(predictor.manifest, predictor.model.model, {common.file_key(seen)})
    table = flagged.predict([seen, unseen])
    assert list(table["in training split"]) == [True, False]
    out = capsys.readouterr().out
    assert "WARNING: 1 file(s) were in the shipped model's training split" in out and "seen.jpg" in out


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_evaluate_scores_a_class_folder_and_reports_what_it_cannot_score(predictor, tmp_path, capsys):
    folder = common.demo_labelled_folder(tmp_path / "labelled")
    result = predictor.evaluate(folder)
    table = result.table.set_index("file")
    assert list(result.table.columns) == common.EVALUATION_COLUMNS
    assert not table.loc["bathroom/bathroom_1.jpg", "scored"] and "bathroom" in table.loc["bathroom/bathroom_1.jpg",
                                                                                           "error"]
    assert not table.loc["bedroom/empty.jpg", "scored"] and table.loc["bedroom/empty.jpg", "error"] == "empty file"
    scored = result.table[result.table["scored"]]
    assert len(scored) == len(list(common.DEMO.glob("*.jpg")))
    assert result.balanced_accuracy == pytest.approx(balanced_accuracy_score(scored["class"], scored["prediction"]))
    assert (scored["correct"] == (scored["class"] == scored["prediction"])).all()
    out = capsys.readouterr().out
    assert f"balanced accuracy {result.balanced_accuracy:.4f}" in out and "bathroom/bathroom_1.jpg" in out


def test_evaluate_reads_a_file_list_relative_to_a_root(predictor, tmp_path):
    folder = common.demo_labelled_folder(tmp_path / "Images")
    listing = tmp_path / "TestImages.txt"
    listing.write_text("kitchen/kitchen_1.jpg\r\nstore/store_1.jpg\n\nstore/missing.jpg\nloose.jpg\n")
    result = predictor.evaluate(listing, root=folder)
    assert list(result.table["file"]) == ["kitchen/kitchen_1.jpg", "store/store_1.jpg", "store/missing.jpg",
                                          "loose.jpg"]
    assert list(result.table["scored"]) == [True, True, False, False]
    assert result.table["error"].iloc[3] == "no such file"
    from_list = predictor.evaluate(["kitchen/kitchen_1.jpg", "store/store_1.jpg"], root=folder)
    assert from_list.balanced_accuracy == result.balanced_accuracy
    with pytest.raises(FileNotFoundError, match="neither a class folder nor a file list"):
        predictor.evaluate(tmp_path / "nothing")


def test_evaluate_of_nothing_scorable_gives_nan_not_an_error(predictor, tmp_path):
    (tmp_path / "bathroom").mkdir()
    (tmp_path / "bathroom" / "empty.jpg").write_bytes(b"")
    assert np.isnan(predictor.evaluate(tmp_path).balanced_accuracy)


@pytest.mark.skipif(not HAS_DATA, reason="needs the prepared 15-Scene data")
def test_committed_hashes_flag_the_training_split_and_not_the_validation_split(predictor):
    data = common.pool("scene15", smoke=False)
    train, val = common.split(data.labels, seed=0)
    folder = ROOT / "data" / "scene15"
    picked = [folder / data.paths[i] for i in (*train[:20], *val[:20])]
    table = predictor.predict(picked)
    assert list(table["in training split"]) == [True] * 20 + [False] * 20
    demo_keys = {common.file_key(p) for p in common.DEMO.glob("*.jpg")}
    assert not demo_keys & predictor.training_keys  # the demo images are validation images


@pytest.mark.skipif(not HAS_DATA, reason="needs the prepared 15-Scene data")
def test_committed_manifest_is_what_export_writes_from_the_committed_files(tmp_path):
    folder = tmp_path / "checkpoints"
    shutil.copytree(common.CHECKPOINTS, folder)
    (folder / common.TRAINING_HASHES).unlink()
    shutil.copy(ROOT / "indoor_scene" / "results.json", tmp_path)
    exported = json.loads(common.export_predictor(folder).read_text())
    committed = json.loads((common.CHECKPOINTS / "predictor.json").read_text())
    assert {k: v for k, v in exported.items() if k != "written"} == {k: v for k, v in committed.items()
                                                                    if k != "written"}
    assert np.array_equal(load_arrays(folder / common.TRAINING_HASHES)["sha256_64"],
                          load_arrays(common.CHECKPOINTS / common.TRAINING_HASHES)["sha256_64"])
    assert "trained on the training part (80%) of split seed 0 only" in exported["training"]["note"]


def test_demo_images_are_small_validation_images_named_by_class(predictor):
    images = sorted(common.DEMO.glob("*.jpg"))
    assert 4 <= len(images) <= 6 and (common.DEMO / "README.md").is_file()
    assert sum(p.stat().st_size for p in common.DEMO.iterdir()) < 150_000
    assert {p.stem.rsplit("_", 1)[0] for p in images} <= set(predictor.classes)


def test_summarize_reports_mean_and_spread_over_split_seeds():
    def run(plain, tta, hardware="cpu"):
        return {"balanced_accuracy": plain, "tta_balanced_accuracy": tta, "hardware": hardware,
                "config": {"name": "challenge-scaled", "seed": 0, "smoke": False, "width": 48}}

    results = common.summarize(
        dataset="scene15", profile="full", split_seeds=(0, 1), baseline_runs=[run(0.6, 0.61), run(0.7, 0.71)],
        recipe_runs=[run(0.8, 0.81), run(0.8, 0.83)], scaled_runs=[run(0.9, 0.91, "gpu"), run(0.9, 0.89, "gpu")],
        ablation={"full recipe": 0.812345}, scaled_cpu_hours=8.0)
    assert results["baseline_balanced_accuracy_mean"] == pytest.approx(0.65)
    assert results["challenge_balanced_accuracy_mean"] == pytest.approx(0.90)
    assert results["challenge_balanced_accuracy_per_seed"] == [0.91, 0.89] and results["challenge_trained_on"] == "gpu"
    assert results["challenge_recipe"] == {"width": 48} and results["ablation_seed0"] == {"full recipe": 0.8123}
    assert results["headline"]["balanced accuracy"] == ("0.900 ± 0.014 over 2 split seeds (baseline 0.650; trained "
                                                        "on gpu)")
    assert "stand-in" in results["data"]
