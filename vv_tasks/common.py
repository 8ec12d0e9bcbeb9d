"""vv-test tasks: the fixed models and training recipes, data loading, and the data fixes.

Fixed by the tasks (reproduced from the original task code, which is not changed here):
  task 1: ModelTask1, SGD(lr=0.005, momentum=0.9), CrossEntropyLoss, 50 epochs, batch 256
  task 2: ModelTask1, SGD(lr=0.001, momentum=0.9), CrossEntropyLoss, 50 epochs, batch 256
  task 3: ModelTask3, SGD(lr=0.005, momentum=0.9), CrossEntropyLoss, 100 epochs, batch 256
  task 4: ModelTask4, SGD(lr=0.001, momentum=0.9), 100 epochs, batch 256, evaluation loss CrossEntropyLoss
Inputs are raw pixel values 0..255 as float, shape (N, 1, 28, 28), as the original loader reads them.
"""
import functools
import math
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.ndimage import distance_transform_edt, grey_dilation
from sklearn.decomposition import PCA
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.neighbors import KNeighborsClassifier
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, WeightedRandomSampler

from mlkit.batches import random_translate
from mlkit.datasets import prepare
from mlkit.experiments import run_all
from mlkit.images import BadImageError, ImageArrays, load_class_folders, load_image, predict_files, write_demo_folder
from mlkit.metrics import expected_calibration_error, mean_std
from mlkit.predictors import image_table, named_files, read_manifest, write_manifest
from mlkit.results import load_results
from mlkit.runtime import pick_device, seed_everything
from mlkit.train import SWA, EarlyStopping, evaluate, fit, load_state, predict_logits

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CHECKPOINTS = HERE / "checkpoints"
DEMO = HERE / "demo"  # committed test digits for the last cell's demo
DIGITS = [str(d) for d in range(10)]
BATCH_SIZE = 256
GIVEN = {  # task -> (model, learning rate, epochs), fixed by the tasks; all SGD with momentum 0.9, batch 256
    "task1": ("ModelTask1", 0.005, 50),
    "task2": ("ModelTask1", 0.001, 50),
    "task3": ("ModelTask3", 0.005, 100),
    "task4": ("ModelTask4", 0.001, 100),
}
RECIPE = {  # task -> what trains its shipped model on top of GIVEN: a run's configuration (`make_config(task)`)
    "task1": {
        "shuffle": True,  # the given loader serves one class per batch: shuffle every epoch
        "balance": True,  # 464 fives against 5,718 nines: draw every class equally often (the biggest fix)
        "relabel": "knn",  # systematic wrong labels (ones filed as 0, ...): two rounds of k-NN relabelling
        "augment": "shift",  # random shifts of up to 2 px (zero fill): the last 2 points
    },
    "task3": {  # the test set's corruption, estimated from its images (`estimate_corruption`), as augmentation:
        "augment": {"shift": [1.55, 1.56, 0.75],  # px: mean right, mean down, sd (the biggest part of the gain)
                    "blur": 1.2,  # Gaussian blur sigma (px), drawn per image within 20% of it
                    "rotation": 6.75,  # sd of a random rotation (degrees)
                    "noise": 4.92},  # sd of additive Gaussian pixel noise (grey levels; adds nothing measurable)
    },
    "task4": {  # task 1's fixes, 10% held out to choose the loss, and the loss chosen there (`recommend_loss`)
        "shuffle": True, "balance": True, "relabel": "knn", "augment": "shift", "holdout": 0.1,
        "loss": "scaled_ce", "strength": 30.0,  # cross-entropy of 30 x logits: the learnt logits come out ~16x smaller
    },
}


# ---------------------------------------------------------------- fixed models (as given)
class ModelTask1(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(OrderedDict([
            ("conv_0", nn.Conv2d(1, 6, 5)), ("conv_1", nn.Conv2d(6, 9, 5)), ("maxpool_0", nn.MaxPool2d(3, 3)),
            ("batchnorm_0", nn.BatchNorm2d(9)), ("flatten", nn.Flatten()),
            ("dense_0", nn.Linear(324, 64)), ("activation_0", nn.ReLU()),
            ("dense_1", nn.Linear(64, 64)), ("activation_1", nn.ReLU()),
            ("dense_2", nn.Linear(64, 64)), ("activation_2", nn.ReLU()),
            ("output", nn.Linear(64, 10)), ("softmax", nn.Softmax(dim=1)),
        ]))

    def forward(self, x):
        return self.layers(x)


class _ModelTask3And4(nn.Module):
    """ModelTask3 and ModelTask4 differ only in the last activation and the output softmax."""

    def __init__(self, last_activation: nn.Module, softmax: bool):
        super().__init__()
        self.conv = nn.Sequential(OrderedDict([
            ("conv_0", nn.Conv2d(1, 9, 5)), ("conv_1", nn.Conv2d(9, 6, 5)), ("avgpool_0", nn.AvgPool2d(5, 4)),
            ("dropout_0", nn.Dropout(p=0.2)), ("flatten", nn.Flatten()),
        ]))
        self.linear = nn.Sequential(OrderedDict([
            ("linear_0", nn.Linear(96, 256)), ("layernorm_1", nn.LayerNorm(256)), ("activation_0", nn.ReLU()),
            ("linear_1", nn.Linear(256, 128)), ("layernorm_2", nn.LayerNorm(128)), ("activation_1", nn.ReLU()),
            ("linear_2", nn.Linear(128, 64)), ("layernorm_3", nn.LayerNorm(64)), ("activation_2", last_activation),
        ]))
        output = [("output", nn.Linear(64, 10))] + ([("softmax", nn.Softmax(dim=1))] if softmax else [])
        self.output = nn.Sequential(OrderedDict(output))

    def forward(self, x):
        return self.output(self.linear(self.conv(x)))


class ModelTask3(_ModelTask3And4):
    def __init__(self):
        super().__init__(nn.Tanh(), softmax=True)


class ModelTask4(_ModelTask3And4):
    def __init__(self):
        super().__init__(nn.ReLU(), softmax=False)


MODELS = {"ModelTask1": ModelTask1, "ModelTask3": ModelTask3, "ModelTask4": ModelTask4}


# ---------------------------------------------------------------- data
def load_split(task: str, split: str, limit_per_class: int | None = None) -> ImageArrays:
    """`data/vv_test/<task>/<split>` as uint8 arrays (N, 28, 28), decoded once and cached."""
    root = prepare("vv_test")
    return load_class_folders(root / task / split, mode="L", cache_dir=ROOT / "data" / "cache",
                              limit_per_class=limit_per_class)


def to_tensors(images: np.ndarray, labels: np.ndarray) -> TensorDataset:
    """Raw pixel values as float, (N, 1, 28, 28): what the original loader feeds the models."""
    return TensorDataset(torch.from_numpy(images).float().unsqueeze(1), torch.from_numpy(labels).long())


def original_loaders(task: str, train: ImageArrays, test: ImageArrays) -> tuple[DataLoader, DataLoader]:
    """The loaders as given. Tasks 1, 2 and 4 share `create_task1_datasets`, whose training loader does
    NOT shuffle (batches come class by class); task 3's does."""
    given_task1_loader = task != "task3"
    return (DataLoader(to_tensors(train.images, train.labels), BATCH_SIZE, shuffle=not given_task1_loader),
            DataLoader(to_tensors(test.images, test.labels), BATCH_SIZE, shuffle=given_task1_loader))


def balanced_sampler(labels: np.ndarray) -> WeightedRandomSampler:
    """Draw every class equally often; the epoch keeps its original length."""
    weights = 1.0 / np.bincount(labels)[labels]
    return WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), len(labels), replacement=True)


