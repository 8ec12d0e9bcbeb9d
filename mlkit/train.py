"""One training loop for every challenge: progress bar, history, TensorBoard, early stopping,
learning-rate schedules, Stochastic Weight Averaging, atomic checkpoints and exact resume.

A run lives in `run_dir`:
    last.pt       everything needed to continue (model, optimizer, scheduler, RNG, epoch, history)
    best.pt       model weights at the lowest validation loss
    final.pt      weights of the returned model (SWA-averaged when SWA is on)
    history.json  one row per epoch, plus `"finished": true` once the run is complete
    tb/           TensorBoard events
Calling `fit` again on a finished run loads it instead of training; on an interrupted run it
continues from `last.pt` and ends bit-identical to an uninterrupted run (single process, CPU).
"""
import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.optim.swa_utils import SWALR, AveragedModel, update_bn
from tqdm import tqdm

from .batches import unlabelled
from .experiments import record_hardware
from .runtime import atomic_path, rng_state, set_rng_state

Metric = Callable[[torch.Tensor, torch.Tensor], float]


@dataclasses.dataclass
class EarlyStopping:
    """Stop when the validation loss has not improved by `min_delta` for `patience` epochs."""

    patience: int = 5
    min_delta: float = 0.0
    best: float = math.inf
    bad_epochs: int = 0

    def step(self, val_loss: float) -> bool:
        """Record one epoch's validation loss; True means stop now."""
        if val_loss < self.best - self.min_delta:
            self.best, self.bad_epochs = val_loss, 0
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


@dataclasses.dataclass
class SWA:
    """Average the weights of every epoch from `start_epoch` (0-based) on, at a constant `lr`
    reached by a cosine anneal of `anneal_epochs`; BatchNorm statistics are recomputed at the end."""

    start_epoch: int
    lr: float
    anneal_epochs: int = 3


def warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    """A learning-rate factor per step (for `LambdaLR`): linear warm-up over `warmup` steps to 1, then cosine
    decay to 0 at step `total`, and 0 after it."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
    return factor


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # a tied weight is one parameter: counted once


def atomic_save(obj, path: Path) -> None:
    """Write via a temporary file and rename, so a crash never leaves a truncated checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_state(path: Path, map_location="cpu"):
    return torch.load(path, map_location=map_location, weights_only=True)


def save_half(model: torch.nn.Module, path: Path) -> Path:
    """The model's state dict with floating-point tensors stored as fp16 (half the size on disk)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save({k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}, path)
    return path


def load_half(path: Path) -> dict:
    """A `save_half` state dict with its floating-point tensors back in fp32."""
    return {k: v.float() if v.is_floating_point() else v for k, v in load_state(path).items()}


class FlipAveraged(torch.nn.Module):
    """Test-time augmentation as a model: log of the mean softmax of the image and its mirror image
    (so softmax of the output gives the averaged probabilities)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return ((self.model(x).softmax(1) + self.model(x.flip(3)).softmax(1)) / 2).log()


@torch.no_grad()
def predict_probabilities(model: torch.nn.Module, inputs: torch.Tensor, flip_tta: bool = False,
                          batch_size: int = 256) -> np.ndarray:
    """Softmax over uint8 inputs (N, C, H, W); with `flip_tta`, averaged with the mirror images."""
    device = next(model.parameters()).device
    model = (FlipAveraged(model) if flip_tta else model).eval()
    return torch.cat([model(x.to(device)).softmax(1).cpu() for x, _ in unlabelled(inputs, batch_size)]).numpy()


