"""Named, cached experiment runs, several at a time, and their committed records.

A run is a configuration dict; its folder `runs/<name>-<hash>` is keyed by the whole configuration,
so re-running a notebook reuses finished runs, an interrupted run resumes, and deleting the folder
retrains. Small models train faster as several single-threaded processes than as one process on
all cores, so `run_all` spreads runs over `workers` processes.

`runs/` holds weights and is not committed. With `records`, every finished run also leaves a small
record, `records/<name>-<hash>.json` (its configuration, what the run function returned: metrics,
history, compact predictions; the hardware, date and code version), which is committed: a fresh clone
re-executes a notebook from its records without training. A record is reused only for the same
configuration (same hash); `retrain=True`, or deleting the record, trains again.
"""
import ctypes
import hashlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .runtime import atomic_path, device_name

ROOT = Path(__file__).resolve().parent.parent

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


def _call(fn, config, runs, records):
    folder = run_dir(runs, config)
    result = fn(config, folder)
    if records is not None:
        write_record(Path(records) / f"{folder.name}.json", config, result, trained_on(folder))
    return result


def run_all(fn: Callable[[dict, Path], dict], configs: list[dict], runs: Path, workers: int | None = None,
            cost: Callable[[dict], float] | None = None, records: Path | None = None, retrain: bool = False) -> list:
    """`fn(config, run_dir)` for every configuration, results in input order.

    `fn` must be importable (defined in a module) so worker processes can run it. `workers`
    defaults to $WORKERS or the number of cores; 1 runs everything in this process. With `cost`
    (a configuration's expected training time, any unit), the costliest runs start first, so the
    pool does not end waiting on one long run. With `records` (a folder), a configuration that has a
    record returns it without calling `fn` (unless `retrain`); a dict result gets a `"provenance"` entry
    saying where it came from (see `provenance`).
    """
    results = [None] * len(configs)
    todo = []
    for i, config in enumerate(configs):
        path = records and Path(records) / f"{run_dir(runs, config).name}.json"
        if path and path.exists() and not retrain:
            results[i] = read_record(path)
        else:
            todo.append(i)
    workers = min(len(todo), workers or int(os.environ.get("WORKERS", 0)) or os.cpu_count() or 1)
    if workers <= 1:
        for i in tqdm(todo, desc="runs", disable=not todo):
            results[i] = _trained_now(_call(fn, configs[i], runs, records))
        return results
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_start) as pool:
        order = sorted(todo, key=lambda i: -cost(configs[i])) if cost else todo
        futures = {pool.submit(_call, fn, configs[i], runs, records): i for i in order}
        for future in tqdm(as_completed(futures), total=len(futures), desc="runs"):
            results[futures[future]] = _trained_now(future.result())
    return results


# ---------------------------------------------------------------- records

def write_record(path: Path, config: dict, result, hardware: str) -> Path:
    """`path` (JSON): the configuration, the run's result (numpy arrays and tensors encoded compactly,
    paths inside the repository made relative to it), the hardware it trained on, the date and the code version."""
    record = {"config": config, "result": _encode(result), "hardware": hardware,
              "date": time.strftime("%Y-%m-%d"), "code": code_version()}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n")
    return Path(path)


def read_record(path: Path):
    """The result a record holds; a dict result gets `"provenance"`: "record (<hardware>, <date>)"."""
    record = json.loads(Path(path).read_text())
    result = _decode(record["result"])
    if isinstance(result, dict):
        result["provenance"] = f"record ({record['hardware']}, {record['date']})"
    return result


def _trained_now(result):
    if isinstance(result, dict):
        result["provenance"] = "trained now"
    return result


def provenance(results: list) -> str:
    """One line for a figure: how many of its runs came from records (and from which hardware and dates),
    how many were trained now."""
    counts: dict[str, int] = {}
    for result in results:
        source = result.get("provenance", "trained now") if isinstance(result, dict) else "trained now"
        counts[source] = counts.get(source, 0) + 1
    return "; ".join(f"{n} run{'s' * (n > 1)} {source if source == 'trained now' else 'from ' + source}"
                     for source, n in counts.items())


def code_version() -> str:
    """The git commit of this checkout, "+changes" when the work tree differs from it; "unknown" outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+changes" if dirty else "")


def _encode(value):
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return {"__array__": value.dtype.str, "shape": list(value.shape), "data": value.ravel().tolist()}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items() if k != "provenance"}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, (str, Path)):
        return str(value).replace(f"{ROOT}/", "")
    if value is None or isinstance(value, (bool, int, float)):
        return value
    raise TypeError(f"a run record holds metrics, histories and predictions, not {type(value).__name__}: "
                    f"return what the notebook needs from the trained model, not the model")


def _decode(value):
    if isinstance(value, dict):
        if "__array__" in value:
            return np.asarray(value["data"], dtype=np.dtype(value["__array__"])).reshape(value["shape"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value
