"""indoor_scene/common.py: scene classification from scratch (MIT Indoor67, or 15-Scene offline):
pooled, de-duplicated class folders, seeded stratified splits, a small ResNet, batch augmentation
(random resized crops, photometric jitter, mixup), training and test-time augmentation."""
import hashlib
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split
from torch import nn

from mlkit.batches import ArrayLoader, channels_first, random_flip, resize
from mlkit.datasets import DATA_ROOT, prepare
from mlkit.experiments import trained_on
from mlkit.images import ImageArrays, load_class_folders, load_image
from mlkit.metrics import balanced_accuracy
from mlkit.runtime import pick_device, seed_everything
from mlkit.train import FlipAveraged, fit, predict_probabilities  # noqa: F401 (notebook API)

STORED = 128  # images are decoded once at this side; training crops and evaluation resize from it
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


class BasicBlock(nn.Module):
    """ResNet's two 3x3 convolutions with an identity (or 1x1 projection) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        nn.init.zeros_(self.bn2.weight)  # each block starts as the identity: trains faster from scratch
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


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
                layers.append(BasicBlock(c, c_out, stride=2 if stage > 0 and b == 0 else 1))
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

def recipe(dataset: str, seed: int, smoke: bool, **changes) -> dict:
    """The Challenge recipe (one run per split seed); `changes` make the ablations."""
    config = {"name": "challenge", "dataset": dataset, "seed": seed, "size": 96, "width": 24, "blocks": 1,
              "epochs": 30, "batch_size": 64, "lr": 2e-3, "weight_decay": 5e-4, "crops": True,
              "photometric": True, "mixup": 0.2, "label_smoothing": 0.1, "smoke": smoke} | changes
    return config | ({"epochs": 1} if smoke else {})


# The recipe scaled up where a GPU makes it affordable: wider and deeper, at 128 px, for 200 epochs (on 15-Scene
# about 2.5 minutes per run on an H100; about 6-8 hours on a 2-core CPU, from its measured training throughput).
SCALED = {"size": 128, "width": 48, "blocks": 2, "epochs": 200, "batch_size": 128, "lr": 3e-3}


def scaled_recipe(dataset: str, seed: int, smoke: bool) -> dict:
    return recipe(dataset, seed, smoke, name="challenge-scaled", **SCALED)


def baseline_config(dataset: str, seed: int, smoke: bool) -> dict:
    """The Baseline: SimpleCNN at 64 px, no augmentation, Adam, 15 epochs."""
    return {"name": "baseline", "dataset": dataset, "seed": seed, "size": 64, "epochs": 1 if smoke else 15,
            "batch_size": 64, "lr": 1e-3, "smoke": smoke}


def pool(dataset: str, smoke: bool) -> ImageArrays:
    data, _ = deduplicate(load_pool(dataset))
    return data.sample_per_class(12, seed=0) if smoke else data


def build(config: dict, in_channels: int, num_classes: int) -> nn.Module:
    if config["name"] == "baseline":
        return SimpleCNN(in_channels, num_classes)
    return SceneResNet(in_channels, num_classes, config["width"], config["blocks"])


def train(config: dict, run_dir: Path) -> dict:
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
    if config["name"] == "baseline":
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


# ---------------------------------------------------------------- new images

def preprocess(path, size: int, mode: str) -> torch.Tensor:
    """One file -> float (C, size, size) in [0, 1], decoded like the training data; bad files raise."""
    return resize(load_image(path, (STORED, STORED), mode)[None], size)[0].float() / 255

