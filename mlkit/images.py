"""Image folders decoded once into arrays, and safe prediction on arbitrary files."""
import hashlib
import json
import shutil
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from .runtime import atomic_path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
MAX_FILE_BYTES = 50 * 2**20
MAX_PIXELS = 40_000_000


class BadImageError(ValueError):
    """A file that cannot be used as an image; the message says why."""


def load_image(path, size: tuple[int, int] | None = None, mode: str = "RGB") -> np.ndarray:
    """Decode `path` into a uint8 array (H, W) for mode "L", else (H, W, 3), resized to `size` (W, H).

    The EXIF orientation is applied (phone photos come upright); 16-bit and float images are scaled to
    8 bits, not clipped; grayscale, palette and RGBA inputs are converted (alpha composited on white).
    Missing, empty, oversized, truncated and non-image files raise BadImageError with the reason.
    """
    path = Path(path)
    if not path.is_file():
        raise BadImageError("no such file")
    n_bytes = path.stat().st_size
    if n_bytes == 0:
        raise BadImageError("empty file")
    if n_bytes > MAX_FILE_BYTES:
        raise BadImageError(f"{n_bytes / 2**20:.1f} MiB exceeds the {MAX_FILE_BYTES // 2**20} MiB file limit")
    try:
        # PIL warns about huge images as it opens them; they are refused below, with their size.
        quiet = warnings.catch_warnings(action="ignore", category=Image.DecompressionBombWarning)
        with quiet, Image.open(path) as image:
            if image.width * image.height > MAX_PIXELS:
                raise BadImageError(f"{image.width}x{image.height} pixels exceeds the {MAX_PIXELS:,} limit")
            image.load()
            image = _to_mode(_to_8_bits(ImageOps.exif_transpose(image)), mode)
            if size is not None and image.size != tuple(size):
                image = image.resize(size, Image.Resampling.BILINEAR)
            return np.array(image)  # a writable copy (torch warns about read-only arrays)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        if isinstance(error, BadImageError):
            raise
        unknown_format = isinstance(error, UnidentifiedImageError)
        reason = "unrecognised format" if unknown_format else f"{type(error).__name__}: {error}"
        raise BadImageError(f"not a readable image ({reason})") from None


def _to_8_bits(image: Image.Image) -> Image.Image:
    """16-bit ("I;16", "I") and float ("F") images scaled to 0-255 by their type's range."""
    if image.mode not in ("I", "I;16", "I;16B", "I;16L", "F"):
        return image
    values = np.asarray(image, dtype=np.float64)
    top = 1.0 if image.mode == "F" and values.max() <= 1.0 else 255.0 if values.max() <= 255 else 65535.0
    return Image.fromarray(np.clip(np.rint(values / top * 255), 0, 255).astype(np.uint8), "L")


def _to_mode(image: Image.Image, mode: str) -> Image.Image:
    if image.mode in ("RGBA", "LA", "P") and mode != image.mode:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert(mode)


def list_images(folder) -> list[Path]:
    """Image files under `folder`, recursively, sorted."""
    return [p for p in list_files(folder) if p.suffix.lower() in IMAGE_SUFFIXES]


def list_files(inputs) -> list[Path]:
    """Every file a user means by `inputs` (a folder, searched recursively without hidden files, a path, or a
    list of paths), sorted within a folder: each one gets an answer, even if it is not an image."""
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.is_file()
                            and not any(part.startswith(".") for part in p.relative_to(item).parts))
        else:
            files.append(item)
    return files


def check_suffix(path) -> None:
    """BadImageError for a file whose suffix is not an image format this kit decodes (e.g. .heic, .txt)."""
    suffix = Path(path).suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise BadImageError(f"skipped: {suffix or 'no suffix'} is not a supported image type "
                            f"({' '.join(sorted(IMAGE_SUFFIXES))})")


@dataclass
class ImageArrays:
    """A class-folder dataset held in memory: images (N, H, W[, C]) uint8, integer labels, paths."""

    images: np.ndarray
    labels: np.ndarray
    paths: list[str]
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index) -> "ImageArrays":
        index = np.asarray(index)
        return ImageArrays(self.images[index], self.labels[index], [self.paths[i] for i in index], self.classes)

    def sample_per_class(self, per_class: int, seed: int = 0) -> "ImageArrays":
        """At most `per_class` random images of every class, in dataset order (e.g. a smoke-test subset)."""
        rng = np.random.default_rng(seed)
        keep = [rng.permutation(np.where(self.labels == c)[0])[:per_class] for c in np.unique(self.labels)]
        return self.subset(np.sort(np.concatenate(keep)))


