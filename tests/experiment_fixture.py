"""Experiment functions importable by `run_all`'s spawned worker processes."""
import os
import time


def square(config, run_dir):
    return {"square": config["x"] ** 2, "run_dir": str(run_dir), "pid": os.getpid(),
            "started": time.monotonic()}
