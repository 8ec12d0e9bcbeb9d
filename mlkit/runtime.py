"""Reproducibility, device and thread settings, and crash-safe file writes."""
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(preferred: str | None = None) -> torch.device:
    """`preferred` if given, else cuda, then mps, then cpu."""
    if preferred:
        return torch.device(preferred)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def device_name(device: torch.device) -> str:
    """A readable name of the hardware behind `device`, e.g. "NVIDIA H100 80GB HBM3" or "CPU, 2 threads"."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"{device.type.upper()}, {threads} thread{'s' if threads > 1 else ''}"


def set_threads(n: int | None = None) -> int:
    """Use `n` intra-op threads (default: all cores, or $TORCH_THREADS)."""
    n = n or int(os.environ.get("TORCH_THREADS", 0)) or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def rng_state() -> dict:
    """Every RNG state a training run consumes, for exact resume."""
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": random.getstate(),
        # NumPy's state as tensors and floats, so `torch.load(weights_only=True)` accepts it.
        "numpy": (torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached_gaussian),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    keys, pos, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def atomic_path(path) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write (same suffix, unique per process); it replaces `path`
    only when the block succeeds, so a crash never leaves a truncated file and parallel writers never mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
