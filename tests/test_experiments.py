import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mlkit.experiments import (
    cached_array,
    provenance,
    read_record,
    record_hardware,
    run_all,
    run_dir,
    trained_on,
    write_record,
)
from tests.experiment_fixture import square

ROOT = Path(__file__).resolve().parents[1]


def test_run_dir_ignores_key_order(tmp_path):
    assert run_dir(tmp_path, {"name": "cnn", "lr": 0.1, "depth": 3}) == run_dir(
        tmp_path, {"depth": 3, "lr": 0.1, "name": "cnn"})


def test_run_dir_is_named_and_placed_under_runs(tmp_path):
    path = run_dir(tmp_path, {"name": "cnn", "lr": 0.1})
    assert path.parent == tmp_path
    assert path.name.startswith("cnn-") and len(path.name) == len("cnn-") + 8
    assert run_dir(tmp_path, {"lr": 0.1}).name.startswith("run-")


@pytest.mark.parametrize("change", [{"lr": 0.01}, {"depth": 4}, {"name": "mlp"}, {"extra": None}, {"lr": "0.1"}])
def test_run_dir_changes_with_any_value(tmp_path, change):
    config = {"name": "cnn", "lr": 0.1, "depth": 3}
    assert run_dir(tmp_path, config | change) != run_dir(tmp_path, config)


CONFIGS = [{"name": f"r{x}", "x": x} for x in [3, 1, 4, 1, 5]]


def test_run_all_in_process_keeps_input_order(tmp_path):
    results = run_all(square, CONFIGS, tmp_path, workers=1)
    assert [r["square"] for r in results] == [9, 1, 16, 1, 25]
    assert [r["run_dir"] for r in results] == [str(run_dir(tmp_path, c)) for c in CONFIGS]
    assert {r["pid"] for r in results} == {os.getpid()}


def test_run_all_in_worker_processes_keeps_input_order(tmp_path):
    results = run_all(square, CONFIGS, tmp_path, workers=2)
    assert [r["square"] for r in results] == [9, 1, 16, 1, 25]
    assert [r["run_dir"] for r in results] == [str(run_dir(tmp_path, c)) for c in CONFIGS]
    assert os.getpid() not in {r["pid"] for r in results}


def test_run_all_starts_the_costliest_runs_first_and_keeps_input_order(tmp_path):
    results = run_all(square, CONFIGS, tmp_path, workers=2, cost=lambda config: config["x"])
    assert [r["square"] for r in results] == [9, 1, 16, 1, 25]
    first_started = min(results, key=lambda r: r["started"])
    assert first_started["square"] in (25, 16)  # the queue hands out the runs in submission order


def test_cached_array_computes_once_then_reads_the_file(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return np.arange(3)

    first = cached_array(tmp_path / "a" / "x.npy", compute)
    again = cached_array(tmp_path / "a" / "x.npy", compute)
    assert np.array_equal(first, again) and len(calls) == 1
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["x.npy"]


def test_hardware_is_recorded_before_training_and_kept_when_resumed_elsewhere(tmp_path):
    assert trained_on(tmp_path / "old-run") == "CPU"  # runs from before the record
    record_hardware(tmp_path / "run", torch.device("cpu"))
    assert trained_on(tmp_path / "run").startswith("CPU, ")
    (tmp_path / "run" / "hardware.txt").write_text("NVIDIA H100")
    record_hardware(tmp_path / "run", torch.device("cpu"))
    assert trained_on(tmp_path / "run") == "NVIDIA H100"


def test_workers_die_with_the_process_that_started_them(tmp_path):
    script = ("import sys\nfrom mlkit.experiments import run_all\nimport experiment_fixture\n"  # from tests/
              "run_all(experiment_fixture.sleep_forever, [{'x': 1}, {'x': 2}], sys.argv[1], workers=2)\n")
    runs = tmp_path / "runs"
    runs.mkdir()
    parent = subprocess.Popen([sys.executable, "-c", script, str(runs)], cwd=ROOT / "tests")
    deadline = time.monotonic() + 60
    while len(list(runs.glob("worker-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    pids = [int(p.name.split("-")[1]) for p in runs.glob("worker-*")]
    assert len(pids) == 2, "workers did not start"
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in pids), "a worker outlived its parent"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()


def test_records_are_reused_for_the_same_config_only(tmp_path):
    records = tmp_path / "records"
    first = run_all(square, CONFIGS[:2], tmp_path / "runs", workers=1, records=records)
    assert {r["provenance"] for r in first} == {"trained now"}
    again = run_all(lambda *_: pytest.fail("trained again"), CONFIGS[:2], tmp_path / "runs", workers=1,
                    records=records)
    assert [r["square"] for r in again] == [9, 1]
    assert all(r["provenance"].startswith("record (CPU") for r in again)
    assert provenance(again).startswith("2 runs from record (CPU")
    changed = run_all(square, [CONFIGS[0] | {"x": 7}], tmp_path / "runs", workers=1, records=records)
    assert changed[0]["square"] == 49 and changed[0]["provenance"] == "trained now"
    retrained = run_all(square, CONFIGS[:1], tmp_path / "runs", workers=1, records=records, retrain=True)
    assert retrained[0]["provenance"] == "trained now"


def test_records_are_written_by_worker_processes_too(tmp_path):
    run_all(square, CONFIGS[:2], tmp_path / "runs", workers=2, records=tmp_path / "records")
    assert len(list((tmp_path / "records").glob("*.json"))) == 2


def test_a_record_round_trips_arrays_compactly(tmp_path):
    result = {"probabilities": np.array([[0.25, 0.75]], np.float16), "labels": torch.tensor([1, 0]),
              "history": [{"epoch": 0, "loss": 1.5}], "name": "x", "scalar": np.float32(0.5)}
    path = write_record(tmp_path / "r.json", {"name": "x"}, result, "CPU, 1 thread")
    back = read_record(path)
    assert back["probabilities"].dtype == np.float16 and back["probabilities"].tolist() == [[0.25, 0.75]]
    assert back["labels"].tolist() == [1, 0] and back["history"] == result["history"] and back["scalar"] == 0.5
    assert json.loads(path.read_text())["code"] != ""


def test_a_record_refuses_a_model(tmp_path):
    with pytest.raises(TypeError, match="not Linear"):
        write_record(tmp_path / "r.json", {}, {"model": torch.nn.Linear(2, 2)}, "CPU")
    assert not (tmp_path / "r.json").exists()


def test_committed_records_stay_lean_and_hold_no_local_paths():
    records = list(ROOT.glob("*/records/*.json"))
    total = sum(p.stat().st_size for p in records)
    assert total < 30 * 2**20, f"run records hold {total / 2**20:.1f} MB (budget 30 MB)"
    assert not [p.name for p in records if str(ROOT) in p.read_text()]


def test_a_record_stores_paths_relative_to_the_repository(tmp_path):
    path = write_record(tmp_path / "r.json", {}, {"run_dir": str(ROOT / "vv_tasks" / "runs" / "a")}, "CPU")
    assert read_record(path)["run_dir"] == "vv_tasks/runs/a"
