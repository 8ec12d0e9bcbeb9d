"""vv_tasks/common.py: the fixed models, the data fixes, the task 4 losses, prediction on new files."""
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import load_challenge
from PIL import Image

from mlkit.images import BadImageError, ImageArrays

common = load_challenge("vv_tasks")


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


def test_knn_relabel_repairs_systematic_label_flips():
    rng = np.random.default_rng(0)
    prototypes = rng.uniform(0, 255, (10, 28, 28))
    true = np.repeat(np.arange(10), 60)
    images = np.clip(prototypes[true] + rng.normal(0, 40, (len(true), 28, 28)), 0, 255).astype(np.uint8)
    noisy = true.copy()
    flipped = np.where(true == 1)[0][:20]
    noisy[flipped] = 0
    corrected = common.knn_relabel(images, noisy)
    assert (corrected[flipped] == 1).mean() >= 0.9
    assert (corrected == true).mean() > 0.98


def test_shift_augment_moves_without_losing_ink():
    image = torch.zeros(1, 1, 28, 28)
    image[0, 0, 10:18, 10:18] = 255
    torch.manual_seed(0)
    shifted = common.shift_augment(image.repeat(50, 1, 1, 1), max_shift=2)
    assert torch.allclose(shifted.sum((1, 2, 3)), image.sum())
    assert len({tuple(s.nonzero()[0].tolist()) for s in shifted}) > 1


def test_blur_augment_keeps_ink_and_lowers_sharpness():
    image = torch.zeros(3, 1, 28, 28)
    image[:, 0, 12:16, 12:16] = 255
    blurred = common.blur_augment(image, sigma=(1.0, 2.0))
    assert torch.allclose(blurred.sum((1, 2, 3)), image.sum((1, 2, 3)), rtol=1e-4)
    assert blurred.max() < 255


def test_noise_augment_stays_in_pixel_range():
    noisy = common.noise_augment(torch.full((4, 1, 28, 28), 250.0), std=(20.0, 30.0))
    assert noisy.min() >= 0 and noisy.max() <= 255 and noisy.std() > 0


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
