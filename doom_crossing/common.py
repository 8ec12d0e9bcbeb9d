"""doom_crossing/common.py: data (Kaggle Doom vs Animal Crossing, or its Intel stand-in), the pretrained
MobileNetV2 classifier, linear probe, fine-tuning, statistics, Grad-CAM, OOD detection and a new class."""
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata
from scipy.stats import t as t_distribution
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from mlkit.datasets import DATA_ROOT, prepare
from mlkit.experiments import cached_array
from mlkit.images import ImageArrays, list_images, load_class_folders, load_image
from mlkit.pretrained import mobilenet_v2_features
from mlkit.runtime import seed_everything
from mlkit.train import fit, load_half, save_half

IMAGE_SIZE = 150  # every image is decoded at 150x150 (the stand-in's native size)
CROP = 144  # network input: random crops for training, the centre crop for evaluation
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet statistics
STANDIN = {"task": ("buildings", "street"), "ood": ("forest", "glacier", "sea"), "new": ("mountain",)}
PER_CLASS = {"task": 800, "ood": 200, "new_train": 50, "new_test": 200}


# ---------------------------------------------------------------- data

def _link_sample(sources: list[Path], n: int, dest: Path, rng) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for source in sorted(rng.choice(sources, min(n, len(sources)), replace=False)):
        link = dest / source.name
        if not link.exists():
            link.symlink_to(source)


def intel_folders(seed: int = 0, root=DATA_ROOT) -> dict[str, Path]:
    """Seeded samples of Intel Image Classification as class folders of links, made once:
    task (buildings/street, 800 each from seg_train), ood (forest/glacier/sea, 200 each from seg_test),
    new_train (mountain, 50 from seg_train) and new_test (mountain, 200 from seg_test)."""
    intel, out = prepare("intel", root), Path(root) / f"intel_standin-seed{seed}"
    parts = {"task": ("seg_train", STANDIN["task"]), "ood": ("seg_test", STANDIN["ood"]),
             "new_train": ("seg_train", STANDIN["new"]), "new_test": ("seg_test", STANDIN["new"])}
    if not (out / ".done").exists():
        rng = np.random.default_rng(seed)
        for part, (split, classes) in parts.items():
            for name in classes:
                _link_sample(list_images(intel / split / name), PER_CLASS[part], out / part / name, rng)
        (out / ".done").touch()
    return {part: out / part for part in parts}


def class_root(folder: Path) -> Path:
    """The folder holding the class folders (a Kaggle zip may wrap them in a top folder)."""
    subfolders = [d for d in folder.iterdir() if d.is_dir()]
    return class_root(subfolders[0]) if len(subfolders) == 1 else folder


def load(folder, cache_dir) -> ImageArrays:
    return load_class_folders(folder, size=(IMAGE_SIZE, IMAGE_SIZE), cache_dir=cache_dir)


def load_data(dataset: str, cache_dir, seed: int = 0) -> dict[str, ImageArrays]:
    """The two-class task ("intel_standin" or "doom_crossing") plus the Intel OOD and new-class sets."""
    if dataset not in ("intel_standin", "doom_crossing"):
        raise ValueError(f"DATASET must be 'intel_standin' or 'doom_crossing', not {dataset!r}")
    folders = intel_folders(seed)
    if dataset == "doom_crossing":
        folders["task"] = class_root(prepare("doom_crossing"))
    return {part: load(folder, cache_dir) for part, folder in folders.items()}


def split(labels, seed: int = 0, fractions=(0.7, 0.15, 0.15)) -> dict[str, np.ndarray]:
    """Stratified, seeded train/val/test indices."""
    index = np.arange(len(labels))
    train, rest = train_test_split(index, train_size=fractions[0], stratify=labels, random_state=seed)
    val_share = fractions[1] / (fractions[1] + fractions[2])
    val, test = train_test_split(rest, train_size=val_share, stratify=labels[rest], random_state=seed)
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


# ---------------------------------------------------------------- model

TRAIN_TRANSFORM = v2.Compose([v2.RandomResizedCrop(CROP, scale=(0.5, 1.0), antialias=True),
                              v2.RandomHorizontalFlip(), v2.ColorJitter(0.2, 0.2, 0.2)])
