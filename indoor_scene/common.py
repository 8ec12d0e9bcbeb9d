"""indoor_scene/common.py: scene classification from scratch (MIT Indoor67, or 15-Scene offline):
pooled, de-duplicated class folders, seeded stratified splits, a small ResNet, batch augmentation
(random resized crops, photometric jitter, mixup), training and test-time augmentation; the committed
predictor, its evaluation on labelled folders and its training-split warning."""
import hashlib
import math
import shutil
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import train_test_split
from torch import nn

from mlkit.batches import ArrayLoader, channels_first, random_flip, resize
from mlkit.datasets import DATA_ROOT, file_hash, prepare
from mlkit.experiments import trained_on
from mlkit.images import (
    MAX_FILE_BYTES,
    ImageArrays,
    list_files,
    list_images,
    load_class_folders,
    load_image,
    predict_files,
    write_demo_folder,
)
from mlkit.metrics import balanced_accuracy, mean_std
from mlkit.models import BasicBlock
from mlkit.predictors import image_table, load_arrays, named_files, read_manifest, save_arrays, write_manifest
from mlkit.results import load_results
from mlkit.runtime import pick_device, seed_everything
from mlkit.train import FlipAveraged, fit, load_half, predict_probabilities

STORED = 128  # images are decoded once at this side; training crops and evaluation resize from it
RECIPE = {  # the shipped model: the scaled recipe, trained from scratch (no pretrained weights), on a GPU
    "model": "scene_resnet",  # a small ResNet (`SceneResNet`): stride-2 stem, four stages, dropout 0.2
    "width": 48, "blocks": 2,  # widths 48-384, two basic blocks per stage: 6.3 M parameters
    "size": 128,  # training crops at the full stored side: scenes carry detail
    "crops": True,  # random resized crops and flips
    "photometric": True,  # brightness and contrast jitter
    "mixup": 0.2,  # mixup strength (Beta(0.2, 0.2)): regularises a from-scratch network on 3,600 images
    "label_smoothing": 0.1,
    "epochs": 200, "batch_size": 128,  # ~2.5 min a run on an H100; hours on a 2-core CPU
    "lr": 3e-3, "weight_decay": 5e-4,  # AdamW with a one-cycle schedule, stepped every batch
}
DATASETS = {  # name -> (colour mode, class-folder roots inside the prepared dataset)
    "scene15": ("L", ("train", "test")),  # the offline stand-in: pooled original train and test folders
    "indoor67": ("RGB", ("",)),
}


# ---------------------------------------------------------------- data

def load_pool(dataset: str, root=DATA_ROOT) -> ImageArrays:
    """Every labelled image of `dataset` in one pool (15-Scene: its train and test folders together),
    decoded once at STORED x STORED and cached. Unreadable files are skipped with a warning."""
    if dataset not in DATASETS:
        raise ValueError(f"DATASET must be one of {sorted(DATASETS)}, not {dataset!r}")
    mode, parts = DATASETS[dataset]
    folder = prepare(dataset, root)
    arrays = [load_class_folders(folder / part, size=(STORED, STORED), mode=mode, cache_dir=Path(root) / "cache")
              for part in parts]
    if any(a.classes != arrays[0].classes for a in arrays):
        raise ValueError(f"{dataset}: the class folders differ between {parts}")
    paths = [f"{part}/{p}" if part else p for part, a in zip(parts, arrays) for p in a.paths]
    return ImageArrays(np.concatenate([a.images for a in arrays]), np.concatenate([a.labels for a in arrays]), paths,
                       arrays[0].classes)


def deduplicate(data: ImageArrays) -> tuple[ImageArrays, list[list[str]]]:
    """Drop exact duplicates (identical decoded pixels): one copy is kept when all copies share a label,
    none when they disagree (the label is unknowable). Returns the kept data and every duplicate group."""
    groups: dict[str, list[int]] = {}
    for i, image in enumerate(data.images):
        groups.setdefault(hashlib.sha1(image.tobytes()).hexdigest(), []).append(i)
    keep, duplicates = [], []
    for members in groups.values():
        if len(members) > 1:
            duplicates.append([f"{data.paths[i]} ({data.classes[data.labels[i]]})" for i in members])
        if len({data.labels[i] for i in members}) == 1:
            keep.append(members[0])
    return data.subset(np.sort(keep)), duplicates


