"""``blt-eval``: bits per byte of a checkpoint on a corpus, and the comparison report over training runs.

    blt-eval bpb --checkpoint DIR [--data.source SOURCE] [--data.key value ...] [--split val|train|all]
                 [--max_documents N] [--context N] [--stride N] [--batch_size N] [--json]
                 [--patching.key value ...] [--config FILE]
    blt-eval compare RUN_DIR... [--out DIR] [--overwrite]
                 [--data.source SOURCE [--data.key value ...] [--split ...] [--max_documents N] ...]

``--data.*`` is the data config (blt.data.DataConfig): the corpus ``--data.source`` (default stdlib) and how
it is split into documents and train/validation (e.g. ``--data.val_fraction``); a training run file given as
``--config`` gives its data section (its other sections are not read). ``--patching.*`` overrides
the fields it names of a BLT checkpoint's patching (e.g. ``--patching.scheme static --patching.patch_size 6``)
and keeps the others. ``compare`` re-evaluates every run's model only when given ``--data.source``.
Errors the user can cause (paths, kinds, values) are printed as one line, exit code 2.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from jsonargparse import ArgumentParser, Namespace

from blt import cli
from blt.config import ConfigError, PatchingConfig

SCORING = "Every byte of every document is scored once given BOS and the bytes before it; EOS is not scored."
CORPUS_OPTIONS = ("split", "max_documents", "context", "stride", "batch_size")  # how a corpus is scored


def build_parser() -> ArgumentParser:
    from blt.data import DataConfig  # torch: only once a command runs, not on import

    parser = cli.new_parser("blt-eval", __doc__.split("\n")[0].replace("``", ""), config_file=False)
    commands = parser.add_subcommands(dest="command")

    bpb = cli.new_parser("blt-eval bpb", f"Bits per byte of a checkpoint on a corpus. {SCORING}")
    bpb.add_argument(
        "--checkpoint",
        type=str,
        required=True,
        help="checkpoint directory (ours, a transformers BLT, or a run)",
    )
    bpb.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    _add_corpus_options(bpb, DataConfig)
    cli.add_overrides(
        bpb, "patching", PatchingConfig, help="a BLT checkpoint's patching: each field given replaces its own"
    )
    commands.add_subcommand("bpb", bpb, help="bits per byte of a checkpoint on a corpus")

    compare = cli.new_parser(
        "blt-eval compare", "Markdown table, JSON and PNG plots over training run directories."
    )
    compare.add_argument(
        "runs", nargs="+", type=str, help="run directories (summary.json, metrics.csv, model/)"
    )
    compare.add_argument(
        "--out", type=str, default="comparison", help="folder for comparison.md and the plots"
    )
    compare.add_argument(
        "--overwrite", action="store_true", help="replace the report an existing --out holds"
    )
    _add_corpus_options(
        compare, DataConfig, "re-evaluate every run's model/ on this corpus (with --data.source)"
    )
    commands.add_subcommand("compare", compare, help="Markdown table and plots over training run directories")
    return parser


def _add_corpus_options(parser: ArgumentParser, data_config: type, data_help: str | None = None) -> None:
    cli.add_section(parser, "data", data_config, help=data_help)
    cli.add_unread_sections(parser, [s for s in cli.RUN_SECTIONS if s != "data"])  # a run file's data section
    parser.add_argument(
        "--split",
        type=Literal["train", "val", "all"],
        default="val",
        help="which split of the corpus (all: every document, for a corpus the model was not trained on)",
    )
    parser.add_argument("--max_documents", type=int, default=None, help="score only the first N documents")
    parser.add_argument(
        "--context", type=int, default=None, help="ids per window (default: the model's max_seq_len)"
    )
    parser.add_argument(
        "--stride", type=int, default=None, help="targets scored per later window (default: context/2)"
    )
    parser.add_argument("--batch_size", type=int, default=8, help="windows per forward pass")


def documents(args: Namespace):
    from blt.data import DataConfig, corpus_documents, iter_documents

    config = cli.section(args, "data", DataConfig)
    docs = corpus_documents(config) if args.split == "all" else iter_documents(config, args.split)
    if args.max_documents is not None:
        if args.max_documents < 1:
            raise ValueError(f"--max_documents must be >= 1, got {args.max_documents}")
        docs = itertools.islice(docs, args.max_documents)
    return docs


def patching_override(loaded, fields: dict) -> PatchingConfig | None:
    """The checkpoint's patching with the fields the user set replaced (None: no field set)."""
    from blt.checkpoint import BLT_KINDS

    if not fields:
        return None
    if loaded.kind not in BLT_KINDS:
        raise ConfigError(f"--patching.* options apply to BLT checkpoints only, not to kind {loaded.kind!r}")
    return dataclasses.replace(loaded.model.config.patching, **fields)  # __post_init__ checks the result


def evaluate_checkpoint(path, args: Namespace, patching: dict):
    """Load ``path`` and score the corpus chosen by ``args`` (shared by ``bpb`` and ``compare``)."""
    from blt.checkpoint import load
    from blt.eval.bpb import evaluate, scorer_for

    loaded = load(path)
    scorer = scorer_for(loaded, args.context, patching_override(loaded, patching))
    return evaluate(scorer, documents(args), args.stride, args.batch_size)


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


def cmd_bpb(args: Namespace, given: Namespace) -> None:
    result = evaluate_checkpoint(args.checkpoint, args, cli.overrides(args, "patching"))
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), **result.to_dict()}))
    else:
        print(format_result(result))


def check_report_folder(out: str, overwrite: bool) -> None:
    """Before any work: --out must be a folder, and a report already in it is replaced only on request."""
    from blt.eval.compare import report_paths

    if Path(out).exists() and not Path(out).is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder for the report")
    existing = [path.name for path in report_paths(out).values() if path.exists()]
    if existing and not overwrite:
        raise ConfigError(
            f"--out {out} already holds a report ({', '.join(existing)}): pass --overwrite to replace it"
        )


def cmd_compare(args: Namespace, given: Namespace) -> None:
    from blt.eval.compare import compare_runs

    data = cli.given_fields(given, "data")
    if "source" not in data:
        unused = [f"--data.{key}" for key in data] + [f"--{key}" for key in CORPUS_OPTIONS if key in given]
        if unused:
            raise ConfigError(f"{', '.join(unused)}: only read with --data.source SOURCE (re-evaluation)")
    check_report_folder(args.out, args.overwrite)
    evaluate_fn = (lambda run: evaluate_checkpoint(run, args, {})) if "source" in data else None
    written = compare_runs(args.runs, args.out, evaluate_fn)
    print(Path(written["table"]).read_text())
    print("wrote " + ", ".join(str(p) for p in written.values()))


def parse_args(argv: Sequence[str]) -> tuple[Namespace, Namespace]:
    """The chosen command's options, and the part of them the user set (by --config file or flag)."""
    parser = build_parser()
    args, given = cli.parse(parser, argv), cli.parse(parser, argv, defaults=False)
    return args, given.get(args.command, Namespace())


def eval_command(argv: Sequence[str]) -> None:
    args, given = parse_args(argv)
    {"bpb": cmd_bpb, "compare": cmd_compare}[args.command](args[args.command], given)


def main(argv: Sequence[str] | None = None) -> int:
    return cli.main("blt-eval", eval_command, argv)


if __name__ == "__main__":
    sys.exit(main())
