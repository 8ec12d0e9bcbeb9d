import json
import shutil
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distillation import common
from mlkit.cost import latency_ms
from mlkit.images import list_files
from mlkit.pretrained import CHECKPOINTS, RESNET152
from mlkit.results import ROOT
from mlkit.train import parameter_count


def test_distillation_loss_without_teacher_weight_is_cross_entropy():
    logits, labels, teacher = torch.randn(8, 6), torch.randint(0, 6, (8,)), torch.randn(8, 6)
    loss = common.DistillationLoss(temperature=4, alpha=0)
    assert torch.allclose(loss(logits, (labels, teacher)), F.cross_entropy(logits, labels))
    assert torch.allclose(common.DistillationLoss()(logits, labels), F.cross_entropy(logits, labels))


def test_distillation_loss_matches_the_hand_computed_formula():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    teacher = torch.tensor([[1.0, 1.0, 0.0]])
    labels = torch.tensor([0])
    t, alpha = 2.0, 0.7
    p_teacher = np.exp([0.5, 0.5, 0.0]) / np.exp([0.5, 0.5, 0.0]).sum()
    p_student = np.exp([1.0, 0.0, -0.5]) / np.exp([1.0, 0.0, -0.5]).sum()
    kl = (p_teacher * np.log(p_teacher / p_student)).sum()
    ce = -np.log(np.exp(2.0) / np.exp([2.0, 0.0, -1.0]).sum())
    expected = alpha * t * t * kl + (1 - alpha) * ce
    assert common.DistillationLoss(t, alpha)(logits, (labels, teacher)).item() == pytest.approx(expected, rel=1e-5)


def test_pure_soft_loss_is_zero_when_student_equals_teacher():
    logits = torch.randn(5, 6)
    assert common.DistillationLoss(3.0, 1.0)(logits, (torch.zeros(5, dtype=torch.long), logits)).item() == \
        pytest.approx(0, abs=1e-6)


@pytest.mark.parametrize("temperature, alpha", [(0, 0.5), (-1, 0.5), (2, 1.5), (2, -0.1)])
def test_distillation_loss_rejects_bad_settings(temperature, alpha):
    with pytest.raises(ValueError):
        common.DistillationLoss(temperature, alpha)


def test_validation_split_is_stratified_and_disjoint():
    labels = np.repeat(np.arange(6), [50, 60, 70, 80, 90, 100])
    train, val = common.validation_split(labels)
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == len(labels)
    assert np.allclose(np.bincount(labels[val]) / np.bincount(labels), 0.2, atol=0.02)


def test_compact_cnn_is_under_a_fiftieth_of_the_master():
    model = common.CompactCNN(6)
    assert parameter_count(model) * 50 < 58_155_000
    assert model(torch.rand(2, 3, 96, 96)).shape == (2, 6)


def test_mobilenet_student_keeps_its_stem_frozen_and_splits_exactly():
    student = common.MobileNetStudent(6).train()
    assert not any(p.requires_grad for p in student.stem.parameters())
    assert not student.stem.training and student.body.training
    assert parameter_count(student) * 50 < 58_155_000
    student.eval()
    x = torch.rand(2, 3, 128, 128)
    assert torch.allclose(student.from_stem(student.stem_maps(x)), student(x), atol=1e-6)


def test_load_student_reads_weights_saved_through_the_stem_wrapper(tmp_path):
    student = common.MobileNetStudent(6).eval()
    torch.save(common.FromStem(student).state_dict(), tmp_path / "final.pt")
    loaded = common.load_student("mobilenet", tmp_path / "final.pt")
    x = torch.rand(1, 3, 128, 128)
    assert torch.allclose(loaded(x), student(x))


def test_build_student_rejects_unknown_kinds():
    with pytest.raises(ValueError, match="student must be one of"):
        common.build_student("resnet")


