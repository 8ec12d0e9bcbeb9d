"""Self-describing predictors: everything prediction needs, in a challenge's `checkpoints/` folder.

`predictor.json` says what the model is and how to feed it (classes, input size and scaling, test-time
augmentation, thresholds, the weight files it uses and what produced them); the files it names are state
dicts (read with `weights_only=True`), `.npz` arrays (read without pickle) or ONNX graphs. Every challenge's
`common.load_predictor()` reads that folder and returns an object whose `predict(inputs)` gives a table with
one row per input and an `error` column, so one bad input never costs the rest of the batch.
"""
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from .results import ROOT, load_results, save_results
from .runtime import atomic_path

MANIFEST = "predictor.json"


def write_manifest(folder, **fields) -> Path:
    """`folder/predictor.json` from `fields` (JSON values), with the date it was written."""
    path = Path(folder) / MANIFEST
    fields = {**fields, "written": datetime.now(UTC).strftime("%Y-%m-%d")}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(fields, indent=1, sort_keys=True) + "\n")
    return path


def read_manifest(folder) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the predictor is written by the notebook's 'Export the "
                                f"predictor' cell (or restore it with `git checkout -- {path.parent.name}`)")
    return json.loads(path.read_text())


def named_files(folder, *names: str) -> list[Path]:
    """`folder / name` for every file a manifest names; a missing one raises FileNotFoundError that says so."""
    folder = Path(folder)
    paths = [folder / name for name in names]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing (named by {folder.name}/{MANIFEST})")
    return paths


def save_arrays(path, **arrays: np.ndarray) -> Path:
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, **arrays)
    return Path(path)


def load_arrays(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as saved:
        return {key: saved[key] for key in saved.files}


def image_table(found: list[dict]) -> pd.DataFrame:
    """`predict_files` results as a table: file, prediction, probability, the top classes, error."""
    rows = []
    for result in found:
        top = result.get("top") or [("", float("nan"))]
        rows.append({"file": Path(result["file"]).name, "prediction": top[0][0], "probability": top[0][1],
                     "top classes": ", ".join(f"{c} {p:.0%}" for c, p in result.get("top", [])),
                     "error": result.get("error", "")})
    return pd.DataFrame(rows, columns=["file", "prediction", "probability", "top classes", "error"])


def timed_prediction(load, inputs) -> tuple[object, pd.DataFrame, float]:
    """`load()` then `.predict(inputs)`, with the seconds both took together."""
    started = time.perf_counter()
    predictor = load()
    table = predictor.predict(inputs)
    return predictor, table, time.perf_counter() - started


def record_predictor(folder, seconds: float) -> None:
    """Add the predictor's file and load-and-predict time to `folder/results.json`, when there is one."""
    folder = Path(folder)
    if not (folder / "results.json").exists():
        return
    results = load_results(folder)
    manifest = folder / "checkpoints" / MANIFEST
    name = manifest.relative_to(ROOT) if manifest.is_relative_to(ROOT) else manifest
    results["predictor"] = {"file": str(name), "seconds_to_load_and_predict": seconds}
    save_results(results, folder, quiet=True)
    print(f"results.json: predictor {name}, {seconds:.1f} s to load and predict")

