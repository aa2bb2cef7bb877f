"""Train the entropy model, the BLT or the tokenized baseline: ``python train.py --help``."""

import sys
from pathlib import Path

# Python puts this script's folder first on sys.path, and there the source folder kernels/ (installed as
# blt.kernels) would shadow the `kernels` package that transformers imports; blt itself is installed.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from blt.training.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
