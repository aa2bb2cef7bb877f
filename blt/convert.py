"""Convert a BLT checkpoint between our layout and the transformers BLT layout (``blt-convert``).

    blt-convert SRC DST [--to hf|blt]

SRC is read by :meth:`blt.model.BLT.from_pretrained` (either layout); DST gets the other layout unless
``--to`` says which. The converted model's logits are checked against the source's on a short sample.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from blt.checkpoint import CheckpointError, kind_of, model_directory
from blt.model import BLT
from blt.tokenizer import encode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="blt-convert", description=__doc__.split("\n\n")[0].replace("``", ""))
    parser.add_argument("src", help="checkpoint directory (ours, kind 'blt', or a transformers BLT)")
    parser.add_argument("dst", help="output directory")
    parser.add_argument(
        "--to", choices=("hf", "blt"), default=None, help="output layout (default: the other one)"
    )
    args = parser.parse_args(argv)
    if Path(args.dst).resolve() in {Path(args.src).resolve(), model_directory(args.src).resolve()}:
        print("blt-convert: error: DST must differ from SRC (SRC would be overwritten)", file=sys.stderr)
        return 1
    try:
        fmt = args.to or ("blt" if kind_of(args.src) == "hf-blt" else "hf")
        model = BLT.from_pretrained(args.src)
        model.save_pretrained(args.dst, format=fmt)
        ids = torch.tensor([encode("The quick brown fox jumps over the lazy dog.")])
        with torch.no_grad():
            diff = (BLT.from_pretrained(args.dst)(ids).logits - model(ids).logits).abs().max().item()
    except (CheckpointError, ValueError, OSError) as e:
        print(f"blt-convert: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.dst} ({fmt} layout); max logit difference on a sample: {diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
