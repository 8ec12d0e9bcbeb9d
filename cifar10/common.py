"""cifar10/common.py: CIFAR-10 decoded once into uint8 tensors, six architectures, batch-wise augmentation
(flip, shifted crops, cutout), optimizers with schedules, the cost metrics (parameters, MACs, throughput,
latency), and airbench94's and airbench96's published recipes."""
import functools
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mlkit.batches import ArrayLoader, channels_first, flip_and_shift
from mlkit.cost import latency_ms, torch_predictor, training_throughput
from mlkit.datasets import DATA_ROOT, prepare
from mlkit.experiments import cached_array, record_hardware, run_all, trained_on
from mlkit.experiments import run_dir as experiment_folder
from mlkit.images import ImageArrays, list_files, load_class_folders, load_image, predict_files, write_demo_folder
from mlkit.metrics import accuracy, macro_f1, mcnemar_p_value, mean_std
from mlkit.models import BasicBlock, conv_bn
from mlkit.plots import image_grid
from mlkit.predictors import image_table, named_files, read_manifest, write_manifest
from mlkit.results import load_results
from mlkit.runtime import pick_device, seed_everything
from mlkit.train import FlipAveraged, fit, load_half, load_state, parameter_count, predict_probabilities, save_half

RECIPE = {  # the shipped model: airbench96 (Keller Jordan's airbench, 96% variant), ported to PyTorch here;
    # every value as in the `airbench` package (0.1.8), which the notebook's section 4 trains beside the port
    "architecture": "airbench96",  # widths 128-512-512, a third conv layer per stage, a skip around the last two
    "epochs": 40,
    "batch_size": 1024, "optimizer": "sgd_nesterov", "momentum": 0.85,
    "lr": 9.0, "weight_decay": 0.0153,  # per 1,024 examples (airbench's parametrisation, independent of momentum)
    "label_smoothing": 0.2,
    "shift": 4, "cutout": 12,  # augmentation: random flips, shifts of up to 4 px (reflected), one cutout (13 x 13)
    "warmup": 0.23, "final_lr": 0.07,  # triangular learning rate: 0.2 -> 1 at 23% of the steps -> 0.07
    "tta": "flip_translate",  # test-time augmentation: the image and its mirror, also shifted by 1 px (6 views)
    "precision": "bf16",  # training forward passes in bfloat16 on a GPU (upstream: fp16 weights); fp32 on a CPU
}
CLASSES = ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
HERE = Path(__file__).resolve().parent
CHECKPOINTS = HERE / "checkpoints"
DEMO = HERE / "demo"  # committed test images for the last cell's demo
WEIGHTS = "best.pt"  # the shipped network, saved by `train_all` from its run (fp16 state dict)
BASELINE_WEIGHTS = "baseline.pt"  # the Baseline notebook's plain CNN (fp16), for a fresh clone and its last cell


# ---------------------------------------------------------------- data

def load_cifar10(root=DATA_ROOT, limit_per_class: int | None = None) -> dict[str, ImageArrays]:
    """train (50,000) and test (10,000) as uint8 (N, 32, 32, 3): the offline mirror's JPEG class folders, or
    the official python archive (md5-checked download) read by torchvision. `limit_per_class` keeps the
    first images of every class (quick tests)."""
    folder = prepare("cifar10", root)
    if (folder / "train").is_dir():
        cache = Path(root) / "cache"
        return {split: load_class_folders(folder / split, cache_dir=cache, limit_per_class=limit_per_class)
                for split in ("train", "test")}
    import torchvision

    out = {}
    for split in ("train", "test"):
        data = torchvision.datasets.CIFAR10(str(folder), train=split == "train", download=False)
        arrays = ImageArrays(data.data, np.asarray(data.targets), [f"{split}/{i}" for i in range(len(data))],
                             data.classes)
        out[split] = arrays.sample_per_class(limit_per_class) if limit_per_class else arrays
    return out


# ---------------------------------------------------------------- augmentation

