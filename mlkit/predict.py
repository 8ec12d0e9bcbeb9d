"""Predict with a challenge's committed predictor, without a notebook.

    python -m mlkit.predict <challenge> [input ...]

Inputs are image files or folders (text for mlm: sentences with [MASK]; tale: FASTA text or files); none:
the challenge's demo inputs. Prints one row per input, errors included.
"""
import argparse
import importlib
import sys

import pandas as pd

from .predictors import timed_prediction
from .results import CHALLENGES


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("challenge", choices=CHALLENGES)
    parser.add_argument("inputs", nargs="*", help="files, folders or text; default: the demo inputs")
    args = parser.parse_args(argv)
    common = importlib.import_module(f"{args.challenge}.common")
    inputs = args.inputs or [common.demo_inputs()]
    predictor, table, seconds = timed_prediction(common.load_predictor, inputs if len(inputs) > 1 else inputs[0])
    with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 200,
                           "display.max_colwidth", 80):
        print(table.to_string(index=False))
    print(f"\n{predictor}: loaded and predicted {len(table)} inputs in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