def split(labels, seed: int, validation: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train / validation indices drawn with `seed` (the reviewer's protocol: 80/20)."""
    index = np.arange(len(labels))
    train, val = train_test_split(index, test_size=validation, stratify=labels, random_state=seed)
    return np.sort(train), np.sort(val)


# ---------------------------------------------------------------- models

class SimpleCNN(nn.Module):
    """The Baseline: four conv-BN-ReLU-maxpool stages (32-64-128-256), global average pooling, linear."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        layers, c = [], in_channels
        for width in (32, 64, 128, 256):
            layers += [nn.Conv2d(c, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c = width
        self.net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))

    def forward(self, x):
        return self.net((x - 0.5) / 0.25)


class SceneResNet(nn.Module):
    """A small ResNet for scenes: a stride-2 stem, four stages of `blocks` basic blocks (widths w, 2w, 4w,
    8w; stages 2-4 halve the resolution), global average pooling, dropout, linear."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 24, blocks: int = 1, dropout: float = 0.2):
        super().__init__()
        layers = [nn.Conv2d(in_channels, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        c = width
        for stage in range(4):
            c_out = width * 2 ** stage
            for b in range(blocks):
                layers.append(BasicBlock(c, c_out, stride=2 if stage > 0 and b == 0 else 1, zero_init=True))
                c = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(c, num_classes))

    def forward(self, x):
        return self.head(self.features((x - 0.5) / 0.25))


# ---------------------------------------------------------------- augmentation and loss

def random_resized_crop(x: torch.Tensor, size: int, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """Per-sample random crops covering `scale` of the image area with aspect ratio in `ratio`, mirrored
    with probability 1/2, resampled to size x size: one affine grid for the whole batch."""
    n = len(x)
    area = torch.empty(n).uniform_(*scale)
    aspect = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1])).exp()
    width, height = (area * aspect).sqrt().clamp(max=1), (area / aspect).sqrt().clamp(max=1)  # fractions of the side
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = width * torch.where(torch.rand(n) < 0.5, -1.0, 1.0)
    theta[:, 1, 1] = height
    theta[:, 0, 2] = (torch.rand(n) * 2 - 1) * (1 - width)
    theta[:, 1, 2] = (torch.rand(n) * 2 - 1) * (1 - height)
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def jitter(x: torch.Tensor, strength: float = 0.2) -> torch.Tensor:
    """Random brightness and contrast per sample: (x - mean) * c + mean + b, clamped to [0, 1]."""
    n = len(x)
    contrast = 1 + torch.empty(n, 1, 1, 1).uniform_(-strength, strength)
    brightness = torch.empty(n, 1, 1, 1).uniform_(-strength / 2, strength / 2)
    mean = x.mean((1, 2, 3), keepdim=True)
    return ((x - mean) * contrast + mean + brightness).clamp(0, 1)


class Augment:
    """The training transform of a recipe: random resized crops (or flips only) at `size`, then jitter."""

    def __init__(self, size: int, crops: bool = True, photometric: bool = True):
        self.size, self.crops, self.photometric = size, crops, photometric

    def __call__(self, x):
        if self.crops:
            x = random_resized_crop(x, self.size)
        else:
            x = random_flip(F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True))
        return jitter(x) if self.photometric else x


class Mixup:
    """Wrap a loader: each batch becomes lam * x + (1 - lam) * x[perm] with lam ~ Beta(alpha, alpha), and
    its targets (labels, labels[perm], lam) for `MixedCrossEntropy`."""

    def __init__(self, loader, alpha: float):
        self.loader, self.alpha = loader, alpha

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        beta = torch.distributions.Beta(self.alpha, self.alpha)
        for x, labels in self.loader:
            lam = beta.sample()
            perm = torch.randperm(len(labels))
            yield lam * x + (1 - lam) * x[perm], (labels, labels[perm], lam.expand(len(labels)))


class MixedCrossEntropy(nn.Module):
    """Cross-entropy with label smoothing for plain labels or mixup targets (labels, partner labels, lam)."""

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits, targets):
        ce = lambda y: F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)  # noqa: E731
        if not isinstance(targets, (tuple, list)):
            return ce(targets)
        labels, partners, lam = targets
        return lam[0] * ce(labels) + (1 - lam[0]) * ce(partners)


# ---------------------------------------------------------------- training and evaluation

