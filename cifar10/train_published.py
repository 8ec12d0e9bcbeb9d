"""Train the published-recipe runs of Challenge.ipynb ahead of the notebook, into the run folders it reads
(`cifar10/runs`); the notebook then loads them. Used for airbench96, which takes minutes on a GPU and hours
on a 2-core CPU. From the repository root:

    python -m cifar10.train_published airbench96          # all its runs
    python -m cifar10.train_published airbench96-74ep-s0  # the runs whose names start so
"""
import sys
from pathlib import Path

import torch

from cifar10 import common
from mlkit.experiments import run_all

if __name__ == "__main__":
    torch.backends.cudnn.benchmark = True
    configs = [config for architecture in common.PUBLISHED_RUNS for config in common.published_configs(architecture)
               if config["name"].startswith(tuple(sys.argv[1:]))]
    for row in run_all(common.run, configs, Path(__file__).parent / "runs", workers=1):
        print(f"{row['config']['name']}: test accuracy {row['accuracy']:.4f}, with TTA {row['tta_accuracy']:.4f}, "
              f"{row['train_seconds']:.0f} s on {row['hardware']}", flush=True)
