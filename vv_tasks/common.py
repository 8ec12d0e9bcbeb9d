"""vv-test tasks: the fixed models and training recipes, data loading, and the data fixes.

Fixed by the tasks (reproduced from the original task code, which is not changed here):
  task 1: ModelTask1, SGD(lr=0.005, momentum=0.9), CrossEntropyLoss, 50 epochs, batch 256
  task 2: ModelTask1, SGD(lr=0.001, momentum=0.9), CrossEntropyLoss, 50 epochs, batch 256
  task 3: ModelTask3, SGD(lr=0.005, momentum=0.9), CrossEntropyLoss, 100 epochs, batch 256
  task 4: ModelTask4, SGD(lr=0.001, momentum=0.9), 100 epochs, batch 256, evaluation loss CrossEntropyLoss
Inputs are raw pixel values 0..255 as float, shape (N, 1, 28, 28), as the original loader reads them.
"""
import functools
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.decomposition import PCA
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.neighbors import KNeighborsClassifier
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, WeightedRandomSampler

from mlkit.datasets import prepare
from mlkit.experiments import run_all
from mlkit.images import BadImageError, ImageArrays, load_class_folders, load_image, predict_files, write_demo_folder
from mlkit.metrics import mean_std
from mlkit.predictors import image_table, read_manifest, write_manifest
from mlkit.results import load_results
from mlkit.runtime import pick_device, seed_everything
from mlkit.train import SWA, EarlyStopping, evaluate, fit, load_state

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CHECKPOINTS = HERE / "checkpoints"
DEMO = HERE / "demo"  # committed test digits for the last cell's demo
DIGITS = [str(d) for d in range(10)]
BATCH_SIZE = 256
RECIPES = {  # task -> (model, learning rate, epochs); all SGD with momentum 0.9
    "task1": ("ModelTask1", 0.005, 50),
    "task2": ("ModelTask1", 0.001, 50),
    "task3": ("ModelTask3", 0.005, 100),
    "task4": ("ModelTask4", 0.001, 100),
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


def knn_relabel(images: np.ndarray, labels: np.ndarray, rounds: int = 2, threshold: float = 0.7,
                k: int = 10, seed: int = 0) -> np.ndarray:
    """Correct labels that the rest of the training set contradicts.

    Each round predicts every image from the OTHER folds (5-fold cross-validation, k-NN on 50 PCA
    components) and relabels it where at least `threshold` of its neighbours agree on another class.
    Repeating lets corrections propagate where the noise was dense enough to outvote the truth.
    """
    features = PCA(50, random_state=seed).fit_transform(images.reshape(len(images), -1) / 255.0)
    labels = labels.copy()
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    for _ in range(rounds):
        probabilities = np.zeros((len(labels), 10))
        for fit_index, predict_index in folds.split(features, labels):
            knn = KNeighborsClassifier(k).fit(features[fit_index], labels[fit_index])
            probabilities[np.ix_(predict_index, knn.classes_)] = knn.predict_proba(features[predict_index])
        predicted = probabilities.argmax(1)
        confident = (predicted != labels) & (probabilities.max(1) >= threshold)
        labels[confident] = predicted[confident]
    return labels


def shift_augment(images: torch.Tensor, max_shift: int = 2) -> torch.Tensor:
    """Translate each image by up to `max_shift` pixels (zero fill)."""
    n = len(images)
    padded = F.pad(images, [max_shift] * 4)
    dx, dy = torch.randint(0, 2 * max_shift + 1, (2, n))
    rows = (torch.arange(28)[None, :] + dy[:, None])[:, None, :, None].expand(n, 1, 28, 28 + 2 * max_shift)
    shifted = padded.gather(2, rows)
    cols = (torch.arange(28)[None, :] + dx[:, None])[:, None, None, :].expand(n, 1, 28, 28)
    return shifted.gather(3, cols)


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


class AugmentedLoader:
    """Wrap a loader and transform each input batch on the fly."""

    def __init__(self, loader: DataLoader, transform):
        self.loader, self.transform = loader, transform

    def __iter__(self):
        for inputs, labels in self.loader:
            yield self.transform(inputs), labels

    def __len__(self):
        return len(self.loader)


AUGMENTATIONS = {  # name -> batch transform; "corrupt" imitates task 3's test set
    "shift": shift_augment,
    "corrupt": lambda x: noise_augment(shift_augment(blur_augment(x), max_shift=3)),
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


# ---------------------------------------------------------------- one run
@functools.cache
def relabeled_train(task: str, limit_per_class: int | None) -> ImageArrays:
    """The training set with `knn_relabel`'s labels, computed once per process."""
    train = load_split(task, "train", limit_per_class)
    return ImageArrays(train.images, knn_relabel(train.images, train.labels), train.paths, train.classes)


def train_run(config: dict, run_dir: Path) -> dict:
    """Train the task's fixed model under `config` and score it on the task's test set.

    config keys: task, seed, data fixes (shuffle, relabel, balance, augment), loop options
    (loop), loss/strength (task 4), limit_per_class (smoke profile).
    """
    task = config["task"]
    model_name, lr, epochs = RECIPES[task]
    epochs = config.get("epochs", epochs)
    data_task = "task3" if task == "task3" else "task1"
    seed_everything(config["seed"])
    limit = config.get("limit_per_class")
    train = relabeled_train(data_task, limit) if config.get("relabel") else load_split(data_task, "train", limit)
    test = load_split(data_task, "test", limit)
    train_loader, test_loader = make_loaders(task, train, test, config)
    val_loader = test_loader
    if config.get("loop"):
        train_loader, val_loader = split_validation(train, config)

    # channels_last: the fixed models' training steps run up to 1.8x faster on a CPU in this layout.
    model = MODELS[model_name]().to(pick_device(), memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_name, strength = config.get("loss", "ce"), config.get("strength")
    loss_fn = lambda logits, labels: LOSSES[loss_name](logits, labels, strength)
    loop = improved_loop_options(optimizer, epochs, len(train_loader)) if config.get("loop") else {}
    history = fit(model, optimizer, loss_fn, train_loader, val_loader, epochs, run_dir=run_dir,
                  eval_loss_fn=nn.CrossEntropyLoss(), metrics={"mean_abs_logit": mean_abs_logit},
                  eval_every=1 if config.get("loop") else 5, progress=False, **loop)
    test_metrics = evaluate(model, test_loader, nn.CrossEntropyLoss(), {"mean_abs_logit": mean_abs_logit})
    return {"config": config, "history": history, "test": test_metrics, "run_dir": str(run_dir)}


def training_cost(config: dict) -> float:
    """A run's relative training time (epochs x training images), so `run_all` can start the longest first."""
    epochs = config.get("epochs", RECIPES[config["task"]][2])
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
    if config.get("augment"):
        loader = AugmentedLoader(loader, AUGMENTATIONS[config["augment"]])
    test_loader = DataLoader(to_tensors(test.images, test.labels), BATCH_SIZE)
    return loader, test_loader


def split_validation(train: ImageArrays, config: dict, fraction: float = 0.1):
    """Hold out a stratified `fraction` of the training set to steer the improved loop (never the test set)."""
    fit_index, val_index = train_test_split(np.arange(len(train)), test_size=fraction, stratify=train.labels,
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
def preprocess_digit(path) -> torch.Tensor:
    """Any image file -> (1, 28, 28) float 0..255, white digit on black as in training."""
    image = load_image(path, size=(28, 28), mode="L").astype(np.float32)
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    if border.mean() > 127:  # dark digit on a light background
        image = 255.0 - image
    if image.max() == image.min():
        raise BadImageError(f"blank image (every pixel {image.max():.0f})")
    return torch.from_numpy(image)[None]


# ---------------------------------------------------------------- the experiments
SEEDS = (0, 1, 2)
TASK1_FIX = {"shuffle": True, "relabel": True, "balance": True, "augment": "shift"}
TASK1_ABLATION = {  # the fixes added one at a time: each row measures one fix's effect
    "original (as given)": {},
    "shuffle": {"shuffle": True},
    "+ balance": {"shuffle": True, "balance": True},
    "+ relabel": {"shuffle": True, "balance": True, "relabel": True},
    "+ shift augment (all)": TASK1_FIX,
}
TASK2_LOOPS = {"original loop": {}, "improved loop": {"loop": "onecycle+swa+early_stopping"}}
TASK3_ABLATION = {  # added one at a time, as for task 1
    "original (as given)": {},
    "shift augment": {"augment": "shift"},
    "+ blur + noise (all)": {"augment": "corrupt"},
}
TASK4_SWEEP = [("ce", None)] + [(loss, s) for loss, strengths in {
    "logit_l2": (0.1, 1.0),
    "logitnorm": (0.05, 0.2),
    "scaled_ce": (10.0, 30.0),
}.items() for s in strengths]


def make_configs(task: str, rows: dict, seeds=SEEDS, smoke: bool = False, **shared) -> list[dict]:
    """One configuration per (row, seed); the smoke profile trains one epoch on 20 images per class."""
    smoke_options = {"limit_per_class": 20, "epochs": 1} if smoke else {}
    return [{"name": f"{task}-{label}-s{seed}".replace(" ", "_").replace(":", "").replace("+", "p"),
             "task": task, "row": label, "seed": seed, **shared, **options, **smoke_options}
            for label, options in rows.items() for seed in seeds]


def challenge_configs(smoke: bool = False) -> dict[str, list[dict]]:
    """The Challenge notebook's runs by section (task 4: the sweep; its confirmation depends on the sweep)."""
    return {"baseline": baseline_configs(smoke),
            "task1": make_configs("task1", TASK1_ABLATION, smoke=smoke),
            "task2": make_configs("task2", TASK2_LOOPS, smoke=smoke, **TASK1_FIX),
            "task3": make_configs("task3", TASK3_ABLATION, smoke=smoke),
            "task4 sweep": task4_sweep_configs(smoke)}


def run_groups(groups: dict[str, list[dict]], runs: Path, workers: int | None = None) -> dict[str, list[dict]]:
    """Train every group's runs in one pool of processes, longest first, and return the results per group."""
    results = iter(run_all(train_run, [config for group in groups.values() for config in group], runs, workers,
                           cost=training_cost))
    return {name: [next(results) for _ in group] for name, group in groups.items()}


def baseline_configs(smoke: bool = False) -> list[dict]:
    """Every task exactly as given (task 4 ships no loss: plain cross-entropy stands in)."""
    return [config for task in ("task1", "task2", "task3", "task4")
            for config in make_configs(task, {"original (as given)": {}}, smoke=smoke)]


def task4_rows() -> dict:
    return {(f"{loss} {strength}" if strength is not None else loss): {"loss": loss, "strength": strength}
            for loss, strength in TASK4_SWEEP}


def task4_sweep_configs(smoke: bool = False) -> list[dict]:
    """Every loss of the sweep on seed 0 (on the task 1 fixes); `recommend_loss` then picks one to confirm."""
    return make_configs("task4", task4_rows(), seeds=(0,), smoke=smoke, **TASK1_FIX)


def task4_confirm_configs(recommended: str, smoke: bool = False) -> list[dict]:
    """Plain cross-entropy and the recommended loss on all seeds (seed 0 is the sweep's run, reused)."""
    rows = task4_rows()
    return make_configs("task4", {"ce": rows["ce"], recommended: rows[recommended]}, smoke=smoke, **TASK1_FIX)


def recommend_loss(table, max_logit_ratio: float = 0.1, max_accuracy_drop: float = 0.01) -> str:
    """The most accurate loss whose mean |logit| is at most `max_logit_ratio` of plain cross-entropy's at no
    more than `max_accuracy_drop` accuracy loss; without one, the most accurate loss other than "ce".
    `table`: rows named by loss (one of them "ce"), columns "accuracy mean" and "mean_abs_logit mean"."""
    ce = table.loc["ce"]
    others = table.drop("ce")
    meets = others[(others["mean_abs_logit mean"] <= max_logit_ratio * ce["mean_abs_logit mean"])
                   & (others["accuracy mean"] >= ce["accuracy mean"] - max_accuracy_drop)]
    return (meets if len(meets) else others)["accuracy mean"].idxmax()


def summary_table(results: list[dict], keys=("accuracy",)):
    """Mean ± std over seeds of the test metrics, one line per configuration row."""
    import pandas as pd

    rows = {}
    for result in results:
        rows.setdefault((result["config"]["task"], result["config"]["row"]), []).append(result["test"])
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


SOLUTIONS = {  # checkpoint -> (task, row of its seed-0 run in the notebook, what it holds); None: task 4's pick
    "task1_ModelTask1.pt": ("task1", "+ shift augment (all)", "ModelTask1 (ends in Softmax: outputs probabilities) "
                            "trained on task 1's data shuffled, balanced, k-NN relabelled and shift-augmented"),
    "task3_ModelTask3.pt": ("task3", "+ blur + noise (all)", "ModelTask3 (ends in Softmax: outputs probabilities) "
                            "trained on task 3's data with blur + noise + shift augmentation, for its degraded test"),
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
        model = RECIPES[task][0]
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
               "resize": "any size and format, EXIF-rotated, converted to grayscale, bilinear resize to 28x28",
               "scaling": "none: raw pixel values 0..255 as float, shape (1, 28, 28), as in training",
               "polarity": "white digit on black; inverted when the border's mean pixel is above 127 (dark on light)",
               "rejected": "blank images (every pixel the same value)"},
        tta="none", top_k=3,
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
        """Files, folders or a list of them -> a DataFrame: file, prediction, probability, top classes, error."""
        return image_table(predict_files(self.network, inputs, preprocess_digit, self.manifest["classes"],
                                         top_k=self.manifest["top_k"]))

    def __repr__(self) -> str:
        return (f"vv_tasks digit predictor ({self.manifest['model']['name']}, task 1's solution), "
                f"{len(self.manifest['classes'])} classes, no TTA")


def load_predictor(folder=CHECKPOINTS) -> DigitPredictor:
    """The predictor `export_predictor` described in `folder` (its manifest and state dict only)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    weights = folder / manifest["weights"]["file"]
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing (named by {folder.name}/predictor.json)")
    model = MODELS[manifest["model"]["name"]]()
    model.load_state_dict(load_state(weights))
    return DigitPredictor(manifest, model)


def demo_inputs(folder=HERE / "runs" / "demo_inputs") -> Path:
    """`folder` (replaced) with the committed test digits of `DEMO`, a blank image and the inputs that must be
    converted or refused with a reason."""
    samples = {path.name: load_image(path, mode="L") for path in sorted(DEMO.glob("*_*.*"))}  # not README.md
    return write_demo_folder(folder, samples | {"blank.png": np.zeros((28, 28), np.uint8)})
