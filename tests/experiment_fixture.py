"""Experiment functions importable by `run_all`'s spawned worker processes."""
import os
import time


def square(config, run_dir):
    return {"square": config["x"] ** 2, "run_dir": str(run_dir), "pid": os.getpid(),
            "started": time.monotonic()}


def sleep_forever(config, run_dir):
    """Writes its worker's pid, then sleeps: a training that outlives its parent unless the worker dies with it."""
    (run_dir.parent / f"worker-{os.getpid()}").write_text("")
    time.sleep(600)
