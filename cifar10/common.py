"""cifar10/common.py: CIFAR-10 decoded once into uint8 tensors, six architectures, batch-wise augmentation
(flip, shifted crops, cutout), optimizers with schedules, and the cost metrics (parameters, MACs, throughput,
latency)."""
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mlkit.batches import ArrayLoader, channels_first, random_flip, random_translate, unlabelled
from mlkit.datasets import DATA_ROOT, prepare
from mlkit.images import ImageArrays, load_class_folders, load_image
from mlkit.runtime import seed_everything
from mlkit.train import fit, parameter_count  # noqa: F401 (the notebooks call common.parameter_count)

CLASSES = ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


# ---------------------------------------------------------------- data

def load_cifar10(root=DATA_ROOT) -> dict[str, ImageArrays]:
    """train (50,000) and test (10,000) as uint8 (N, 32, 32, 3): the offline mirror's JPEG class folders, or
    the official python archive (md5-checked download) read by torchvision."""
    folder = prepare("cifar10", root)
    if (folder / "train").is_dir():
        cache = Path(root) / "cache"
        return {split: load_class_folders(folder / split, cache_dir=cache) for split in ("train", "test")}
    import torchvision

    out = {}
    for split in ("train", "test"):
        data = torchvision.datasets.CIFAR10(str(folder), train=split == "train", download=False)
        out[split] = ImageArrays(data.data, np.asarray(data.targets), [f"{split}/{i}" for i in range(len(data))],
                                 data.classes)
    return out


# ---------------------------------------------------------------- augmentation

def cutout(x: torch.Tensor, size: int) -> torch.Tensor:
    """Zero one random size x size square per sample (DeVries & Taylor 2017), clipped at the borders."""
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
        x = random_translate(random_flip(x), 4)
        return cutout(x, 12) if self.policy == "flip_crop_cutout" else x


# ---------------------------------------------------------------- architectures

def conv_bn(c_in: int, c_out: int, stride: int = 1, groups: int = 1, act=nn.ReLU) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, groups=groups, bias=False), nn.BatchNorm2d(c_out),
                         act())