def make_config(dataset: str = "scene15", seed: int = 0, smoke: bool = False, name: str = "challenge-scaled",
                **changes) -> dict:
    """One run on split seed `seed`: RECIPE (the shipped model) with `changes`; the smoke profile trains one
    epoch. `CPU_RECIPE` are the changes of the recipe sized for the 2-core CPU."""
    config = {"name": name, "dataset": dataset, "seed": seed} | RECIPE | changes | {"smoke": smoke}
    return config | ({"epochs": 1} if smoke else {})


CPU_RECIPE = {"size": 96, "width": 24, "blocks": 1, "epochs": 30, "batch_size": 64, "lr": 2e-3}  # ~9 min a run


def cpu_config(dataset: str, seed: int, smoke: bool, name: str = "challenge", **changes) -> dict:
    """The recipe sized for the 2-core CPU (the ablations change it further)."""
    return make_config(dataset, seed, smoke, name, **(CPU_RECIPE | changes))


def baseline_config(dataset: str, seed: int, smoke: bool) -> dict:
    """The Baseline: SimpleCNN at 64 px, no augmentation, Adam, 15 epochs."""
    return {"name": "baseline", "model": "simple_cnn", "dataset": dataset, "seed": seed, "size": 64,
            "epochs": 1 if smoke else 15, "batch_size": 64, "lr": 1e-3, "smoke": smoke}


def pool(dataset: str, smoke: bool) -> ImageArrays:
    data, _ = deduplicate(load_pool(dataset))
    return data.sample_per_class(12, seed=0) if smoke else data


def build(config: dict, in_channels: int, num_classes: int) -> nn.Module:
    if config["model"] == "simple_cnn":
        return SimpleCNN(in_channels, num_classes)
    return SceneResNet(in_channels, num_classes, config["width"], config["blocks"])


def run(config: dict, run_dir: Path) -> dict:
    """Train (or reload) one configuration on its split seed; returns its history and validation
    probabilities (plain and with test-time augmentation)."""
    data = pool(config["dataset"], config["smoke"])
    train_index, val_index = split(data.labels, config["seed"])
    seed_everything(config["seed"])
    stored = channels_first(data.images)
    labels = torch.as_tensor(data.labels)
    model = build(config, stored.shape[1], len(data.classes)).to(pick_device(), memory_format=torch.channels_last)
    val_inputs = resize(data.images[val_index], config["size"])
    val_loader = ArrayLoader(val_inputs, labels[val_index], batch_size=256)
    if config["model"] == "simple_cnn":  # the Baseline: no augmentation, Adam
        train_loader = ArrayLoader(resize(data.images[train_index], config["size"]), labels[train_index],
                                   batch_size=config["batch_size"], shuffle=True)
        optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])
        history = fit(model, optimizer, nn.CrossEntropyLoss(), train_loader, val_loader, config["epochs"],
                      run_dir=run_dir, progress=False)
    else:
        augment = Augment(config["size"], config["crops"], config["photometric"])
        train_loader = ArrayLoader(stored[train_index], labels[train_index], batch_size=config["batch_size"],
                                   shuffle=True, transform=augment)
        if config["mixup"]:
            train_loader = Mixup(train_loader, config["mixup"])
        optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, config["lr"],
                                                        total_steps=config["epochs"] * len(train_loader))
        history = fit(model, optimizer, MixedCrossEntropy(config["label_smoothing"]), train_loader, val_loader,
                      config["epochs"], run_dir=run_dir, scheduler=scheduler, scheduler_per_batch=True,
                      eval_loss_fn=nn.CrossEntropyLoss(), progress=False)
    y_val = data.labels[val_index]
    plain, tta = predict_probabilities(model, val_inputs), predict_probabilities(model, val_inputs, flip_tta=True)
    return {"config": config, "history": history, "val_index": val_index, "y_val": y_val, "probabilities": plain,
            "tta_probabilities": tta, "balanced_accuracy": balanced_accuracy(y_val, plain.argmax(1)),
            "tta_balanced_accuracy": balanced_accuracy(y_val, tta.argmax(1)), "weights": run_dir / "final.pt",
            "hardware": trained_on(run_dir),
            "classes": data.classes}