def cutout(x: torch.Tensor, size: int) -> torch.Tensor:
    """Zero one random square per sample (DeVries & Taylor 2017), clipped at the borders: every pixel within
    size // 2 of a random centre, so an odd side of 2 * (size // 2) + 1 (size 12 zeroes 13 x 13)."""
    n, _, h, w = x.shape
    cy, cx = torch.randint(0, h, (n, 1, 1), device=x.device), torch.randint(0, w, (n, 1, 1), device=x.device)
    rows, cols = torch.arange(h, device=x.device).view(1, h, 1), torch.arange(w, device=x.device).view(1, 1, w)
    inside = ((rows - cy).abs() <= size // 2) & ((cols - cx).abs() <= size // 2)
    return x.masked_fill(inside[:, None], 0.0)


class Augment:
    """A named augmentation policy applied to whole float batches: "none", "flip_crop" (mirror + shifts of up
    to 4 px, i.e. random 32-px crops of the 4-px padded image) or "flip_crop_cutout" (+ a 12-px cutout)."""

    POLICIES = ("none", "flip_crop", "flip_crop_cutout")

    def __init__(self, policy: str):
        if policy not in self.POLICIES:
            raise ValueError(f"augmentation must be one of {self.POLICIES}, not {policy!r}")
        self.policy = policy

    def __call__(self, x):
        if self.policy == "none":
            return x
        x = flip_and_shift(4)(x)
        return cutout(x, 12) if self.policy == "flip_crop_cutout" else x


# ---------------------------------------------------------------- architectures

class Normalized(nn.Module):
    """Input standardisation with CIFAR-10's channel statistics, then `net`; takes RGB in [0, 1]."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))

    def standardize(self, x):
        return (x - self.mean) / self.std

    def forward(self, x):
        return self.net(self.standardize(x))


def head(c: int, num_classes: int = 10) -> nn.Sequential:
    return nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))


def plain_cnn() -> nn.Module:
    """The Baseline: two conv-ReLU pairs per stage, two stages with max-pooling, a dense layer."""
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64 * 8 * 8, 256), nn.ReLU(),
                         nn.Dropout(0.5), nn.Linear(256, 10))


def vgg(widths=(64, 128, 256, 256)) -> nn.Module:
    """VGG-style: two conv-BN-ReLU per stage, max-pooling between stages."""
    layers, c = [], 3
    for i, w in enumerate(widths):
        layers += [conv_bn(c, w), conv_bn(w, w)] + ([nn.MaxPool2d(2)] if i < len(widths) - 1 else [])
        c = w
    return nn.Sequential(*layers, head(c))


def resnet(depth: int = 20, width: int = 16) -> nn.Module:
    """He et al.'s CIFAR ResNet (depth 6n + 2): three stages of n basic blocks, widths w, 2w, 4w."""
    n = (depth - 2) // 6
    layers, c = [conv_bn(3, width)], width
    for stage in range(3):
        for b in range(n):
            layers.append(BasicBlock(c, width * 2 ** stage, 2 if stage and b == 0 else 1))
            c = width * 2 ** stage
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expand: int = 6):
        super().__init__()
        hidden = c_in * expand
        self.body = nn.Sequential(nn.Conv2d(c_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
                                  conv_bn(hidden, hidden, stride, groups=hidden, act=nn.ReLU6),
                                  nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


def mobilenet_v2(stages=((16, 1, 1), (24, 2, 2), (32, 3, 2), (64, 3, 2), (96, 2, 1))) -> nn.Module:
    """MobileNetV2-style for 32-px inputs: a stride-1 stem and (channels, blocks, stride) inverted-residual
    stages; the first downsampling comes one stage early, which makes it 5x cheaper on a CPU (depthwise
    convolutions at 32x32 dominate its time there)."""
    layers, c = [conv_bn(3, 32)], 32
    for width, blocks, stride in stages:
        for b in range(blocks):
            layers.append(InvertedResidual(c, width, stride if b == 0 else 1, expand=1 if c == 32 and b == 0 else 6))
            c = width
    return nn.Sequential(*layers, nn.Conv2d(c, 512, 1, bias=False), nn.BatchNorm2d(512), nn.ReLU6(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 10))


def airbench_stages(c: int, widths, conv=None, norm=nn.BatchNorm2d, residual: bool = False) -> list[nn.Module]:
    """airbench's stages: per width, conv-pool-norm-GELU then conv-norm-GELU (3x3 bias-free convolutions);
    `residual` (airbench96): two conv-norm-GELU layers instead of one, with a skip connection around them."""
    conv = conv or (lambda c_in, c_out: nn.Conv2d(c_in, c_out, 3, padding=1, bias=False))
    layers = []
    for w in widths:
        layers += [conv(c, w), nn.MaxPool2d(2), norm(w), nn.GELU()]
        if residual:
            layers.append(Residual(nn.Sequential(conv(w, w), norm(w), nn.GELU(), conv(w, w), norm(w), nn.GELU())))
        else:
            layers += [conv(w, w), norm(w), nn.GELU()]
        c = w
    return layers


def airbench(widths=(64, 256, 256)) -> nn.Module:
    """Keller Jordan's airbench layout: a 2x2 stem, then per stage conv-pool-BN-GELU and conv-BN-GELU,
    global max pooling and a linear layer scaled by 1/9 (smaller initial logits)."""
    layers = [nn.Conv2d(3, 24, 2, padding=0, bias=False), nn.BatchNorm2d(24), nn.GELU()]
    layers += airbench_stages(24, widths)
    linear = nn.Linear(widths[-1], 10, bias=False)
    with torch.no_grad():
        linear.weight.mul_(1 / 9)
    return nn.Sequential(*layers, nn.AdaptiveMaxPool2d(1), nn.Flatten(), linear)


class Residual(nn.Module):
    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return x + self.fn(x)


def conv_mixer(dim: int = 256, depth: int = 8, kernel: int = 5, patch: int = 4) -> nn.Module:
    """ConvMixer (Trockman & Kolter 2022): patch embedding, then depthwise (spatial) and pointwise (channel)
    mixing with GELU and BN; 4-px patches (8x8 tokens) keep it affordable on a CPU."""
    def block():
        return nn.Sequential(Residual(nn.Sequential(nn.Conv2d(dim, dim, kernel, groups=dim, padding="same"),
                                                    nn.GELU(), nn.BatchNorm2d(dim))),
                             nn.Conv2d(dim, dim, 1), nn.GELU(), nn.BatchNorm2d(dim))
    return nn.Sequential(nn.Conv2d(3, dim, patch, stride=patch), nn.GELU(), nn.BatchNorm2d(dim),
                         *[block() for _ in range(depth)], nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(dim, 10))


ARCHITECTURES = {"plain_cnn": plain_cnn, "vgg": vgg, "resnet20": resnet, "mobilenet_v2": mobilenet_v2,
                 "airbench": airbench, "conv_mixer": conv_mixer}


def build(name: str) -> nn.Module:
    """One of the study's ARCHITECTURES, or a published airbench network (the notebook's section 4), taking RGB
    in [0, 1]."""
    factories = ARCHITECTURES | {"airbench94": airbench94, "airbench96": airbench96}
    if name not in factories:
        raise ValueError(f"architecture must be one of {sorted(factories)}, not {name!r}")
    return Normalized(factories[name]())


# ---------------------------------------------------------------- cost

def macs_per_image(model: nn.Module) -> int:
    """Multiply-accumulates of one 32x32 forward pass (torch's FLOP counter / 2; convolutions and matmuls)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(torch.zeros(1, 3, 32, 32))
    return counter.get_total_flops() // 2


def architecture_costs(names, latency_runs: int = 100) -> pd.DataFrame:
    """Parameters, MACs per image and, on one CPU thread, training images/s (batch 256) and single-image
    latency (median ms)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = {}
    try:
        for name in names:
            model = build(name).to(memory_format=torch.channels_last)
            rows[name] = {"params": parameter_count(model), "MACs per image": macs_per_image(model),
                          "train images/s (1 thread)": training_throughput(model, (3, 32, 32), batch_size=256),
                          "latency ms (1 thread)": latency_ms(torch_predictor(model), torch.rand(1, 3, 32, 32),
                                                              runs=latency_runs)["median_ms"]}
    finally:
        torch.set_num_threads(threads)
    return pd.DataFrame.from_dict(rows, orient="index")


# ---------------------------------------------------------------- training

OPTIMIZERS = {  # name -> (class, extra arguments); learning rates come from the configuration
    "sgd_nesterov": (torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
    "adam": (torch.optim.Adam, {}),
    "adamw": (torch.optim.AdamW, {}),
}


def make_optimizer(name: str, model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """Weight decay on conv / linear weights only (not on batch-norm parameters and biases)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, not {name!r}")
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() <= 1]
    cls, extra = OPTIMIZERS[name]
    return cls([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
               lr=lr, **extra)


STUDY_EPOCHS = 15  # every run of sections 2-3: the same length for all
SWEEP_EPOCHS = 4  # the learning-rate sweep's runs
STUDY_SEEDS = (0, 1)
VALIDATION_PER_CLASS = 500  # 5,000 training images held out of every run: all choices are made on them
SMOKE_IMAGES_PER_CLASS = 20

# Learning rates swept per optimizer; AdamW's decoupled decay needs a ~100x larger coefficient.
LEARNING_RATES = {"sgd_nesterov": (0.05, 0.1, 0.2), "adam": (1e-3, 3e-3, 1e-2), "adamw": (1e-3, 3e-3, 1e-2)}
WEIGHT_DECAY = {"sgd_nesterov": 5e-4, "adam": 5e-4, "adamw": 5e-2}


def make_config(architecture: str | None = None, seed: int = 0, smoke: bool = False, **changes) -> dict:
    """One run. Without an architecture: the shipped model (RECIPE). A published architecture
    (PUBLISHED_RECIPES) takes its published recipe (`changes`: epochs); any other the study's shared recipe
    (SGD-Nesterov, one-cycle, label smoothing 0.1, flip + crop, STUDY_EPOCHS) unless changed.
    Identical recipes get identical names, so phases share runs."""
    if architecture is None:
        architecture, changes = RECIPE["architecture"], {"epochs": RECIPE["epochs"]} | changes
    if architecture in PUBLISHED_RECIPES:
        return published_config(architecture, seed=seed, smoke=smoke, **changes)
    run = {"architecture": architecture, "seed": seed, "epochs": STUDY_EPOCHS, "batch_size": 256,
           "optimizer": "sgd_nesterov", "lr": 0.1, "augmentation": "flip_crop", "label_smoothing": 0.1} | changes
    run["weight_decay"] = run.get("weight_decay", WEIGHT_DECAY[run["optimizer"]])
    run |= {"epochs": 1, "smoke": True} if smoke else {"smoke": False}
    name = f"{architecture}-{run['augmentation']}-{run['optimizer']}-lr{run['lr']:g}-{run['epochs']}ep-s{seed}"
    return {"name": name} | run


def baseline_config(smoke: bool) -> dict:
    """The Baseline notebook's run: the plain CNN, Adam, no augmentation, no label smoothing, 10 epochs."""
    return make_config("plain_cnn", smoke=smoke, epochs=10, optimizer="adam", lr=1e-3, augmentation="none",
                       label_smoothing=0.0)


def architecture_configs(smoke: bool) -> list[dict]:
    return [make_config(name, seed=seed, smoke=smoke) for name in ARCHITECTURES for seed in STUDY_SEEDS]


def augmentation_configs(architecture: str, smoke: bool) -> list[dict]:
    return [make_config(architecture, seed=seed, smoke=smoke, augmentation=policy)
            for policy in Augment.POLICIES for seed in STUDY_SEEDS]


def learning_rate_configs(architecture: str, smoke: bool) -> list[dict]:
    return [make_config(architecture, smoke=smoke, epochs=SWEEP_EPOCHS, optimizer=optimizer, lr=lr)
            for optimizer, rates in LEARNING_RATES.items() for lr in rates]


def recipe_name(run: dict) -> str:
    """A run's name without its seed: the runs of one recipe share it."""
    return run["config"]["name"].rsplit("-s", 1)[0]


def by_recipe(rows: list[dict]) -> dict[str, list[dict]]:
    """Runs grouped by recipe (their seeds together), in first-seen order."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(recipe_name(row), []).append(row)
    return groups


def best_recipe(rows: list[dict], key: str = "val_accuracy") -> list[dict]:
    """The seeds of the recipe with the highest mean `key` (validation accuracy: choices never read test)."""
    return max(by_recipe(rows).values(), key=lambda runs: np.mean([r[key] for r in runs]))


def run_study(runs: Path, smoke: bool, records: Path | None = None, workers: int | None = None,
              retrain: bool = False) -> dict:
    """Sections 2-3, every choice on validation: the architectures (shared recipe), then on the best one the
    augmentation policies and, side by side, a learning-rate sweep per optimizer. Returns each phase's runs
    and choices; `best` is the seeds of the best architecture with the best policy."""
    def train_all(configs):
        return run_all(run, configs, runs, workers=workers, records=records, retrain=retrain)

    architectures = train_all(architecture_configs(smoke))
    architecture = best_recipe(architectures)[0]["config"]["architecture"]
    augmentation_runs = augmentation_configs(architecture, smoke)
    phase = train_all(augmentation_runs + learning_rate_configs(architecture, smoke))
    augmentations, sweep = phase[:len(augmentation_runs)], phase[len(augmentation_runs):]
    best = best_recipe(augmentations)
    learning_rates = {name: best_recipe([r for r in sweep if r["config"]["optimizer"] == name])[0]["config"]["lr"]
                      for name in OPTIMIZERS}
    return {"architectures": architectures, "architecture": architecture, "augmentations": augmentations,
            "augmentation": best[0]["config"]["augmentation"], "sweep": sweep, "learning_rates": learning_rates,
            "best": best}


def p_values_against_best(rows: list[dict], labels: np.ndarray) -> list[float]:
    """Exact McNemar p-value of every run's test predictions against those of the run with the best
    validation accuracy."""
    top = max(rows, key=lambda row: row["val_accuracy"])["predictions"] == labels
    return [mcnemar_p_value(row["predictions"] == labels, top) for row in rows]


def train(config: dict, run_dir: Path, data: dict[str, ImageArrays]) -> tuple[nn.Module, list[dict]]:
    """Train (or reload) one configuration on `data["train"]`, scoring the validation split after every
    epoch (no early stopping: every run trains its fixed number of epochs and keeps the last weights). The
    training images sit on the training device, augmented there a batch at a time."""
    seed_everything(config["seed"])
    published = config["architecture"] in PUBLISHED_RECIPES
    device = pick_device()
    model = build(config["architecture"])
    train_images = channels_first(data["train"].images)
    if published:
        init_whitening(model.net[0], model.standardize(train_images[:5000].float() / 255))
    model = model.to(device, memory_format=torch.channels_last)
    transform = published_augmentation(config) if published else Augment(config["augmentation"])
    train_loader = ArrayLoader(train_images.to(device), torch.as_tensor(data["train"].labels).to(device),
                               batch_size=config["batch_size"], shuffle=True, transform=transform)
    val_loader = ArrayLoader(channels_first(data["val"].images), data["val"].labels, batch_size=1000)
    if published:
        optimizer, scheduler = airbench_optimizer(model, config, len(train_loader))
    else:
        optimizer = make_optimizer(config["optimizer"], model, config["lr"], config["weight_decay"])
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, config["lr"], epochs=config["epochs"],
                                                        steps_per_epoch=len(train_loader), pct_start=0.25)
    torch.backends.cudnn.benchmark = device.type == "cuda"  # fixed shapes: let cuDNN pick its fastest kernels
    autocast = torch.bfloat16 if config.get("precision") == "bf16" and device.type == "cuda" else None
    history = fit(model, optimizer, nn.CrossEntropyLoss(label_smoothing=config["label_smoothing"]), train_loader,
                  val_loader, config["epochs"], run_dir=run_dir, scheduler=scheduler, scheduler_per_batch=True,
                  eval_loss_fn=nn.CrossEntropyLoss(), autocast=autocast, progress=False)
    return model, history


# ---------------------------------------------------------------- airbench: the published recipes, ported
# Keller Jordan's airbench94 and airbench96 as in the `airbench` package 0.1.8 on PyPI (its README: 94.01% and
# 96.05% on the official data): a frozen whitening stem, identity-initialised convolutions, scale-free BatchNorm,
# SGD-Nesterov in decoupled form on a triangular schedule, label smoothing 0.2, lookahead weight averaging,
# flips and reflected shifts (and for airbench96 cutout), and flip + 1-px shift test-time augmentation. Left
# different here: random flips where upstream flips the whole set every other epoch, cutout squares centred
# anywhere (clipped at the borders, 13 x 13) where upstream places 12 x 12 squares inside the image, whole
# epochs (airbench94: 10 for 9.9), bfloat16 autocast where upstream keeps fp16 weights, a mean loss with the
# learning rate scaled to match upstream's summed one, and batches augmented one at a time (upstream: the
# whole epoch at once). `upstream_run` trains the package itself on the same arrays.

class Scale(nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


def shift_only_batch_norm(c: int, momentum: float = 0.4) -> nn.BatchNorm2d:
    """BatchNorm with a learned shift but no learned scale (airbench94's running statistics move fast)."""
    norm = nn.BatchNorm2d(c, eps=1e-12, momentum=momentum)
    norm.weight.requires_grad_(False)
    return norm


def identity_conv(c_in: int, c_out: int) -> nn.Conv2d:
    """3x3 convolution whose first c_in filters start as the identity: an implicit residual connection."""
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[:c_in])
    return conv


def whitened_airbench(widths, residual: bool, batch_norm_momentum: float) -> nn.Module:
    """A frozen 2x2 whitening stem (24 filters: 12 whitening directions and their negatives), three airbench
    stages, global max pooling, a bias-free linear layer scaled by 1/9."""
    whiten = nn.Conv2d(3, 24, 2, bias=True)
    whiten.weight.requires_grad_(False)
    with torch.no_grad():
        whiten.bias.zero_()
    norm = functools.partial(shift_only_batch_norm, momentum=batch_norm_momentum)
    layers = [whiten, nn.GELU(), *airbench_stages(24, widths, identity_conv, norm, residual)]
    return nn.Sequential(*layers, nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(widths[-1], 10, bias=False),
                         Scale(1 / 9))


def airbench94() -> nn.Module:
    return whitened_airbench((64, 256, 256), residual=False, batch_norm_momentum=0.4)


def airbench96() -> nn.Module:
    return whitened_airbench((128, 512, 512), residual=True, batch_norm_momentum=0.4)


def init_whitening(conv: nn.Conv2d, x: torch.Tensor, eps: float = 5e-4) -> None:
    """Set the stem's filters to the eigenvectors of the (uncentred) covariance of all k x k patches of the
    normalised images `x`, each divided by the square root of its eigenvalue, followed by their negatives."""
    k = conv.kernel_size[0]
    patches = x.unfold(2, k, 1).unfold(3, k, 1).transpose(1, 3).reshape(-1, 3 * k * k).double()
    eigenvalues, eigenvectors = torch.linalg.eigh(patches.T @ patches / len(patches))
    filters = (eigenvectors.T / (eigenvalues[:, None] + eps).sqrt()).flip(0).reshape(-1, 3, k, k).float()
    with torch.no_grad():
        conv.weight.copy_(torch.cat([filters, -filters]))


def triangle(step: int, total: int, start: float = 0.2, peak_at: float = 0.23, end: float = 0.07) -> float:
    """airbench's learning-rate multiplier: linear from `start` up to 1 at `peak_at` of training, down to `end`."""
    return float(np.interp(step, [0, peak_at * total, total], [start, 1.0, end]))


class Lookahead:
    """airbench's lookahead averaging around an optimizer: from `start_step` on, every `every` steps the
    weights and BatchNorm statistics move to an exponential average of themselves (the average's decay grows
    as (step / total)^3, so training moves fast early and averages strongly late); after the last step the
    model takes the average. Its state (the average, the step count) is saved with the optimizer's."""

    def __init__(self, optimizer, model: nn.Module, total_steps: int, start_step: int, every: int = 5,
                 decay: float = 0.95, power: float = 3.0):
        self.optimizer, self.model, self.total_steps = optimizer, model, total_steps
        self.start_step, self.every = start_step, every
        self.decay, self.power = decay ** every, power
        self.steps, self.average = 0, None

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def _float_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.model.state_dict().items() if v.is_floating_point()}

    def step(self) -> None:
        self.optimizer.step()
        self.steps += 1
        if self.steps > self.start_step and self.steps % self.every == 0:
            if self.average is None:
                self.average = {k: v.clone() for k, v in self._float_state().items()}
            else:
                self._move_to_average(self.decay * (self.steps / self.total_steps) ** self.power)
        if self.average is not None and self.steps == self.total_steps:
            self._move_to_average(1.0)

    @torch.no_grad()
    def _move_to_average(self, decay: float) -> None:
        for key, value in self._float_state().items():
            self.average[key].lerp_(value, 1 - decay)
            value.copy_(self.average[key])

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "steps": self.steps, "average": self.average}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps, self.average = state["steps"], state["average"]


def airbench_optimizer(model: nn.Module, config: dict, steps_per_epoch: int):
    """SGD-Nesterov with airbench's decoupled hyper-parameters (lr and weight decay per 1,024 examples,
    independent of the momentum), BatchNorm shifts at 64x the rate, the whitening bias trained for the first
    3 epochs only, the triangular schedule, and lookahead from epoch 3 on. For a mean (not summed) loss."""
    momentum = config["momentum"]
    step_scale = 1024 * (1 + 1 / (1 - momentum))  # a Nesterov step's size relative to one 1,024-example gradient
    lr = config["lr"] * config["batch_size"] / step_scale
    decay_per_step = config["weight_decay"] * config["batch_size"] / step_scale
    stem_bias = model.net[0].bias
    shifts = [p for p in model.parameters() if p.requires_grad and p.dim() == 1 and p is not stem_bias]
    weights = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]
    groups = [(weights, lr), (shifts, lr * 64), ([stem_bias], lr)]
    sgd = torch.optim.SGD([{"params": params, "lr": rate, "weight_decay": decay_per_step / rate}
                           for params, rate in groups], momentum=momentum, nesterov=True)
    total, three_epochs = config["epochs"] * steps_per_epoch, 3 * steps_per_epoch
    schedule = functools.partial(triangle, total=total, peak_at=config["warmup"], end=config["final_lr"])

    def stem_bias_schedule(step):
        return schedule(step) if step < three_epochs else 0.0

    scheduler = torch.optim.lr_scheduler.LambdaLR(sgd, [schedule, schedule, stem_bias_schedule])
    return Lookahead(sgd, model, total, start_step=three_epochs), scheduler


# The published hyper-parameters that differ between the two nets: epochs (upstream: 9.9 and 40; whole epochs
# here), learning rate and weight decay per 1,024 examples, training shifts (px), cutout (px), the schedule's
# warm-up fraction and final multiplier.
PUBLISHED_RECIPES = {
    "airbench94": {"epochs": 10, "lr": 11.5, "weight_decay": 0.0153, "shift": 2, "cutout": 0, "warmup": 0.23,
                   "final_lr": 0.07},
    "airbench96": {key: RECIPE[key] for key in ("epochs", "lr", "weight_decay", "shift", "cutout", "warmup",
                                                "final_lr")},
}
PUBLISHED_SHARED = ("batch_size", "optimizer", "momentum", "label_smoothing", "tta", "precision")  # RECIPE's
PUBLISHED_RUNS = {"airbench94": [{"seed": 0}, {"seed": 1}],  # the notebook's runs: changes to the defaults
                  "airbench96": [{"seed": 0}, {"seed": 1}, {"seed": 2}]}
UPSTREAM_EPOCHS = {"airbench94": 9.9, "airbench96": 40}  # the package's defaults


def published_config(architecture: str, epochs: int | None = None, seed: int = 0, smoke: bool = False) -> dict:
    """One of the PUBLISHED_RECIPES (its own length unless `epochs` is given). Smoke: a tenth of the epochs."""
    run = {"architecture": architecture, "seed": seed} | {key: RECIPE[key] for key in PUBLISHED_SHARED} | \
        PUBLISHED_RECIPES[architecture]
    epochs = epochs or run["epochs"]
    run |= {"epochs": max(1, epochs // 10) if smoke else epochs, "smoke": smoke}
    return {"name": f"{architecture}-{run['epochs']}ep-s{seed}"} | run


def published_configs(architecture: str, smoke: bool = False) -> list[dict]:
    """The notebook's runs of a published recipe (PUBLISHED_RUNS): airbench94 with two seeds, airbench96 with
    three (the members of the ensemble)."""
    return [published_config(architecture, smoke=smoke, **changes) for changes in PUBLISHED_RUNS[architecture]]


def published_augmentation(config: dict):
    """Random flips and shifts, then (when the recipe has one) cutout, on whole float batches."""
    shift = flip_and_shift(config["shift"], fill="reflect")
    return (lambda x: cutout(shift(x), config["cutout"])) if config["cutout"] else shift


class FlipShiftAveraged(nn.Module):
    """airbench's test-time augmentation: logits averaged over the image and its mirror, at its own position
    (weight 1/2) and shifted by one pixel up-left and down-right (1/4 each; reflected borders)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def _mirrored(self, x):
        return (self.model(x) + self.model(x.flip(3))) / 2

    def forward(self, x):
        h, w = x.shape[2:]
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        return self._mirrored(x) / 2 + (self._mirrored(padded[..., :h, :w]) + self._mirrored(padded[..., 2:, 2:])) / 4


TTA = {"none": lambda model: model, "flip": FlipAveraged, "flip_translate": FlipShiftAveraged}


@functools.cache  # one read per process: a worker reuses it for every run it trains
def study_data(smoke: bool) -> dict[str, ImageArrays]:
    """train (45,000), val (VALIDATION_PER_CLASS images of every class, held out of the 50,000 training images,
    the same for every run) and test (10,000). Smoke: 20 training images per class, 5 of them held out."""
    data = load_cifar10(limit_per_class=SMOKE_IMAGES_PER_CLASS if smoke else None)
    train, val = split_validation(data["train"], 5 if smoke else VALIDATION_PER_CLASS)
    return {"train": train, "val": val, "test": data["test"]}


def split_validation(arrays: ImageArrays, per_class: int, seed: int = 0) -> tuple[ImageArrays, ImageArrays]:
    """(the rest, `per_class` random images of every class), both in dataset order."""
    rng = np.random.default_rng(seed)
    held = np.concatenate([rng.permutation(np.where(arrays.labels == c)[0])[:per_class]
                           for c in np.unique(arrays.labels)])
    return arrays.subset(np.setdiff1d(np.arange(len(arrays)), held)), arrays.subset(np.sort(held))


def scores(config: dict, data: dict[str, ImageArrays], probabilities: dict[str, np.ndarray]) -> dict:
    """One row of the study's tables from softmax `probabilities` {split: (2, N, 10): without and with the
    recipe's TTA}: validation and test accuracy, test macro-F1 and the compact test predictions (classes and
    TTA confidence in percent) that tables, tests and figures need."""
    val, test = probabilities["val"].argmax(2), probabilities["test"].argmax(2)
    labels = data["test"].labels
    return {"config": config, "val_accuracy": accuracy(data["val"].labels, val[0]),
            "val_tta_accuracy": accuracy(data["val"].labels, val[1]), "accuracy": accuracy(labels, test[0]),
            "tta_accuracy": accuracy(labels, test[1]), "macro_f1": macro_f1(labels, test[0]),
            "predictions": test[0].astype(np.uint8), "tta_predictions": test[1].astype(np.uint8),
            "tta_confidence": np.round(100 * probabilities["test"][1].max(1)).astype(np.uint8)}


def run(config: dict, run_dir: Path) -> dict:
    """Train (or reload) one configuration and score it on validation and test: one row of the tables."""
    data = study_data(config["smoke"])
    model, history = train(config, run_dir, data)
    tta = config.get("tta", "flip")
    probabilities = {split: cached_array(run_dir / f"{split}_probabilities.npy", lambda split=split: np.stack(
        [predict(model, data[split].images, view) for view in ("none", tta)])) for split in ("val", "test")}
    train_seconds = sum(row["train_seconds"] for row in history)
    return scores(config, data, probabilities) | {
        "history": history, "train_seconds": train_seconds, "hardware": trained_on(run_dir),
        "train_images_per_second": len(data["train"]) * len(history) / train_seconds}


def ensemble_config(members: list[dict]) -> dict:
    """An ensemble of trained runs: the mean of their softmax probabilities, without and with TTA."""
    return {"name": f"{recipe_name({'config': members[0]})}-ensemble-of-{len(members)}", "members": members,
            "smoke": members[0]["smoke"], "tta": members[0]["tta"]}


def ensemble_run(config: dict, run_dir: Path) -> dict:
    """Score `ensemble_config`'s members averaged, from the probabilities their runs cached (members first)."""
    data = study_data(config["smoke"])
    members = [experiment_folder(run_dir.parent, member) for member in config["members"]]
    probabilities = {split: np.mean([np.load(m / f"{split}_probabilities.npy") for m in members], axis=0)
                     for split in ("val", "test")}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "hardware.txt").write_text(trained_on(members[0]))  # where its members trained
    return scores(config, data, probabilities) | {"hardware": trained_on(members[0])}


def upstream_run(config: dict, run_dir: Path) -> dict:
    """Train the `airbench` package itself (`pip install airbench`; it needs a CUDA GPU) on this study's
    arrays, with its own loader, augmentation and defaults, timed like the port (wall clock of training,
    whitening included, evaluation excluded): the port's reference in section 4."""
    import tempfile

    import airbench

    if not torch.cuda.is_available():
        raise RuntimeError("the airbench package trains on a CUDA GPU only; the notebook reads its records")
    data, variant = study_data(config["smoke"]), config["architecture"]
    with tempfile.TemporaryDirectory() as folder:
        for split in ("train", "test"):  # upstream reads <folder>/<split>.pt and its test set from ./cifar10
            arrays = data[split]
            torch.save({"images": torch.as_tensor(arrays.images), "labels": torch.as_tensor(arrays.labels),
                        "classes": CLASSES}, Path(folder) / f"{split}.pt")
        (Path(folder) / "cifar10").symlink_to(folder)
        work = Path.cwd()
        os.chdir(folder)
        try:
            module = getattr(airbench, f"lib_{variant}")
            train_loader = airbench.CifarLoader(folder, train=True, batch_size=module.hyp["opt"]["batch_size"],
                                                aug=module.hyp["aug"], altflip=True)
            torch.manual_seed(config["seed"])
            torch.cuda.synchronize()
            started = time.perf_counter()
            model = getattr(airbench, f"train{variant[-2:]}")(train_loader, epochs=config["epochs"], verbose=False)
            torch.cuda.synchronize()
            train_seconds = time.perf_counter() - started
            loaders = {"test": airbench.CifarLoader(folder, train=False, batch_size=2000)}
            loaders["val"] = airbench.CifarLoader(folder, train=False, batch_size=2000)
            loaders["val"].images = channels_first(data["val"].images).cuda().half().div(255).contiguous(
                memory_format=torch.channels_last)
            probabilities = {split: torch.stack([airbench.infer(model, loader, level).float().softmax(1)
                                                 for level in (0, 2)]).cpu().numpy()
                             for split, loader in loaders.items()}
        finally:
            os.chdir(work)
    record_hardware(run_dir, torch.device("cuda"))
    return scores(config, data, probabilities) | {
        "train_seconds": train_seconds, "hardware": trained_on(run_dir),
        "train_images_per_second": len(data["train"]) * config["epochs"] / train_seconds}


def upstream_configs(smoke: bool) -> list[dict]:
    """The package's airbench94 (two seeds) and airbench96 (one), at its default lengths; none in the smoke
    profile (the package trains on a GPU only)."""
    return [] if smoke else [{"name": f"upstream-{variant}-s{seed}", "architecture": variant,
                              "epochs": UPSTREAM_EPOCHS[variant], "seed": seed, "smoke": smoke,
                              "package": "airbench==0.1.8"}
                             for variant, seeds in (("airbench94", (0, 1)), ("airbench96", (0,))) for seed in seeds]


def train_everything(runs: Path, smoke: bool, records: Path | None = None, workers: int | None = None,
                     retrain: bool = False) -> dict:
    """Every run of the Challenge notebook and the Baseline's, trained or read from `records`: one at a time,
    so that their times compare, the published recipes ported, airbench96's ensemble, the baseline and the
    `airbench` package on the same arrays; then the study (`run_study`, `workers` runs side by side)."""
    def one_at_a_time(fn, configs):
        return run_all(fn, configs, runs, workers=1, records=records, retrain=retrain)

    published = {name: one_at_a_time(run, published_configs(name, smoke)) for name in PUBLISHED_RECIPES}
    (ensemble,) = one_at_a_time(ensemble_run, [ensemble_config([r["config"] for r in published["airbench96"]])])
    (baseline,) = one_at_a_time(run, [baseline_config(smoke)])
    upstream = one_at_a_time(upstream_run, upstream_configs(smoke))
    study = run_study(runs, smoke, records, workers, retrain)
    return {"study": study, "published": published, "upstream": upstream, "ensemble": ensemble,
            "baseline": baseline}


def shipped_run(airbench96_runs: list[dict]) -> dict:
    """The one network the predictor ships: of airbench96's seeds, the best in validation accuracy with TTA."""
    return max(airbench96_runs, key=lambda r: r["val_tta_accuracy"])


def save_checkpoint(config: dict, runs: Path, path: Path = CHECKPOINTS / WEIGHTS) -> Path:
    """A trained run's final weights as an fp16 checkpoint (the predictor's: `WEIGHTS`)."""
    model = build(config["architecture"])
    model.load_state_dict(load_state(experiment_folder(runs, config) / "final.pt", "cpu"))
    return save_half(model, Path(path))


def baseline_model(runs: Path, smoke: bool) -> nn.Module:
    """The Baseline's trained plain CNN: from its run folder when it was trained here, else (a run read from
    its record) the committed checkpoint `BASELINE_WEIGHTS`."""
    config = baseline_config(smoke)
    model = build(config["architecture"])
    final = experiment_folder(runs, config) / "final.pt"
    model.load_state_dict(load_state(final) if final.exists() else load_half(CHECKPOINTS / BASELINE_WEIGHTS))
    return model


def predict(model: nn.Module, images: np.ndarray, tta: str = "none") -> np.ndarray:
    """Softmax probabilities of uint8 (N, 32, 32, 3) images, with the named test-time augmentation (`TTA`)."""
    return predict_probabilities(TTA[tta](model), channels_first(images), batch_size=1000)


def preprocess(path) -> torch.Tensor:
    """Any image file -> float (3, 32, 32) in [0, 1]; bad files raise BadImageError."""
    return torch.tensor(load_image(path, (32, 32))).permute(2, 0, 1).float() / 255


# ---------------------------------------------------------------- results.json

def final_candidates(everything: dict) -> dict[str, list[dict]]:
    """The recipes the notebook's section 5 chooses from, each with its seeds (the ensemble as one run)."""
    study = everything["study"]["best"]
    return {f"study: {recipe_name(study[0])}": study, "airbench94 port": everything["published"]["airbench94"],
            "airbench96 port": everything["published"]["airbench96"],
            "airbench96 port, ensemble of its 3 seeds": [everything["ensemble"]]}


def choose_final(candidates: dict[str, list[dict]]) -> str:
    """The candidate with the best mean validation accuracy with its test-time augmentation."""
    return max(candidates, key=lambda name: np.mean([r["val_tta_accuracy"] for r in candidates[name]]))


def run_scores(run: dict) -> dict:
    keys = ("val_accuracy", "val_tta_accuracy", "accuracy", "tta_accuracy", "train_seconds", "hardware")
    return {key: run.get(key) for key in keys}


def speed_and_accuracy(runs: list[dict]) -> dict:
    """Mean test accuracy with TTA and the fastest run's training images/s (the first run of a process pays
    for cuDNN's kernel search)."""
    return {"test_accuracy": float(np.mean([r["tta_accuracy"] for r in runs])), "seeds": len(runs),
            "images_per_second": max(r["train_images_per_second"] for r in runs)}


def summarize(*, profile: str, smoke: bool, everything: dict, costs: pd.DataFrame, cpu_hours: float) -> dict:
    """results.json from `train_everything`'s runs and the architectures' `costs`."""
    study, published, upstream = everything["study"], everything["published"], everything["upstream"]
    candidates = final_candidates(everything)
    final_name = choose_final(candidates)
    final_mean, final_std = mean_std([r["tta_accuracy"] for r in candidates[final_name]])
    single = published["airbench96"]
    single_mean, single_std = mean_std([r["tta_accuracy"] for r in single])
    shipped = shipped_run(single)
    tta = shipped["config"]["tta"] if shipped["val_tta_accuracy"] >= shipped["val_accuracy"] else "none"
    hardware = shipped["hardware"]
    by_variant = {variant: [r for r in upstream if r["config"]["architecture"] == variant] for variant in published}
    study_mean = {name: float(np.mean([r["accuracy"] for r in runs]))
                  for name, runs in by_recipe(study["architectures"]).items()}
    chosen_study = study_mean[recipe_name(best_recipe(study["architectures"])[0])]
    baseline = everything["baseline"]
    return {
        "dataset": "cifar10_jpeg_q75",
        "data": "CIFAR-10 offline mirror (JPEG quality 75): " + (
            "20 images per class (smoke subset)" if smoke else
            "45,000 train, 5,000 validation (held out of the training set), 10,000 test"),
        "profile": profile,
        "selected_on": "validation",
        "architecture_epochs": STUDY_EPOCHS,
        "best_architecture": study["architecture"],
        "best_augmentation": study["augmentation"],
        "learning_rates": study["learning_rates"],
        "final_model": {"name": final_name, "runs": [r["config"]["name"] for r in candidates[final_name]],
                        "val_tta_accuracy": float(np.mean([r["val_tta_accuracy"] for r in candidates[final_name]])),
                        "test_accuracy": final_mean, "test_accuracy_std": final_std},
        "best_model": shipped["config"]["name"],
        "best_recipe": {k: v for k, v in shipped["config"].items() if k not in ("name", "seed", "smoke")}
        | {"tta": tta},
        "shipped": run_scores(shipped),
        "airbench96_test_accuracy": {"mean": single_mean, "std": single_std, "seeds": len(single)},
        "best_train_seconds": float(np.mean([r["train_seconds"] for r in single])),
        "best_train_hardware": hardware,
        "port": {variant: speed_and_accuracy(runs) for variant, runs in published.items()},
        "upstream_airbench": {variant: speed_and_accuracy(runs) for variant, runs in by_variant.items() if runs},
        "runs": {r["config"]["name"]: run_scores(r) for r in [*published["airbench94"], *single, everything["ensemble"],
                                                              *upstream, baseline]},
        "airbench96_cpu_hours_estimated": cpu_hours,
        "baseline_test_accuracy": baseline["accuracy"],
        "architectures": [{"name": name, "val_accuracy": float(np.mean([r["val_accuracy"] for r in runs])),
                           "test_accuracy": study_mean[recipe_name(runs[0])],
                           "macro_f1": float(np.mean([r["macro_f1"] for r in runs])), "seeds": len(runs),
                           "params": int(costs.loc[name, "params"]), "macs": int(costs.loc[name, "MACs per image"]),
                           "epochs": runs[0]["config"]["epochs"],
                           "latency_ms": costs.loc[name, "latency ms (1 thread)"]}
                          for name, runs in zip(ARCHITECTURES, by_recipe(study["architectures"]).values())],
        "augmentation": {runs[0]["config"]["augmentation"]: {
            "val_accuracy": float(np.mean([r["val_accuracy"] for r in runs])),
            "test_accuracy": float(np.mean([r["accuracy"] for r in runs]))}
            for runs in by_recipe(study["augmentations"]).values()},
        "optimizers": {r["config"]["optimizer"]: {"lr": r["config"]["lr"], "epochs": r["config"]["epochs"],
                                                 "val_accuracy": r["val_accuracy"]}
                       for r in study["sweep"]
                       if r["config"]["lr"] == study["learning_rates"][r["config"]["optimizer"]]},
        "headline": {
            "best test accuracy": f"{final_mean:.4f} ({final_name}, chosen on validation)",
            "one network": f"{single_mean:.4f} ± {single_std:.4f} over {len(single)} seeds (airbench96, "
                           f"{single[0]['config']['epochs']} epochs, {hardware})",
            "equal-epoch study": f"{chosen_study:.4f} ({study['architecture']}, the best of {len(ARCHITECTURES)} "
                                 f"architectures on validation at {STUDY_EPOCHS} epochs, without TTA)",
            "baseline": f"{baseline['accuracy']:.4f} (plain CNN, 10 epochs)"},
    }


# ---------------------------------------------------------------- the committed predictor

TTA_VIEWS = {"none": "the image alone", "flip": "mean softmax of the image and its mirror image",
             "flip_translate": "logits averaged over the image and its mirror, at its own position (weight 1/2) "
                               "and shifted one pixel up-left and down-right (1/4 each, reflected borders): 6 views"}


def export_predictor(folder=CHECKPOINTS, smoke: bool = False) -> Path:
    """`folder/predictor.json` for the best model the notebook saved there (`WEIGHTS`), described from the
    results.json beside `folder` (the run, its recipe and scores); reads files only."""
    folder = Path(folder)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing: the notebook's best-model cell saves it")
    results = load_results(folder.parent)
    recipe, run_name = results["best_recipe"], results["best_model"]
    architecture, tta = recipe["architecture"], recipe["tta"]
    model = build(architecture)
    model.load_state_dict(load_half(weights))  # the weights fit the architecture the results name
    scores = results["shipped"]
    return write_manifest(
        folder, challenge="cifar10", task="image classification: the 10 CIFAR-10 classes", classes=CLASSES,
        model={"architecture": architecture, "builder": f"common.build({architecture!r})",
               "parameters": parameter_count(model), "output": "10 logits; probabilities are their softmax"},
        input={"size": [32, 32], "mode": "RGB", "preprocess": "common.preprocess",
               "resize": "any size and format, EXIF-rotated, converted to RGB, bilinear resize to 32x32",
               "scaling": "uint8 / 255 -> [0, 1]; the network standardises with the CIFAR-10 mean and std itself",
               "mean": list(MEAN), "std": list(STD)},
        tta={"name": tta, "wrapper": f"common.TTA[{tta!r}]", "views": TTA_VIEWS[tta]},
        top_k=3,
        weights={"file": WEIGHTS, "bytes": weights.stat().st_size,
                 "format": "state dict with fp16 floats: torch.load(weights_only=True), cast to fp32 "
                           "(mlkit.train.load_half)"},
        source={"run": run_name, "recipe": recipe, "data": results["data"], "profile": results["profile"],
                "trained_on": scores["hardware"], "train_seconds": scores["train_seconds"],
                "chosen_on": "validation accuracy with TTA, of airbench96's seeds",
                "val_accuracy_with_tta": scores["val_tta_accuracy"], "test_accuracy": scores["accuracy"],
                "test_accuracy_with_tta": scores["tta_accuracy"], "results": "results.json (best_model, shipped)"},
        smoke=smoke)


class Cifar10Predictor:
    """The saved best model wrapped in its test-time augmentation: `predict(inputs)` gives one row per file."""

    def __init__(self, manifest: dict, model: nn.Module):
        self.manifest, self.classes = manifest, manifest["classes"]
        self.model = TTA[manifest["tta"]["name"]](model.eval())

    def predict(self, inputs) -> pd.DataFrame:
        """Files, folders or a list of them: columns file, prediction, probability, top classes, error."""
        found = predict_files(self.model, inputs, preprocess, self.classes, top_k=self.manifest["top_k"])
        return image_table(found)

    def __repr__(self) -> str:
        tta = self.manifest["tta"]["name"]
        return (f"cifar10 {self.manifest['model']['architecture']} predictor, {len(self.classes)} classes, "
                f"{'no' if tta == 'none' else tta.replace('_', '+')} TTA")


def load_predictor(folder=CHECKPOINTS) -> Cifar10Predictor:
    """The predictor `export_predictor` described in `folder` (its manifest and fp16 weights only)."""
    manifest = read_manifest(folder)
    (weights,) = named_files(folder, manifest["weights"]["file"])
    model = build(manifest["model"]["architecture"])
    model.load_state_dict(load_half(weights))
    return Cifar10Predictor(manifest, model)


def demo_inputs(folder=HERE / "runs" / "demo_inputs") -> Path:
    """`folder` (replaced) with the committed test images of `DEMO` and the inputs that must be converted or
    refused with a reason."""
    return write_demo_folder(folder, DEMO)


def prediction_grid(predictions: pd.DataFrame, inputs, columns: int = 10):
    """The readable inputs at the model's 32x32, titled with file, predicted class and probability (rows with
    an error are left out); None, with a note, when no input was readable."""
    files = list_files(inputs)
    shown = [(path, row) for path, (_, row) in zip(files, predictions.iterrows(), strict=True) if not row["error"]]
    if not shown:
        print("no readable image to show")
        return None
    return image_grid(np.stack([load_image(path, (32, 32)) for path, _ in shown]),
                      [f"{path.name[:16]}\n{row['prediction']} {row['probability']:.0%}" for path, row in shown],
                      columns=min(columns, len(shown)), size=1.6, title="predicted class and probability")
