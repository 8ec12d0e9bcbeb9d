"""distillation/common.py: Intel Image Classification, the frozen ResNet-152 master, compact students,
knowledge distillation, int8 ONNX export and the cost measurements; the committed predictor runs the master
and the deployed int8 student side by side (`export_predictor`, `load_predictor`)."""
import hashlib
import json
import shutil
import subprocess
import time
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mlkit import metrics
from mlkit.batches import ArrayLoader, flip_and_shift, float_batches, random_translate, resize, to_float, unlabelled
from mlkit.datasets import DATA_ROOT, prepare
from mlkit.experiments import cached_array
from mlkit.images import ImageArrays, list_images, load_class_folders, load_image, predict_files, write_demo_folder
from mlkit.models import conv_bn
from mlkit.predictors import named_files, read_manifest, write_manifest
from mlkit.pretrained import CHECKPOINTS as PRETRAINED_CACHE
from mlkit.pretrained import RESNET152, mobilenet_v2_features, resnet152
from mlkit.results import ROOT, load_results
from mlkit.runtime import atomic_path, seed_everything
from mlkit.train import fit, load_state, save_half

RECIPE = {  # the deployed student, every choice made on validation by the Challenge notebook
    "student": "cnn", "width": 16,  # `CompactCNN` at 64 px: the smallest width within 1 pt of the master (431 K)
    "temperature": 4, "alpha": 0,  # no distillation: the labels-only runs beat the distilled ones (3 seeds each)
    "seed": 1,  # of the 3 seeds of that setting, the best on validation
    "epochs": 20, "lr": 3e-3, "weight_decay": 5e-4, "batch_size": 64,  # AdamW, one-cycle, from scratch
}
CNN_WIDTHS = (4, 8, 16)  # CompactCNN widths of the sweep: 27 K, 108 K and 431 K parameters (about 1,674 x width^2)
SWEEP_DISTILLATION = (4, 0.9)  # (T, alpha) of every distilled run: the conventional setting (not tuned: CPU budget)
SEEDS = (0, 1, 2)  # the chosen width, distilled and not, is trained with each
WITHIN_MASTER = 0.01  # the compact student: the smallest width within 1 pt of the master's validation accuracy
INT8_TOLERANCE = 0.005  # the quantisation gate: int8 validation accuracy at most 0.5 pt below the fp32 model's
IMAGE_SIZE = 150  # the dataset's native size, and the master's input (as in the starter)
CACHE = DATA_ROOT / "cache" / "distillation"


# ---------------------------------------------------------------- data

def load_data(cache_dir=CACHE, root=DATA_ROOT) -> dict[str, ImageArrays]:
    """seg_train and seg_test as 150x150 uint8 arrays (decoded once, then read from the cache)."""
    intel = prepare("intel", root)
    return {split: load_class_folders(intel / f"seg_{split}", size=(IMAGE_SIZE, IMAGE_SIZE), cache_dir=cache_dir)
            for split in ("train", "test")}


def unlabelled_files(root=DATA_ROOT) -> list[Path]:
    """The unlabelled `seg_pred` images."""
    return list_images(prepare("intel", root) / "seg_pred")


def validation_split(labels, fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train / validation indices: the starter's 20% validation, taken from seg_train."""
    train, val = train_test_split(np.arange(len(labels)), test_size=fraction, stratify=labels, random_state=seed)
    return np.sort(train), np.sort(val)


# ---------------------------------------------------------------- master

class Master(nn.Module):
    """The starter's master: frozen ImageNet ResNet-152 -> global average pooling -> Dense(6).
    Takes RGB in [0, 1] (the statistics these weights expect)."""

    def __init__(self, num_classes: int = 6, backbone: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone or resnet152()
        self.backbone.fc = nn.Identity()
        self.backbone.requires_grad_(False)
        self.head = nn.Linear(2048, num_classes)

    def forward(self, x):
        return self.head(self.backbone(x))


@torch.no_grad()
def backbone_features(backbone: nn.Module, images, desc: str = "ResNet-152 features") -> np.ndarray:
    """Pooled 2048-d features of full 150x150 images."""
    backbone.eval().to(memory_format=torch.channels_last)
    return torch.cat([backbone(x) for x in float_batches(images, desc=desc)]).numpy()


def master_features(backbone: nn.Module, data: dict[str, ImageArrays], smoke: bool) -> dict[str, np.ndarray]:
    """The frozen backbone's features of every split, computed once per profile (the starter's backbone
    never changes, so its features are the same in every epoch)."""
    suffix = "-smoke" if smoke else ""
    return {split: cached_array(CACHE / f"resnet152-{split}{suffix}.npy",
                                partial(backbone_features, backbone, d.images)) for split, d in data.items()}


def save_teacher_logits(logits: np.ndarray, smoke: bool) -> str:
    """Write the teacher's training-set logits to the cache folder under a name carrying their hash
    (so a student run's configuration names the exact teacher it learned from); returns the name."""
    digest = hashlib.sha256(np.ascontiguousarray(logits, dtype=np.float32).tobytes()).hexdigest()[:12]
    name = f"teacher{'-smoke' if smoke else ''}-{digest}.npy"
    cached_array(CACHE / name, lambda: logits)
    return name


# ---------------------------------------------------------------- batches and augmentation

def random_view_and_shift(max_shift: int):
    """Training transform for cached maps (N, 2, C, H, W) of each image and its mirror image: one of the two
    at random, then a random shift of up to `max_shift` cells."""
    def transform(x):
        view = (torch.rand(len(x)) < 0.5).long()
        return random_translate(x[torch.arange(len(x)), view], max_shift)
    return transform


def first_view(x: torch.Tensor) -> torch.Tensor:
    """Evaluation transform for cached map pairs: the maps of the image itself."""
    return x[:, 0]


# ---------------------------------------------------------------- students

class CompactCNN(nn.Module):
    """A VGG-style student trained from scratch: five 3x3 conv stages (width w, 2w, 4w, 8w, 8w) with
    max-pooling, global average pooling, dropout, linear. Takes RGB in [0, 1]."""

    def __init__(self, num_classes: int = 6, width: int = 24):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            conv_bn(3, w), nn.MaxPool2d(2),
            conv_bn(w, 2 * w), nn.MaxPool2d(2),
            conv_bn(2 * w, 4 * w), conv_bn(4 * w, 4 * w), nn.MaxPool2d(2),
            conv_bn(4 * w, 8 * w), conv_bn(8 * w, 8 * w), nn.MaxPool2d(2),
            conv_bn(8 * w, 8 * w))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(8 * w, num_classes))

    def forward(self, x):
        return self.head(self.features((x - 0.5) / 0.25))


