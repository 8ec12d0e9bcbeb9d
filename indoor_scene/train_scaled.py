"""Train the scaled recipe's runs of Challenge.ipynb ahead of the notebook, into the run folders it reads
(`indoor_scene/runs`); the notebook then loads them. The scaled recipe takes minutes per split seed on a GPU
and hours on a 2-core CPU. From the repository root:

    python -m indoor_scene.train_scaled scene15 0 1 2
"""
import sys
from pathlib import Path

import torch

from indoor_scene import common
from mlkit.experiments import run_all

if __name__ == "__main__":
    torch.backends.cudnn.benchmark = True
    dataset, seeds = sys.argv[1], [int(seed) for seed in sys.argv[2:]]
    configs = [common.make_config(dataset, seed) for seed in seeds]
    for row in run_all(common.run, configs, Path(__file__).parent / "runs", workers=1):
        print(f"split seed {row['config']['seed']}: balanced accuracy {row['balanced_accuracy']:.4f}, with flip "
              f"TTA {row['tta_balanced_accuracy']:.4f}, {sum(r['seconds'] for r in row['history']):.0f} s on "
              f"{row['hardware']}", flush=True)
