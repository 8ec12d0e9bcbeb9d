import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from mlkit import images
from mlkit.images import BadImageError, ImageArrays, format_predictions, load_class_folders, load_image, predict_files


def solid(path, color, size=(8, 8), mode="RGB"):
    Image.new(mode, size, color).save(path)
    return path


def noise_jpeg(path, size=64):
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)
    return path


def truncated_jpeg(path):
    data = noise_jpeg(path).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_rgb_png_round_trips_exactly(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "rgb.png")
    loaded = load_image(tmp_path / "rgb.png")
    assert loaded.dtype == np.uint8
    np.testing.assert_array_equal(loaded, pixels)


def test_grayscale_is_converted_to_rgb(tmp_path):
    loaded = load_image(solid(tmp_path / "gray.png", 77, size=(5, 3), mode="L"))
    assert loaded.shape == (3, 5, 3)
    assert (loaded == 77).all()


def test_rgba_is_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (3, 1))
    rgba.putdata([(255, 0, 0, 0), (0, 0, 255, 255), (0, 0, 0, 128)])
    rgba.save(tmp_path / "alpha.png")
    loaded = load_image(tmp_path / "alpha.png")
    np.testing.assert_array_equal(loaded[0, :2], [[255, 255, 255], [0, 0, 255]])
    np.testing.assert_allclose(loaded[0, 2], [127, 127, 127], atol=1)


def test_palette_colours_and_transparency(tmp_path):
    palette = Image.new("P", (2, 1))
    palette.putpalette([10, 20, 30, 200, 100, 0] + [0] * 762)
    palette.putdata([0, 1])
    palette.save(tmp_path / "palette.png", transparency=1)
    np.testing.assert_array_equal(load_image(tmp_path / "palette.png"), [[[10, 20, 30], [255, 255, 255]]])


def test_resizes_to_width_height(tmp_path):
    path = solid(tmp_path / "big.png", (0, 128, 255), size=(20, 10))
    assert load_image(path, size=(8, 6)).shape == (6, 8, 3)
    assert load_image(path, size=(8, 6), mode="L").shape == (6, 8)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda path: None, "no such file"),
        (lambda path: path.write_bytes(b""), "empty file"),
        (lambda path: path.write_text("not an image\n"), "not a readable image"),
        (truncated_jpeg, "truncated"),
    ],
    ids=["missing", "empty", "text-as-jpg", "truncated-jpeg"],
)
def test_bad_files_raise_bad_image_error_with_reason(tmp_path, make, reason):
    path = tmp_path / "broken.jpg"
    make(path)
    with pytest.raises(BadImageError, match=reason):
        load_image(path)


def test_too_many_pixels_is_rejected(tmp_path, monkeypatch):
    path = solid(tmp_path / "wide.png", (0, 0, 0), size=(4, 3))
    monkeypatch.setattr(images, "MAX_PIXELS", 11)
    with pytest.raises(BadImageError, match="4x3 pixels exceeds"):
        load_image(path)
    monkeypatch.setattr(images, "MAX_PIXELS", 12)
    assert load_image(path).shape == (3, 4, 3)


def test_too_large_file_is_rejected(tmp_path, monkeypatch):
    path = solid(tmp_path / "heavy.png", (0, 0, 0))
    monkeypatch.setattr(images, "MAX_FILE_BYTES", path.stat().st_size - 1)
    with pytest.raises(BadImageError, match="file limit"):
        load_image(path)


@pytest.fixture
def class_root(tmp_path):
    root = tmp_path / "pets"
    for name, colors in {"cat": [(255, 0, 0), (200, 0, 0)], "dog": [(0, 255, 0)]}.items():
        (root / name).mkdir(parents=True)
        for i, color in enumerate(colors):
            solid(root / name / f"{i}.png", color, size=(6, 6))
    (root / "dog" / "broken.jpg").write_text("not an image")
    (root / "dog" / "notes.txt").write_text("ignored")
    return root