def knn_relabel(images: np.ndarray, labels: np.ndarray, max_rounds: int = 2, threshold: float = 0.7,
                k: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Correct labels that the rest of the training set contradicts.

    Each round predicts every image from the OTHER folds (5-fold cross-validation, k-NN on 50 PCA
    components) and relabels it where at least `threshold` of its neighbours agree on another class.
    Repeating lets corrections propagate where the noise was dense enough to outvote the truth; it stops
    after `max_rounds` or when a round changes nothing. Returns the labels and, for each image, the share
    of its neighbours (last round) that agree with its final label: low support marks a doubtful image.
    """
    features = PCA(50, random_state=seed).fit_transform(images.reshape(len(images), -1) / 255.0)
    labels = labels.copy()
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    for _ in range(max_rounds):
        probabilities = np.zeros((len(labels), 10))
        for fit_index, predict_index in folds.split(features, labels):
            knn = KNeighborsClassifier(k).fit(features[fit_index], labels[fit_index])
            probabilities[np.ix_(predict_index, knn.classes_)] = knn.predict_proba(features[predict_index])
        predicted = probabilities.argmax(1)
        confident = (predicted != labels) & (probabilities.max(1) >= threshold)
        labels[confident] = predicted[confident]
        if not confident.any():
            break
    return labels, probabilities[np.arange(len(labels)), labels]


CLEANERS = {  # config["relabel"] -> how the training labels are cleaned
    "knn": {"max_rounds": 2},  # two k-NN rounds, then train on every image
    "converged": {"max_rounds": 30},  # k-NN rounds until none changes a label (about 15 here)
}
DOUBTFUL_BELOW = 0.5  # "drop_doubtful": images that fewer than half of their neighbours agree with are dropped


def blur_augment(images: torch.Tensor, sigma=(0.5, 2.5)) -> torch.Tensor:
    """Gaussian blur with a random sigma per image (one grouped convolution for the whole batch)."""
    n, radius = len(images), int(3 * sigma[1] + 0.5)
    sigmas = torch.empty(n, 1).uniform_(*sigma)
    kernels = torch.exp(-0.5 * (torch.arange(-radius, radius + 1.0)[None] / sigmas) ** 2)
    kernels = kernels / kernels.sum(1, keepdim=True)
    x = F.pad(images.transpose(0, 1), [radius] * 4)  # (1, N, H, W): one channel per image
    x = F.conv2d(x, kernels.view(n, 1, 1, -1), groups=n)
    x = F.conv2d(x, kernels.view(n, 1, -1, 1), groups=n)
    return x.transpose(0, 1)


def noise_augment(images: torch.Tensor, std=(0.0, 12.0)) -> torch.Tensor:
    """Additive Gaussian pixel noise of a random strength per image, clipped to 0..255."""
    strength = torch.empty(len(images), 1, 1, 1).uniform_(*std)
    return (images + torch.randn_like(images) * strength).clamp(0, 255)


def corrupt_like_test(images: torch.Tensor, shift=None, rotation=None, blur=None, contrast=None,
                      noise=None) -> torch.Tensor:
    """A training batch degraded the way task 3's test digits are, with `estimate_corruption`'s numbers;
    a part left None is not applied. shift: (mean x, mean y, sd) pixels, a Gaussian offset per image (x right,
    y down); rotation: sd in degrees; blur: sigma, drawn per image within 20% of it; contrast: intensity
    factor; noise: std of additive Gaussian pixel noise. Pixels stay in 0..255."""
    n = len(images)
    if shift is not None or rotation is not None:
        angle = torch.randn(n) * math.radians(rotation or 0.0)
        mean_x, mean_y, sd = shift or (0.0, 0.0, 0.0)
        offset = torch.stack([mean_x + sd * torch.randn(n), mean_y + sd * torch.randn(n)], 1) * (2 / 28)
        # affine_grid maps each output pixel to where it samples the input: moving ink by +d samples at -d.
        theta = torch.stack([torch.stack([angle.cos(), -angle.sin(), -offset[:, 0]], 1),
                             torch.stack([angle.sin(), angle.cos(), -offset[:, 1]], 1)], 1)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if blur is not None:
        images = blur_augment(images, sigma=(0.8 * blur, 1.2 * blur))
    if contrast is not None:
        images = (images * contrast).clamp(0, 255)
    if noise is not None:
        images = noise_augment(images, std=(noise, noise))
    return images


def estimate_corruption(train: np.ndarray, test: np.ndarray, sample: int = 2000, seed: int = 0) -> dict:
    """How task 3's test digits differ from its training digits, from unpaired statistics of each set: no
    image is paired with another and no test label is read. Each estimate (see `image_statistics`):
      shift: the difference of the mean centres of mass of the ink (pixels above 40, so that background noise
             does not pull them to the middle); its sd, the extra spread sqrt(var test - var train)
      noise: the background corners, where clipped Gaussian noise N(0, s) has mean s / sqrt(2 pi)
      blur: the sigma whose blurred (and noised) training digits match the test digits' median sharpness
      rotation: the extra spread of the stroke orientation of elongated digits (1s, 7s: a clear main axis)
                over that of the blurred training digits
      contrast: the ratio of the 99th-percentile intensity of test digits to that of blurred training digits
    Rounded to 2 decimals, so a run's configuration (and its record) keeps the same hash."""
    generator = torch.Generator().manual_seed(seed)
    stats_test = image_statistics(test)
    ink_train, ink_test = (image_statistics(np.where(x > 40, x, 0)) for x in (train, test))
    shift = [float(ink_test[c].mean() - ink_train[c].mean()) for c in ("centre x", "centre y")]
    extra_var = [ink_test[c].var() - ink_train[c].var() for c in ("centre x", "centre y")]
    noise = float(_corners(test).mean() * math.sqrt(2 * math.pi))
    subset = torch.from_numpy(train[torch.randperm(len(train), generator=generator)[:sample].numpy()]).float()[:, None]

    def degraded(sigma):
        torch.manual_seed(seed)
        return noise_augment(blur_augment(subset, sigma=(sigma, sigma)), std=(noise, noise)).squeeze(1).numpy()

    target = stats_test["sharpness"].median()
    sigmas = np.arange(0.5, 2.51, 0.05)
    blur = float(sigmas[np.argmin([abs(image_statistics(degraded(s))["sharpness"].median() - target) for s in sigmas])])
    blurred = degraded(blur)
    orientation_train, orientation_test = _elongated_orientation(blurred), _elongated_orientation(test)
    contrast = stats_test["contrast"].median() / image_statistics(blurred)["contrast"].median()
    return {"shift": [round(shift[0], 2), round(shift[1], 2), round(float(np.sqrt(max(np.mean(extra_var), 0))), 2)],
            "rotation": round(float(np.sqrt(max(orientation_test.var() - orientation_train.var(), 0))), 2),
            "blur": round(blur, 2), "contrast": round(float(contrast), 2), "noise": round(noise, 2)}


def _corners(images: np.ndarray) -> np.ndarray:
    """The four 2x2 corner patches of every image: background on a centred digit."""
    x = images.astype(np.float32)
    return np.concatenate([x[:, :2, :2], x[:, :2, -2:], x[:, -2:, :2], x[:, -2:, -2:]], 1).reshape(len(x), -1)


def _elongated_orientation(images: np.ndarray, min_elongation: float = 6.0) -> np.ndarray:
    """Angle (degrees) of the main axis of the ink (pixels above 40) of every digit whose second moments are
    at least `min_elongation` times longer than wide; round digits have no clear axis."""
    x = np.where(images > 40, images, 0).astype(np.float64)
    grid = np.arange(x.shape[-1]) - (x.shape[-1] - 1) / 2
    mass = x.sum((1, 2)) + 1e-6
    centre_x, centre_y = (x.sum(1) * grid).sum(1) / mass, (x.sum(2) * grid).sum(1) / mass
    dx, dy = grid[None, None, :] - centre_x[:, None, None], grid[None, :, None] - centre_y[:, None, None]
    xx, yy, xy = ((x * a * b).sum((1, 2)) / mass for a, b in ((dx, dx), (dy, dy), (dx, dy)))
    spread = np.sqrt((xx - yy) ** 2 + 4 * xy**2)
    elongated = (xx + yy + spread) >= min_elongation * (xx + yy - spread)
    return 0.5 * np.degrees(np.arctan2(2 * xy, yy - xx))[elongated]


class AugmentedLoader:
    """Wrap a loader and transform each input batch on the fly."""

    def __init__(self, loader: DataLoader, transform):
        self.loader, self.transform = loader, transform

    def __iter__(self):
        for inputs, labels in self.loader:
            yield self.transform(inputs), labels

    def __len__(self):
        return len(self.loader)


def shift_digits(x: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Random shifts of up to `max_shift` pixels with zero fill. Transposed so that the x offset is drawn first, and
    made contiguous so that later draws (`randn_like`) fill the same pixels: the runs behind the committed records."""
    return random_translate(x.mT, max_shift, fill="zeros").mT.contiguous()


AUGMENTATIONS = {  # config["augment"] -> batch transform; a dict is `corrupt_like_test`'s parameters
    "shift": lambda x: shift_digits(x, 2),
    # task 3's first augmentation, guessed from the test set's look: symmetric shifts, a wide blur range
    "corrupt": lambda x: noise_augment(shift_digits(blur_augment(x), 3)),
}


# ---------------------------------------------------------------- task 4 losses
def logit_l2_loss(logits, labels, strength):
    """Cross-entropy plus `strength` times the mean squared logit."""
    return F.cross_entropy(logits, labels) + strength * logits.pow(2).mean()


def logitnorm_loss(logits, labels, temperature):
    """LogitNorm (Wei et al. 2022): cross-entropy of the L2-normalised logits divided by a temperature."""
    return F.cross_entropy(logits / (temperature * logits.norm(dim=1, keepdim=True) + 1e-7), labels)


def scaled_ce_loss(logits, labels, scale):
    """Cross-entropy of `scale` * logits: the model learns logits `scale` times smaller for the same softmax."""
    return F.cross_entropy(scale * logits, labels)


LOSSES = {"ce": lambda logits, labels, _: F.cross_entropy(logits, labels), "logit_l2": logit_l2_loss,
          "logitnorm": logitnorm_loss, "scaled_ce": scaled_ce_loss}


def mean_abs_logit(logits, labels):
    return logits.abs().mean()


def calibration_error(logits, labels):
    """Expected calibration error of the softmax of the logits (15 bins)."""
    return expected_calibration_error(torch.softmax(logits, 1), labels)


def run_metrics(task: str) -> dict:
    """What every evaluation measures besides loss and accuracy; calibration only where the model outputs
    logits (task 4): ModelTask1/3 output probabilities, whose softmax means nothing."""
    return {"mean_abs_logit": mean_abs_logit} | ({"calibration_error": calibration_error} if task == "task4" else {})


# ---------------------------------------------------------------- one run
@functools.cache
def cleaned_train(task: str, limit_per_class: int | None, relabel: str, drop_doubtful: bool) -> ImageArrays:
    """The training set with `knn_relabel`'s labels (`CLEANERS[relabel]`), without its doubtful images when
    `drop_doubtful`; computed once per process."""
    train = load_split(task, "train", limit_per_class)
    labels, support = knn_relabel(train.images, train.labels, **CLEANERS[relabel])
    cleaned = ImageArrays(train.images, labels, train.paths, train.classes)
    return cleaned.subset(np.where(support >= DOUBTFUL_BELOW)[0]) if drop_doubtful else cleaned


def run(config: dict, run_dir: Path) -> dict:
    """Train the task's fixed model under `config` and score it on the task's test set.

    config keys: task, seed, data fixes (shuffle, relabel, drop_doubtful, balance, augment), loop options
    (loop), a held-out validation split of the training set (holdout, also implied by loop), loss/strength
    (task 4), limit_per_class (smoke profile). Returns the history, the test metrics and predictions and,
    with a held-out split, its metrics: what the notebooks show, small enough for a committed record.
    """
    task = config["task"]
    model_name, lr, epochs = GIVEN[task]
    epochs = config.get("epochs", epochs)
    data_task = "task3" if task == "task3" else "task1"
    seed_everything(config["seed"])
    limit = config.get("limit_per_class")
    relabel = config.get("relabel")
    train = (cleaned_train(data_task, limit, relabel, config.get("drop_doubtful", False)) if relabel
             else load_split(data_task, "train", limit))
    test = load_split(data_task, "test", limit)
    train_loader, test_loader = make_loaders(task, train, test, config)
    val_loader = None
    if config.get("loop") or config.get("holdout"):
        train_loader, val_loader = split_validation(train, config)

    # channels_last: the fixed models' training steps run up to 1.8x faster on a CPU in this layout.
    model = MODELS[model_name]().to(pick_device(), memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_name, strength = config.get("loss", "ce"), config.get("strength")
    loss_fn = lambda logits, labels: LOSSES[loss_name](logits, labels, strength)
    loop = improved_loop_options(optimizer, epochs, len(train_loader)) if config.get("loop") else {}
    metrics = run_metrics(task)
    history = fit(model, optimizer, loss_fn, train_loader, val_loader or test_loader, epochs, run_dir=run_dir,
                  eval_loss_fn=nn.CrossEntropyLoss(), metrics=metrics,
                  eval_every=1 if config.get("loop") else 5, progress=False, **loop)
    in_order = DataLoader(to_tensors(test.images, test.labels), BATCH_SIZE)  # the given test loader may shuffle
    logits, _ = predict_logits(model, in_order)
    result = {"config": config, "history": history, "test": evaluate(model, in_order, nn.CrossEntropyLoss(), metrics),
              "test_predictions": logits.argmax(1).to(torch.uint8), "run_dir": str(run_dir)}
    if val_loader is not None:
        result["validation"] = evaluate(model, val_loader, nn.CrossEntropyLoss(), metrics)
    return result


def training_cost(config: dict) -> float:
    """A run's relative training time (epochs x training images), so `run_all` can start the longest first."""
    epochs = config.get("epochs", GIVEN[config["task"]][2])
    return epochs * (10_000 if config["task"] == "task3" else 18_311)


def make_loaders(task, train: ImageArrays, test: ImageArrays, config: dict) -> tuple:
    """The original loaders, or the engineered training loader the config asks for."""
    if not any(config.get(fix) for fix in ("shuffle", "balance", "augment")):
        return original_loaders(task, train, test)
    dataset = to_tensors(train.images, train.labels)
    if config.get("balance"):
        loader = DataLoader(dataset, BATCH_SIZE, sampler=balanced_sampler(train.labels))
    else:
        loader = DataLoader(dataset, BATCH_SIZE, shuffle=True)
    augment = config.get("augment")
    if augment:
        transform = (functools.partial(corrupt_like_test, **augment) if isinstance(augment, dict)
                     else AUGMENTATIONS[augment])
        loader = AugmentedLoader(loader, transform)
    test_loader = DataLoader(to_tensors(test.images, test.labels), BATCH_SIZE)
    return loader, test_loader


def split_validation(train: ImageArrays, config: dict):
    """Hold out a stratified fraction (config "holdout", default 10%) of the training set to steer the
    improved loop or to choose task 4's loss (never the test set)."""
    fraction = config.get("holdout", 0.1)
    stratify = train.labels if np.unique(train.labels, return_counts=True)[1].min() >= 2 else None  # tiny subsets
    fit_index, val_index = train_test_split(np.arange(len(train)), test_size=fraction, stratify=stratify,
                                            random_state=config["seed"])
    fit_part, val_part = train.subset(fit_index), train.subset(val_index)
    train_loader, _ = make_loaders(config["task"], fit_part, fit_part, config | {"shuffle": True})
    return train_loader, DataLoader(to_tensors(val_part.images, val_part.labels), BATCH_SIZE)


def improved_loop_options(optimizer, epochs: int, steps_per_epoch: int) -> dict:
    """Task 2's loop: a one-cycle learning rate (warm up to 10x the given rate, then anneal) stepped every
    batch, SWA over the last quarter, early stopping on the held-out loss, a checkpoint every 5 epochs."""
    base_lr = optimizer.param_groups[0]["lr"]
    return {
        "scheduler": torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=10 * base_lr, epochs=epochs,
                                                         steps_per_epoch=steps_per_epoch),
        "scheduler_per_batch": True,
        "early_stopping": EarlyStopping(patience=10, min_delta=1e-4),
        "swa": SWA(start_epoch=int(0.75 * epochs), lr=2 * base_lr),
        "checkpoint_every": 5,
    }


# ---------------------------------------------------------------- new data
INK_LEVEL = 0.25  # a pixel is ink when it is this far from the background towards the darkest/brightest stroke
MNIST_BOX = 20  # MNIST digits are scaled to fit 20x20, then centred by their centre of mass in 28x28
MNIST_STROKE = 0.1  # ... with strokes about a tenth of the digit's height: thinner strokes are thickened


def preprocess_digit(path) -> torch.Tensor:
    """Any image file -> (1, 28, 28) float 0..255, made the way MNIST digits were: white ink on black
    (inverted when the background is light), background removed, cropped to the ink, thin strokes thickened,
    scaled to fit 20x20 keeping the aspect, placed with the centre of mass at the centre of 28x28.
    Blank images and images whose border is covered with ink (noise, a photo of a scene) raise BadImageError."""
    image = load_image(path, mode="L").astype(np.float32)
    if image.max() - image.min() < 1:
        raise BadImageError(f"blank image (every pixel {image.max():.0f})")
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    if np.median(border) > 127:  # dark digit on a light background
        image, border = 255.0 - image, 255.0 - border
    ink = np.clip(image - np.median(border), 0, None)
    ink /= max(ink.max(), 1e-6)
    mask = ink > INK_LEVEL
    edge = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
    if not mask.any() or edge.mean() > 0.25:
        raise BadImageError(f"no digit found: ink covers {edge.mean():.0%} of the image border "
                            f"(expected one digit on a plain background)")
    rows, cols = np.where(mask.any(1))[0], np.where(mask.any(0))[0]
    crop, crop_mask = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1], mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    stroke = 4 * distance_transform_edt(crop_mask)[crop_mask].mean()  # a stroke of width w: mean distance w/4
    wanted = MNIST_STROKE * max(crop.shape)
    if stroke < wanted:
        crop = grey_dilation(np.pad(crop, int(wanted)), size=int(round(wanted - stroke)) + 1)
        nonzero_rows, nonzero_cols = np.where(crop.any(1))[0], np.where(crop.any(0))[0]
        crop = crop[nonzero_rows[0]:nonzero_rows[-1] + 1, nonzero_cols[0]:nonzero_cols[-1] + 1]
    scale = MNIST_BOX / max(crop.shape)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    digit = np.asarray(Image.fromarray((crop * 255).astype(np.uint8)).resize(size, Image.Resampling.LANCZOS),
                       dtype=np.float32)
    mass = digit.sum() + 1e-6
    centre_y = (digit.sum(1) * np.arange(digit.shape[0])).sum() / mass
    centre_x = (digit.sum(0) * np.arange(digit.shape[1])).sum() / mass
    top = int(np.clip(round(13.5 - centre_y), 0, 28 - digit.shape[0]))
    left = int(np.clip(round(13.5 - centre_x), 0, 28 - digit.shape[1]))
    canvas = np.zeros((28, 28), np.float32)
    canvas[top:top + digit.shape[0], left:left + digit.shape[1]] = digit
    return torch.from_numpy(canvas * (255.0 / max(canvas.max(), 1e-6)))[None]