def summarize(*, dataset: str, profile: str, split_seeds, baseline_runs: list[dict], recipe_runs: list[dict],
              scaled_runs: list[dict], ablation: dict[str, float], scaled_cpu_hours: float) -> dict:
    """results.json from the Challenge notebook's runs (one per split seed, in `split_seeds` order), its ablation
    (balanced accuracy by row, split seed 0) and the scaled recipe's estimated CPU hours per run."""
    baseline_mean, _ = mean_std([r["balanced_accuracy"] for r in baseline_runs])
    cpu_mean, cpu_std = mean_std([r["tta_balanced_accuracy"] for r in recipe_runs])
    per_seed = [r["tta_balanced_accuracy"] for r in scaled_runs]
    challenge_mean, challenge_std = mean_std(per_seed)
    hardware = scaled_runs[0]["hardware"]
    return {
        "dataset": dataset,
        "profile": profile,
        "data": "15-Scene stand-in for MIT Indoor67 (grayscale, pooled, de-duplicated, stratified 80/20 splits)"
        if dataset == "scene15" else "MIT Indoor67 (pooled, de-duplicated, stratified 80/20 splits)",
        "split_seeds": list(split_seeds),
        "baseline_balanced_accuracy": float(baseline_runs[0]["balanced_accuracy"]),
        "baseline_balanced_accuracy_mean": baseline_mean,
        "challenge_balanced_accuracy_mean": challenge_mean,
        "challenge_balanced_accuracy_std": challenge_std,
        "challenge_balanced_accuracy_per_seed": [round(float(a), 4) for a in per_seed],
        "challenge_trained_on": hardware,
        "challenge_recipe": {k: v for k, v in scaled_runs[0]["config"].items() if k not in ("name", "seed", "smoke")},
        "cpu_recipe_balanced_accuracy_mean": cpu_mean,
        "cpu_recipe_balanced_accuracy_std": cpu_std,
        "scaled_recipe_cpu_hours_per_run_estimated": scaled_cpu_hours,
        "ablation_seed0": {row: round(float(a), 4) for row, a in ablation.items()},
        "headline": {
            "balanced accuracy": f"{challenge_mean:.3f} ± {challenge_std:.3f} over {len(scaled_runs)} split seeds "
                                 f"(baseline {baseline_mean:.3f}; trained on {hardware})",
            "on the 2-core CPU": f"{cpu_mean:.3f} ± {cpu_std:.3f} (CPU recipe)",
        },
    }


# ---------------------------------------------------------------- new images

def preprocess(path, size: int, mode: str) -> torch.Tensor:
    """One file -> float (C, size, size) in [0, 1], decoded like the training data; bad files raise."""
    return resize(load_image(path, (STORED, STORED), mode)[None], size)[0].float() / 255



# ---------------------------------------------------------------- the committed predictor

HERE = Path(__file__).resolve().parent
CHECKPOINTS = HERE / "checkpoints"
DEMO = HERE / "demo"  # committed validation images (split seed 0) for the last cells' demo
TRAINING_HASHES = "training_split_sha256.npz"
SHIPPED_SEED = 0  # the split seed of the shipped model (the notebook saves SPLIT_SEEDS[0]'s scaled run)
TRAINED_ON_SPLIT_ONLY = (
    "The shipped model was trained on the training part (80%) of split seed 0 only; the other 20% is its validation "
    "split, the only images of the data it has not seen. No model was trained on all the images: that would need the "
    "scaled recipe's GPU run again (about 3 minutes on an H100 GPU, an estimated 8 hours on a 2-core CPU), so none is "
    "shipped.")


def weights_name(dataset: str, seed: int) -> str:
    """The file name under which the notebook saves the scaled recipe's model of split `seed` (fp16)."""
    return f"scene_resnet_scaled_{dataset}_seed{seed}_fp16.pt"