@torch.no_grad()
def predict_logits(model, loader, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """All logits and labels of `loader`, in loader order, on the CPU."""
    device = device or next(model.parameters()).device
    model.eval()
    logits, labels = [], []
    for inputs, targets in loader:
        logits.append(model(inputs.to(device)).float().cpu())
        labels.append(targets)
    return torch.cat(logits), torch.cat(labels)


def evaluate(model, loader, loss_fn, metrics: dict[str, Metric] | None = None, device=None) -> dict:
    """Loss and accuracy (single-label targets only) over the whole loader (exact, not a mean of batch means),
    plus `metrics`."""
    logits, labels = predict_logits(model, loader, device)
    result = {"loss": float(loss_fn(logits, labels))}
    if labels.ndim == 1:
        result["accuracy"] = float((logits.argmax(1) == labels).float().mean())
    for name, metric in (metrics or {}).items():
        result[name] = float(metric(logits, labels))
    return result


def _to_device(targets, device):
    if isinstance(targets, (tuple, list)):
        return type(targets)(t.to(device) for t in targets)
    return targets.to(device)


def _labels(targets) -> torch.Tensor:
    return targets[0] if isinstance(targets, (tuple, list)) else targets


def _train_epoch(model, loader, optimizer, loss_fn, device, scheduler=None, clip_grad_norm=None,
                 autocast: torch.dtype | None = None) -> dict:
    model.train()
    total_loss, correct, seen, started = 0.0, 0, 0, time.perf_counter()
    for inputs, targets in loader:
        inputs, targets = inputs.to(device), _to_device(targets, device)
        labels = _labels(targets)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            logits = model(inputs)
            loss = loss_fn(logits, targets)
        loss.backward()
        if clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total_loss += loss.item() * len(labels)
        if labels.ndim == 1:
            correct += (logits.argmax(1) == labels).sum().item()
        seen += len(labels)
    row = {"train_loss": total_loss / seen, "train_seconds": time.perf_counter() - started}
    return row | ({"train_accuracy": correct / seen} if labels.ndim == 1 else {})


def fit(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable,
    train_loader,
    val_loader,
    epochs: int,
    *,
    run_dir: str | Path | None = None,
    scheduler=None,
    scheduler_per_batch: bool = False,
    early_stopping: EarlyStopping | None = None,
    swa: SWA | None = None,
    clip_grad_norm: float | None = None,
    eval_loss_fn: Callable | None = None,
    metrics: dict[str, Metric] | None = None,
    checkpoint_every: int = 1,
    eval_every: int = 1,
    device=None,
    autocast: torch.dtype | None = None,
    progress: bool = True,
) -> list[dict]:
    """Train `model` in place and return its per-epoch history.

    Training batches are (inputs, labels) or (inputs, (labels, *extra)): a loss that needs more than the
    labels (e.g. cached teacher logits) gets the whole tuple; accuracy uses the labels. `scheduler`
    steps once per epoch (ReduceLROnPlateau gets the validation loss) or, with
    `scheduler_per_batch`, once per batch. `loss_fn` trains; `eval_loss_fn` (default `loss_fn`)
    scores validation, every `eval_every` epochs and after the last (early stopping and ReduceLROnPlateau
    need every epoch). `clip_grad_norm` clips the gradients' global norm before every step. With
    `swa`, the returned `model` holds the averaged weights and the last history row carries their
    validation metrics under `swa_*`. `autocast` (e.g. torch.bfloat16) runs the training forward passes in
    that precision; validation stays in fp32.
    """
    plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    if eval_every > 1 and (early_stopping or plateau):
        raise ValueError("early stopping and ReduceLROnPlateau need the validation loss of every epoch")
    device = torch.device(device) if device else next(model.parameters()).device
    eval_loss_fn = eval_loss_fn or loss_fn
    run_dir = Path(run_dir) if run_dir else None
    if run_dir and (run_dir / "history.json").exists():
        record = json.loads((run_dir / "history.json").read_text())
        if record.get("finished"):
            model.load_state_dict(load_state(run_dir / "final.pt", device))
            return record["history"]

    swa_model = AveragedModel(model) if swa else None
    swa_scheduler = SWALR(optimizer, swa_lr=swa.lr, anneal_epochs=swa.anneal_epochs) if swa else None
    stateful = {"model": model, "optimizer": optimizer, "scheduler": scheduler,
                "early_stopping": early_stopping, "swa_model": swa_model, "swa_scheduler": swa_scheduler}
    history, start_epoch = [], 0
    if run_dir and (run_dir / "last.pt").exists():
        checkpoint = load_state(run_dir / "last.pt")
        for name, obj in stateful.items():
            if obj is not None:
                obj.load_state_dict(checkpoint[name])
        set_rng_state(checkpoint["rng"])
        history, start_epoch = checkpoint["history"], checkpoint["epoch"] + 1
    if run_dir:
        run_dir.mkdir(parents=True, exist_ok=True)
        record_hardware(run_dir, device)
    writer = _tensorboard(run_dir, start_epoch)

    best_val = min((row["val_loss"] for row in history if "val_loss" in row), default=math.inf)
    bar = tqdm(range(start_epoch, epochs), initial=start_epoch, total=epochs, disable=not progress, desc="epochs")
    for epoch in bar:
        started = time.perf_counter()
        in_swa = swa is not None and epoch >= swa.start_epoch
        batch_scheduler = scheduler if scheduler_per_batch and not in_swa else None
        row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
        row |= _train_epoch(model, train_loader, optimizer, loss_fn, device, batch_scheduler, clip_grad_norm,
                            autocast)
        if (epoch + 1) % eval_every == 0 or epoch + 1 == epochs:
            row |= {f"val_{k}": v for k, v in evaluate(model, val_loader, eval_loss_fn, metrics, device).items()}
        if in_swa:
            swa_model.update_parameters(model)
            swa_scheduler.step()
        elif scheduler is not None and not scheduler_per_batch:
            scheduler.step(row["val_loss"]) if plateau else scheduler.step()
        row["seconds"] = time.perf_counter() - started
        history.append(row)
        bar.set_postfix({key: f"{row[key]:.3f}" for key in ("train_loss", "val_loss", "val_accuracy") if key in row})
        if writer:
            for key, value in row.items():
                if key != "epoch":
                    writer.add_scalar(key, value, epoch)
            writer.flush()  # on disk with the epoch's checkpoint, even if a later epoch crashes
        if run_dir and row.get("val_loss", math.inf) < best_val:
            best_val = row["val_loss"]
            atomic_save(model.state_dict(), run_dir / "best.pt")
        stop = early_stopping is not None and early_stopping.step(row["val_loss"])
        if run_dir and ((epoch + 1) % checkpoint_every == 0 or stop or epoch + 1 == epochs):
            state = {name: obj.state_dict() for name, obj in stateful.items() if obj is not None}
            atomic_save(state | {"rng": rng_state(), "history": history, "epoch": epoch}, run_dir / "last.pt")
        if stop:
            break

    if swa_model is not None and swa_model.n_averaged.item() > 0:
        update_bn(train_loader, swa_model, device)
        model.load_state_dict(swa_model.module.state_dict())
        swa_metrics = evaluate(model, val_loader, eval_loss_fn, metrics, device)
        history[-1] |= {f"swa_val_{k}": v for k, v in swa_metrics.items()}
    if writer:
        writer.close()
    if run_dir:
        atomic_save(model.state_dict(), run_dir / "final.pt")
        (run_dir / "history.json").write_text(json.dumps({"finished": True, "history": history}, indent=1))
    return history


def _tensorboard(run_dir: Path | None, start_epoch: int):
    if run_dir is None:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(run_dir / "tb"), purge_step=start_epoch)