# ---------------------------------------------------------------- the experiments
SEEDS = (0, 1, 2)
TASK1_FIX = RECIPE["task1"]
TASK1_SOLUTION = "+ shift augment (shipped)"
TASK1_ABLATION = {  # the fixes added one at a time: each row measures one fix's effect
    "original (as given)": {},
    "shuffle": {"shuffle": True},
    "+ balance": {"shuffle": True, "balance": True},
    "+ relabel (k-NN, 2 rounds)": {"shuffle": True, "balance": True, "relabel": "knn"},
    TASK1_SOLUTION: TASK1_FIX,
    # the alternative cleaner, from "+ balance" on: k-NN rounds until none changes a label, doubtful images dropped
    "+ relabel (k-NN to convergence)": {"shuffle": True, "balance": True, "relabel": "converged"},
    "+ drop doubtful": {"shuffle": True, "balance": True, "relabel": "converged", "drop_doubtful": True},
    "+ shift augment (all)": {"shuffle": True, "balance": True, "relabel": "converged", "drop_doubtful": True,
                              "augment": "shift"},
}
TASK2_LOOPS = {"original loop": {}, "improved loop": {"loop": "onecycle+swa+early_stopping"}}
MATCHED_PARTS = ("shift", "blur", "rotation", "noise")  # contrast is estimated too; see task3_rows
TASK3_SOLUTION = "+ noise (all)"
TASK4_SWEEP = [("ce", None)] + [(loss, s) for loss, strengths in {
    "logit_l2": (0.1, 1.0),
    "logitnorm": (0.05, 0.2),
    "scaled_ce": (10.0, 30.0),
}.items() for s in strengths]