class MobileNetStudent(nn.Module):
    """The first 14 blocks of ImageNet MobileNetV2 (up to the 96-channel, stride-16 stage; the rest of
    the network holds 75% of its parameters) and a small new head. The first 7 blocks (`stem`) stay
    frozen, which also lets training run on their cached outputs. Takes RGB in [0, 1]."""

    MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    def __init__(self, num_classes: int = 6, head_width: int = 384):
        super().__init__()
        features = mobilenet_v2_features()
        self.stem, self.body = features[:7], features[7:14]
        self.stem.requires_grad_(False)
        self.head = nn.Sequential(nn.Conv2d(96, head_width, 1, bias=False), nn.BatchNorm2d(head_width), nn.ReLU6(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2),
                                  nn.Linear(head_width, num_classes))
        self.register_buffer("mean", torch.tensor(self.MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(self.STD).view(1, 3, 1, 1))
        self.train()  # a new module is in training mode: put the frozen stem in evaluation mode from the start

    def train(self, mode: bool = True):
        super().train(mode)
        self.stem.eval()  # frozen, batch-norm statistics included
        return self

    def stem_maps(self, x):
        return self.stem((x - self.mean) / self.std)

    def from_stem(self, maps):
        return self.head(self.body(maps))

    def forward(self, x):
        return self.from_stem(self.stem_maps(x))


class FromStem(nn.Module):
    """Train `student` on cached stem maps: its trainable part only."""

    def __init__(self, student: MobileNetStudent):
        super().__init__()
        self.student = student

    def forward(self, maps):
        return self.student.from_stem(maps)


class DistillationLoss(nn.Module):
    """Hinton et al. 2015: alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, labels),
    where _T is the softmax at temperature T (T^2 keeps the soft term's gradients on the scale of the
    hard term's). alpha = 0 is plain cross-entropy; targets are (labels, teacher_logits) or labels."""

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9):
        super().__init__()
        if temperature <= 0 or not 0 <= alpha <= 1:
            raise ValueError(f"need temperature > 0 and 0 <= alpha <= 1, got T={temperature}, alpha={alpha}")
        self.temperature, self.alpha = temperature, alpha

    def forward(self, logits, targets):
        labels, teacher = targets if isinstance(targets, (tuple, list)) else (targets, None)
        hard = F.cross_entropy(logits, labels)
        if self.alpha == 0 or teacher is None:
            return hard
        t = self.temperature
        soft = F.kl_div(F.log_softmax(logits / t, 1), F.log_softmax(teacher / t, 1), log_target=True,
                        reduction="batchmean")
        return self.alpha * t * t * soft + (1 - self.alpha) * hard


# ---------------------------------------------------------------- training

def master_config(smoke: bool) -> dict:
    return {"name": "master-head", "epochs": 1 if smoke else 20, "lr": 1e-3, "num_classes": 6, "seed": 0,
            "smoke": smoke}


def run_master(config: dict, run_dir: Path) -> dict:
    """The starter's master: the frozen backbone's features of every image (cached), then its head trained
    (`train_master_head`); returns the history, the head's weights and the logits of every training image
    (the teacher's soft targets) and test image, fp16 (what a record keeps)."""
    data = profile_data(config["smoke"])
    features = master_features(Master(config["num_classes"], backbone=master_backbone()).backbone, data,
                               config["smoke"])
    head, history = train_master_head(config, run_dir, features["train"], data["train"].labels,
                                      validation_split(data["train"].labels))
    with torch.no_grad():
        logits = {f"{split}_logits": head(torch.from_numpy(f)).half().numpy() for split, f in features.items()}
    return {"config": config, "history": history, "head": {k: v.numpy() for k, v in head.state_dict().items()}} | logits


def master_from_record(record: dict, backbone: nn.Module | None = None) -> "Master":
    """The master with the head a `run_master` result (or its record) holds."""
    master = Master(len(record["head"]["bias"]), backbone=backbone or master_backbone())
    master.head.load_state_dict({k: torch.as_tensor(v) for k, v in record["head"].items()})
    return master.eval()