def test_load_class_folders_builds_arrays_and_skips_corrupt_files(class_root, capsys):
    data = load_class_folders(class_root, size=(4, 4))
    assert data.classes == ["cat", "dog"]
    assert data.paths == ["cat/0.png", "cat/1.png", "dog/0.png"]
    np.testing.assert_array_equal(data.labels, [0, 0, 1])
    assert data.images.shape == (3, 4, 4, 3)
    np.testing.assert_array_equal(data.images[:, 0, 0], [[255, 0, 0], [200, 0, 0], [0, 255, 0]])
    warning = capsys.readouterr().out
    assert "skipped 1 unreadable image" in warning and "broken.jpg" in warning


def test_load_class_folders_limit_per_class(class_root):
    assert load_class_folders(class_root, limit_per_class=1).paths == ["cat/0.png", "dog/0.png"]


def test_load_class_folders_without_classes_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="no class folders"):
        load_class_folders(tmp_path)


def test_load_class_folders_reads_cache_on_second_call(class_root, tmp_path, monkeypatch):
    first = load_class_folders(class_root, size=(4, 4), cache_dir=tmp_path / "cache")

    def fail(*args, **kwargs):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(images, "load_image", fail)
    second = load_class_folders(class_root, size=(4, 4), cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(second.images, first.images)
    np.testing.assert_array_equal(second.labels, first.labels)
    assert (second.paths, second.classes) == (first.paths, first.classes)


def test_load_class_folders_redecodes_changed_files(class_root, tmp_path):
    first = load_class_folders(class_root, cache_dir=tmp_path / "cache")
    changed = solid(class_root / "cat" / "0.png", (0, 0, 255), size=(6, 6))
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))

    second = load_class_folders(class_root, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(first.images[0, 0, 0], [255, 0, 0])
    np.testing.assert_array_equal(second.images[0, 0, 0], [0, 0, 255])


def preprocess(path):
    return torch.tensor(load_image(path, (8, 8))).permute(2, 0, 1).float() / 255


@pytest.fixture
def prediction_folder(tmp_path):
    folder = tmp_path / "incoming"
    folder.mkdir()
    solid(folder / "a_good.png", (255, 0, 0))
    (folder / "b_empty.jpg").write_bytes(b"")
    solid(folder / "c_good.png", (0, 255, 0), size=(12, 9))
    (folder / "d_text.png").write_text("hello")
    truncated_jpeg(folder / "e_truncated.jpg")
    noise_jpeg(folder / "f_good.jpg")
    (folder / "g_notes.txt").write_text("not listed")
    return folder


def test_predict_files_reports_every_file_in_order(prediction_folder):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    classes = ["cat", "dog", "fox"]

    results = predict_files(model, prediction_folder, preprocess, classes, top_k=2, batch_size=2)

    names = ["a_good.png", "b_empty.jpg", "c_good.png", "d_text.png", "e_truncated.jpg", "f_good.jpg", "g_notes.txt"]
    assert [os.path.basename(r["file"]) for r in results] == names
    for result in results:
        name = os.path.basename(result["file"])
        if "good" not in name:
            assert "top" not in result and result["error"]
            continue
        assert "error" not in result
        top = result["top"]
        probabilities = [p for _, p in top]
        assert len(top) == 2 and probabilities == sorted(probabilities, reverse=True)
        assert sum(probabilities) <= 1 + 1e-6
        with torch.no_grad():
            expected = torch.softmax(model(preprocess(result["file"])[None]), dim=1)[0]
        values, indices = expected.topk(2)
        assert [c for c, _ in top] == [classes[i] for i in indices]
        assert probabilities == pytest.approx(values.tolist())


def test_format_predictions_marks_errors(prediction_folder):
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    results = predict_files(model, prediction_folder, preprocess, ["cat", "dog", "fox"], batch_size=2)
    lines = format_predictions(results).splitlines()
    assert len(lines) == 7
    assert [line.split(":")[0] for line in lines if "ERROR" in line] == ["b_empty.jpg", "d_text.png", "e_truncated.jpg",
                                                                         "g_notes.txt"]
    assert all("%" in line for line in lines if "ERROR" not in line)


def test_predict_files_accepts_a_single_path(prediction_folder):
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    results = predict_files(model, prediction_folder / "a_good.png", preprocess, ["cat", "dog", "fox"], top_k=5)
    assert len(results) == 1 and len(results[0]["top"]) == 3


def test_sample_per_class_caps_each_class_and_keeps_dataset_order():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 7)
    data = ImageArrays(np.zeros((20, 2, 2), np.uint8), labels, [str(i) for i in range(20)], ["a", "b", "c"])
    sample = data.sample_per_class(4, seed=1)
    assert np.bincount(sample.labels).tolist() == [4, 3, 4]
    assert sample.paths == sorted(sample.paths, key=int)
    assert data.sample_per_class(4, seed=1).paths == sample.paths


