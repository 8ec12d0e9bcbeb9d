import numpy as np
import pytest
import torch

from mlkit.batches import ArrayLoader, flip_and_shift, random_flip, random_translate, resize, to_float, unlabelled


def test_to_float_handles_rgb_and_grayscale():
    rgb = np.full((2, 4, 5, 3), 255, np.uint8)
    gray = np.zeros((2, 4, 5), np.uint8)
    assert to_float(rgb).shape == (2, 3, 4, 5) and torch.all(to_float(rgb) == 1)
    assert to_float(gray).shape == (2, 1, 4, 5)


def test_resize_keeps_uint8_and_a_constant_image_constant():
    images = np.full((3, 20, 20, 3), 77, np.uint8)
    out = resize(images, 8)
    assert out.dtype == torch.uint8 and out.shape == (3, 3, 8, 8) and torch.all(out == 77)


def test_random_flip_mirrors_some_samples_and_keeps_the_rest():
    torch.manual_seed(0)
    x = torch.arange(64 * 2 * 3 * 4, dtype=torch.float32).view(64, 2, 3, 4)
    out = random_flip(x)
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(3)).flatten(1).all(1)
    assert (same | mirrored).all() and same.any() and mirrored.any()


def test_random_translate_shifts_each_sample_within_the_bound():
    torch.manual_seed(0)
    x = torch.zeros(32, 1, 9, 9)
    x[:, :, 4, 4] = 1  # one bright pixel in the centre
    out = random_translate(x, max_shift=2)
    assert out.shape == x.shape
    positions = [divmod(int(sample.argmax()), 9) for sample in out[:, 0]]
    assert all(2 <= r <= 6 and 2 <= c <= 6 for r, c in positions)
    assert len(set(positions)) > 5
    assert torch.equal(random_translate(x, 0), x)


def test_random_translate_fills_with_the_border_or_with_zeros():
    x = torch.zeros(64, 1, 6, 6)
    x[:, :, :, 0] = 1  # ink along the left edge: a shift to the right brings in border
    torch.manual_seed(0)
    replicated = random_translate(x, 2).sum((1, 2, 3))
    torch.manual_seed(0)
    zeros = random_translate(x, 2, fill="zeros").sum((1, 2, 3))
    assert (replicated > 6).any() and (zeros <= 6).all()  # the replicated edge smears in; zeros bring no ink
    assert (zeros == 0).any() and (replicated >= zeros).all()  # same offsets: replicating only adds ink here
    with pytest.raises(ValueError, match="fill must be"):
        random_translate(x, 2, fill="wrap")


def test_reflect_fill_mirrors_the_border_without_repeating_it():
    row = torch.arange(4.0).view(1, 1, 1, 4).expand(1, 1, 4, 4)
    torch.manual_seed(0)
    shifted = [random_translate(row, 1, fill="reflect")[0, 0, 0].tolist() for _ in range(40)]
    allowed = [[1.0, 0.0, 1.0, 2.0], [0.0, 1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 2.0]]  # shifts of -1, 0, +1 px
    assert all(s in allowed for s in shifted) and all(a in shifted for a in allowed)


def test_flip_and_shift_keeps_the_shape_and_the_content_sum_of_a_centred_blob():
    torch.manual_seed(0)
    x = torch.zeros(8, 3, 12, 12)
    x[:, :, 5:7, 5:7] = 1
    out = flip_and_shift(2)(x)
    assert out.shape == x.shape and torch.allclose(out.sum((1, 2, 3)), x.sum((1, 2, 3)))


def test_array_loader_batches_in_order_scaled_to_unit_range():
    images = torch.full((10, 3, 4, 4), 255, dtype=torch.uint8)
    labels = torch.arange(10)
    loader = ArrayLoader(images, labels, batch_size=4)
    batches = list(loader)
    assert len(batches) == len(loader) == 3
    assert all(x.dtype == torch.float32 and torch.all(x == 1) for x, _ in batches)
    assert torch.equal(torch.cat([y for _, y in batches]), labels)


def test_array_loader_shuffles_with_the_global_generator_and_keeps_extra_aligned():
    inputs, labels, extra = torch.arange(20.0).view(20, 1, 1, 1), torch.arange(20), torch.arange(20.0)[:, None] * 10
    torch.manual_seed(3)
    first = [(x, y, e) for x, (y, e) in ArrayLoader(inputs, labels, extra, batch_size=7, shuffle=True)]
    torch.manual_seed(3)
    again = [y for _, (y, _) in ArrayLoader(inputs, labels, extra, batch_size=7, shuffle=True)]
    order = torch.cat([y for _, y, _ in first])
    assert not torch.equal(order, labels) and sorted(order.tolist()) == list(range(20))
    assert torch.equal(order, torch.cat(again))
    assert all(torch.equal(x.flatten(), y.float()) and torch.equal(e[:, 0], y * 10.0) for x, y, e in first)


def test_array_loader_applies_the_transform_to_every_batch():
    loader = ArrayLoader(torch.zeros(5, 1, 2, 2), torch.zeros(5), batch_size=2, transform=lambda x: x + 1)
    assert all(torch.all(x == 1) for x, _ in loader)


def test_unlabelled_loader_yields_inputs_in_order():
    inputs = torch.arange(5.0).view(5, 1, 1, 1)
    assert torch.equal(torch.cat([x for x, _ in unlabelled(inputs, batch_size=2)]).flatten(), torch.arange(5.0))