def train_master_head(config: dict, run_dir: Path, features, labels, splits) -> tuple[nn.Linear, list[dict]]:
    """The starter's recipe on cached features: Dense(6) with Adam (lr 1e-3), batch 32, 20 epochs."""
    seed_everything(config["seed"])
    head = nn.Linear(features.shape[1], config["num_classes"])
    train, val = splits
    features, labels = torch.as_tensor(features), torch.as_tensor(labels)
    train_loader = DataLoader(TensorDataset(features[train], labels[train]), batch_size=32, shuffle=True)
    val_loader = DataLoader(TensorDataset(features[val], labels[val]), batch_size=256)
    optimizer = torch.optim.Adam(head.parameters(), lr=config["lr"])
    history = fit(head, optimizer, nn.CrossEntropyLoss(), train_loader, val_loader, config["epochs"],
                  run_dir=run_dir, progress=False)
    return head, history


STUDENT_INPUT = {"cnn": 64, "mobilenet": 128}  # input side in pixels, chosen from measured CPU cost


def build_student(kind: str, width: int | None = None, num_classes: int = 6) -> nn.Module:
    """A `CompactCNN` of `width` (kind "cnn") or a `MobileNetStudent` (kind "mobilenet", no width)."""
    if kind not in STUDENT_INPUT:
        raise ValueError(f"student must be one of {sorted(STUDENT_INPUT)}, not {kind!r}")
    if kind == "cnn" and not width:
        raise ValueError("a cnn student needs its width")
    return CompactCNN(num_classes, width) if kind == "cnn" else MobileNetStudent(num_classes)


def student_inputs(kind: str, images, stem: MobileNetStudent | None = None) -> torch.Tensor:
    """What a student trains on: resized uint8 images (cnn), or the frozen stem's maps of the resized
    image and of its mirror image, (N, 2, 32, H/8, W/8) fp16 (mobilenet)."""
    resized = resize(images, STUDENT_INPUT[kind])
    if kind == "cnn":
        return resized
    with torch.no_grad():
        return torch.cat([torch.stack([stem.stem_maps(x), stem.stem_maps(x.flip(3))], 1).half()
                          for x, _ in unlabelled(resized, batch_size=128)])


def train_student(config: dict, run_dir: Path, inputs, labels, teacher, splits) -> tuple[nn.Module, list[dict]]:
    """AdamW with a one-cycle schedule on `inputs` (see `student_inputs`), loss `DistillationLoss`
    (alpha = 0: no distillation); validation loss is plain cross-entropy."""
    seed_everything(config["seed"])
    student = build_student(config["student"], config["width"])
    model = FromStem(student) if config["student"] == "mobilenet" else student
    model.to(memory_format=torch.channels_last)
    train, val = splits
    shift = 2 if config["student"] == "cnn" else 1  # pixels, or stem cells (8 pixels)
    cached_maps = config["student"] == "mobilenet"
    augment = random_view_and_shift(shift) if cached_maps else flip_and_shift(shift)
    train_loader = ArrayLoader(inputs[train], labels[train], teacher[train], config["batch_size"], shuffle=True,
                               transform=augment)
    val_loader = ArrayLoader(inputs[val], labels[val], batch_size=256, transform=first_view if cached_maps else None)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config["lr"], weight_decay=config["weight_decay"])
    steps = config["epochs"] * len(train_loader)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, config["lr"], total_steps=steps, pct_start=0.25)
    loss = DistillationLoss(config["temperature"], config["alpha"])
    history = fit(model, optimizer, loss, train_loader, val_loader, config["epochs"], run_dir=run_dir,
                  scheduler=scheduler, scheduler_per_batch=True, eval_loss_fn=nn.CrossEntropyLoss(), progress=False)
    return student.eval(), history


# ---------------------------------------------------------------- cached runs (one per configuration)

def profile_data(smoke: bool) -> dict[str, ImageArrays]:
    data = load_data()
    return {split: d.sample_per_class(16 if split == "train" else 8) for split, d in data.items()} if smoke else data


def cached_student_inputs(kind: str, smoke: bool, split: str) -> torch.Tensor:
    """`student_inputs` of a split, computed once per profile and kept in the cache folder."""
    images = profile_data(smoke)[split].images
    stem = MobileNetStudent() if kind == "mobilenet" else None
    path = CACHE / f"{kind}-inputs-{split}{'-smoke' if smoke else ''}.npy"
    return torch.from_numpy(cached_array(path, lambda: student_inputs(kind, images, stem).numpy()))


STUDENT_TRAINING = {  # AdamW with a one-cycle schedule; the CNN trains from scratch, MobileNet from ImageNet
    "cnn": {key: RECIPE[key] for key in ("epochs", "lr", "weight_decay", "batch_size")},
    "mobilenet": {"epochs": 8, "lr": 2e-3, "weight_decay": 1e-4, "batch_size": 64},
}


