"""vv_tasks/common.py: the fixed models, the data fixes, the task 4 losses, prediction on new files."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from mlkit.images import BadImageError, ImageArrays
from mlkit.results import ROOT
from vv_tasks import common


@pytest.mark.parametrize("name, params", [("ModelTask1", 31_303), ("ModelTask3", 69_120), ("ModelTask4", 69_120)])
def test_fixed_models_keep_the_given_architecture(name, params):
    model = common.MODELS[name]()
    assert sum(p.numel() for p in model.parameters()) == params
    assert model(torch.rand(5, 1, 28, 28) * 255).shape == (5, 10)


def test_models_1_and_3_end_in_softmax_and_model_4_does_not():
    x = torch.rand(4, 1, 28, 28) * 255
    for model in (common.ModelTask1(), common.ModelTask3()):
        assert torch.allclose(model.eval()(x).sum(1), torch.ones(4))
    assert not torch.allclose(common.ModelTask4().eval()(x).sum(1), torch.ones(4))


def _arrays(labels):
    labels = np.asarray(labels)
    return ImageArrays(np.zeros((len(labels), 28, 28), np.uint8), labels, [str(i) for i in labels], list("0123456789"))


def test_given_task1_loader_serves_classes_in_order_and_task3_loader_shuffles():
    data = _arrays(np.repeat(np.arange(10), 30))
    task1_train, _ = common.original_loaders("task1", data, data)
    assert torch.equal(torch.cat([y for _, y in task1_train]), torch.as_tensor(data.labels))
    torch.manual_seed(0)
    task3_train, _ = common.original_loaders("task3", data, data)
    assert not torch.equal(torch.cat([y for _, y in task3_train]), torch.as_tensor(data.labels))


def test_balanced_sampler_draws_classes_equally_and_keeps_epoch_length():
    labels = np.array([0] * 900 + [1] * 90 + [2] * 10)
    torch.manual_seed(0)
    drawn = labels[list(common.balanced_sampler(labels))]
    assert len(drawn) == len(labels)
    assert np.allclose(np.bincount(drawn) / len(drawn), 1 / 3, atol=0.05)


def ones_filed_as_zero(seed: int, pixel_noise: float, flipped: int):
    """Ten noisy prototypes, 60 images each, with the first `flipped` ones labelled 0."""
    rng = np.random.default_rng(seed)
    prototypes = rng.uniform(0, 255, (10, 28, 28))
    true = np.repeat(np.arange(10), 60)
    images = np.clip(prototypes[true] + rng.normal(0, pixel_noise, (len(true), 28, 28)), 0, 255).astype(np.uint8)
    noisy = true.copy()
    noisy[np.where(true == 1)[0][:flipped]] = 0
    return images, true, noisy


def test_knn_relabel_repairs_systematic_label_flips():
    images, true, noisy = ones_filed_as_zero(0, pixel_noise=40, flipped=20)
    flipped = np.where(true != noisy)[0]
    corrected, support = common.knn_relabel(images, noisy)
    assert (corrected[flipped] == 1).mean() >= 0.9
    assert (corrected == true).mean() > 0.98
    assert support.shape == true.shape and support[corrected == true].mean() > 0.9


def test_knn_relabel_to_convergence_repairs_noise_that_two_rounds_leave():
    images, true, noisy = ones_filed_as_zero(1, pixel_noise=60, flipped=42)  # most ones filed as 0: outvoted at first
    two_rounds, _ = common.knn_relabel(images, noisy, max_rounds=2, k=20)
    converged, support = common.knn_relabel(images, noisy, max_rounds=30, k=20)
    assert (converged == true).sum() >= (two_rounds == true).sum()
    again, _ = common.knn_relabel(images, converged, max_rounds=1, k=20)  # converged: one more round changes nothing
    assert (again == converged).all()


def test_shift_augmentation_moves_without_losing_ink():
    image = torch.zeros(1, 1, 28, 28)
    image[0, 0, 10:18, 10:18] = 255
    torch.manual_seed(0)
    shifted = common.AUGMENTATIONS["shift"](image.repeat(50, 1, 1, 1))
    assert torch.allclose(shifted.sum((1, 2, 3)), image.sum())
    assert len({tuple(s.nonzero()[0].tolist()) for s in shifted}) > 1


def test_shift_augmentation_draws_the_x_offset_first():
    image = torch.zeros(16, 1, 28, 28)
    image[:, 0, 14, 14] = 255
    torch.manual_seed(0)
    dx, dy = torch.randint(0, 5, (2, 16)) - 2  # the order the records' runs drew them in
    torch.manual_seed(0)
    shifted = common.AUGMENTATIONS["shift"](image)
    rows, cols = (torch.stack([s[0].nonzero()[0] for s in shifted]) - 14).T
    assert torch.equal(cols, -dx) and torch.equal(rows, -dy)


def test_blur_augment_keeps_ink_and_lowers_sharpness():
    image = torch.zeros(3, 1, 28, 28)
    image[:, 0, 12:16, 12:16] = 255
    blurred = common.blur_augment(image, sigma=(1.0, 2.0))
    assert torch.allclose(blurred.sum((1, 2, 3)), image.sum((1, 2, 3)), rtol=1e-4)
    assert blurred.max() < 255


def test_noise_augment_stays_in_pixel_range():
    noisy = common.noise_augment(torch.full((4, 1, 28, 28), 250.0), std=(20.0, 30.0))
    assert noisy.min() >= 0 and noisy.max() <= 255 and noisy.std() > 0


def _centre(images: torch.Tensor) -> torch.Tensor:
    x = images.squeeze(1)
    grid = torch.arange(28.0)
    mass = x.sum((1, 2))
    return torch.stack([(x.sum(1) * grid).sum(1) / mass, (x.sum(2) * grid).sum(1) / mass], 1)


def test_corrupt_like_test_shifts_right_and_down_by_the_mean_offset():
    image = torch.zeros(200, 1, 28, 28)
    image[:, 0, 10:18, 12:16] = 255
    torch.manual_seed(0)
    moved = common.corrupt_like_test(image, shift=(2.0, 1.0, 0.5))
    offset = _centre(moved) - _centre(image)
    assert torch.allclose(offset.mean(0), torch.tensor([2.0, 1.0]), atol=0.15)
    assert 0.3 < offset[:, 0].std() < 0.7
    assert torch.equal(common.corrupt_like_test(image), image)  # every part None: unchanged


def synthetic_strokes(n: int, seed: int = 0) -> np.ndarray:
    """Digit-like images: a stroke about 2 px wide near the centre, mostly upright like a 1 (a clear main axis:
    orientations spread over every angle would hide a rotation), no background."""
    rng = np.random.default_rng(seed)
    canvas = []
    for _ in range(n):
        image = Image.new("L", (28, 28), 0)
        draw = ImageDraw.Draw(image)
        angle, length = rng.normal(np.pi / 2, 0.2), rng.uniform(12, 18)
        cx, cy = rng.normal(13.5, 1.0, 2)
        dx, dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
        draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=255, width=2)
        canvas.append(np.asarray(image))
    return np.stack(canvas)


def test_estimate_corruption_recovers_a_known_corruption_from_unpaired_images():
    clean = synthetic_strokes(3000)
    truth = {"shift": (1.5, -1.0, 0.7), "rotation": 8.0, "blur": 1.2, "noise": 5.0}
    torch.manual_seed(0)
    degraded = common.corrupt_like_test(torch.from_numpy(synthetic_strokes(3000, seed=1)).float()[:, None], **truth)
    estimate = common.estimate_corruption(clean, degraded.squeeze(1).round().clamp(0, 255).numpy().astype(np.uint8))
    assert np.allclose(estimate["shift"], truth["shift"], atol=0.25), estimate
    assert abs(estimate["blur"] - truth["blur"]) <= 0.2 and abs(estimate["noise"] - truth["noise"]) <= 0.6, estimate
    assert abs(estimate["rotation"] - truth["rotation"]) <= 3.0 and abs(estimate["contrast"] - 1) <= 0.1, estimate


def test_task3_ablation_adds_the_matched_parts_one_at_a_time():
    corruption = {"shift": [1.5, 1.5, 0.7], "blur": 1.2, "rotation": 7.0, "noise": 5.0, "contrast": 1.02}
    rows = common.task3_rows(corruption)
    assert list(rows)[:2] == ["original (as given)", "guessed augmentation (first version)"]
    matched = [options["augment"] for options in list(rows.values())[2:]]
    assert [list(m) for m in matched] == [list(common.MATCHED_PARTS[:i + 1]) for i in range(4)]
    assert list(rows)[-1] == common.TASK3_SOLUTION and matched[-1] == {k: corruption[k] for k in common.MATCHED_PARTS}


def test_scaled_ce_is_cross_entropy_of_scaled_logits():
    logits, labels = torch.randn(8, 10), torch.randint(0, 10, (8,))
    assert torch.allclose(common.scaled_ce_loss(logits, labels, 30.0), F.cross_entropy(30 * logits, labels))


def test_logit_l2_adds_its_penalty():
    logits, labels = torch.randn(8, 10), torch.randint(0, 10, (8,))
    expected = F.cross_entropy(logits, labels) + 0.5 * logits.pow(2).mean()
    assert torch.allclose(common.logit_l2_loss(logits, labels, 0.5), expected)


def test_logitnorm_ignores_the_logit_scale():
    logits, labels = torch.randn(8, 10), torch.randint(0, 10, (8,))
    assert torch.allclose(common.logitnorm_loss(logits, labels, 0.1), common.logitnorm_loss(7 * logits, labels, 0.1))


def test_probabilities_to_logits_recovers_the_softmax():
    model = common.ModelTask1().eval()
    x = torch.rand(3, 1, 28, 28) * 255
    assert torch.allclose(torch.softmax(common.ProbabilitiesToLogits(model)(x), 1), model(x), atol=1e-6)


def test_preprocess_digit_inverts_dark_on_light_and_rejects_blank(tmp_path):
    digit = np.zeros((28, 28), np.uint8)
    digit[8:20, 12:16] = 255
    Image.fromarray(255 - digit).resize((100, 100)).convert("RGB").save(tmp_path / "dark.png")
    tensor = common.preprocess_digit(tmp_path / "dark.png")
    assert tensor.shape == (1, 28, 28) and tensor[0, 14, 14] > 200 and tensor[0, 0, 0] < 50
    Image.new("L", (28, 28), 0).save(tmp_path / "blank.png")
    with pytest.raises(BadImageError, match="blank"):
        common.preprocess_digit(tmp_path / "blank.png")


def test_preprocess_digit_fits_the_ink_in_20x20_with_its_centre_of_mass_in_the_middle(tmp_path):
    image = Image.new("L", (600, 400), 0)
    ImageDraw.Draw(image).ellipse((20, 30, 80, 150), outline=255, width=12)  # a small 0 in a corner
    image.save(tmp_path / "corner.png")
    tensor = common.preprocess_digit(tmp_path / "corner.png")
    rows, cols = torch.where(tensor[0] > 0.25 * 255)
    assert rows.max() - rows.min() + 1 <= 21 and cols.max() - cols.min() + 1 <= 21
    assert torch.allclose(_centre(tensor[None])[0], torch.tensor([13.5, 13.5]), atol=0.8)


def draw_digit(digit: str, width: int, canvas: int = 400, box=(140, 80, 260, 320), light: bool = False):
    image = Image.new("L", (canvas, canvas), 255 if light else 0)
    draw, ink = ImageDraw.Draw(image), 0 if light else 255
    x0, y0, x1, y1 = box
    if digit == "1":
        draw.line([((x0 + x1) // 2, y0), ((x0 + x1) // 2, y1)], fill=ink, width=width)
    elif digit == "0":
        draw.ellipse(box, outline=ink, width=width)
    else:  # 7
        draw.line([(x0, y0), (x1, y0), (x0 + (x1 - x0) // 3, y1)], fill=ink, width=width, joint="curve")
    return image


def test_predictor_reads_thin_bold_off_centre_and_dark_on_light_digits(predictor, tmp_path):
    # Resized to 28x28 as a whole, 7 of these 12 came out "1"; MNIST's own preprocessing reads them all.
    for digit in "017":
        for style, options in {"thin": {"width": 3}, "bold": {"width": 45},
                               "offcentre": {"width": 12, "canvas": 600, "box": (20, 30, 80, 150)},
                               "darkonlight": {"width": 14, "light": True}}.items():
            draw_digit(digit, **options).save(tmp_path / f"{digit}_{style}.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(tmp_path / "noise.png")
    table = predictor.predict(tmp_path).set_index("file")
    digits = table.drop("noise.png")
    assert (digits["prediction"] == digits.index.str[0]).all(), digits[["prediction", "probability"]]
    assert table.loc["noise.png", "error"].startswith("no digit found")


def sweep_table(rows):
    return pd.DataFrame(rows, columns=["loss", "accuracy mean", "mean_abs_logit mean"]).set_index("loss")


def test_recommended_loss_is_the_most_accurate_that_meets_the_logit_target():
    table = sweep_table([("ce", 0.94, 2.0), ("a", 0.95, 0.5), ("b", 0.935, 0.15), ("c", 0.932, 0.1),
                         ("d", 0.90, 0.01)])
    assert common.recommend_loss(table) == "b"


def test_without_a_loss_meeting_the_target_the_most_accurate_other_loss_is_recommended():
    table = sweep_table([("ce", 0.94, 2.0), ("a", 0.95, 0.5), ("b", 0.90, 0.1)])
    assert common.recommend_loss(table) == "a"


def test_task4_confirmation_reuses_the_sweeps_seed_0_runs():
    sweep = common.task4_sweep_configs()
    confirm = common.task4_confirm_configs("scaled_ce 30.0")
    assert {c["row"] for c in confirm} == {"ce", "scaled_ce 30.0"} and {c["seed"] for c in confirm} == set(common.SEEDS)
    assert [c for c in confirm if c["seed"] == 0] == [c for c in sweep if c["row"] in ("ce", "scaled_ce 30.0")]


# ---------------------------------------------------------------- the committed predictor

@pytest.fixture(scope="module")
def predictor():
    return common.load_predictor()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo folder the last cell uses, written elsewhere (runs/ stays untouched)."""
    return common.demo_inputs(tmp_path_factory.mktemp("digits") / "demo_inputs")