def file_key(path) -> int | None:
    """The first 64 bits (16 hex digits) of the sha256 of a file's bytes, as an integer; None for a missing
    or oversized file."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size > MAX_FILE_BYTES:
        return None
    return int(file_hash(path)[:16], 16)


def training_split_files(dataset: str, seed: int, smoke: bool, root=DATA_ROOT) -> tuple[list[Path], int, int]:
    """The files a model trained on split `seed` has seen: its training part of `pool`, plus every copy with
    identical pixels that `deduplicate` dropped. Also returns the numbers of training and validation images."""
    data = pool(dataset, smoke)
    train_index, val_index = split(data.labels, seed)
    seen = {hashlib.sha1(data.images[i].tobytes()).digest() for i in train_index}
    everything = load_pool(dataset, root)
    folder = prepare(dataset, root)
    files = [folder / path for path, image in zip(everything.paths, everything.images, strict=True)
             if hashlib.sha1(image.tobytes()).digest() in seen]
    return files, len(train_index), len(val_index)


def export_predictor(folder=CHECKPOINTS, smoke: bool = False) -> Path:
    """`folder/predictor.json` for the scaled recipe's model of split seed 0 that the notebook saved in
    `folder`, described from the results.json beside it, and `TRAINING_HASHES`: the content hashes of the
    files of that model's training split (computed from the prepared data)."""
    folder = Path(folder)
    results = load_results(folder.parent)
    dataset, recipe = results["dataset"], results["challenge_recipe"]
    seed = results["split_seeds"][0]
    weights = folder / weights_name(dataset, seed)
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing: the notebook's results cell saves it")
    mode = DATASETS[dataset][0]
    classes = pool(dataset, smoke).classes
    config = {"in_channels": 1 if mode == "L" else 3, "num_classes": len(classes), "width": recipe["width"],
              "blocks": recipe["blocks"]}
    model = SceneResNet(**config)
    model.load_state_dict(load_half(weights))  # the weights fit the recipe the results name
    files, n_train, n_val = training_split_files(dataset, seed, smoke)
    keys = np.array(sorted({file_key(path) for path in files}), dtype=np.uint64)
    save_arrays(folder / TRAINING_HASHES, sha256_64=keys)
    size = recipe["size"]
    return write_manifest(
        folder, challenge="indoor_scene", classes=classes,
        task=f"scene classification from scratch: the {len(classes)} classes of {dataset}"
             + (" (15-Scene, the offline stand-in for MIT Indoor67; grayscale)" if dataset == "scene15" else ""),
        model={"architecture": "SceneResNet", "builder": "common.SceneResNet(**config)", "config": config,
               "parameters": sum(p.numel() for p in model.parameters()),
               "output": f"{len(classes)} logits; probabilities are their softmax (averaged over the TTA views)"},
        input={"size": [size, size], "mode": mode, "stored": [STORED, STORED],
               "preprocess": f"common.preprocess(path, size={size}, mode={mode!r})",
               "resize": f"any size and format, EXIF-rotated, converted to {mode}, bilinear resize to "
                         f"{STORED}x{STORED} (as the training data were stored), then antialiased resize to {size}",
               "scaling": "uint8 / 255 -> [0, 1]; the network standardises ((x - 0.5) / 0.25) itself"},
        tta={"name": "flip", "wrapper": "mlkit.train.FlipAveraged",
             "views": "mean softmax of the image and its mirror image"},
        top_k=3,
        weights={"file": weights.name, "bytes": weights.stat().st_size,
                 "format": "state dict with fp16 floats: torch.load(weights_only=True), cast to fp32 "
                           "(mlkit.train.load_half)"},
        training={"data": f"split seed {seed} only: its {n_train} training images; the other {n_val} (20%) are "
                          "its validation split",
                  "split": f"common.split(labels, seed={seed}): stratified 80/20 of common.pool({dataset!r}) (the "
                           "pooled, de-duplicated images" + (", 15-Scene's train/ and test/ folders together)"
                                                              if dataset == "scene15" else ")"),
                  "trained_on_all_data": False, "note": TRAINED_ON_SPLIT_ONLY,
                  "all_data_model": "not trained: it would be the scaled recipe run again on a GPU without a "
                                    "validation split (indoor_scene.train_scaled trains the split-seed runs only)"},
        training_split_hashes={"file": TRAINING_HASHES, "array": "sha256_64", "files": len(keys),
                               "hash": "sha256 of the file bytes, first 16 hex digits as an unsigned 64-bit integer",
                               "covers": "every file of the training split, and the copies with identical pixels "
                                         "that de-duplication dropped",
                               "use": "predict and evaluate flag such files in the column 'in training split' and "
                                      "print a warning naming them"},
        evaluation={"method": "predictor.evaluate(labelled, root=None)",
                    "labelled": "a class folder root/<class>/<image>, or a text file (or list) of lines "
                                "<class>/.../<image> relative to root (like MIT Indoor67's TestImages.txt)",
                    "metric": "sklearn.metrics.balanced_accuracy_score over the readable files whose class is one "
                              "of the model's classes; the others are listed as not scored"},
        source={"run": f"{recipe.get('name', 'challenge-scaled')}, split seed {seed}", "recipe": recipe,
                "data": results["data"], "profile": results["profile"],
                "trained_on": results["challenge_trained_on"],
                "validation_balanced_accuracy_with_tta": results["challenge_balanced_accuracy_per_seed"][0],
                "results": "results.json (challenge_recipe, challenge_balanced_accuracy_per_seed)"},
        smoke=smoke)