def make_config(student: str = RECIPE["student"], width: int | None = RECIPE["width"],
                temperature: float = RECIPE["temperature"], alpha: float = RECIPE["alpha"], teacher: str | None = None,
                smoke: bool = False, seed: int = RECIPE["seed"], **overrides) -> dict:
    """A student run (by default the deployed one, RECIPE); `teacher` names the cached teacher-logits file
    (`save_teacher_logits`; its name carries its hash), which a run needs. alpha = 0: no distillation. MobileNet
    has no width."""
    width = width if student == "cnn" else None
    temperature = temperature if alpha else 4  # unused without distillation: one value (the records' hashes hold it)
    name = f"{student}{width or ''}-" + (f"kd-T{temperature:g}-a{alpha:g}" if alpha else "ce") + f"-s{seed}"
    config = {"name": name, "student": student, "width": width, "temperature": temperature, "alpha": alpha,
              "teacher": teacher, "seed": seed, "smoke": smoke} | STUDENT_TRAINING[student] | overrides
    return config | ({"epochs": 1} if smoke else {})


def calibration_images(data: dict[str, ImageArrays], smoke: bool) -> np.ndarray:
    """The int8 calibration set: 256 (smoke: 16) training images outside the validation part, 150x150 uint8."""
    train, _ = validation_split(data["train"].labels)
    return data["train"].images[np.sort(np.random.default_rng(1).choice(train, 16 if smoke else 256, replace=False))]


def run(config: dict, run_dir: Path) -> dict:
    """Train (or reload) one student, export it to ONNX and quantise it to int8; returns its history, its
    parameter count and the top-1 classes of the PyTorch (fp32) and the int8 model on the validation and
    the test images (end to end, from the 150x150 images), and the paths of its weights and int8 file."""
    if not config.get("teacher"):
        raise ValueError("a student run needs the teacher's logits: make_config(teacher=save_teacher_logits(...)), "
                         "as the Challenge notebook's master cell does")
    data = profile_data(config["smoke"])
    labels = torch.as_tensor(data["train"].labels)
    inputs = cached_student_inputs(config["student"], config["smoke"], "train")
    teacher = torch.from_numpy(np.load(CACHE / config["teacher"]).astype(np.float32))
    splits = validation_split(data["train"].labels)
    student, history = train_student(config, run_dir, inputs, labels, teacher, splits)
    return {"config": config, "history": history, "parameters": sum(p.numel() for p in student.parameters()),
            "weights": run_dir / "final.pt"} | int8_predictions(student, config, run_dir, data, with_fp32=True)


def int8_predictions(student: nn.Module, config: dict, run_dir: Path, data: dict[str, ImageArrays],
                     reduce_range: bool = False, with_fp32: bool = False) -> dict:
    """Export `student` to ONNX, quantise it (`quantize_int8`) into `run_dir/int8.onnx` and return the top-1
    classes of the int8 model (and, `with_fp32`, of the PyTorch model) on the validation and test images."""
    side = STUDENT_INPUT[config["student"]]
    int8 = exports(student, side, run_dir, "student", calibration_images(data, config["smoke"]), reduce_range)["int8"]
    session = onnx_session(int8, threads=torch.get_num_threads())
    images = {"val": data["train"].images[validation_split(data["train"].labels)[1]], "test": data["test"].images}
    predictions = {"int8": int8}
    for split, x in images.items():
        if with_fp32:
            predictions[f"{split}_pred"] = student_logits(student, config["student"], x).argmax(1).astype(np.uint8)
        predictions[f"{split}_pred_int8"] = onnx_logits(session, resize(x, side)).argmax(1).astype(np.uint8)
    return predictions


def reduced_range_config(run: dict) -> dict:
    """The quantisation fallback of a student run whose int8 model fails the gate: 7-bit weights (`quantize_int8`)."""
    config = run["config"]
    return {"name": f"{config['name']}-int8-reduced-range", "student_run": run_id(run), "student": config["student"],
            "width": config["width"], "smoke": config["smoke"]}


def run_reduced_range(config: dict, run_dir: Path) -> dict:
    """Quantise a trained student (its run folder beside `run_dir`) with 7-bit weights; returns
    the int8 model's top-1 classes on the validation and test images and its path."""
    weights = run_dir.parent / config["student_run"] / "final.pt"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing (its run came from a record): set RETRAIN = True to train "
                                "the student again, then quantise it")
    student = load_student(config["student"], weights, config["width"])
    run_dir.mkdir(parents=True, exist_ok=True)
    return {"config": config} | int8_predictions(student, config, run_dir, profile_data(config["smoke"]),
                                                 reduce_range=True)


def gated(runs: list[dict], fallbacks: list[dict], val_labels) -> list[dict]:
    """Each student run with the int8 model it deploys, chosen on validation: 8-bit weights when that passes the
    gate, else its `run_reduced_range` fallback (from `fallbacks`); `int8_recipe` says which, and the
    8-bit predictions stay as `*_pred_int8_all`."""
    by_run = {fallback["config"]["student_run"]: fallback for fallback in fallbacks}
    chosen = []
    for run in runs:
        kept = {f"{split}_pred_int8_all": run[f"{split}_pred_int8"] for split in ("val", "test")}
        if passes_gate(run, val_labels):
            chosen.append(run | kept | {"int8_recipe": "8-bit weights"})
        else:
            fallback = by_run[run_id(run)]
            chosen.append(run | kept | {key: fallback[key] for key in ("val_pred_int8", "test_pred_int8", "int8")}
                          | {"int8_recipe": "7-bit weights"})
    return chosen


@torch.no_grad()
def student_logits(student: nn.Module, kind: str, images) -> np.ndarray:
    """Logits of the whole student (stem included) on uint8 150x150 images."""
    student.eval()
    resized = resize(images, STUDENT_INPUT[kind])
    return torch.cat([student(x) for x, _ in unlabelled(resized)]).numpy()