def test_demo_folder_gives_per_file_errors_and_predictions_for_the_rest(tmp_path):
    samples = {"a.jpg": np.full((8, 8, 3), 200, np.uint8), "b.png": np.zeros((8, 8, 3), np.uint8)}
    folder = images.write_demo_folder(tmp_path / "demo", samples)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    results = predict_files(model, folder, lambda p: torch.tensor(load_image(p, (8, 8))).permute(2, 0, 1).float(),
                            ["x", "y"])
    by_name = {os.path.basename(r["file"]): r for r in results}
    assert {n for n, r in by_name.items() if "error" in r} == {"empty.jpg", "corrupt.jpg", "notes.txt.jpg", "notes.txt",
                                                                "photo.heic", "huge.png"}
    assert {n for n, r in by_name.items() if "top" in r} == {"a.jpg", "b.png", "rgba.png", "grayscale.png", "16bit.png",
                                                              "exif_rotated.jpg"}
    assert "skipped: .heic" in by_name["photo.heic"]["error"]
    assert "exceeds" in by_name["huge.png"]["error"]


def test_demo_folder_takes_a_folder_of_samples(tmp_path):
    (tmp_path / "samples").mkdir()
    solid(tmp_path / "samples" / "cat_1.png", (9, 9, 9))
    folder = images.write_demo_folder(tmp_path / "demo", tmp_path / "samples")
    assert (folder / "cat_1.png").read_bytes() == (tmp_path / "samples" / "cat_1.png").read_bytes()
    assert (folder / "16bit.png").is_file()


def test_exif_orientation_is_applied(tmp_path):
    upright = np.zeros((4, 6, 3), np.uint8)
    upright[0, :] = 255  # a white top row
    sideways = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways.save(tmp_path / "phone.png", exif=exif)
    loaded = load_image(tmp_path / "phone.png")
    assert loaded.shape == (4, 6, 3)
    np.testing.assert_array_equal(loaded[0, :, 0], 255)


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    Image.fromarray(np.array([[0, 32896, 65535]], np.uint16)).save(tmp_path / "deep.png")
    np.testing.assert_array_equal(load_image(tmp_path / "deep.png", mode="L"), [[0, 128, 255]])


def test_a_batch_with_nothing_readable_returns_errors(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    results = predict_files(model, tmp_path, preprocess, ["x", "y"])
    assert [os.path.basename(r["file"]) for r in results] == ["empty.png", "notes.txt"]
    assert all(r["error"] for r in results)


def test_list_files_lists_every_file_but_hidden_ones(tmp_path):
    for name in ("b.heic", "a.jpg", "sub/c.txt", ".hidden/d.jpg", ".e.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert [p.relative_to(tmp_path).as_posix() for p in images.list_files(tmp_path)] == ["a.jpg", "b.heic", "sub/c.txt"]
    named = [tmp_path / "b.heic", tmp_path / "gone.jpg"]
    assert images.list_files(named) == named


def test_demo_folder_is_replaced_not_added_to(tmp_path):
    images.write_demo_folder(tmp_path / "demo", {"old.png": np.zeros((8, 8, 3), np.uint8)})
    folder = images.write_demo_folder(tmp_path / "demo", {"new.png": np.zeros((8, 8, 3), np.uint8)})
    names = {p.name for p in folder.iterdir()}
    assert "new.png" in names and "old.png" not in names
