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


def test_build_student_rejects_unknown_kinds_and_a_cnn_without_width():
    with pytest.raises(ValueError, match="student must be one of"):
        common.build_student("resnet")
    with pytest.raises(ValueError, match="needs its width"):
        common.build_student("cnn")


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


def fake_run(name="cnn8-kd-T4-a0.9-s0", width=8, alpha=0.9, val=(1, 1, 1, 0), val_int8=(1, 1, 1, 0)):
    """A student run's result as `run` returns it, with the predictions a record keeps."""
    return {"config": {"name": name, "student": "cnn" if width else "mobilenet", "width": width, "alpha": alpha,
                       "seed": 0, "smoke": False},
            "parameters": 1674 * (width or 10) ** 2, "weights": f"runs/{name}-abc/final.pt",
            "val_pred": np.array(val), "val_pred_int8": np.array(val_int8), "test_pred": np.array(val),
            "test_pred_int8": np.array(val_int8)}


def test_make_config_names_the_width_and_ignores_temperature_without_distillation():
    kd = common.make_config("cnn", 8, 2, 0.5, teacher="t.npy", seed=1)
    assert kd["name"] == "cnn8-kd-T2-a0.5-s1" and kd["width"] == 8
    assert common.make_config("cnn", 8, 2, 0, "t.npy") == common.make_config("cnn", 8, 8, 0, "t.npy")
    mobile = common.make_config("mobilenet", 16, alpha=0, teacher="t.npy", seed=0)
    assert mobile["name"] == "mobilenet-ce-s0" and mobile["width"] is None


def test_built_students_follow_their_width():
    assert [parameter_count(common.build_student("cnn", w)) for w in common.CNN_WIDTHS] == [27370, 108302, 430870]


def test_quantisation_gate_reads_validation_only():
    labels = np.array([1, 1, 1, 1])
    assert common.accuracy(fake_run(), labels) == 0.75
    assert common.passes_gate(fake_run(val=(1, 1, 1, 1), val_int8=(1, 1, 1, 1)), labels)
    assert not common.passes_gate(fake_run(val=(1, 1, 1, 1), val_int8=(1, 1, 1, 0)), labels)
    run = fake_run(val=(1, 1, 1, 1), val_int8=(1, 1, 1, 1))
    run["test_pred_int8"] = np.zeros(4)  # the test set disagrees: the gate does not look at it
    assert common.passes_gate(run, labels)


def test_choose_width_takes_the_smallest_student_within_a_point_of_the_master():
    labels = np.ones(100, dtype=int)

    def student(width, correct, alpha=0.9, int8_loss=0):
        val = (np.arange(100) < correct).astype(int)
        return fake_run(f"cnn{width}", width, alpha, val, (np.arange(100) < correct - int8_loss).astype(int))

    runs = [student(4, 80), student(8, 90), student(16, 95), student(4, 99, alpha=0)]
    assert common.choose_width(runs, labels, master_val=0.905) == 8  # 0.90 >= 0.905 - 0.01; labels-only cnn4 ignored
    assert common.choose_width(runs, labels, master_val=0.95) == 16
    assert common.choose_width(runs, labels, master_val=0.99) == 16  # none close enough: the most accurate
    assert common.choose_width(runs + [student(4, 99, int8_loss=5)], labels, master_val=0.905) == 8  # gate fails


def test_calibration_images_come_from_outside_the_validation_part():
    images = np.arange(250)[:, None, None, None].repeat(2, 1).astype(np.uint8)
    labels = np.repeat(np.arange(5), 50)
    data = {"train": common.ImageArrays(images, labels, [str(i) for i in range(250)], [str(c) for c in range(5)])}
    chosen = common.calibration_images(data, smoke=True)[:, 0, 0, 0]
    _, val = common.validation_split(labels)
    assert len(chosen) == 16 and not set(chosen.tolist()) & set(images[val, 0, 0, 0].tolist())


def test_end_to_end_latency_includes_the_resize():
    class Session:
        def run(self, _, feeds):
            self.shape = feeds["image"].shape
            return [feeds["image"].mean((1, 2, 3))[:, None]]

    session, image = Session(), np.full((1, 150, 150, 3), 255, dtype=np.uint8)
    assert np.allclose(common.end_to_end(session, 64)(image), 1.0) and session.shape == (1, 3, 64, 64)
    common.end_to_end(session, common.IMAGE_SIZE)(image)
    assert session.shape == (1, 3, 150, 150)


