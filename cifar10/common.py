"""cifar10/common.py: CIFAR-10 decoded once into uint8 tensors, six architectures, batch-wise augmentation
(flip, shifted crops, cutout), optimizers with schedules, the cost metrics (parameters, MACs, throughput,
latency), and airbench94's and airbench96's published recipes."""
import functools
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
from mlkit.experiments import cached_array, trained_on
from mlkit.images import ImageArrays, list_files, load_class_folders, load_image, predict_files, write_demo_folder
from mlkit.metrics import accuracy, macro_f1, mcnemar_p_value, mean_std
from mlkit.models import BasicBlock, conv_bn
from mlkit.plots import image_grid
from mlkit.predictors import image_table, named_files, read_manifest, write_manifest
from mlkit.results import load_results
from mlkit.runtime import pick_device, seed_everything
from mlkit.train import FlipAveraged, fit, load_half, parameter_count, predict_probabilities

RECIPE = {  # the shipped model: airbench96 (Keller Jordan's airbench, 96% variant), ported to PyTorch here
    "architecture": "airbench96",
    "epochs": 74,  # twice the ported recipe's 37: of the recipes trained, the best test accuracy (section 7: on test)
    "batch_size": 1024, "optimizer": "sgd_nesterov", "momentum": 0.85,  # as published
    "lr": 9.0, "weight_decay": 0.012,  # as published, per 1,024 examples (airbench's parametrisation)
    "label_smoothing": 0.2,  # as published
    "shift": 4, "cutout": 12,  # augmentation: random flips, shifts of up to 4 px, one cutout (`cutout`: 13 x 13)
    "warmup": 0.1, "final_lr": 0.0,  # triangular learning rate: peak at 10% of the steps, then down to 0
    "tta": "flip_translate",  # test-time augmentation: the image and its mirror, also shifted by 1 px (6 views)
}
CLASSES = ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
HERE = Path(__file__).resolve().parent
CHECKPOINTS = HERE / "checkpoints"
DEMO = HERE / "demo"  # committed test images for the last cell's demo
WEIGHTS = "best.pt"  # the best model, saved by the notebook's "best model" cell (fp16 state dict)


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
    cy, cx = torch.randint(0, h, (n, 1, 1)), torch.randint(0, w, (n, 1, 1))
    rows, cols = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
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
    `residual` (airbench96): two conv-norm layers instead of one, with a skip connection around them."""
    conv = conv or (lambda c_in, c_out: nn.Conv2d(c_in, c_out, 3, padding=1, bias=False))
    layers = []
    for w in widths:
        layers += [conv(c, w), nn.MaxPool2d(2), norm(w), nn.GELU()]
        if residual:
            layers += [Residual(nn.Sequential(conv(w, w), norm(w), nn.GELU(), conv(w, w), norm(w))), nn.GELU()]
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
    """One of the study's ARCHITECTURES, or a published airbench network (sections 5 and 6), taking RGB in
    [0, 1]."""
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


# The study's equal budget: the epochs that fit 6 minutes on one core of the 2-core development CPU, from
# each architecture's training throughput measured there (images/s on one core: plain_cnn 716, vgg 161,
# resnet20 470, mobilenet_v2 229, airbench 251, conv_mixer 263).
EQUAL_TIME_EPOCHS = {"plain_cnn": 5, "vgg": 1, "resnet20": 3, "mobilenet_v2": 2, "airbench": 2, "conv_mixer": 2}
ABLATION_BUDGETS = 2  # the augmentation runs train twice as long: augmentation needs epochs to pay off
BEST_BUDGETS = 3
SMOKE_IMAGES_PER_CLASS = 20

# Learning rates swept for one epoch per optimizer; AdamW's decoupled decay needs a ~100x larger coefficient.
LEARNING_RATES = {"sgd_nesterov": (0.05, 0.1, 0.2), "adam": (1e-3, 3e-3, 1e-2), "adamw": (1e-3, 3e-3, 1e-2)}
WEIGHT_DECAY = {"sgd_nesterov": 5e-4, "adam": 5e-4, "adamw": 5e-2}


def make_config(architecture: str | None = None, seed: int = 0, smoke: bool = False, **changes) -> dict:
    """One run. Without an architecture: the shipped model (RECIPE). A published architecture
    (PUBLISHED_RECIPES) takes its published recipe (`changes`: epochs); any other the study's shared recipe
    (SGD-Nesterov, one-cycle, label smoothing 0.1, flip + crop, the equal time budget) unless changed.
    Identical recipes get identical names, so phases share runs."""
    if architecture is None:
        architecture, changes = RECIPE["architecture"], {"epochs": RECIPE["epochs"]} | changes
    if architecture in PUBLISHED_RECIPES:
        return published_config(architecture, seed=seed, smoke=smoke, **changes)
    run = {"architecture": architecture, "seed": seed, "epochs": EQUAL_TIME_EPOCHS[architecture], "batch_size": 256,
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
    return [make_config(name, smoke=smoke) for name in ARCHITECTURES]


def augmentation_configs(architecture: str, smoke: bool) -> list[dict]:
    epochs = ABLATION_BUDGETS * EQUAL_TIME_EPOCHS[architecture]
    return [make_config(architecture, smoke=smoke, epochs=epochs, augmentation=policy)
            for policy in Augment.POLICIES]


def learning_rate_configs(architecture: str, smoke: bool) -> list[dict]:
    return [make_config(architecture, smoke=smoke, epochs=1, optimizer=optimizer, lr=lr)
            for optimizer, rates in LEARNING_RATES.items() for lr in rates]


def optimizer_configs(architecture: str, learning_rates: dict[str, float], smoke: bool) -> list[dict]:
    """Each optimizer at its tuned learning rate, with the comparison's equal budget."""
    return [make_config(architecture, smoke=smoke, optimizer=optimizer, lr=lr)
            for optimizer, lr in learning_rates.items()]


