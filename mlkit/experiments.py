"""Named, cached experiment runs, several at a time.

A run is a configuration dict; its folder `runs/<name>-<hash>` is keyed by the whole configuration,
so re-running a notebook reuses finished runs, an interrupted run resumes, and deleting the folder
retrains. Small models train faster as several single-threaded processes than as one process on
all cores, so `run_all` spreads runs over `workers` processes.
"""
import ctypes
import hashlib
import json
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .runtime import atomic_path, device_name

PR_SET_PDEATHSIG = 1  # prctl option: the signal a process gets when its parent dies


def run_dir(runs: Path, config: dict) -> Path:
    """`runs/<name>-<8 hex of the configuration>`; `config["name"]` is a readable label."""
    digest = hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return Path(runs) / f"{config.get('name', 'run')}-{digest}"


def cached_array(path: Path, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """`compute()` once, saved atomically as `path` (.npy); later calls read it."""
    path = Path(path)
    if path.exists():
        return np.load(path)
    value = compute()
    with atomic_path(path) as tmp:
        np.save(tmp, value)
    return value


def record_hardware(run_dir: Path, device: torch.device) -> None:
    """Name the hardware a run trains on in its folder (`hardware.txt`), once, before its first epoch."""
    path = Path(run_dir) / "hardware.txt"
    if not (Path(run_dir) / "history.json").exists() and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(device_name(device))


def trained_on(run_dir: Path) -> str:
    """The hardware a run was trained on; runs from before `hardware.txt` existed were trained on the CPU."""
    path = Path(run_dir) / "hardware.txt"
    return path.read_text() if path.exists() else "CPU"


def _worker_start():
    """One thread per worker; on Linux, the worker dies with the process that started it (an interrupted
    notebook leaves no orphan training at 100% CPU)."""
    torch.set_num_threads(1)
    if sys.platform == "linux":
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _call(fn, config, runs):
    return fn(config, run_dir(runs, config))


def run_all(fn: Callable[[dict, Path], dict], configs: list[dict], runs: Path, workers: int | None = None,
            cost: Callable[[dict], float] | None = None) -> list:
    """`fn(config, run_dir)` for every configuration, results in input order.

    `fn` must be importable (defined in a module) so worker processes can run it. `workers`
    defaults to $WORKERS or the number of cores; 1 runs everything in this process. With `cost`
    (a configuration's expected training time, any unit), the costliest runs start first, so the
    pool does not end waiting on one long run.
    """
    workers = min(len(configs), workers or int(os.environ.get("WORKERS", 0)) or os.cpu_count() or 1)
    if workers <= 1:
        return [_call(fn, config, runs) for config in tqdm(configs, desc="runs")]
    results = [None] * len(configs)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_start) as pool:
        order = sorted(range(len(configs)), key=lambda i: -cost(configs[i])) if cost else range(len(configs))
        futures = {pool.submit(_call, fn, configs[i], runs): i for i in order}
        for future in tqdm(as_completed(futures), total=len(futures), desc="runs"):
            results[futures[future]] = future.result()
    return results