def test_deploy_writes_a_trained_run_and_keeps_only_the_committed_files_of_the_same_run(tmp_path):
    run_dir = tmp_path / "runs" / "cnn4-kd-T4-a0.9-s0-abc"
    run_dir.mkdir(parents=True)
    student = common.CompactCNN(6, width=4).eval()
    torch.save(student.state_dict(), run_dir / "final.pt")
    int8 = common.quantize_int8(common.export_onnx(student, 64, run_dir / "fp32.onnx"), run_dir / "int8.onnx",
                                torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8))
    run = {"config": {"student": "cnn", "width": 4}, "weights": str(run_dir / "final.pt"), "int8": str(int8),
           "int8_recipe": "8-bit weights"}
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "mobilenet_student_int8.onnx").write_bytes(b"stale")
    files = common.deploy(run, folder)
    assert sorted(p.name for p in folder.iterdir()) == ["cnn_student_fp16.pt", "cnn_student_int8.onnx"]
    assert common.load_student("cnn", files["fp16"], 4)(torch.rand(1, 3, 64, 64)).shape == (1, 6)
    (run_dir / "final.pt").unlink()  # now as if read from a record on a fresh clone
    assert common.deploy(run, folder) == files
    for other in (run | {"weights": str(tmp_path / "runs" / "cnn4-ce-s0-def" / "final.pt")},
                  run | {"int8_recipe": "7-bit weights"}):
        with pytest.raises(FileNotFoundError, match="RETRAIN = True"):
            common.deploy(other, folder)


def test_paths_from_records_are_read_from_the_repository_root():
    assert common.repository_path("distillation/runs/x/final.pt") == ROOT / "distillation" / "runs" / "x" / "final.pt"
    assert common.repository_path(ROOT / "a") == ROOT / "a"


def test_summarize_gives_like_for_like_ratios_and_the_gate_split():
    import pandas as pd

    cost = pd.DataFrame({"test accuracy": [0.90, 0.89, 0.88, 0.88], "parameters": [6e7, 6e7, 1e5, 1e5],
                         "MB on disk": [240.0, 60.0, 0.4, 0.12], "latency median ms": [60.0, 20.0, 0.6, 0.4]},
                        index=["master fp32", "master int8", "student fp32", "student int8"])
    seeds = pd.DataFrame({"val int8": [0.90, 0.92], "test int8": [0.88, 0.86]})
    gate = pd.DataFrame({"val fp32": [0.9], "val int8": [0.9], "passes": [True]}, index=["cnn8-kd"])
    results = common.summarize(profile="full", cost=cost, deployed={"config": {"name": "cnn8-kd", "student": "cnn",
                                                                                "width": 8},
                                                                     "int8_recipe": "8-bit weights"},
                               seeds=seeds, gate=gate, pareto=[], effect={},
                               most_accurate={"name": "mobilenet-ce-s0", "test accuracy": 0.93})
    assert results["like_for_like"] == {"fp32": {"latency_ratio": 100.0, "size_ratio": 600.0},
                                        "int8": {"latency_ratio": 50.0, "size_ratio": 500.0}}
    assert results["quantisation_gate_split"] == "validation" and results["param_ratio"] == 600.0
    assert results["student"] == "cnn8 (cnn8-kd), int8 ONNX" and results["student_accuracy"] == 0.88
    assert results["student_seeds"]["test int8 mean"] == pytest.approx(0.87) and results["student_seeds"]["seeds"] == 2
    assert results["headline"]["student cost"] == "600x fewer parameters; int8 vs int8: 500x smaller, 50x faster"
    json.dumps(results)


def test_gated_keeps_int8_runs_that_pass_and_swaps_in_the_fallback_for_the_others():
    labels = np.ones(4, dtype=int)
    passing = fake_run("cnn8-ce-s0", val=(1, 1, 1, 1), val_int8=(1, 1, 1, 1))
    failing = fake_run("cnn4-ce-s0", 4, val=(1, 1, 1, 1), val_int8=(0, 0, 1, 1))
    fallback = {"config": common.reduced_range_config(failing), "val_pred_int8": np.ones(4),
                "test_pred_int8": np.ones(4), "int8": "runs/fallback/int8.onnx"}
    kept, swapped = common.gated([passing, failing], [fallback], labels)
    assert kept["int8_recipe"] == "8-bit weights" and kept["val_pred_int8"] is passing["val_pred_int8"]
    assert swapped["int8_recipe"] == "7-bit weights" and swapped["int8"] == "runs/fallback/int8.onnx"
    assert common.passes_gate(swapped, labels) and list(swapped["val_pred_int8_all"]) == [0, 0, 1, 1]
    assert fallback["config"]["student_run"] == "cnn4-ce-s0-abc"


def test_reduce_range_quantizes_weights_to_seven_bits(tmp_path):
    import onnx
    from onnx import numpy_helper

    torch.manual_seed(0)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    fp32 = common.export_onnx(common.CompactCNN(6, width=4).eval(), 32, tmp_path / "model.onnx")
    for reduce_range, limit in ((False, 127), (True, 64)):
        path = common.quantize_int8(fp32, tmp_path / f"int8-{reduce_range}.onnx", images, reduce_range)
        weights = [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer if t.data_type == 3]
        assert weights and max(np.abs(w.astype(int)).max() for w in weights) == limit