def test_committed_predictor_is_task1s_model_and_lists_the_other_checkpoints(predictor):
    manifest = predictor.manifest
    assert manifest["weights"]["file"] == "task1_ModelTask1.pt" and manifest["model"]["name"] == "ModelTask1"
    assert manifest["classes"] == [str(d) for d in range(10)] and manifest["input"]["size"] == [28, 28]
    assert set(manifest["checkpoints"]) == {"task1_ModelTask1.pt", "task3_ModelTask3.pt", "task4_ModelTask4.pt"}
    for name, about in manifest["checkpoints"].items():
        assert (common.CHECKPOINTS / name).is_file() and about["what"] and about["run"]["seed"] == 0
    assert repr(predictor) == "vv_tasks digit predictor (ModelTask1, task 1's solution), 10 classes, no TTA"


def test_committed_predictor_answers_every_demo_file(predictor, demo):
    table = predictor.predict(demo)
    assert list(table["file"]) == sorted(p.name for p in demo.iterdir())  # one row per file, in order
    rows = table.set_index("file")
    samples = [p.name for p in common.DEMO.iterdir() if p.suffix in (".png", ".jpg")]
    assert len(samples) >= 5
    for name in samples:  # the committed test digits, the dark-on-light one included, come out right
        assert rows.loc[name, "error"] == "" and rows.loc[name, "prediction"] == name.split("_")[0], name
    for name in ("rgba.png", "grayscale.png", "16bit.png", "exif_rotated.jpg"):
        assert rows.loc[name, "error"] == "" and rows.loc[name, "prediction"] in common.DIGITS
    assert rows.loc["blank.png", "error"].startswith("blank image")
    assert (rows.loc[["empty.jpg", "corrupt.jpg", "notes.txt.jpg", "notes.txt", "photo.heic", "huge.png"],
                     "error"] != "").all()