def load_student(kind: str, weights: Path, width: int | None = None) -> nn.Module:
    """A trained student from its run's weights (saved from the `FromStem` wrapper for mobilenet)."""
    student = build_student(kind, width)
    state = load_state(weights)
    student.load_state_dict({k.removeprefix("student."): v for k, v in state.items()})
    return student.eval()


# ---------------------------------------------------------------- deployment: ONNX, int8, cost

def export_onnx(model: nn.Module, side: int, path: Path) -> Path:
    """ONNX graph of `model` for (batch, 3, side, side) inputs in [0, 1], dynamic batch size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    example = (torch.rand(2, 3, side, side),)
    torch.onnx.export(model.eval(), example, str(path), input_names=["image"], output_names=["logits"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False, verbose=False)
    return path


class _Calibration:
    """onnxruntime calibration reader: a few hundred training images, one batch at a time."""

    def __init__(self, images: torch.Tensor, batch_size: int = 32):
        self.batches = iter([{"image": x.contiguous().numpy()} for x, _ in unlabelled(images, batch_size)])

    def get_next(self):
        return next(self.batches, None)


def quantize_int8(fp32_path: Path, int8_path: Path, calibration_images: torch.Tensor,
                  reduce_range: bool = False) -> Path:
    """Static post-training quantization: int8 weights (per channel) and activations (QDQ format),
    activation ranges calibrated on `calibration_images` (uint8, already at the model's input size). With
    `reduce_range` the weights use 7 bits: x86 CPUs without VNNI add uint8 x int8 products in 16 bits, which
    saturates with full-range weights (ONNX Runtime's quantization guide), and 7 bits cannot."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = fp32_path.with_name(fp32_path.stem + "-prep.onnx")
    quant_pre_process(str(fp32_path), str(prepared))
    quantize_static(str(prepared), str(int8_path), _Calibration(calibration_images), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    reduce_range=reduce_range)
    prepared.unlink()
    return int8_path


def onnx_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_logits(session, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Logits of an ONNX session on uint8 (N, 3, H, W) images."""
    return np.concatenate([session.run(None, {"image": x.contiguous().numpy()})[0]
                           for x, _ in unlabelled(images, batch_size)])


def end_to_end(session, side: int):
    """One decoded image, uint8 (1, 150, 150, 3), to logits with the model's preprocessing inside the call
    (a student's resize to `side`, the scaling to [0, 1]): what latency compares like for like."""
    def predict(image):
        x = to_float(image) if side == IMAGE_SIZE else resize(image, side).float().div(255)
        return session.run(None, {"image": x.contiguous().numpy()})[0]
    return predict


def exports(model: nn.Module, side: int, folder: Path, name: str, calibration,
            reduce_range: bool = False) -> dict[str, Path]:
    """`model` as fp32 ONNX and static int8 ONNX (`quantize_int8`, calibrated on `calibration`, 150x150 uint8)."""
    fp32 = export_onnx(model, side, Path(folder) / f"{name}-fp32.onnx")
    return {"fp32": fp32, "int8": quantize_int8(fp32, Path(folder) / f"{name}-int8.onnx", resize(calibration, side),
                                                reduce_range)}


def repository_path(path) -> Path:
    """A path a run returned: absolute when trained now, relative to the repository root when read from a record."""
    path = Path(path)
    return path if path.is_absolute() else ROOT / path


def run_id(run: dict) -> str:
    """A run's folder name (configuration name and hash), also where its result came from a record."""
    return Path(run["weights"]).parent.name


def deploy(run: dict, folder: Path) -> dict[str, Path]:
    """Put a student run's int8 ONNX and fp16 state dict in `folder` as `<kind>_student_int8.onnx` and
    `<kind>_student_fp16.pt` (replacing any other student). A run read from a record has no weights here: then
    the committed files are kept if they are that run's (the ONNX file's "run" metadata names it)."""
    folder, kind = Path(folder), run["config"]["student"]
    files = {"int8": folder / f"{kind}_student_int8.onnx", "fp16": folder / f"{kind}_student_fp16.pt"}
    weights, identity = repository_path(run["weights"]), {"run": run_id(run), "int8_recipe": run["int8_recipe"]}
    if weights.is_file():
        for stale in folder.glob("*_student_*"):
            stale.unlink()
        files["int8"].write_bytes(repository_path(run["int8"]).read_bytes())
        write_onnx_metadata(files["int8"], identity)
        save_half(load_student(kind, weights, run["config"]["width"]), files["fp16"])
        return files
    import onnx

    committed = files["int8"].is_file() and {p.key: p.value for p in onnx.load(str(files["int8"])).metadata_props}
    if not committed or identity.items() - committed.items() or not files["fp16"].is_file():
        raise FileNotFoundError(f"{folder}: the committed student is not run {run_id(run)} (read from a record, so "
                                "its weights are not here): set RETRAIN = True to train it again")
    return files


# ---------------------------------------------------------------- new images

def preprocess(path, side: int = IMAGE_SIZE) -> torch.Tensor:
    """One file -> float (3, side, side) in [0, 1] (decoded at 150x150 as in training, then resized);
    bad files raise BadImageError."""
    image = torch.tensor(load_image(path, (IMAGE_SIZE, IMAGE_SIZE)))[None]
    return to_float(image)[0] if side == IMAGE_SIZE else resize(image, side)[0].float() / 255


def accuracy(run: dict, labels, split: str = "val", int8: bool = True) -> float:
    """A student run's top-1 accuracy on `split` ("val" or "test") from its recorded predictions."""
    return metrics.accuracy(labels, run[f"{split}_pred{'_int8' if int8 else ''}"])


def passes_gate(run: dict, val_labels) -> bool:
    """The quantisation gate, on validation: int8 at most `INT8_TOLERANCE` below the fp32 model."""
    return accuracy(run, val_labels) >= accuracy(run, val_labels, int8=False) - INT8_TOLERANCE


def choose_width(runs: list[dict], val_labels, master_val: float) -> int:
    """The compact student's width, on validation: the smallest distilled CompactCNN whose int8 model passes the
    gate and comes within `WITHIN_MASTER` of the master; if none does, the most accurate one (of all distilled
    CNNs if none passes the gate)."""
    distilled = [r for r in runs if r["config"]["student"] == "cnn" and r["config"]["alpha"]]
    cnn = [r for r in distilled if passes_gate(r, val_labels)] or distilled
    close = [r for r in cnn if accuracy(r, val_labels) >= master_val - WITHIN_MASTER]
    chosen = min(close, key=lambda r: r["config"]["width"]) if close else \
        max(cnn, key=lambda r: accuracy(r, val_labels))
    return chosen["config"]["width"]


def summarize(*, profile: str, cost: pd.DataFrame, deployed: dict, seeds: pd.DataFrame, gate: pd.DataFrame,
              pareto: list[dict], effect: dict, most_accurate: dict) -> dict:
    """results.json from the Challenge notebook's tables: `cost` (like for like: rows "master fp32",
    "master int8", "student fp32", "student int8"), the deployed run, the chosen setting's per-seed table,
    the quantisation gate (one row per run), the Pareto points, the distillation effect at the deployed
    width and the most accurate student that passes the gate."""
    master, student = cost.loc["master fp32"], cost.loc["student int8"]

    def ratios(precision):
        row_m, row_s = cost.loc[f"master {precision}"], cost.loc[f"student {precision}"]
        return {"latency_ratio": float(row_m["latency median ms"] / row_s["latency median ms"]),
                "size_ratio": float(row_m["MB on disk"] / row_s["MB on disk"])}

    like = {precision: ratios(precision) for precision in ("fp32", "int8")}
    param_ratio = float(master["parameters"] / student["parameters"])
    config = deployed["config"]
    return {
        "dataset": "intel_q75",
        "profile": profile,
        "data": "Intel Image Classification (offline mirror, JPEG q75): 14,034 train (20% validation), 3,000 test",
        "master_accuracy": float(master["test accuracy"]),
        "master_int8_accuracy": float(cost.loc["master int8", "test accuracy"]),
        "master_params": int(master["parameters"]),
        "student": f"{config['student']}{config['width'] or ''} ({config['name']}), int8 ONNX",
        "student_run": config["name"], "student_kind": config["student"], "student_width": config["width"],
        "student_int8_recipe": deployed["int8_recipe"],
        "student_accuracy": float(student["test accuracy"]),
        "student_params": int(student["parameters"]),
        "student_seeds": {f"{metric} {stat}": float(value) for metric, stats in seeds.agg(["mean", "std"]).items()
                          for stat, value in stats.items()} | {"seeds": len(seeds)},
        "param_ratio": param_ratio,
        "like_for_like": like,
        "latency_threads": 1,
        "quantisation_gate_split": "validation",
        "quantisation_gate": {name: {k: v.item() if hasattr(v, "item") else v for k, v in row.items()}
                              for name, row in gate.iterrows()},
        "pareto": pareto,
        "most_accurate_student": most_accurate,
        "distillation_effect": effect,
        "models": {name: {k: float(v) for k, v in row.items()} for name, row in cost.iterrows()},
        "headline": {
            "student vs master accuracy": f"{student['test accuracy']:.4f} vs {master['test accuracy']:.4f}",
            "student cost": f"{param_ratio:.0f}x fewer parameters; int8 vs int8: {like['int8']['size_ratio']:.0f}x "
                            f"smaller, {like['int8']['latency_ratio']:.0f}x faster",
            "most accurate student": f"{most_accurate['name']}: {most_accurate['test accuracy']:.4f}",
        },
    }


# ---------------------------------------------------------------- the committed predictor: master and student

HERE = Path(__file__).resolve().parent
CHECKPOINTS = HERE / "checkpoints"
DEMO = HERE / "demo"  # committed seg_pred images for the last cell's demo
MASTER_HEAD = "master_head.pt"  # the master's Dense(6), saved by Baseline.ipynb (fp32 state dict)
BACKBONE_FIRST_LOAD = ("read once out of resmem 1.1.6's wheel from PyPI (pip download, sha256 checked) into the "
                       "shared cache checkpoints/resmem_model.pt: about 15 s more on the first load (measured on a "
                       "2-core CPU: 28 s to load and predict the demo instead of 13 s)")
SCALING = {"cnn": "uint8 / 255 -> [0, 1]; the network standardises ((x - 0.5) / 0.25) itself",
           "mobilenet": "uint8 / 255 -> [0, 1]; the network standardises with the ImageNet mean and std itself"}
OUTPUT_COLUMNS = ["file", "master", "master probability", "student", "student probability", "agree", "error"]


def intel_classes(root=DATA_ROOT) -> list[str]:
    """The six class names in label order: the sorted class folders of seg_train (as `load_class_folders`)."""
    return sorted(d.name for d in (prepare("intel", root) / "seg_train").iterdir() if d.is_dir())


def student_metadata(kind: str, classes: list[str], source: str) -> dict[str, str]:
    """What a program needs to run the student's ONNX file alone: its `metadata_props` (strings)."""
    side = STUDENT_INPUT[kind]
    return {"classes": json.dumps(classes), "input_name": "image", "input_size": str(side),
            "input_layout": f"float32 (batch, 3, {side}, {side}), RGB",
            "preprocess": f"decode as RGB at {IMAGE_SIZE}x{IMAGE_SIZE} (bilinear), then antialiased bilinear "
                          f"resize to {side}x{side}",
            "scaling": SCALING[kind], "output": "logits (batch, 6); softmax gives the probabilities",
            "model": f"{kind} student of the distillation challenge, int8 static quantization (QDQ)",
            "source": source}


def write_onnx_metadata(path: Path, metadata: dict[str, str]) -> None:
    """Set `metadata` in the ONNX file's `metadata_props` (the quantizer's own entries are kept); the graph
    and weights are left as they are."""
    import onnx

    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props} | metadata
    onnx.helper.set_model_props(model, props)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))


def export_predictor(folder=CHECKPOINTS, smoke: bool = False) -> Path:
    """`folder/predictor.json` for the master (the backbone from the shared cache + `MASTER_HEAD`) and the
    deployed int8 ONNX student the notebooks saved in `folder`, described from the results.json beside it;
    the student's metadata also goes into its ONNX file. Reads files only (and the class folder names)."""
    folder = Path(folder)
    head = folder / MASTER_HEAD
    students = sorted(folder.glob("*_student_int8.onnx"))
    if not head.is_file() and smoke and (CHECKPOINTS / MASTER_HEAD).is_file():
        shutil.copy2(CHECKPOINTS / MASTER_HEAD, head)  # a smoke run of this notebook alone saves no head: the committed
    if not head.is_file():
        raise FileNotFoundError(f"{head} is missing: Baseline.ipynb saves the master's head there")
    if len(students) != 1:
        raise FileNotFoundError(f"{folder}: expected one *_student_int8.onnx (the Challenge notebook saves it), "
                                f"found {[p.name for p in students]}")
    student = students[0]
    kind = student.name.removesuffix("_student_int8.onnx")
    results = load_results(folder.parent)
    classes = intel_classes()
    head_state = load_state(head)
    if tuple(head_state["weight"].shape) != (len(classes), 2048):
        raise ValueError(f"{head.name}: weight shape {tuple(head_state['weight'].shape)}, expected "
                         f"({len(classes)}, 2048)")
    metadata = student_metadata(kind, classes, results["student"])
    write_onnx_metadata(student, metadata)
    side = STUDENT_INPUT[kind]
    fp16 = folder / f"{kind}_student_fp16.pt"
    return write_manifest(
        folder, challenge="distillation", classes=classes,
        task="scene classification (Intel Image Classification, 6 classes): the master and the deployed student "
             "side by side",
        master={"architecture": "frozen ImageNet ResNet-152 (torchvision layout, fc removed) -> Linear(2048, 6)",
                "builder": "common.Master(6, backbone=mlkit.pretrained.resnet152())",
                "parameters": results["master_params"],
                "input": {"size": [IMAGE_SIZE, IMAGE_SIZE], "mode": "RGB", "preprocess": "common.preprocess",
                          "resize": f"any size and format, EXIF-rotated, converted to RGB, bilinear resize to "
                                    f"{IMAGE_SIZE}x{IMAGE_SIZE}",
                          "scaling": "uint8 / 255 -> [0, 1], no mean/std normalisation (the backbone's batch-norm "
                                     "statistics were estimated on such inputs)"},
                "head": {"file": MASTER_HEAD, "bytes": head.stat().st_size,
                         "format": "fp32 state dict (weight, bias): torch.load(weights_only=True)",
                         "trained": "Baseline.ipynb: Adam, batch 32, on the frozen backbone's features of seg_train "
                                    "less its stratified 20% validation part (seed 0)",
                         "config": master_config(smoke)},
                "backbone": {"weights": "mlkit.pretrained.RESNET152: resmem/model.pt inside the resmem 1.1.6 wheel "
                                        "(its features.* tensors), not committed (233 MB)",
                             "package": f"{RESNET152.package}=={RESNET152.version}", "member": RESNET152.member,
                             "sha256": RESNET152.sha256, "cache": f"checkpoints/{RESNET152.cache_name}",
                             "first_load": BACKBONE_FIRST_LOAD, "licence": "ResMem licence: non-commercial use"},
                "test_accuracy": results["master_accuracy"]},
        student={"kind": kind, "architecture": f"CompactCNN(6, width={results['student_width']})" if kind == "cnn"
                 else "MobileNetStudent(6, head_width=384)",
                 "file": student.name, "bytes": student.stat().st_size,
                 "format": "ONNX, int8 static post-training quantization (QDQ: int8 per-channel weights, uint8 "
                           f"activations; {results['student_int8_recipe']}), run with onnxruntime "
                           "(CPUExecutionProvider)",
                 "input": {"name": "image", "size": [side, side], "mode": "RGB", "preprocess":
                           f"common.preprocess(path, side={side})", "resize": metadata["preprocess"],
                           "scaling": SCALING[kind]},
                 "output": "logits; probabilities are their softmax",
                 "onnx_metadata_props": sorted(metadata),
                 "parameters": results["student_params"], "run": results["student"],
                 "test_accuracy": results["student_accuracy"],
                 "int8_gate": results["quantisation_gate"][results["student_run"]]
                 | {"split": results["quantisation_gate_split"], "tolerance": INT8_TOLERANCE},
                 "fp16_state_dict": f"{fp16.name} (the PyTorch student before export; not used for prediction)"},
        output={"columns": OUTPUT_COLUMNS, "agree": "whether the master's and the student's top-1 classes are the "
                "same", "probability": "softmax probability of the model's top-1 class"},
        source={"data": results["data"], "profile": results["profile"],
                "results": "results.json (master_accuracy, student, student_accuracy, quantisation_gate)"},
        smoke=smoke)


class OnnxClassifier(nn.Module):
    """An onnxruntime session as a module (float (N, 3, H, W) in, logits out), for `predict_files`."""

    def __init__(self, session):
        super().__init__()
        self.session = session

    def forward(self, x):
        return torch.from_numpy(self.session.run(None, {"image": x.contiguous().numpy()})[0])


class DistillationPredictor:
    """The master and the deployed student on the same files: `predict(inputs)` gives one row per file with
    both top-1 classes and probabilities and whether they agree."""

    def __init__(self, manifest: dict, master: nn.Module, session):
        self.manifest, self.classes = manifest, manifest["classes"]
        self.master, self.student = master.eval(), OnnxClassifier(session)
        self.student_side = manifest["student"]["input"]["size"][0]

    def predict(self, inputs) -> pd.DataFrame:
        """Files, folders or a list of them: columns `OUTPUT_COLUMNS` ("" in error, NaN probabilities and
        an empty `agree` where a file cannot be used)."""
        master = predict_files(self.master, inputs, preprocess, self.classes, top_k=1)
        student = predict_files(self.student, inputs, partial(preprocess, side=self.student_side), self.classes,
                                top_k=1, device="cpu")
        rows = []
        for m, s in zip(master, student, strict=True):
            (mc, mp), (sc, sp) = (r["top"][0] if "top" in r else ("", float("nan")) for r in (m, s))
            rows.append([Path(m["file"]).name, mc, mp, sc, sp, mc == sc if "top" in m else pd.NA,
                         m.get("error", "")])
        table = pd.DataFrame(rows, columns=OUTPUT_COLUMNS)
        table["agree"] = table["agree"].astype("boolean")
        return table

    def __repr__(self) -> str:
        student = self.manifest["student"]
        return (f"distillation predictor: ResNet-152 master and {student['kind']} int8 ONNX student "
                f"({student['input']['size'][0]} px), {len(self.classes)} classes, side by side")


def master_backbone() -> nn.Module:
    """The master's ImageNet ResNet-152 from the shared cache (fetched on first use); a missing cache that
    cannot be filled gives an error that says how to fill it."""
    cached = PRETRAINED_CACHE / RESNET152.cache_name
    first = not cached.is_file()
    if first:
        print(f"the master's ResNet-152 weights are not in checkpoints/ yet: {BACKBONE_FIRST_LOAD}", flush=True)
    started = time.perf_counter()
    try:
        backbone = resnet152()
    except (OSError, subprocess.CalledProcessError, StopIteration, ValueError) as error:
        raise RuntimeError(
            f"the master's ResNet-152 backbone is not in the shared cache (checkpoints/{RESNET152.cache_name}) and "
            f"could not be fetched ({type(error).__name__}: {error}). With internet access, run from the "
            "repository root: python -c 'from mlkit.pretrained import resnet152; resnet152()' (it downloads "
            f"{RESNET152.package}=={RESNET152.version}'s wheel from PyPI and keeps the checked weights), or copy "
            f"{RESNET152.cache_name} (sha256 {RESNET152.sha256[:12]}...) into checkpoints/") from error
    if first:
        print(f"first load of the ResNet-152 backbone (wheel download included): {time.perf_counter() - started:.1f} s")
    return backbone


def load_predictor(folder=CHECKPOINTS) -> DistillationPredictor:
    """The predictor `export_predictor` described in `folder`: master head and int8 student from `folder`,
    the master's backbone from the shared pretrained cache."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    head, student = named_files(folder, manifest["master"]["head"]["file"], manifest["student"]["file"])
    session = onnx_session(student, threads=torch.get_num_threads())
    metadata = session.get_modelmeta().custom_metadata_map
    if json.loads(metadata.get("classes", "null")) != manifest["classes"] or \
            metadata.get("input_size") != str(manifest["student"]["input"]["size"][0]):
        raise ValueError(f"{student.name}: its metadata_props (classes, input_size) do not match predictor.json; "
                         "rerun the notebook's export cell")
    master = Master(len(manifest["classes"]), backbone=master_backbone())
    master.head.load_state_dict(load_state(head))
    return DistillationPredictor(manifest, master, session)


def demo_inputs(folder=HERE / "runs" / "demo_inputs") -> Path:
    """The committed seg_pred images of `DEMO` plus the inputs that must be converted or refused, in runs/."""
    return write_demo_folder(folder, DEMO)
