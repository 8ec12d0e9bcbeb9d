import numpy as np
import pytest
import torch
from conftest import load_challenge
from PIL import Image

from mlkit.images import ImageArrays

common = load_challenge("indoor_scene")


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


def test_resnet_blocks_start_as_identity_functions():
    block = common.BasicBlock(8, 8).eval()
    x = torch.rand(2, 8, 5, 5)
    assert torch.allclose(block(x), x)


def test_load_pool_rejects_unknown_datasets():
    with pytest.raises(ValueError, match="DATASET must be one of"):
        common.load_pool("places365")


@pytest.mark.parametrize("mode, size", [("RGBA", (300, 200)), ("L", (50, 80)), ("RGB", (128, 128))])
def test_preprocess_gives_the_model_input_for_any_image(tmp_path, mode, size):
    path = tmp_path / "image.png"
    Image.new(mode, size).save(path)
    assert common.preprocess(path, 96, "L").shape == (1, 96, 96)
    assert common.preprocess(path, 64, "RGB").shape == (3, 64, 64)
