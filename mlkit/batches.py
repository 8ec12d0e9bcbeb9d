"""In-memory image tensors served in batches, augmented a whole batch at a time (no per-image Python work)."""
from collections.abc import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm


def channels_first(images) -> torch.Tensor:
    """uint8 (N, H, W, 3) or grayscale (N, H, W) array or tensor -> uint8 (N, C, H, W) tensor (a view)."""
    images = torch.as_tensor(images)
    return (images[..., None] if images.dim() == 3 else images).permute(0, 3, 1, 2)


def to_float(images) -> torch.Tensor:
    """uint8 (N, H, W, 3) or grayscale (N, H, W) array or tensor -> float (N, C, H, W) in [0, 1],
    channels-last in memory."""
    return channels_first(images).float().div(255).contiguous(memory_format=torch.channels_last)


def float_batches(images, batch_size: int = 64, desc: str | None = None):
    """`to_float` batches of a uint8 image array, with a progress bar when `desc` is given."""
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc=desc, leave=False, disable=desc is None):
        yield to_float(images[start:start + batch_size])


def resize(images, size: int, batch_size: int = 512) -> torch.Tensor:
    """uint8 (N, H, W[, 3]) -> uint8 (N, C, size, size), antialiased, done once for the whole set."""
    out = [F.interpolate(x, size=(size, size), mode="bilinear", antialias=True).mul(255).round().to(torch.uint8)
           for x in float_batches(images, batch_size)]
    return torch.cat(out).contiguous()


def random_flip(x: torch.Tensor) -> torch.Tensor:
    """Mirror each sample of (N, C, H, W) left-right with probability 1/2."""
    flip = torch.rand(len(x), device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def random_translate(x: torch.Tensor, max_shift: int, fill: str = "replicate") -> torch.Tensor:
    """Shift each sample of float (N, C, H, W) by its own random offset in [-max_shift, max_shift]^2,
    filling with the replicated border (`fill="replicate"`, for photos), its mirror image (`"reflect"`, as
    airbench does) or zeros (`"zeros"`, for ink on a blank page)."""
    if fill not in ("replicate", "reflect", "zeros"):
        raise ValueError(f"fill must be 'replicate', 'reflect' or 'zeros', not {fill!r}")
    if max_shift == 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, mode="constant" if fill == "zeros" else fill)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n), device=x.device)
    rows = dy[:, None] + torch.arange(h, device=x.device)
    cols = dx[:, None] + torch.arange(w, device=x.device)
    # advanced indices around a slice: the result comes out as (N, H, W, C)
    samples = torch.arange(n, device=x.device)[:, None, None]
    return padded[samples, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def flip_and_shift(max_shift: int, fill: str = "replicate") -> Callable[[torch.Tensor], torch.Tensor]:
    """The standard light augmentation: random mirror, then a random shift of up to `max_shift` pixels."""
    return lambda x: random_translate(random_flip(x), max_shift, fill)


class ArrayLoader:
    """Batches of an in-memory tensor: (inputs, labels), or (inputs, (labels, extra)) when `extra` is given
    (e.g. cached teacher logits, for a loss that needs them).

    uint8 inputs are scaled to [0, 1]; `transform` (e.g. augmentation) is applied to every float batch, and
    `shuffle` draws a new order each epoch from torch's global generator (so training resumes exactly).
    """

    def __init__(self, inputs, labels, extra=None, batch_size: int = 64, shuffle: bool = False,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.inputs, self.labels = torch.as_tensor(inputs), torch.as_tensor(labels)
        self.extra = None if extra is None else torch.as_tensor(extra, dtype=torch.float32)
        self.batch_size, self.shuffle, self.transform = batch_size, shuffle, transform

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self):
        order = torch.randperm(len(self.labels)) if self.shuffle else torch.arange(len(self.labels))
        for index in order.split(self.batch_size):
            x = self.inputs[index]
            x = x.float().div(255) if x.dtype == torch.uint8 else x.float()
            x = self.transform(x) if self.transform else x
            labels = self.labels[index]
            yield x.contiguous(memory_format=torch.channels_last), labels if self.extra is None else (
                labels, self.extra[index])


def unlabelled(inputs, batch_size: int = 256, transform=None) -> ArrayLoader:
    """Inputs only (labels are zeros), in order: for prediction."""
    return ArrayLoader(inputs, torch.zeros(len(inputs), dtype=torch.long), batch_size=batch_size, transform=transform)
