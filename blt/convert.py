"""Convert a BLT checkpoint between our layout and the transformers BLT layout (``blt-convert``).

    blt-convert SRC DST [--to hf|blt] [--overwrite]

SRC is read by :meth:`blt.model.BLT.from_pretrained` (either layout); DST gets the other layout unless
``--to`` says which. The converted model's logits are checked against the source's on a short sample.
A DST that exists and is not an empty folder is replaced only with ``--overwrite``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch

from blt import cli
from blt.checkpoint import kind_of, model_directory
from blt.config import ConfigError
from blt.model import BLT
from blt.tokenizer import encode


def build_parser():
    parser = cli.new_parser("blt-convert", __doc__.split("\n\n")[0].replace("``", ""), config_file=False)
    parser.add_argument(
        "src", type=str, help="checkpoint directory (ours, kind 'blt', or a transformers BLT)"
    )
    parser.add_argument("dst", type=str, help="output directory")
    parser.add_argument(
        "--to", type=Literal["hf", "blt"], default=None, help="output layout (default: the other one)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace what DST already holds")
    return parser


def check_destination(src: str, dst: str, overwrite: bool) -> None:
    """Nothing already written is lost without --overwrite, and SRC never."""
    if Path(dst).resolve() in {Path(src).resolve(), model_directory(src).resolve()}:
        raise ConfigError("DST must differ from SRC (SRC would be overwritten)")
    path = Path(dst)
    if path.exists() and not (path.is_dir() and not any(path.iterdir())) and not overwrite:
        raise ConfigError(f"DST {dst} exists and is not an empty folder: pass --overwrite to replace it")


def convert(argv: Sequence[str]) -> None:
    args = cli.parse(build_parser(), argv)
    check_destination(args.src, args.dst, args.overwrite)
    fmt = args.to or ("hf" if kind_of(args.src) == "blt" else "blt")
    model = BLT.from_pretrained(args.src)
    model.save_pretrained(args.dst, format=fmt)
    ids = torch.tensor([encode("The quick brown fox jumps over the lazy dog.")])
    with torch.no_grad():
        diff = (BLT.from_pretrained(args.dst)(ids).logits - model(ids).logits).abs().max().item()
    print(f"wrote {args.dst} ({fmt} layout); max logit difference on a sample: {diff:.2e}")


def main(argv: Sequence[str] | None = None) -> int:
    return cli.main("blt-convert", convert, argv)


if __name__ == "__main__":
    sys.exit(main())