def test_onnx_export_and_int8_quantization_agree_with_torch(tmp_path):
    torch.manual_seed(0)
    model = common.CompactCNN(6, width=8).eval()
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8)
    fp32 = common.export_onnx(model, 32, tmp_path / "model.onnx")
    int8 = common.quantize_int8(fp32, tmp_path / "model-int8.onnx", images[:20])
    expected = model(images.float() / 255).detach().numpy()
    assert np.allclose(common.onnx_logits(common.onnx_session(fp32, 1), images), expected, atol=1e-4)
    quantized = common.onnx_logits(common.onnx_session(int8, 1), images)
    assert quantized.shape == expected.shape and np.abs(quantized - expected).max() < 0.5
    assert int8.stat().st_size < fp32.stat().st_size


def test_latency_reports_median_and_95th_percentile():
    result = latency_ms(lambda x: sum(range(1000)), None, runs=20, warmup=2)
    assert 0 < result["median_ms"] <= result["p95_ms"]


def test_cached_map_pairs_give_one_view_in_training_and_the_image_itself_in_evaluation():
    torch.manual_seed(0)
    maps = torch.stack([torch.zeros(10, 2, 3, 3), torch.ones(10, 2, 3, 3)], 1)  # view 0 zeros, view 1 ones
    views = common.random_view_and_shift(1)(maps).flatten(1).mean(1)
    assert set(views.tolist()) == {0.0, 1.0}
    assert torch.equal(common.first_view(maps), maps[:, 0])


def test_mobilenet_stem_maps_do_not_depend_on_the_rest_of_the_batch():
    """A fresh student must compute stem maps in evaluation mode: with batch statistics, a batch of one class
    would encode its label in the maps (and cached maps would not match the deployed model)."""
    student = common.MobileNetStudent(6)
    x = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(student.stem_maps(x[:1]), student.stem_maps(x)[:1], atol=1e-5)


# ---------------------------------------------------------------- the committed predictor

BAD = ["empty.jpg", "corrupt.jpg", "notes.txt.jpg", "notes.txt", "photo.heic", "huge.png"]
CONVERTED = ["rgba.png", "grayscale.png", "16bit.png", "exif_rotated.jpg"]
BACKBONE_CACHED = (CHECKPOINTS / RESNET152.cache_name).is_file()
needs_backbone = pytest.mark.skipif(not BACKBONE_CACHED, reason="the ResNet-152 weights are not in checkpoints/ "
                                    "(python -c 'from mlkit.pretrained import resnet152; resnet152()')")


@pytest.fixture(scope="module")
def predictor():
    """The committed predictor; loads the master's 233 MB backbone once for the module."""
    return common.load_predictor()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return common.demo_inputs(tmp_path_factory.mktemp("distillation_demo"))


@needs_backbone
def test_committed_predictor_puts_master_and_student_side_by_side(predictor, demo):
    table = predictor.predict(demo)
    assert list(table.columns) == common.OUTPUT_COLUMNS
    assert list(table["file"]) == [p.name for p in list_files(demo)]
    good = table[table["error"] == ""].set_index("file")
    assert set(good.index) == {p.name for p in common.DEMO.glob("*.jpg")} | set(CONVERTED)
    for model in ("master", "student"):
        assert good[model].isin(predictor.classes).all() and good[f"{model} probability"].between(0, 1).all()
    assert (good["agree"] == (good["master"] == good["student"])).all()
    assert not good.loc["11000.jpg", "agree"] and good.drop(["11000.jpg", *CONVERTED])["agree"].all()
    bad = table.set_index("file").loc[BAD]
    assert (bad["error"] != "").all() and bad["agree"].isna().all() and (bad["master"] == "").all()
    assert repr(predictor).startswith("distillation predictor: ResNet-152 master and cnn int8 ONNX student")


@needs_backbone
def test_a_batch_of_only_bad_files_gives_rows_with_errors(predictor, demo, tmp_path):
    table = predictor.predict([demo / "empty.jpg", demo / "notes.txt", tmp_path / "missing.png"])
    assert len(table) == 3 and (table["error"] != "").all() and (table["student"] == "").all()
    assert predictor.predict([]).empty


