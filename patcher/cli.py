"""``blt-patch``: patch a file or a string, print patch statistics, write an HTML page and a PNG.

    blt-patch README.md --scheme space --html patches.html
    blt-patch --text "Hello world" --model runs/entropy/model --threshold 1.3 --png patches.png
    blt-patch notes.txt --model runs/entropy/model --target-patch-size 4.5 --html patches.html
    blt-patch notes.txt --model runs/entropy/model --target-global-share 0.6 --config configs/blt-1b.yaml
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

import torch

from blt.config import BLTConfig, PatchingConfig, from_dict, load_yaml
from blt.tokenizer import encode

from .calibrate import calibrate_threshold, patch_size_for_global_share
from .entropy_model import EntropyModel
from .picture import write_html, write_png
from .schemes import ENTROPY_SCHEMES, SCHEMES, patch_lengths
from .stats import format_statistics, patch_statistics

DEFAULTS = {f.name: f.default for f in dataclasses.fields(PatchingConfig)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="blt-patch", description="Patch bytes with a BLT patching scheme.", allow_abbrev=False
    )
    p.add_argument("file", nargs="?", help="file whose raw bytes are patched")
    p.add_argument("--text", help="patch this string (UTF-8) instead of a file")
    p.add_argument("--model", help="entropy model directory (ours, or a transformers BLT); entropy schemes need it")
    p.add_argument("--scheme", default=DEFAULTS["scheme"], choices=SCHEMES, help="patching scheme")
    p.add_argument("--threshold", type=float, default=DEFAULTS["threshold"], help="global entropy threshold (nats)")
    p.add_argument("--relative-threshold", type=float, default=DEFAULTS["relative_threshold"],
                   help="threshold on H(t-1) - H(t-2) (relative and combined schemes)")
    p.add_argument("--patch-size", type=int, default=DEFAULTS["patch_size"], help="bytes per patch (static)")
    p.add_argument("--max-patch-length", type=int, default=None, help="split longer patches")
    p.add_argument("--target-patch-size", type=float, default=None,
                   help="first calibrate the threshold on this input to this mean patch size")
    p.add_argument("--target-global-share", type=float, default=None,
                   help="first calibrate the threshold so the global transformer of the BLT in --config does this "
                        "share of its FLOPs per byte")
    p.add_argument("--config", help="YAML file with a `blt` section (for --target-global-share)")
    p.add_argument("--chunk-size", type=int, default=None, help="entropy model chunk length (default: max_seq_len)")
    p.add_argument("--max-bytes", type=int, default=None, help="patch only the first N bytes")
    p.add_argument("--html", help="write an HTML picture of the patches here")
    p.add_argument("--png", help="write a PNG plot of entropies and patch starts here")
    return p


def read_input(args: argparse.Namespace) -> bytes:
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
            raise ValueError(f"--max-bytes must be positive, got {args.max_bytes}")
        data = data[: args.max_bytes]
    if not data:
        raise ValueError("empty input: nothing to patch")
    return data


def target_patch_size(args: argparse.Namespace) -> float | None:
    """The mean patch size to calibrate to, from --target-patch-size or --target-global-share (or None)."""
    if args.target_patch_size is not None and args.target_global_share is not None:
        raise ValueError("give at most one of --target-patch-size and --target-global-share")
    if args.target_global_share is None:
        if args.config is not None:
            raise ValueError("--config is only read with --target-global-share")
        return args.target_patch_size
    if args.config is None:
        raise ValueError("--target-global-share needs --config FILE with the `blt` section of the model")
    section = load_yaml(args.config).get("blt")
    if not isinstance(section, dict):
        raise ValueError(f"{args.config} has no `blt` section (a mapping of the BLT's config)")
    config = from_dict(BLTConfig, section, prefix="blt.")
    return patch_size_for_global_share(config, args.target_global_share)


def check_output_paths(args: argparse.Namespace) -> None:
    """Fail before the model runs, not after, when a picture cannot be written."""
    for flag, path in (("--html", args.html), ("--png", args.png)):
        if path is not None and not Path(path).parent.is_dir():
            raise ValueError(f"{flag}: directory {Path(path).parent} does not exist")


def run(args: argparse.Namespace) -> str:
    data = read_input(args)
    check_output_paths(args)
    patching = PatchingConfig(
        scheme=args.scheme,
        threshold=args.threshold,
        relative_threshold=args.relative_threshold,
        patch_size=args.patch_size,
        max_patch_length=args.max_patch_length,
    )
    if args.scheme in ENTROPY_SCHEMES and args.model is None:
        raise ValueError(f"scheme {args.scheme!r} needs an entropy model: pass --model DIR")
    if args.chunk_size is not None and args.model is None:
        raise ValueError("--chunk-size sets how the entropy model runs; it needs --model DIR")
    target = target_patch_size(args)
    if target is not None and args.scheme not in ENTROPY_SCHEMES:
        raise ValueError(f"calibration sets a threshold; scheme {args.scheme!r} has none")
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
    title = f"blt-patch: {args.scheme} scheme" + (f", {args.file}" if args.file else "")
    ent = entropies[0] if entropies is not None else None
    if args.html:
        summary += f"\nwrote {write_html(args.html, data, starts, ent, title, summary)}"
    if args.png:
        threshold = patching.threshold if args.scheme in ("entropy", "combined") else None
        summary += f"\nwrote {write_png(args.png, data, starts, ent, threshold, title)}"
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        print(run(args), flush=True)
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # keep the exit-time flush quiet
        return 0
    except (ValueError, OSError) as e:  # ConfigError, CheckpointError, unreadable/unwritable files: no traceback
        print(f"blt-patch: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