def load_class_folders(root, size=None, mode="RGB", cache_dir=None, limit_per_class: int | None = None) -> ImageArrays:
    """Decode `root/<class>/<image>` once; later calls read the `.npz` cache in `cache_dir`.

    The cache key covers the file list, sizes and modification times, so changed data is re-decoded.
    Unreadable images are skipped with a warning listing them.
    """
    root = Path(root)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise FileNotFoundError(f"{root}: no class folders found")
    files = [(p, label) for label, name in enumerate(classes) for p in list_images(root / name)[:limit_per_class]]
    cache = _cache_path(cache_dir, root, files, size, mode)
    if cache and cache.exists():
        with np.load(cache) as saved:
            meta = json.loads(str(saved["meta"]))
            return ImageArrays(saved["images"], saved["labels"], meta["paths"], meta["classes"])

    images, labels, paths, skipped = [], [], [], []
    for path, label in tqdm(files, desc=f"decoding {root.name}", leave=False):
        try:
            images.append(load_image(path, size, mode))
        except BadImageError as error:
            skipped.append(f"{path}: {error}")
            continue
        labels.append(label)
        paths.append(str(path.relative_to(root)))
    if skipped:
        print(f"skipped {len(skipped)} unreadable image(s):\n  " + "\n  ".join(skipped))
    if not images:
        raise FileNotFoundError(f"{root}: no readable images")
    data = ImageArrays(np.stack(images), np.asarray(labels, dtype=np.int64), paths, classes)
    if cache:
        with atomic_path(cache) as tmp:
            np.savez(tmp, images=data.images, labels=data.labels, meta=json.dumps({"paths": paths, "classes": classes}))
    return data


def _cache_path(cache_dir, root: Path, files, size, mode) -> Path | None:
    if cache_dir is None:
        return None
    digest = hashlib.sha1(repr((size, mode)).encode())
    for path, label in files:
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}|{label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return Path(cache_dir) / f"{root.parent.name}-{root.name}-{digest.hexdigest()[:12]}.npz"


@torch.no_grad()
def predict_files(model, files, preprocess, classes, top_k: int = 3, batch_size: int = 64, device=None) -> list[dict]:
    """Predict every file in `files` (a folder, a path, or a list of paths; see `list_files`).

    `preprocess(path) -> tensor` decodes one file (raising BadImageError on bad input). Returns one
    dict per file, in order: {"file", "top": [(class, probability), ...]} or {"file", "error"};
    a bad file, or a batch where nothing is readable, never raises.
    """
    files = list_files(files)
    device = device or next(model.parameters()).device
    model.eval()
    results, batch = [], []

    def flush():
        if not batch:
            return
        probabilities = torch.softmax(model(torch.stack([t for _, t in batch]).to(device)).float(), dim=1).cpu()
        values, indices = probabilities.topk(min(top_k, len(classes)), dim=1)
        for (index, _), vals, idxs in zip(batch, values, indices):
            results[index]["top"] = [(classes[i], float(v)) for v, i in zip(vals, idxs)]
        batch.clear()

    for path in files:
        results.append({"file": str(path)})
        try:
            check_suffix(path)
            batch.append((len(results) - 1, preprocess(path)))
        except BadImageError as error:
            results[-1]["error"] = str(error)
        if len(batch) == batch_size:
            flush()
    flush()
    return results


def write_demo_folder(folder, samples) -> Path:
    """A folder to try prediction on: `samples` (a folder of image files, or file name -> uint8 array) plus
    the inputs users really send, which must be converted cleanly (RGBA, grayscale, 16-bit, a photo stored
    sideways with an EXIF orientation tag) or fail with a reason (empty, corrupt, a text file named .jpg, a
    huge image, .heic and .txt files). An existing folder is replaced (no stale samples)."""
    folder = Path(folder)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    if isinstance(samples, (str, Path)):  # real files are copied as they are (bytes, format, EXIF)
        files = list_images(samples)
        for path in files:
            shutil.copy2(path, folder / path.name)
        first = Image.fromarray(load_image(files[0]))
    else:
        for name, image in samples.items():
            Image.fromarray(image).save(folder / name)
        first = Image.fromarray(next(iter(samples.values())))
    first.convert("RGBA").save(folder / "rgba.png")
    first.convert("L").save(folder / "grayscale.png")
    Image.fromarray(np.asarray(first.convert("L"), np.uint16) * 257).save(folder / "16bit.png")
    sideways = first.convert("RGB").transpose(Image.Transpose.ROTATE_90)  # EXIF 6: rotate 270 to display upright
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways.save(folder / "exif_rotated.jpg", exif=exif, quality=95)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (folder / "notes.txt.jpg").write_text("a text file with an image suffix")
    (folder / "notes.txt").write_text("a text file")
    (folder / "photo.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    (folder / "huge.png").write_bytes(_png_header(10_000, 10_000))
    return folder


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims `width` x `height` pixels but holds no pixel data: enough for a size check to refuse."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def format_predictions(results: list[dict]) -> str:
    """One line per file: top classes with probabilities, or the error."""
    lines = []
    for result in results:
        name = Path(result["file"]).name
        if "error" in result:
            lines.append(f"{name}: ERROR {result['error']}")
        else:
            lines.append(f"{name}: " + ", ".join(f"{c} {p:.1%}" for c, p in result["top"]))
    return "\n".join(lines)