def test_committed_student_onnx_carries_its_metadata():
    import onnx

    manifest = json.loads((common.CHECKPOINTS / "predictor.json").read_text())
    props = {p.key: p.value for p in onnx.load(str(common.CHECKPOINTS / manifest["student"]["file"])).metadata_props}
    assert json.loads(props["classes"]) == manifest["classes"] == ["buildings", "forest", "glacier", "mountain",
                                                                   "sea", "street"]
    assert props["input_size"] == "64" == str(manifest["student"]["input"]["size"][0])
    assert props["scaling"] == manifest["student"]["input"]["scaling"]
    assert set(manifest["student"]["onnx_metadata_props"]) <= set(props)


def test_missing_manifest_gives_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="predictor.json is missing"):
        common.load_predictor(tmp_path)


def test_student_metadata_that_disagrees_with_the_manifest_is_refused(tmp_path):
    for path in common.CHECKPOINTS.iterdir():
        shutil.copy(path, tmp_path)
    onnx_file = tmp_path / "cnn_student_int8.onnx"
    common.write_onnx_metadata(onnx_file, {"classes": json.dumps(["a", "b", "c", "d", "e", "f"])})
    with pytest.raises(ValueError, match="do not match predictor.json"):
        common.load_predictor(tmp_path)


def test_a_missing_backbone_that_cannot_be_fetched_says_how_to_get_it(monkeypatch, tmp_path, capsys):
    def offline():
        raise subprocess.CalledProcessError(1, ["pip", "download"])

    monkeypatch.setattr(common, "PRETRAINED_CACHE", tmp_path)
    monkeypatch.setattr(common, "resnet152", offline)
    with pytest.raises(RuntimeError, match=r"from mlkit.pretrained import resnet152; resnet152\(\)"):
        common.master_backbone()
    assert "not in checkpoints/ yet" in capsys.readouterr().out


@pytest.mark.skipif(not (ROOT / "data" / "intel" / "seg_train").is_dir(), reason="needs the prepared Intel data")
def test_committed_manifest_is_what_export_writes_from_the_committed_files(tmp_path):
    folder = tmp_path / "checkpoints"
    shutil.copytree(common.CHECKPOINTS, folder)
    shutil.copy(ROOT / "distillation" / "results.json", tmp_path)
    exported = json.loads(common.export_predictor(folder).read_text())
    committed = json.loads((common.CHECKPOINTS / "predictor.json").read_text())
    assert {k: v for k, v in exported.items() if k != "written"} == {k: v for k, v in committed.items()
                                                                    if k != "written"}
    student = "cnn_student_int8.onnx"  # its metadata rewritten: the same bytes
    assert (folder / student).read_bytes() == (common.CHECKPOINTS / student).read_bytes()


def test_demo_images_are_small_unlabelled_seg_pred_images():
    images = sorted(common.DEMO.glob("*.jpg"))
    assert 4 <= len(images) <= 6 and (common.DEMO / "README.md").is_file()
    assert sum(p.stat().st_size for p in common.DEMO.iterdir()) < 150_000


def test_summarize_reports_the_deployed_int8_student_against_the_master():
    import pandas as pd

    cost = pd.DataFrame({"test accuracy": [0.90, 0.89, 0.88], "parameters": [6e7, 1e6, 1e6],
                         "fewer parameters (x)": [1.0, 60.0, 60.0], "smaller on disk (x)": [1.0, 50.0, 230.0],
                         "faster (x)": [1.0, 150.0, 190.0]}, index=["master", "cnn fp32", "cnn int8"])
    results = common.summarize(profile="full", cost=cost, best_kind="cnn", best_run={"config": {"name": "cnn-kd"}},
                               agreement={"cnn int8": 0.995, "cnn fp32": 1.0},
                               effect={"cnn": {"cross-entropy": 0.87, "distilled": 0.88}})
    assert results["student"] == "cnn (cnn-kd), int8 ONNX" and results["student_accuracy"] == 0.88
    assert (results["master_accuracy"], results["size_ratio"], results["export_agreement"]) == (0.90, 230.0, 0.995)
    assert results["headline"] == {"student vs master accuracy": "0.8800 vs 0.9000",
                                   "student cost": "60x fewer parameters, 230x smaller, 190x faster"}
    assert set(results["models"]) == {"master", "cnn fp32", "cnn int8"}