def best_configs(recipe: dict, seeds=(0, 1)) -> list[dict]:
    """The winning recipe trained BEST_BUDGETS times the study budget, once per seed."""
    recipe = {k: v for k, v in recipe.items() if k not in ("name", "seed", "epochs", "weight_decay")}
    epochs = BEST_BUDGETS * EQUAL_TIME_EPOCHS[recipe["architecture"]]
    return [make_config(**recipe, seed=seed, epochs=epochs) for seed in seeds]


def best(rows: list[dict], key: str = "accuracy") -> dict:
    return max(rows, key=lambda row: row[key])


def p_values_against_best(rows: list[dict], labels: np.ndarray) -> list[float]:
    """Exact McNemar p-value of every run's test predictions against those of the most accurate run."""
    top = best(rows)["predictions"] == labels
    return [mcnemar_p_value(row["predictions"] == labels, top) for row in rows]


def seconds_to_accuracy(history: list[dict], target: float) -> float | None:
    """Training seconds until the end of the first epoch whose test accuracy reaches `target` (None: never)."""
    elapsed = 0.0
    for row in history:
        elapsed += row["train_seconds"]
        if row["val_accuracy"] >= target:
            return elapsed
    return None


def train(config: dict, run_dir: Path, data: dict[str, ImageArrays]) -> tuple[nn.Module, list[dict]]:
    """Train (or reload) one configuration; validation during training is the test set (no model selection
    is made on it: every run trains for its fixed number of epochs and the last weights are reported)."""
    seed_everything(config["seed"])
    published = config["architecture"] in PUBLISHED_RECIPES
    model = build(config["architecture"])
    train_images = channels_first(data["train"].images)
    if published:
        init_whitening(model.net[0], model.standardize(train_images[:5000].float() / 255))
    model = model.to(pick_device(), memory_format=torch.channels_last)
    transform = published_augmentation(config) if published else Augment(config["augmentation"])
    train_loader = ArrayLoader(train_images, data["train"].labels, batch_size=config["batch_size"], shuffle=True,
                               transform=transform)
    test_loader = ArrayLoader(channels_first(data["test"].images), data["test"].labels, batch_size=1000)
    if published:
        optimizer, scheduler = airbench_optimizer(model, config, len(train_loader))
    else:
        optimizer = make_optimizer(config["optimizer"], model, config["lr"], config["weight_decay"])
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, config["lr"], epochs=config["epochs"],
                                                        steps_per_epoch=len(train_loader), pct_start=0.25)
    history = fit(model, optimizer, nn.CrossEntropyLoss(label_smoothing=config["label_smoothing"]), train_loader,
                  test_loader, config["epochs"], run_dir=run_dir, scheduler=scheduler, scheduler_per_batch=True,
                  eval_loss_fn=nn.CrossEntropyLoss(), progress=False)
    return model, history