def task3_rows(corruption: dict) -> dict:
    """Task 3's ablation: as given, the first (guessed) augmentation, then the parts of the corruption
    estimated from the test images (`estimate_corruption`) added one at a time. Contrast is left out: its
    estimate is a factor of 1.02, nothing to imitate."""
    rows = {"original (as given)": {}, "guessed augmentation (first version)": {"augment": "corrupt"}}
    for i, part in enumerate(MATCHED_PARTS):
        label = "matched shift" if i == 0 else f"+ {part}" + (" (all)" if i == len(MATCHED_PARTS) - 1 else "")
        rows[label] = {"augment": {name: corruption[name] for name in MATCHED_PARTS[:i + 1]}}
    return rows


@functools.cache
def task3_corruption(smoke: bool = False) -> dict:
    """`estimate_corruption` of task 3's training and test images (the smoke profile's subsets in smoke)."""
    limit = 20 if smoke else None
    train, test = load_split("task3", "train", limit), load_split("task3", "test", limit)
    return estimate_corruption(train.images, test.images)


SHIPPED_ROWS = {"task1": TASK1_SOLUTION, "task3": TASK3_SOLUTION,
                "task4": f"{RECIPE['task4']['loss']} {RECIPE['task4']['strength']}"}


def make_config(task: str = "task1", row: str | None = None, options: dict | None = None, seed: int = 0,
                smoke: bool = False, **shared) -> dict:
    """One run: `task` with the changes `options` (and `shared`), labelled `row` in the tables; without a row,
    the task's shipped model (RECIPE). The smoke profile trains one epoch on 20 images per class."""
    if row is None:
        row, options = SHIPPED_ROWS[task], RECIPE[task]
    smoke_options = {"limit_per_class": 20, "epochs": 1} if smoke else {}
    return {"name": f"{task}-{row}-s{seed}".replace(" ", "_").replace(":", "").replace("+", "p"),
            "task": task, "row": row, "seed": seed, **shared, **(options or {}), **smoke_options}


