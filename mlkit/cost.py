"""What a model costs to run: single-input latency and training throughput on this machine."""
import time

import numpy as np
import torch
import torch.nn.functional as F


def latency_ms(predict, example, runs: int = 200, warmup: int = 20) -> dict[str, float]:
    """Median and 95th percentile of single-call wall time in milliseconds, after `warmup` calls."""
    for _ in range(warmup):
        predict(example)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        predict(example)
        times.append((time.perf_counter() - started) * 1000)
    return {"median_ms": float(np.median(times)), "p95_ms": float(np.percentile(times, 95))}


def torch_predictor(model: torch.nn.Module):
    model.eval()

    def predict(x):
        with torch.inference_mode():
            return model(x)
    return predict


def training_throughput(model: torch.nn.Module, input_shape: tuple[int, ...], batch_size: int = 64,
                        steps: int = 3) -> float:
    """Training images per second (forward, backward, AdamW step) on random inputs, with the current threads."""
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    x = torch.rand(batch_size, *input_shape).contiguous(memory_format=torch.channels_last)
    y = torch.zeros(batch_size, dtype=torch.long)
    for step in range(steps + 1):
        if step == 1:  # the first step warms up allocators and kernels
            started = time.perf_counter()
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return steps * batch_size / (time.perf_counter() - started)