TABLE_COLUMNS = ["file", "prediction", "probability", "top classes", "in training split", "error"]
EVALUATION_COLUMNS = ["file", "class", "prediction", "probability", "top classes", "correct", "in training split",
                      "scored", "error"]


@dataclass
class Evaluation:
    """`IndoorScenePredictor.evaluate`'s result: one row per file, and the balanced accuracy of the scored ones
    (also without the files of the model's training split, when there are some)."""

    table: pd.DataFrame
    balanced_accuracy: float
    held_out_balanced_accuracy: float
    summary: str

    def __repr__(self) -> str:
        return self.summary


def labelled_files(labelled, root=None) -> list[tuple[str, Path]]:
    """(name relative to the root, path) of every file of a labelled set: a class folder `root/<class>/<image>`
    (every file under it), or a text file of lines `<class>/.../<image>` (or a list of such strings) relative to
    `root` (default: the text file's folder; for a list, the current folder)."""
    if isinstance(labelled, (str, Path)) and Path(labelled).is_dir():
        folder = Path(labelled)
        return [(path.relative_to(folder).as_posix(), path) for path in list_files(folder)]
    if isinstance(labelled, (str, Path)):
        listing = Path(labelled)
        if not listing.is_file():
            raise FileNotFoundError(f"{listing}: neither a class folder nor a file list")
        try:
            names = listing.read_text().splitlines()
        except UnicodeDecodeError:
            raise ValueError(f"{listing.name}: not a text file list (lines <class>/<image>)") from None
        base = Path(root) if root is not None else listing.parent
    else:
        names, base = [str(name) for name in labelled], Path(root if root is not None else ".")
    names = [name.strip().replace("\\", "/") for name in names]
    return [(name, base / name) for name in names if name]


def _scored_reason(found: dict, label: str, classes: list[str]) -> str:
    """Why a file of a labelled set is not scored ("" when it is)."""
    if "error" in found:
        return f"unreadable: {found['error']}"
    if not label:
        return "not inside a class folder"
    if label not in classes:
        return f"class {label!r} is not one of the model's {len(classes)} classes"
    return ""