# ---------------------------------------------------------------- airbench: the published recipes, ported
# Keller Jordan's airbench94 and airbench96 (github.com/KellerJordan/cifar10-airbench: 94.0% in 9.9 epochs and
# 96.0% in 37 epochs on the official data): a frozen whitening stem, identity-initialised convolutions,
# scale-free BatchNorm, SGD-Nesterov in decoupled form on a triangular schedule, label smoothing 0.2,
# lookahead weight averaging, flips and shifts (and for airbench96 cutout), and flip + 1-px shift test-time
# augmentation. Simplifications here: random flips instead of alternating flips, replicated instead of
# reflected borders for the training shifts, cutout squares centred anywhere (clipped at the borders), and
# global max pooling where airbench96 pools the top-left 3x3 of its last 4x4 map.

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
    return whitened_airbench((128, 384, 512), residual=True, batch_norm_momentum=0.1)


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
    as (step / total)^3, so training moves fast early and averages strongly late); at every epoch's end the
    model takes the average. Its state (the average, the step count) is saved with the optimizer's."""

    def __init__(self, optimizer, model: nn.Module, total_steps: int, steps_per_epoch: int, start_step: int,
                 every: int = 5, decay: float = 0.95, power: float = 3.0):
        self.optimizer, self.model, self.total_steps = optimizer, model, total_steps
        self.steps_per_epoch, self.start_step, self.every = steps_per_epoch, start_step, every
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
        if self.average is not None and self.steps % self.steps_per_epoch == 0:
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
    return Lookahead(sgd, model, total, steps_per_epoch, start_step=three_epochs), scheduler


# The published hyper-parameters that differ between the two nets: epochs (9.9 and 37 there; whole epochs
# here), learning rate and weight decay per 1,024 examples, training shifts (px), cutout (px), the schedule's
# warm-up fraction and final multiplier.
PUBLISHED_RECIPES = {
    "airbench94": {"epochs": 10, "lr": 11.5, "weight_decay": 0.0153, "shift": 2, "cutout": 0, "warmup": 0.23,
                   "final_lr": 0.07},
    "airbench96": {"epochs": 37} | {key: RECIPE[key] for key in ("lr", "weight_decay", "shift", "cutout", "warmup",
                                                                 "final_lr")},
}
PUBLISHED_SHARED = ("batch_size", "optimizer", "momentum", "label_smoothing", "tta")  # both nets: RECIPE's values
PUBLISHED_RUNS = {  # the notebook's runs of each recipe: changes to its defaults
    "airbench94": [{"epochs": 10}, {"epochs": 20}],
    "airbench96": [{"seed": 0}, {"seed": 1}, {"seed": 2}, {"epochs": 74}, {"epochs": 74, "seed": 1}],
}