def make_configs(task: str, rows: dict, seeds=SEEDS, smoke: bool = False, **shared) -> list[dict]:
    """`make_config` for every (row, seed)."""
    return [make_config(task, label, options, seed, smoke, **shared) for label, options in rows.items()
            for seed in seeds]


def challenge_configs(smoke: bool = False) -> dict[str, list[dict]]:
    """The Challenge notebook's runs by section (task 4: the sweep; its confirmation depends on the sweep)."""
    return {"baseline": baseline_configs(smoke),
            "task1": make_configs("task1", TASK1_ABLATION, smoke=smoke),
            "task2": make_configs("task2", TASK2_LOOPS, smoke=smoke, **TASK1_FIX),
            "task3": make_configs("task3", task3_rows(task3_corruption(smoke)), smoke=smoke),
            "task4 sweep": task4_sweep_configs(smoke)}


def run_groups(groups: dict[str, list[dict]], runs: Path, workers: int | None = None, records: Path | None = None,
               retrain: bool = False) -> dict[str, list[dict]]:
    """Train every group's runs in one pool of processes, longest first, and return the results per group
    (a run with a record in `records` is read from it unless `retrain`)."""
    results = iter(run_all(run, [config for group in groups.values() for config in group], runs, workers,
                           cost=training_cost, records=records, retrain=retrain))
    return {name: [next(results) for _ in group] for name, group in groups.items()}