def test_a_batch_of_only_bad_files_gives_rows_with_errors(predictor, demo, tmp_path):
    table = predictor.predict([demo / "blank.png", demo / "notes.txt", tmp_path / "missing.png"])
    assert len(table) == 3 and (table["error"] != "").all() and (table["prediction"] == "").all()
    assert predictor.predict([]).empty


def test_missing_manifest_or_weights_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="predictor.json is missing"):
        common.load_predictor(tmp_path)
    (tmp_path / "predictor.json").write_text(json.dumps({"weights": {"file": "task1_ModelTask1.pt"}}))
    with pytest.raises(FileNotFoundError, match="task1_ModelTask1.pt is missing"):
        common.load_predictor(tmp_path)


def _copy_of_the_committed_checkpoints(folder):
    (folder / "checkpoints").mkdir()
    for name in common.SOLUTIONS:
        shutil.copy(common.CHECKPOINTS / name, folder / "checkpoints")
    shutil.copy(ROOT / "vv_tasks" / "results.json", folder)
    return folder / "checkpoints"


def test_committed_manifest_is_what_export_writes_from_the_committed_files(tmp_path):
    exported = json.loads(common.export_predictor(_copy_of_the_committed_checkpoints(tmp_path)).read_text())
    committed = json.loads((common.CHECKPOINTS / "predictor.json").read_text())
    assert {k: v for k, v in exported.items() if k != "written"} == {k: v for k, v in committed.items()
                                                                    if k != "written"}


