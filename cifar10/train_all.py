"""Train every run of the cifar10 notebooks ahead of them, on whatever device there is, into the run folders
(`cifar10/runs`) and the committed records (`cifar10/records`) they read: minutes on a GPU, about a day on a
2-core CPU. From the repository root:

    python -m cifar10.train_all              # the full profile's runs, 8 of the study's side by side
    python -m cifar10.train_all --smoke      # the smoke profile's (quick, any device)
"""
import argparse
import time
from pathlib import Path

from cifar10 import common

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="the smoke profile's runs")
    parser.add_argument("--workers", type=int, default=8, help="study runs trained side by side")
    parser.add_argument("--out", type=Path, default=HERE, help="folder for runs/ and records/")
    args = parser.parse_args()
    started = time.perf_counter()
    print({split: len(d) for split, d in common.study_data(args.smoke).items()}, flush=True)  # decoded once
    everything = common.train_everything(args.out / "runs", args.smoke, records=args.out / "records",
                                         workers=args.workers)
    study = everything["study"]
    rows = [r for phase in ("architectures", "augmentations", "sweep") for r in study[phase]]
    rows += [r for runs in everything["published"].values() for r in runs] + everything["upstream"]
    for row in rows + [everything["ensemble"], everything["baseline"]]:
        print(f"{row['config']['name']}: val {row['val_accuracy']:.4f}/{row['val_tta_accuracy']:.4f}, test "
              f"{row['accuracy']:.4f}/{row['tta_accuracy']:.4f} (without/with TTA), "
              f"{row.get('train_seconds', 0):.0f} s on {row['hardware']}", flush=True)
    print(f"all runs: {time.perf_counter() - started:.0f} s")
    shipped = common.shipped_run(everything["published"]["airbench96"])["config"]
    (args.out / "checkpoints").mkdir(exist_ok=True)
    for config, name in ((shipped, common.WEIGHTS), (common.baseline_config(args.smoke), common.BASELINE_WEIGHTS)):
        saved = common.save_checkpoint(config, args.out / "runs", args.out / "checkpoints" / name)
        print("saved", saved, "from", config["name"])
