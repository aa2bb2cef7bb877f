"""``blt-eval``: bits per byte of a checkpoint on a corpus, and the comparison report over training runs.

    blt-eval bpb --checkpoint DIR --data SOURCE [--split val] [--context N] [--stride N] [--json]
                 [--data.key value ...] [--patching.key value ...]
    blt-eval compare RUN_DIR... [--out DIR] [--data SOURCE [--data.key value ...]]

``--data.key value`` sets any field of the data config (blt.data.DataConfig, e.g. ``--data.val_fraction``);
``--patching.key value`` overrides a BLT checkpoint's patching (e.g. ``--patching.scheme static
--patching.patch_size 6``). Errors the user can cause (paths, kinds, values) are printed as one line.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path

from blt.checkpoint import CheckpointError, load
from blt.config import ConfigError, PatchingConfig, from_dict, merge, parse_overrides, to_dict

SECTIONS = ("data", "patching")  # dotted overrides this CLI accepts


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blt-eval", description=__doc__.split("\n")[0], allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True)

    epilog = (
        "--data.KEY VALUE sets any data config field (e.g. --data.val_fraction 0.05); --patching.KEY VALUE "
        "overrides a BLT's patching (e.g. --patching.scheme static --patching.patch_size 6). Every byte of "
        "every document is scored once given BOS and the bytes before it; EOS is not scored."
    )
    bpb = sub.add_parser(
        "bpb", help="bits per byte of a checkpoint on a corpus", epilog=epilog, allow_abbrev=False
    )
    bpb.add_argument(
        "--checkpoint", required=True, help="checkpoint directory (ours, a transformers BLT, or a run)"
    )
    bpb.add_argument(
        "--data", required=True, help="corpus: stdlib, a file, folder, glob, .jsonl, .parquet, hub name"
    )
    bpb.add_argument(
        "--split",
        default="val",
        choices=("train", "val", "all"),
        help="which split of the corpus (all: every document, for a corpus the model was not trained on)",
    )
    bpb.add_argument("--max-documents", type=int, default=None, help="score only the first N documents")
    _add_window_args(bpb)
    bpb.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")

    cmp = sub.add_parser(
        "compare", help="Markdown table and plots over training run directories", allow_abbrev=False
    )
    cmp.add_argument("runs", nargs="+", help="run directories (summary.json, metrics.csv, model/)")
    cmp.add_argument("--out", default="comparison", help="folder for comparison.md and the PNG plots")
    cmp.add_argument("--data", default=None, help="re-evaluate every run's model/ on this corpus's split")
    cmp.add_argument("--split", default="val", choices=("train", "val", "all"), help="split used with --data")
    cmp.add_argument(
        "--max-documents", type=int, default=None, help="with --data: score only the first N documents"
    )
    _add_window_args(cmp)
    return parser


def _add_window_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--context", type=int, default=None, help="ids per window (default: the model's max_seq_len)"
    )
    parser.add_argument(
        "--stride", type=int, default=None, help="targets scored per later window (default: context/2)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")


def _overrides(extra: list[str]) -> dict:
    overrides = parse_overrides(extra)
    for key in overrides:
        if key not in SECTIONS or not isinstance(overrides[key], dict):
            raise ConfigError(f"unknown option --{key} (dotted options: --data.<key>, --patching.<key>)")
    return overrides


def data_config(source: str, overrides: dict):
    from blt.data import DataConfig

    return from_dict(DataConfig, merge({"source": source}, overrides.get("data", {})), prefix="data.")


def documents(args, overrides: dict):
    from blt.data import corpus_documents, iter_documents

    config = data_config(args.data, overrides)
    docs = corpus_documents(config) if args.split == "all" else iter_documents(config, args.split)
    if args.max_documents is not None:
        if args.max_documents < 1:
            raise ValueError(f"--max-documents must be >= 1, got {args.max_documents}")
        docs = itertools.islice(docs, args.max_documents)
    return docs


def patching_override(loaded, overrides: dict) -> PatchingConfig | None:
    if "patching" not in overrides:
        return None
    if loaded.kind not in ("blt", "hf-blt"):
        raise ConfigError(f"--patching.* options apply to BLT checkpoints only, not to kind {loaded.kind!r}")
    base = to_dict(loaded.model.config.patching)
    return from_dict(PatchingConfig, merge(base, overrides["patching"]), prefix="patching.")


def evaluate_checkpoint(path, args, overrides: dict):
    """Load ``path`` and score the corpus chosen by ``args`` (shared by ``bpb`` and ``compare --data``)."""
    from blt.eval.bpb import evaluate, scorer_for

    loaded = load(path)
    scorer = scorer_for(loaded, args.context, patching_override(loaded, overrides))
    return evaluate(scorer, documents(args, overrides), args.stride, args.batch_size)


def format_result(result) -> str:
    unit = {"patch": "mean patch size", "token": "bytes per token", "byte": "bytes per unit"}[result.unit]
    se = "n/a (one document)" if math.isnan(result.stderr) else f"{result.stderr:.4f}"
    lines = [
        f"bits per byte        {result.bits_per_byte:.4f}  (standard error {se})",
        f"documents / bytes    {result.n_documents} / {result.n_bytes}",
        f"{unit:<20} {result.bytes_per_unit:.3f}",
    ]
    lines += [f"{k.replace('_', ' '):<20} {v:.4g}" for k, v in result.flops.items()]
    return "\n".join(lines)


def cmd_bpb(args, overrides: dict) -> None:
    result = evaluate_checkpoint(args.checkpoint, args, overrides)
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), **result.to_dict()}))
    else:
        print(format_result(result))


def cmd_compare(args, overrides: dict) -> None:
    from blt.eval.compare import compare_runs

    if "patching" in overrides:
        raise ConfigError("compare takes no --patching.* options (each run keeps its own patching)")
    if args.data is None and (overrides or args.max_documents is not None):
        raise ConfigError("--data.* and --max-documents need --data SOURCE")
    evaluate_fn = (lambda run: evaluate_checkpoint(run, args, overrides)) if args.data else None
    written = compare_runs(args.runs, args.out, evaluate_fn)
    print(Path(written["table"]).read_text())
    print("wrote " + ", ".join(str(p) for p in written.values()))


def main(argv: list[str] | None = None) -> int:
    args, extra = _parser().parse_known_args(argv)
    try:
        overrides = _overrides(extra)
        {"bpb": cmd_bpb, "compare": cmd_compare}[args.command](args, overrides)
    except (ConfigError, CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"blt-eval {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