def test_export_refuses_a_folder_without_the_saved_checkpoints(tmp_path):
    folder = _copy_of_the_committed_checkpoints(tmp_path)
    (folder / "task3_ModelTask3.pt").unlink()
    with pytest.raises(FileNotFoundError, match="task3_ModelTask3.pt"):
        common.export_predictor(folder)


def test_demo_digits_are_small_test_images_of_different_digits():
    files = sorted(p for p in common.DEMO.iterdir() if p.suffix in (".png", ".jpg"))
    digits = [p.name.split("_")[0] for p in files]
    assert 5 <= len(files) <= 7 and len(set(digits)) == len(digits)
    assert sum(p.stat().st_size for p in common.DEMO.iterdir()) < 150_000
    assert all(Image.open(p).size == (28, 28) for p in files if p.suffix == ".png")


def _vv_run(task, row, accuracy, seed=0, **test):
    return {"config": {"task": task, "row": row, "seed": seed, "name": f"{task}-{row}-s{seed}"},
            "test": {"accuracy": accuracy, "mean_abs_logit": 1.0, "loss": 0.5} | test, "history": [{"seconds": 900.0}]}


def test_summarize_reads_each_task_from_its_rows():
    runs = {"baseline": [_vv_run(t, "original (as given)", a) for t, a in (("task1", 0.3), ("task2", 0.2),
                                                                          ("task3", 0.6))],
            "task1": [_vv_run("task1", common.TASK1_SOLUTION, a, s) for s, a in enumerate((0.94, 0.96))],
            "task2": [_vv_run("task2", "original loop", 0.2), _vv_run("task2", "improved loop", 0.9)],
            "task3": [_vv_run("task3", common.TASK3_SOLUTION, 0.95),
                      _vv_run("task3", "guessed augmentation (first version)", 0.91)]}
    task4 = [_vv_run("task4", "ce", 0.94, mean_abs_logit=16.0, loss=0.2),
             _vv_run("task4", "scaled_ce 30.0", 0.93, mean_abs_logit=1.0, loss=2.0)]
    results = common.summarize(runs, task4, "scaled_ce 30.0", "full")
    assert results["task1_accuracy_mean"] == pytest.approx(0.95) and results["task1_shipped_seed_accuracy"] == 0.94
    assert (results["task2_improved_loop_accuracy_mean"], results["task3_baseline_accuracy"]) == (0.9, 0.6)
    assert results["training_hours"] == pytest.approx(11 * 900 / 3600)  # every run of both arguments
    assert results["headline"]["task 4 logits"].startswith("16.0x smaller with scaled_ce 30.0 (chosen on validation)")


def test_recipe_is_what_the_notebook_measured_and_chose():
    corruption = common.task3_corruption()
    assert common.RECIPE["task3"]["augment"] == {part: corruption[part] for part in common.MATCHED_PARTS}
    recipe = common.RECIPE["task4"]
    assert f"{recipe['loss']} {recipe['strength']}" == json.loads((ROOT / "vv_tasks" / "results.json").read_text())[
        "task4_loss"]