class Normalized(nn.Module):
    """Input standardisation with CIFAR-10's channel statistics, then `net`; takes RGB in [0, 1]."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))

    def forward(self, x):
        return self.net((x - self.mean) / self.std)


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


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(conv_bn(c_in, c_out, stride), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(c_out))
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        return F.relu(self.body(x) + self.shortcut(x))


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


def mobilenet_v2(stages=((16, 1, 1), (24, 2, 1), (32, 3, 2), (64, 3, 2), (96, 2, 1))) -> nn.Module:
    """MobileNetV2-style for 32-px inputs: a stride-1 stem and (channels, blocks, stride) inverted-residual stages."""
    layers, c = [conv_bn(3, 32)], 32
    for width, blocks, stride in stages:
        for b in range(blocks):
            layers.append(InvertedResidual(c, width, stride if b == 0 else 1, expand=1 if c == 32 and b == 0 else 6))
            c = width
    return nn.Sequential(*layers, nn.Conv2d(c, 512, 1, bias=False), nn.BatchNorm2d(512), nn.ReLU6(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 10))


def airbench(widths=(64, 256, 256)) -> nn.Module:
    """Keller Jordan's airbench layout: a 2x2 stem, then per stage conv-pool-BN-GELU and conv-BN-GELU,
    global max pooling and a linear layer scaled by 1/9 (smaller initial logits)."""
    layers = [nn.Conv2d(3, 24, 2, padding=0, bias=False), nn.BatchNorm2d(24), nn.GELU()]
    c = 24
    for w in widths:
        layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(w), nn.GELU(),
                   nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.GELU()]
        c = w
    linear = nn.Linear(c, 10, bias=False)
    with torch.no_grad():
        linear.weight.mul_(1 / 9)
    return nn.Sequential(*layers, nn.AdaptiveMaxPool2d(1), nn.Flatten(), linear)


class Residual(nn.Module):
    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return x + self.fn(x)


def conv_mixer(dim: int = 192, depth: int = 8, kernel: int = 5, patch: int = 2) -> nn.Module:
    """ConvMixer (Trockman & Kolter 2022): patch embedding, then depthwise (spatial) and pointwise (channel)
    mixing with GELU and BN."""
    def block():
        return nn.Sequential(Residual(nn.Sequential(nn.Conv2d(dim, dim, kernel, groups=dim, padding="same"),
                                                    nn.GELU(), nn.BatchNorm2d(dim))),
                             nn.Conv2d(dim, dim, 1), nn.GELU(), nn.BatchNorm2d(dim))
    return nn.Sequential(nn.Conv2d(3, dim, patch, stride=patch), nn.GELU(), nn.BatchNorm2d(dim),
                         *[block() for _ in range(depth)], nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(dim, 10))


ARCHITECTURES = {"plain_cnn": plain_cnn, "vgg": vgg, "resnet20": resnet, "mobilenet_v2": mobilenet_v2,
                 "airbench": airbench, "conv_mixer": conv_mixer}


def build(name: str) -> nn.Module:
    if name not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {sorted(ARCHITECTURES)}, not {name!r}")
    return Normalized(ARCHITECTURES[name]())


# ---------------------------------------------------------------- cost

def macs_per_image(model: nn.Module) -> int:
    """Multiply-accumulates of one 32x32 forward pass (torch's FLOP counter / 2; convolutions and matmuls)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(torch.zeros(1, 3, 32, 32))
    return counter.get_total_flops() // 2


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


def config(architecture: str, seed: int = 0, smoke: bool = False, **changes) -> dict:
    """One run: the shared recipe (SGD-Nesterov, one-cycle, label smoothing 0.1, flip + crop) unless changed."""
    base = {"name": architecture, "architecture": architecture, "seed": seed, "epochs": 10, "batch_size": 256,
            "optimizer": "sgd_nesterov", "lr": 0.1, "weight_decay": 5e-4, "augmentation": "flip_crop",
            "label_smoothing": 0.1, "smoke": smoke} | changes
    return base | ({"epochs": 1} if smoke else {})


def train(config: dict, run_dir: Path, data: dict[str, ImageArrays]) -> tuple[nn.Module, list[dict]]:
    """Train (or reload) one configuration; validation during training is the test set (no model selection
    is made on it: every run trains for its fixed number of epochs and the last weights are reported)."""
    seed_everything(config["seed"])
    model = build(config["architecture"]).to(memory_format=torch.channels_last)
    train_loader = ArrayLoader(channels_first(data["train"].images), data["train"].labels,
                               batch_size=config["batch_size"], shuffle=True, transform=Augment(config["augmentation"]))
    test_loader = ArrayLoader(channels_first(data["test"].images), data["test"].labels, batch_size=1000)
    optimizer = make_optimizer(config["optimizer"], model, config["lr"], config["weight_decay"])
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, config["lr"], epochs=config["epochs"],
                                                    steps_per_epoch=len(train_loader), pct_start=0.25)
    history = fit(model, optimizer, nn.CrossEntropyLoss(label_smoothing=config["label_smoothing"]), train_loader,
                  test_loader, config["epochs"], run_dir=run_dir, scheduler=scheduler, scheduler_per_batch=True,
                  eval_loss_fn=nn.CrossEntropyLoss(), progress=False)
    return model, history


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, flip_tta: bool = False) -> np.ndarray:
    """Softmax probabilities of uint8 (N, 32, 32, 3) images; with `flip_tta`, averaged with the mirror images."""
    model.eval()
    out = []
    for x, _ in unlabelled(channels_first(images), batch_size=1000):
        p = model(x).softmax(1)
        out.append((p + model(x.flip(3)).softmax(1)) / 2 if flip_tta else p)
    return torch.cat(out).numpy()


def preprocess(path) -> torch.Tensor:
    """Any image file -> float (3, 32, 32) in [0, 1]; bad files raise BadImageError."""
    return torch.tensor(load_image(path, (32, 32))).permute(2, 0, 1).float() / 255