EVAL_TRANSFORM = v2.CenterCrop(CROP)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (3, H, W) in [0, 1]."""
    return torch.tensor(image).permute(2, 0, 1).float() / 255


class Images(Dataset):
    def __init__(self, images, labels, transform=EVAL_TRANSFORM):
        self.images, self.labels, self.transform = images, torch.as_tensor(labels), transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(to_tensor(self.images[i])), self.labels[i]


def loader(images, labels, train=False, batch_size=32):
    dataset = Images(images, labels, TRAIN_TRANSFORM if train else EVAL_TRANSFORM)
    return DataLoader(dataset, batch_size=batch_size, shuffle=train)


class Classifier(nn.Module):
    """Pretrained MobileNetV2 features -> global average pool -> dropout -> linear head.
    Takes RGB in [0, 1]; ImageNet normalisation happens inside."""

    def __init__(self, num_classes: int = 2):
        super().__init__()
        self.features = mobilenet_v2_features()
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))

    def embed(self, x):
        return self.features((x - self.mean) / self.std).mean((2, 3))

    def forward(self, x):
        return self.head(self.embed(x))


@torch.no_grad()
def embed(model: Classifier, images, batch_size: int = 64) -> np.ndarray:
    """Pooled 1280-d features of the centre crops."""
    model.eval()
    batches = (torch.stack([EVAL_TRANSFORM(to_tensor(im)) for im in images[i:i + batch_size]])
               for i in range(0, len(images), batch_size))
    return torch.cat([model.embed(x) for x in batches]).numpy()


def cached_features(model, images, path: Path) -> np.ndarray:
    """`embed` once; later calls read `path`."""
    return cached_array(path, lambda: embed(model, images))


# ---------------------------------------------------------------- linear probe

def normalize(features) -> np.ndarray:
    return features / np.linalg.norm(features, axis=1, keepdims=True)


def fit_probe(features, labels, seed: int = 0):
    """Logistic regression on L2-normalised frozen features (C = 10, chosen on the validation split)."""
    probe = make_pipeline(FunctionTransformer(normalize), LogisticRegression(C=10, max_iter=3000, random_state=seed))
    return probe.fit(features, labels)


def probe_accuracy(train_x, train_y, test_x, test_y, seed: int = 0) -> float:
    return float((fit_probe(train_x, train_y, seed).predict(test_x) == test_y).mean())


def permutation_test(train_x, train_y, test_x, test_y, n_permutations: int = 199, seed: int = 0):
    """Test accuracy of the probe, the accuracies with shuffled training labels, and the p-value
    (1 + #shuffled >= observed) / (1 + n_permutations)."""
    rng = np.random.default_rng(seed)
    observed = probe_accuracy(train_x, train_y, test_x, test_y)
    null = np.array([probe_accuracy(train_x, rng.permutation(train_y), test_x, test_y)
                     for _ in range(n_permutations)])
    return observed, null, (1 + (null >= observed).sum()) / (1 + n_permutations)


def learning_curve(train_x, train_y, test_x, test_y, sizes, seeds=(0, 1, 2)) -> dict[int, list[float]]:
    """Probe test accuracy when trained on `size` stratified examples, for every seed."""
    curve = {}
    for size in sizes:
        accuracies = []
        for seed in seeds:
            keep = np.arange(len(train_y)) if size >= len(train_y) else train_test_split(
                np.arange(len(train_y)), train_size=size, stratify=train_y, random_state=seed)[0]
            accuracies.append(probe_accuracy(train_x[keep], train_y[keep], test_x, test_y, seed))
        curve[size] = accuracies
    return curve


# ---------------------------------------------------------------- statistics

def corrected_resampled_ttest(differences, test_to_train_ratio: float) -> float:
    """One-sided p-value that the mean of `differences` (one per random train/test split) is above 0: a paired
    t-test whose variance is inflated by Nadeau & Bengio's (2003) correction, because random splits share
    training and test images, so their differences are not independent."""
    differences = np.asarray(differences, dtype=float)
    n = len(differences)
    standard_error = np.sqrt((1 / n + test_to_train_ratio) * differences.var(ddof=1))
    return float(t_distribution.sf(differences.mean() / standard_error, df=n - 1))


def auroc(scores_negative, scores_positive) -> float:
    """Probability that a positive scores above a negative (ties count half): the ROC AUC."""
    scores = np.concatenate([scores_negative, scores_positive])
    ranks = rankdata(scores)[len(scores_negative):]
    n_pos, n_neg = len(scores_positive), len(scores_negative)
    return float((ranks.sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# ---------------------------------------------------------------- fine-tuning

def finetune_configs(smoke: bool, seeds=(0, 1, 2), split_seed: int = 0) -> list[dict]:
    """One run per seed, trained on the train/val/test split drawn with `split_seed`."""
    epochs = 1 if smoke else 5
    return [{"name": f"finetune-split{split_seed}-s{seed}", "seed": seed, "split_seed": split_seed, "epochs": epochs,
             "lr_backbone": 3e-4, "lr_head": 3e-3, "weight_decay": 1e-4, "label_smoothing": 0.1, "smoke": smoke}
            for seed in seeds]


def finetune(config: dict, run_dir: Path, data: ImageArrays) -> tuple[Classifier, list[dict]]:
    """Full fine-tuning: AdamW with a 10x smaller learning rate on the pretrained backbone than on the new
    head, one-cycle schedule, label smoothing, random-resized-crop / flip / colour-jitter augmentation."""
    splits = split(data.labels, config["split_seed"])
    seed_everything(config["seed"])
    model = Classifier(len(data.classes))
    groups = [{"params": model.features.parameters(), "lr": config["lr_backbone"]},
              {"params": model.head.parameters(), "lr": config["lr_head"]}]
    optimizer = torch.optim.AdamW(groups, weight_decay=config["weight_decay"])
    train = loader(data.images[splits["train"]], data.labels[splits["train"]], train=True)
    val = loader(data.images[splits["val"]], data.labels[splits["val"]])
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in groups], total_steps=config["epochs"] * len(train), pct_start=0.2)
    history = fit(model, optimizer, nn.CrossEntropyLoss(label_smoothing=config["label_smoothing"]), train, val,
                  config["epochs"], run_dir=run_dir, scheduler=scheduler, scheduler_per_batch=True,
                  eval_loss_fn=nn.CrossEntropyLoss(), progress=False)
    return model, history


@torch.no_grad()
def probabilities(model, images, tta: bool = False, batch_size: int = 64) -> np.ndarray:
    """Softmax of the centre crops; with `tta`, averaged with the flipped crop and the full image."""
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        full = torch.stack([to_tensor(im) for im in images[i:i + batch_size]])
        views = [EVAL_TRANSFORM(full)] + ([EVAL_TRANSFORM(full).flip(3), full] if tta else [])
        out.append(torch.stack([model(v).softmax(1) for v in views]).mean(0))
    return torch.cat(out).numpy()


class SeedEnsemble(nn.Module):
    """Classifiers fine-tuned with different seeds as one model: the log of their mean softmax (so a softmax of
    the output gives the averaged probabilities)."""

    def __init__(self, members):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x):
        return torch.stack([member(x).softmax(1) for member in self.members]).mean(0).log()


