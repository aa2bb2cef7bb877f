"""Train the entropy model, the BLT or the tokenized baseline: ``python train.py --help``."""

import sys

from blt.training.cli import main

if __name__ == "__main__":
    sys.exit(main())