def baseline_configs(smoke: bool = False) -> list[dict]:
    """Every task exactly as given (task 4 ships no loss: plain cross-entropy stands in)."""
    return [config for task in ("task1", "task2", "task3", "task4")
            for config in make_configs(task, {"original (as given)": {}}, smoke=smoke)]


def task4_rows() -> dict:
    return {(f"{loss} {strength}" if strength is not None else loss): {"loss": loss, "strength": strength}
            for loss, strength in TASK4_SWEEP}


def task4_sweep_configs(smoke: bool = False) -> list[dict]:
    """Every loss of the sweep on seed 0, on the task 1 fixes with 10% of the training set held out:
    `recommend_loss` picks on that validation split, never on the test set."""
    return make_configs("task4", task4_rows(), seeds=(0,), smoke=smoke, holdout=0.1, **TASK1_FIX)


def task4_confirm_configs(recommended: str, smoke: bool = False) -> list[dict]:
    """Plain cross-entropy and the recommended loss on all seeds (seed 0 is the sweep's run, reused)."""
    rows = task4_rows()
    return make_configs("task4", {"ce": rows["ce"], recommended: rows[recommended]}, smoke=smoke, holdout=0.1,
                        **TASK1_FIX)


def recommend_loss(table, max_logit_ratio: float = 0.1, max_accuracy_drop: float = 0.005) -> str:
    """The most accurate loss whose mean |logit| is at most `max_logit_ratio` of plain cross-entropy's at no
    more than `max_accuracy_drop` accuracy loss; without one, the most accurate loss other than "ce".
    `table`: rows named by loss (one of them "ce"), columns "accuracy mean" and "mean_abs_logit mean"."""
    ce = table.loc["ce"]
    others = table.drop("ce")
    meets = others[(others["mean_abs_logit mean"] <= max_logit_ratio * ce["mean_abs_logit mean"])
                   & (others["accuracy mean"] >= ce["accuracy mean"] - max_accuracy_drop)]
    return (meets if len(meets) else others)["accuracy mean"].idxmax()


