"""``blt-patch``: patch a file or a string, print patch statistics, write an HTML page and a PNG.

    blt-patch README.md --patching.scheme space --html patches.html
    blt-patch --text "Hello world" --model runs/entropy/model --patching.threshold 1.3 --png patches.png
    blt-patch notes.txt --model runs/entropy/model --target_patch_size 4.5 --html patches.html
    blt-patch notes.txt --model runs/entropy/model --target_global_share 0.6 --config configs/blt-1b.yaml

``--config FILE`` may be a training run file: its ``blt`` section is the model ``--target_global_share`` is
about; its other sections are not read.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from jsonargparse import ArgumentParser, Namespace

from blt import cli
from blt.config import BLTConfig, PatchingConfig
from blt.tokenizer import encode

from .calibrate import calibrate_threshold, patch_size_for_global_share
from .entropy_model import EntropyModel
from .picture import write_html, write_png
from .schemes import ENTROPY_SCHEMES, patch_lengths
from .stats import format_statistics, patch_statistics


def build_parser() -> ArgumentParser:
    p = cli.new_parser(
        "blt-patch", "Patch bytes with a BLT patching scheme; print statistics, draw the patches."
    )
    # type str, not Optional[str]: a text or file name such as "null" stays a string
    p.add_argument("file", nargs="?", type=str, default=None, help="file whose raw bytes are patched")
    p.add_argument("--text", type=str, default=None, help="patch this string (UTF-8) instead of a file")
    p.add_argument(
        "--model",
        type=str,
        default=None,
        help="entropy model directory (ours, or a transformers BLT); entropy schemes need it",
    )
    p.add_argument(
        "--target_patch_size",
        type=float,
        default=None,
        help="first calibrate the threshold on this input to this mean patch size",
    )
    p.add_argument(
        "--target_global_share",
        type=float,
        default=None,
        help="first calibrate the threshold so the global transformer of the BLT (the blt section) does this "
        "share of its FLOPs per byte",
    )
    p.add_argument(
        "--chunk_size", type=int, default=None, help="entropy model chunk length (default: max_seq_len)"
    )
    p.add_argument("--max_bytes", type=int, default=None, help="patch only the first N bytes")
    p.add_argument("--html", type=str, default=None, help="write an HTML picture of the patches here")
    p.add_argument(
        "--png", type=str, default=None, help="write a PNG plot of entropies and patch starts here"
    )
    cli.add_section(p, "patching", PatchingConfig)
    cli.add_section(p, "blt", BLTConfig, help="the BLT of --target_global_share (a run file's blt section)")
    cli.add_unread_sections(p, [s for s in cli.RUN_SECTIONS if s != "blt"])
    return p


def read_input(args: Namespace) -> bytes:
    if (args.file is None) == (args.text is None):
        raise ValueError("give either a FILE or --text")
    if args.text is not None:
        data = args.text.encode("utf-8", "surrogateescape")  # non-UTF-8 argv bytes come back unchanged
    else:
        path = Path(args.file)
        if not path.is_file():
            raise ValueError(f"input file not found: {path}")
        data = path.read_bytes()
    if args.max_bytes is not None:
        if args.max_bytes <= 0:
            raise ValueError(f"--max_bytes must be positive, got {args.max_bytes}")
        data = data[: args.max_bytes]
    if not data:
        raise ValueError("empty input: nothing to patch")
    return data


def target_patch_size(args: Namespace, given: Namespace) -> float | None:
    """The mean patch size to calibrate to, from --target_patch_size or --target_global_share (or None)."""
    if args.target_patch_size is not None and args.target_global_share is not None:
        raise ValueError("give at most one of --target_patch_size and --target_global_share")
    has_blt = bool(cli.given_fields(given, "blt"))  # the section's defaults are no model of the user's
    if args.target_global_share is None:
        if has_blt:
            raise ValueError(
                "the blt section (of --config or --blt.*) is only read with --target_global_share"
            )
        return args.target_patch_size
    if not has_blt:
        raise ValueError(
            "--target_global_share needs the BLT's shape: --config FILE with a blt section, or --blt.* options"
        )
    return patch_size_for_global_share(cli.section(args, "blt", BLTConfig), args.target_global_share)


def check_output_paths(args: Namespace) -> None:
    """Fail before the model runs, not after, when a picture cannot be written."""
    for flag, path in (("--html", args.html), ("--png", args.png)):
        if path is not None and not Path(path).parent.is_dir():
            raise ValueError(f"{flag}: directory {Path(path).parent} does not exist")


def run(args: Namespace, given: Namespace) -> str:
    data = read_input(args)
    check_output_paths(args)
    patching = cli.section(args, "patching", PatchingConfig)
    scheme = patching.scheme
    if scheme in ENTROPY_SCHEMES and args.model is None:
        raise ValueError(f"scheme {scheme!r} needs an entropy model: pass --model DIR")
    if args.chunk_size is not None and args.model is None:
        raise ValueError("--chunk_size sets how the entropy model runs; it needs --model DIR")
    target = target_patch_size(args, given)
    if target is not None and scheme not in ENTROPY_SCHEMES:
        raise ValueError(f"calibration sets a threshold; scheme {scheme!r} has none")
    ids = torch.tensor([encode(data)])  # [1, T]: BOS + bytes
    entropies, lines = None, []
    if args.model is not None:
        model = EntropyModel.from_pretrained(args.model)
        entropies = model.entropies(ids, chunk_size=args.chunk_size)
    if target is not None:
        calibration = calibrate_threshold([ids[0]], [entropies[0]], target, patching=patching)
        patching = calibration.patching(patching)
        lines.append(f"calibrated: {calibration}")
    lengths = patch_lengths(ids, patching, entropies)[0]
    starts = torch.zeros(ids.shape[1], dtype=torch.bool)
    starts[lengths[lengths > 0].cumsum(0)[:-1]] = True
    starts[0] = True
    lines.append(format_statistics(patch_statistics(lengths[1:])))  # the BOS patch is no text
    summary = "\n".join(lines)
    title = f"blt-patch: {scheme} scheme" + (f", {args.file}" if args.file else "")
    ent = entropies[0] if entropies is not None else None
    if args.html:
        summary += f"\nwrote {write_html(args.html, data, starts, ent, title, summary)}"
    if args.png:
        threshold = patching.threshold if scheme in ("entropy", "combined") else None
        summary += f"\nwrote {write_png(args.png, data, starts, ent, threshold, title)}"
    return summary


def patch_command(argv: Sequence[str]) -> int:
    parser = build_parser()
    print(run(cli.parse(parser, argv), cli.parse(parser, argv, defaults=False)), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return cli.main("blt-patch", patch_command, argv)


if __name__ == "__main__":
    sys.exit(main())