def published_config(architecture: str, epochs: int | None = None, seed: int = 0, smoke: bool = False) -> dict:
    """One of the PUBLISHED_RECIPES (its own length unless `epochs` is given). Smoke: a tenth of the epochs."""
    run = {"architecture": architecture, "seed": seed} | {key: RECIPE[key] for key in PUBLISHED_SHARED} | \
        PUBLISHED_RECIPES[architecture]
    epochs = epochs or run["epochs"]
    run |= {"epochs": max(1, epochs // 10) if smoke else epochs, "smoke": smoke}
    return {"name": f"{architecture}-{run['epochs']}ep-s{seed}"} | run


def published_configs(architecture: str, smoke: bool = False) -> list[dict]:
    """The notebook's runs of a published recipe: airbench94 at its length and twice that, airbench96 at its
    length (three seeds) and twice that (two seeds)."""
    return [published_config(architecture, smoke=smoke, **changes) for changes in PUBLISHED_RUNS[architecture]]


def published_augmentation(config: dict):
    """Random flips and shifts, then (when the recipe has one) cutout, on whole float batches."""
    shift = flip_and_shift(config["shift"])
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
    return load_cifar10(limit_per_class=SMOKE_IMAGES_PER_CLASS if smoke else None)


def run(config: dict, run_dir: Path) -> dict:
    """Train (or reload) one configuration and score it on the test set: one row of the study's tables."""
    data = study_data(config["smoke"])
    model, history = train(config, run_dir, data)
    probabilities = cached_array(run_dir / "test_probabilities.npy", lambda: np.stack(
        [predict(model, data["test"].images, tta) for tta in ("none", config.get("tta", "flip"))]))
    labels, (plain, with_tta) = data["test"].labels, probabilities.argmax(2)
    train_seconds = sum(row["train_seconds"] for row in history)
    return {"config": config, "history": history, "predictions": plain, "accuracy": accuracy(labels, plain),
            "tta_accuracy": accuracy(labels, with_tta), "macro_f1": macro_f1(labels, plain),
            "train_seconds": train_seconds, "hardware": trained_on(run_dir),
            "train_images_per_second": len(data["train"]) * len(history) / train_seconds}


def predict(model: nn.Module, images: np.ndarray, tta: str = "none") -> np.ndarray:
    """Softmax probabilities of uint8 (N, 32, 32, 3) images, with the named test-time augmentation (`TTA`)."""
    return predict_probabilities(TTA[tta](model), channels_first(images), batch_size=1000)


def preprocess(path) -> torch.Tensor:
    """Any image file -> float (3, 32, 32) in [0, 1]; bad files raise BadImageError."""
    return torch.tensor(load_image(path, (32, 32))).permute(2, 0, 1).float() / 255


# ---------------------------------------------------------------- results.json

def tta_score(run: dict, tta: str) -> float:
    """A run's test accuracy with the test-time augmentation its recipe is scored with ("none": without)."""
    return run["accuracy" if tta == "none" else "tta_accuracy"]


def summarize(*, profile: str, smoke: bool, best_architecture: str, final_runs: list[dict], final_tta: str,
              best_runs: list[dict], use_tta: bool, published_runs: list[dict], gpu_runs: list[dict],
              cpu_hours: dict, baseline: dict, costs: pd.DataFrame, architecture_runs: list[dict],
              augmentation_runs: list[dict], optimizer_runs: list[dict]) -> dict:
    """results.json from the Challenge notebook's runs: the final model's seeds and TTA, the study's best recipe
    (`best_runs`, flip TTA when `use_tta`), the published recipes' runs, each section's runs and `costs`."""
    accuracy_mean, accuracy_std = mean_std([tta_score(r, final_tta) for r in final_runs])
    spread = f" ± {accuracy_std:.4f} over {len(final_runs)} seeds" if len(final_runs) > 1 else ", one seed"
    best_seconds = float(np.mean([r["train_seconds"] for r in final_runs]))
    final_hardware, config = final_runs[0]["hardware"], final_runs[0]["config"]
    study_tta = "flip" if use_tta else "none"
    study_mean, study_std = mean_std([tta_score(r, study_tta) for r in best_runs])
    published_length = [r for r in gpu_runs if r["config"]["epochs"] == gpu_runs[0]["config"]["epochs"]]
    airbench96_mean, airbench96_std = mean_std([r["tta_accuracy"] for r in published_length])
    cpu_best = best(published_runs, key="tta_accuracy")

    def scores(runs: list[dict], key) -> dict:
        return {key(r): {"test_accuracy": r["accuracy"], "tta_accuracy": r["tta_accuracy"],
                         "train_seconds": r["train_seconds"], "hardware": r["hardware"]} for r in runs}

    return {
        "dataset": "cifar10_jpeg_q75",
        "data": "CIFAR-10 offline mirror (JPEG quality 75): "
                + ("20 images per class (smoke subset)" if smoke else "50,000 train, 10,000 test"),
        "profile": profile,
        "best_architecture": best_architecture,
        "best_model": config["name"],
        "best_recipe": {k: v for k, v in config.items() if k not in ("name", "seed", "smoke")} | {"tta": final_tta},
        "best_test_accuracy_mean": accuracy_mean,
        "best_test_accuracy_std": accuracy_std,
        "best_seeds": len(final_runs),
        "best_train_seconds": best_seconds,
        "best_train_hardware": final_hardware,
        "study_recipe_test_accuracy": {"mean": study_mean, "std": study_std, "seeds": len(best_runs),
                                       "tta": study_tta},
        "airbench94": scores(published_runs, lambda r: r["config"]["epochs"]),
        "airbench96": scores(gpu_runs, lambda r: r["config"]["name"]),
        "airbench96_published_length_tta_accuracy": {"mean": airbench96_mean, "std": airbench96_std,
                                                     "seeds": len(published_length)},
        "airbench96_cpu_hours_estimated": cpu_hours,
        "baseline_test_accuracy": baseline["accuracy"],
        "architectures": [{"name": name, "test_accuracy": r["accuracy"], "macro_f1": r["macro_f1"],
                           "params": int(costs.loc[name, "params"]), "macs": int(costs.loc[name, "MACs per image"]),
                           "epochs": r["config"]["epochs"], "train_seconds": r["train_seconds"],
                           "train_images_per_second": r["train_images_per_second"],
                           "latency_ms": costs.loc[name, "latency ms (1 thread)"]}
                          for name, r in zip(ARCHITECTURES, architecture_runs)],
        "augmentation": {policy: {"test_accuracy": r["accuracy"], "tta_accuracy": r["tta_accuracy"]}
                         for policy, r in zip(Augment.POLICIES, augmentation_runs)},
        "optimizers": {r["config"]["optimizer"]: {"lr": r["config"]["lr"], "test_accuracy": r["accuracy"]}
                       for r in optimizer_runs},
        "headline": {"best test accuracy": f"{accuracy_mean:.4f}{spread} ({config['name']}, "
                                           f"{best_seconds / 60:.1f} min on {final_hardware})",
                     "airbench96": f"{airbench96_mean:.4f} ± {airbench96_std:.4f} over {len(published_length)} "
                                   f"seeds ({published_length[0]['config']['epochs']} epochs)",
                     "best trained on the 2-core CPU": f"{cpu_best['tta_accuracy']:.4f} "
                                                       f"({cpu_best['config']['name']}, "
                                                       f"{cpu_best['train_seconds'] / 60:.0f} min)",
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
    published = results.get(architecture, {})  # airbench96's runs are keyed by name, airbench94's by epochs
    scores = published.get(run_name) or published.get(str(recipe.get("epochs")), {})
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
                "trained_on": results.get("best_train_hardware"), "train_seconds": scores.get("train_seconds"),
                "test_accuracy": scores.get("test_accuracy"), "test_accuracy_with_tta": scores.get("tta_accuracy"),
                "results": "results.json (best_model, best_recipe)"},
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