def summarize(runs: dict[str, list[dict]], task4_runs: list[dict], recommended: str, profile: str) -> dict:
    """results.json: `runs` are `run_groups`' results for `challenge_configs` (baseline, task1 ... task3),
    `task4_runs` the confirmation of the `recommended` loss (chosen on validation)."""
    def accuracy(group: str, row: str) -> tuple[float, float]:
        return mean_std([r["test"]["accuracy"] for r in runs[group] if r["config"]["row"] == row])

    given = {task: mean_std([r["test"]["accuracy"] for r in runs["baseline"] if r["config"]["task"] == task])[0]
             for task in ("task1", "task2", "task3")}
    task1, task3 = accuracy("task1", TASK1_SOLUTION), accuracy("task3", TASK3_SOLUTION)
    loop_original, loop_improved = accuracy("task2", "original loop"), accuracy("task2", "improved loop")
    shipped = next(r for r in runs["task1"] if r["config"]["row"] == TASK1_SOLUTION and r["config"]["seed"] == 0)
    task4 = summary_table(task4_runs, keys=("accuracy", "mean_abs_logit", "loss")).droplevel("task")
    ce, best = task4.loc["ce"], task4.loc[recommended]
    every_run = {r["config"]["name"]: r for group in runs.values() for r in group} | {
        r["config"]["name"]: r for r in task4_runs}
    results = {
        "data": "vv-test data (original files)",
        "profile": profile,
        "task1_baseline_accuracy": given["task1"], "task1_accuracy_mean": task1[0], "task1_accuracy_std": task1[1],
        "task1_shipped_seed_accuracy": shipped["test"]["accuracy"],
        "task2_baseline_accuracy": given["task2"],
        "task2_original_loop_accuracy_mean": loop_original[0], "task2_original_loop_accuracy_std": loop_original[1],
        "task2_improved_loop_accuracy_mean": loop_improved[0], "task2_improved_loop_accuracy_std": loop_improved[1],
        "task3_baseline_accuracy": given["task3"], "task3_accuracy_mean": task3[0], "task3_accuracy_std": task3[1],
        "task3_guessed_augmentation_accuracy_mean": accuracy("task3", "guessed augmentation (first version)")[0],
        "task4_loss": recommended, "task4_selected_on": "validation",
        "training_hours": sum(row["seconds"] for r in every_run.values() for row in r["history"]) / 3600,
        "task4_ce_accuracy": ce["accuracy mean"], "task4_ce_mean_abs_logit": ce["mean_abs_logit mean"],
        "task4_ce_eval_cross_entropy": ce["loss mean"],
        "task4_accuracy": best["accuracy mean"], "task4_mean_abs_logit": best["mean_abs_logit mean"],
        "task4_eval_cross_entropy": best["loss mean"],
    }
    results["headline"] = {
        "task 1 accuracy": f"{task1[0]:.4f} ± {task1[1]:.4f} (as given {given['task1']:.4f}; shipped seed 0: "
                           f"{shipped['test']['accuracy']:.4f})",
        "task 3 accuracy": f"{task3[0]:.4f} ± {task3[1]:.4f} (as given {given['task3']:.4f}; guessed augmentation "
                           f"{results['task3_guessed_augmentation_accuracy_mean']:.4f})",
        "task 4 logits": f"{ce['mean_abs_logit mean'] / best['mean_abs_logit mean']:.1f}x smaller with {recommended} "
                         f"(chosen on validation), accuracy {best['accuracy mean']:.4f} vs {ce['accuracy mean']:.4f}, "
                         f"evaluation cross-entropy {best['loss mean']:.3f} vs {ce['loss mean']:.3f}",
    }
    return results


def summary_table(results: list[dict], keys=("accuracy",), split: str = "test"):
    """Mean ± std over seeds of the metrics on `split` ("test", or "validation": the held-out part of the
    training set), one line per configuration row."""
    import pandas as pd

    rows = {}
    for result in results:
        rows.setdefault((result["config"]["task"], result["config"]["row"]), []).append(result[split])
    table = []
    for (task, label), tests in rows.items():
        line = {"task": task, "setting": label, "seeds": len(tests)}
        for key in keys:
            line[f"{key} mean"], line[f"{key} std"] = mean_std([test[key] for test in tests])
        table.append(line)
    return pd.DataFrame(table).set_index(["task", "setting"])


# ---------------------------------------------------------------- analysis helpers
def relabel_report(original: np.ndarray, corrected: np.ndarray):
    """Counts of (folder label -> corrected label) for every changed label, largest first."""
    import pandas as pd

    changed = original != corrected
    pairs = pd.DataFrame({"folder label": original[changed], "corrected to": corrected[changed]})
    return pairs.value_counts().rename("images").reset_index()


def image_statistics(images: np.ndarray):
    """Per-image statistics that tell two digit sets apart without pairing them:
    sharpness (mean absolute gradient on the strokes), background noise (std of the outer 3-pixel frame),
    contrast (99th-percentile intensity) and centre of mass (pixels from the image centre)."""
    import pandas as pd

    x = images.astype(np.float32)
    gy, gx = np.gradient(x, axis=(1, 2))
    ink = x.sum((1, 2)) + 1e-6
    frame = np.concatenate([x[:, :3].reshape(len(x), -1), x[:, -3:].reshape(len(x), -1),
                            x[:, 3:-3, :3].reshape(len(x), -1), x[:, 3:-3, -3:].reshape(len(x), -1)], 1)
    grid = np.arange(28, dtype=np.float32) - 13.5
    return pd.DataFrame({
        "sharpness": (np.hypot(gx, gy) * x).sum((1, 2)) / ink,
        "background noise": frame.std(1),
        "contrast": np.percentile(x.reshape(len(x), -1), 99, axis=1),
        "centre x": (x.sum(1) * grid).sum(1) / ink,
        "centre y": (x.sum(2) * grid).sum(1) / ink,
    })