class IndoorScenePredictor:
    """The shipped scene model with its flip TTA: `predict(inputs)` gives one row per file (top classes,
    whether the file was in the model's training split); `evaluate(labelled)` scores a labelled set."""

    def __init__(self, manifest: dict, model: nn.Module, training_keys: set[int]):
        self.manifest, self.classes = manifest, manifest["classes"]
        self.model, self.training_keys = FlipAveraged(model.eval()), training_keys
        size, mode = manifest["input"]["size"][0], manifest["input"]["mode"]
        self.preprocess = partial(preprocess, size=size, mode=mode)

    def _predict(self, files: list[Path]) -> tuple[list[dict], list[bool]]:
        found = predict_files(self.model, files, self.preprocess, self.classes, top_k=self.manifest["top_k"])
        return found, [file_key(path) in self.training_keys for path in files]

    def _warn_training(self, names: list[str]) -> None:
        if names:
            print(f"WARNING: {len(names)} file(s) were in the shipped model's training split (split seed "
                  f"{SHIPPED_SEED}), so their predictions say nothing about new images: {', '.join(names)}")

    def predict(self, inputs) -> pd.DataFrame:
        """Files, folders or a list of them: columns `TABLE_COLUMNS`; prints a warning naming the files that
        were in the model's training split."""
        files = list_files(inputs)
        found, seen = self._predict(files)
        table = image_table(found)
        table["in training split"] = seen
        self._warn_training([name for name, s in zip(table["file"], seen) if s])
        return table[TABLE_COLUMNS]

    def evaluate(self, labelled, root=None) -> Evaluation:
        """Score a labelled set (see `labelled_files`): one row per file (class = its first folder) and the
        balanced accuracy (sklearn) over the readable files of the model's classes, printed; the files that
        cannot be scored, and those of the model's training split, are named."""
        items = labelled_files(labelled, root)
        found, seen = self._predict([path for _, path in items])
        table = image_table(found)
        table["file"] = [name for name, _ in items]
        labels = [parts[0] if len(parts := PurePosixPath(name).parts) > 1 else "" for name, _ in items]
        reasons = [_scored_reason(f, label, self.classes) for f, label in zip(found, labels)]
        table["class"], table["in training split"] = labels, seen
        table["scored"] = [not reason for reason in reasons]
        table["correct"] = pd.array([p == c if s else pd.NA for p, c, s in
                                     zip(table["prediction"], labels, table["scored"])], dtype="boolean")
        table["error"] = [f.get("error", "") or (reason and f"not scored: {reason}") for f, reason in
                          zip(found, reasons)]
        table = table[EVALUATION_COLUMNS]
        scored = table[table["scored"]]
        held_out = scored[~scored["in training split"]]
        score, held_out_score = (_balanced_accuracy(t) for t in (scored, held_out))
        lines = [f"balanced accuracy {score:.4f} on {len(scored)} scored file(s) of {scored['class'].nunique()} "
                 f"class(es) (sklearn balanced_accuracy_score; {len(table)} file(s) in all)"]
        if len(scored) < len(table):
            lines.append(f"not scored: {len(table) - len(scored)} file(s): " + "; ".join(
                f"{name} ({reason})" for name, reason in zip(table["file"], reasons) if reason))
        if len(held_out) < len(scored):
            lines.append(f"without the {len(scored) - len(held_out)} scored file(s) of the training split: "
                         f"{held_out_score:.4f} on {len(held_out)}")
        summary = "\n".join(lines)
        self._warn_training(list(table["file"][table["in training split"]]))
        print(summary)
        return Evaluation(table, score, held_out_score, summary)

    def __repr__(self) -> str:
        config = self.manifest["model"]["config"]
        return (f"indoor_scene SceneResNet predictor (width {config['width']}, {config['blocks']} blocks per stage, "
                f"{self.manifest['input']['size'][0]} px {self.manifest['input']['mode']}), {len(self.classes)} "
                f"classes, flip TTA, trained on split seed {SHIPPED_SEED}'s training part")


def _balanced_accuracy(scored: pd.DataFrame) -> float:
    if scored.empty:
        return float("nan")
    with warnings.catch_warnings():  # predicted classes absent from the true ones are expected on small sets
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(scored["class"], scored["prediction"]))


def load_predictor(folder=CHECKPOINTS) -> IndoorScenePredictor:
    """The predictor `export_predictor` described in `folder` (its manifest, fp16 weights and training-split
    hashes only)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    weights, hashes = named_files(folder, manifest["weights"]["file"], manifest["training_split_hashes"]["file"])
    model = SceneResNet(**manifest["model"]["config"])
    model.load_state_dict(load_half(weights))
    keys = load_arrays(hashes)[manifest["training_split_hashes"]["array"]]
    return IndoorScenePredictor(manifest, model, {int(key) for key in keys})


def demo_inputs(folder=HERE / "runs" / "demo_inputs") -> Path:
    """The committed validation images of `DEMO` plus the inputs that must be converted or refused, in runs/."""
    return write_demo_folder(folder, DEMO)


def demo_labelled_folder(folder=HERE / "runs" / "demo_labelled") -> Path:
    """`DEMO`'s images (named <class>_<n>.<ext>) arranged as a labelled folder runs/demo_labelled/<class>/, with
    what evaluate must report rather than score: a copy of one image under a class the model does not know
    (bathroom, an Indoor67 class) and an empty file in a class folder."""
    folder = Path(folder)
    shutil.rmtree(folder, ignore_errors=True)
    images = list_images(DEMO)
    for path in images:  # byte for byte (their hashes are their own)
        label = path.stem.rsplit("_", 1)[0]
        (folder / label).mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, folder / label / path.name)
    (folder / "bathroom").mkdir()
    shutil.copy2(images[0], folder / "bathroom" / f"bathroom_1{images[0].suffix}")
    (folder / images[0].stem.rsplit("_", 1)[0] / "empty.jpg").write_bytes(b"")
    return folder