def save_fp16(model, path: Path) -> None:
    save_half(model, path)


def load_fp16(path: Path, num_classes: int = 2) -> Classifier:
    model = Classifier(num_classes)
    model.load_state_dict(load_half(path))
    return model.eval()


# ---------------------------------------------------------------- Grad-CAM

def grad_cam(model: Classifier, image: np.ndarray, target: int) -> np.ndarray:
    """Grad-CAM on the last feature map: ReLU of the gradient-weighted channel sum, upsampled to the crop."""
    model.eval()
    x = EVAL_TRANSFORM(to_tensor(image))[None]
    maps = model.features((x - model.mean) / model.std)
    maps.retain_grad()
    model.head(maps.mean((2, 3)))[0, target].backward()
    cam = F.relu((maps.grad.mean((2, 3), keepdim=True) * maps).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0].detach()
    return (cam / cam.max().clamp_min(1e-8)).numpy()


# ---------------------------------------------------------------- OOD and a new class

class KNNScore:
    """OOD score: cosine distance of an L2-normalised feature vector to its k-th nearest training
    feature (deep nearest neighbours, Sun et al. 2022); higher = more unusual."""

    def __init__(self, features, k: int = 10):
        self.bank, self.k = normalize(features), k

    def score(self, features) -> np.ndarray:
        return 1 - np.sort(normalize(features) @ self.bank.T, axis=1)[:, -self.k]


class NearestClassMean:
    """Cosine nearest-class-mean on L2-normalised features; a class can be added from a few examples."""

    def __init__(self, features, labels):
        self.means = np.stack([self._mean(features[labels == c]) for c in np.unique(labels)])

    @staticmethod
    def _mean(features) -> np.ndarray:
        mean = normalize(features).mean(0)
        return mean / np.linalg.norm(mean)

    def add_class(self, features) -> "NearestClassMean":
        self.means = np.vstack([self.means, self._mean(features)])
        return self

    def distances(self, features) -> np.ndarray:
        """(N, classes) cosine distances to the class means."""
        return 1 - normalize(features) @ self.means.T


def with_new_class(old_probabilities, distances) -> np.ndarray:
    """Predictions over old classes + one new class: the new class where its mean is the nearest one,
    else the fine-tuned model's choice, which is left untouched."""
    is_new = distances.argmin(1) == distances.shape[1] - 1
    return np.where(is_new, distances.shape[1] - 1, old_probabilities.argmax(1))


# ---------------------------------------------------------------- new files

def preprocess(path) -> torch.Tensor:
    """One file -> the evaluation crop; bad files raise BadImageError."""
    return EVAL_TRANSFORM(to_tensor(load_image(path, (IMAGE_SIZE, IMAGE_SIZE))))


def add_verdicts(results: list[dict], model: Classifier, detector: KNNScore, threshold: float) -> list[dict]:
    """Mark every readable file whose OOD score exceeds `threshold` as "neither"."""
    for result in results:
        if "top" in result:
            features = embed(model, [load_image(result["file"], (IMAGE_SIZE, IMAGE_SIZE))])
            result["ood_score"] = float(detector.score(features)[0])
            result["neither"] = result["ood_score"] > threshold
    return results


def format_verdicts(results: list[dict]) -> str:
    lines = []
    for result in results:
        name = os.path.basename(result["file"])
        if "error" in result:
            lines.append(f"{name}: ERROR {result['error']}")
        else:
            top = ", ".join(f"{c} {p:.1%}" for c, p in result["top"])
            verdict = "NEITHER (out of distribution)" if result["neither"] else result["top"][0][0]
            lines.append(f"{name}: {verdict}  [{top}; OOD score {result['ood_score']:.3f}]")
    return "\n".join(lines)