class ProbabilitiesToLogits(nn.Module):
    """`ModelTask1`/`ModelTask3` already end in a softmax; their log turns them back into logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).clamp_min(1e-12).log()



# ---------------------------------------------------------------- the committed predictor
PREDICTOR_WEIGHTS = "task1_ModelTask1.pt"  # the digit predictor: task 1's solution
LOW_CONFIDENCE = 0.5  # below it the top digit is less likely than all the others together: flagged


SOLUTIONS = {  # checkpoint -> (task, row of its seed-0 run in the notebook, what it holds); None: task 4's pick
    "task1_ModelTask1.pt": ("task1", TASK1_SOLUTION, "ModelTask1 (ends in Softmax: outputs probabilities) "
                            "trained on task 1's data shuffled, balanced, k-NN relabelled (2 rounds) and "
                            "shift-augmented"),
    "task3_ModelTask3.pt": ("task3", TASK3_SOLUTION, "ModelTask3 (ends in Softmax: outputs probabilities) "
                            "trained on task 3's data with the shift, blur, rotation and noise estimated from its "
                            "degraded test images"),
    "task4_ModelTask4.pt": ("task4", None, "ModelTask4 (outputs logits) trained on task 1's fixed data with the "
                            "recommended loss: cross-entropy's accuracy with much smaller logits"),
}


def solution_checkpoints(results: dict, smoke: bool = False) -> dict[str, dict]:
    """What each checkpoint the results cell saves holds: model, its run's configuration and the solution's
    scores over the seeds (`results`: the notebook's results.json, which names task 4's loss)."""
    configs = [config for group in challenge_configs(smoke).values() for config in group]
    scores = {"task1": {"test_accuracy_mean": results["task1_accuracy_mean"],
                        "test_accuracy_std": results["task1_accuracy_std"]},
              "task3": {"test_accuracy_mean": results["task3_accuracy_mean"],
                        "test_accuracy_std": results["task3_accuracy_std"]},
              "task4": {"test_accuracy_mean": results["task4_accuracy"],
                        "mean_abs_logit": results["task4_mean_abs_logit"], "loss": results["task4_loss"]}}
    out = {}
    for name, (task, row, what) in SOLUTIONS.items():
        row = row or results["task4_loss"]
        run = next(c for c in configs if c["task"] == task and c["row"] == row and c["seed"] == 0)
        model = GIVEN[task][0]
        out[name] = {"task": task, "model": model, "builder": f"common.MODELS[{model!r}]()", "what": what,
                     "run": run, f"solution_over_{len(SEEDS)}_seeds": scores[task]}
    return out


def export_predictor(folder=CHECKPOINTS, smoke: bool = False) -> Path:
    """`folder/predictor.json`: task 1's solution model as a digit predictor, and what the other saved
    checkpoints are, from the weights the results cell saved and the results.json beside `folder`."""
    folder = Path(folder)
    results = load_results(folder.parent)
    checkpoints = solution_checkpoints(results, smoke)
    missing = [name for name in checkpoints if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: {', '.join(missing)} missing; the notebook's results cell saves them")
    for name, about in checkpoints.items():  # each file fits the model it is said to hold
        MODELS[about["model"]]().load_state_dict(load_state(folder / name))
        about["bytes"] = (folder / name).stat().st_size
    predictor = checkpoints[PREDICTOR_WEIGHTS]
    return write_manifest(
        folder, challenge="vv_tasks", task="handwritten digit classification (task 1's solution model)",
        classes=DIGITS,
        model={"name": predictor["model"], "builder": predictor["builder"],
               "output": "softmax probabilities (the model ends in Softmax); the predictor feeds their log to the "
                         "kit's softmax (common.ProbabilitiesToLogits), which gives them back unchanged"},
        input={"size": [28, 28], "mode": "L", "preprocess": "common.preprocess_digit",
               "resize": "any size and format, EXIF-rotated, converted to grayscale; as MNIST was made: background "
                         "removed, cropped to the ink, strokes thinner than a tenth of the digit's height thickened, "
                         "scaled (Lanczos) to fit 20x20, centre of mass placed at the centre of 28x28",
               "scaling": "raw pixel values 0..255 as float (brightest ink 255), shape (1, 28, 28), as in training",
               "polarity": "white digit on black; inverted when the border's median pixel is above 127 (dark on light)",
               "rejected": "blank images (every pixel the same value); images whose border is more than 25% ink "
                           "(noise, a scene: not one digit on a plain background)"},
        tta="none", top_k=3, low_confidence_below=LOW_CONFIDENCE,
        weights={"file": PREDICTOR_WEIGHTS, "format": "state dict, fp32: torch.load(weights_only=True)",
                 "bytes": predictor["bytes"]},
        source={"run": predictor["run"], "data": results["data"], "profile": results["profile"],
                f"solution_over_{len(SEEDS)}_seeds": predictor[f"solution_over_{len(SEEDS)}_seeds"],
                "results": "results.json"},
        checkpoints=checkpoints, smoke=smoke)


class DigitPredictor:
    """Task 1's solution model on any image files: one row per file, the digit or the reason it has none."""

    def __init__(self, manifest: dict, model: nn.Module):
        self.manifest = manifest
        self.network = ProbabilitiesToLogits(model.eval())

    def predict(self, inputs):
        """Files, folders or a list of them -> a DataFrame: file, prediction, probability, top classes, error,
        and low_confidence: the top digit is less likely than `low_confidence_below` (check it by eye)."""
        table = image_table(predict_files(self.network, inputs, preprocess_digit, self.manifest["classes"],
                                          top_k=self.manifest["top_k"]))
        table["low_confidence"] = table["probability"] < self.manifest["low_confidence_below"]
        return table

    def __repr__(self) -> str:
        return (f"vv_tasks digit predictor ({self.manifest['model']['name']}, task 1's solution), "
                f"{len(self.manifest['classes'])} classes, no TTA")


def load_predictor(folder=CHECKPOINTS) -> DigitPredictor:
    """The predictor `export_predictor` described in `folder` (its manifest and state dict only)."""
    manifest = read_manifest(folder)
    (weights,) = named_files(folder, manifest["weights"]["file"])
    model = MODELS[manifest["model"]["name"]]()
    model.load_state_dict(load_state(weights))
    return DigitPredictor(manifest, model)


def demo_inputs(folder=HERE / "runs" / "demo_inputs") -> Path:
    """`folder` (replaced) with the committed test digits of `DEMO`, a blank image and the inputs that must be
    converted or refused with a reason."""
    samples = {path.name: load_image(path, mode="L") for path in sorted(DEMO.glob("*_*.*"))}  # not README.md
    return write_demo_folder(folder, samples | {"blank.png": np.zeros((28, 28), np.uint8)})
