"""``blt-eval``: bits per byte of a checkpoint, compute spent per document, threshold sweeps, run reports.

    blt-eval bpb --checkpoint DIR [--data.source SOURCE] [--data.key value ...] [--split val|train|all]
                 [--max_documents N] [--context N] [--stride N] [--batch_size N] [--json]
                 [--patching.key value ...] [--target_patch_size P | --target_flops_per_byte F] [--config FILE]
    blt-eval docs CHECKPOINT... [corpus options] [--out ROWS.csv|ROWS.jsonl] [--png PLOT.png] [--overwrite]
    blt-eval sweep --checkpoint DIR [corpus options] [--patching.key value ...]
                 [--thresholds [T,...] | --patch_sizes [P,...]] [--out ROWS.csv|.jsonl] [--png PLOT.png]
    blt-eval compare RUN_DIR... [--out DIR] [--overwrite]
                 [--data.source SOURCE [--data.key value ...] [--split ...] [--max_documents N] ...]

``--data.*`` is the data config (blt.data.DataConfig): the corpus ``--data.source`` (default stdlib) and how
it is split into documents and train/validation (e.g. ``--data.val_fraction``); a training run file given as
``--config`` gives its data section (its other sections are not read). ``--patching.*`` overrides
the fields it names of a BLT checkpoint's patching (e.g. ``--patching.scheme static --patching.patch_size 6``)
and keeps the others; ``--target_patch_size`` / ``--target_flops_per_byte`` set a BLT's entropy threshold
for that mean patch size or FLOPs per byte spent on the corpus being scored (``blt.eval.dial``). ``docs``
writes one row per document and model (bytes, bits per byte, patches or tokens, FLOPs per byte spent;
``blt.eval.documents``) and prints Spearman's correlation of FLOPs per byte with bits per byte per model;
``sweep`` scores a BLT at several thresholds, bits per byte against FLOPs per byte spent. Output files are
replaced only with ``--overwrite``; the checkpoint itself is never changed. ``compare`` re-evaluates every
run's model only when given ``--data.source``.
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
    _add_patching_options(bpb)
    bpb.add_argument(
        "--target_patch_size",
        type=float | None,
        default=None,
        help="BLT: set the entropy threshold for this mean patch size on the corpus scored",
    )
    bpb.add_argument(
        "--target_flops_per_byte",
        type=float | None,
        default=None,
        help="BLT: set the entropy threshold for this many forward FLOPs per byte spent on the corpus scored",
    )
    commands.add_subcommand("bpb", bpb, help="bits per byte of a checkpoint on a corpus")

    docs = cli.new_parser(
        "blt-eval docs",
        "One row per document and checkpoint: bytes, bits per byte, patches or tokens, FLOPs per byte spent. "
        f"{SCORING}",
    )
    docs.add_argument("checkpoints", nargs="+", type=str, help="checkpoint directories (or runs, hub ids)")
    _add_output_options(docs, "rows file, one row per document and checkpoint (.csv or .jsonl)")
    _add_corpus_options(docs, DataConfig)
    commands.add_subcommand("docs", docs, help="compute spent and bits per byte, per document")

    sweep = cli.new_parser(
        "blt-eval sweep",
        f"Bits per byte against FLOPs per byte spent over a BLT's entropy thresholds. {SCORING}",
    )
    sweep.add_argument("--checkpoint", type=str, required=True, help="a BLT checkpoint with an entropy model")
    sweep.add_argument(
        "--thresholds",
        type=list[float] | None,
        default=None,
        help="thresholds to score at, e.g. [1.0,1.5,2.0]",
    )
    sweep.add_argument(
        "--patch_sizes",
        type=list[float] | None,
        default=None,
        help="else thresholds calibrated on the corpus for these mean patch sizes (default: 1.5 to 8 bytes)",
    )
    _add_output_options(sweep, "rows file, one row per threshold (.csv or .jsonl)")
    _add_corpus_options(sweep, DataConfig)
    _add_patching_options(sweep)
    commands.add_subcommand("sweep", sweep, help="bits per byte against FLOPs per byte over thresholds")

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


def _add_patching_options(parser: ArgumentParser) -> None:
    cli.add_overrides(
        parser,
        "patching",
        PatchingConfig,
        help="a BLT checkpoint's patching: each field given replaces its own",
    )


def _add_output_options(parser: ArgumentParser, rows_help: str) -> None:
    parser.add_argument("--out", type=str | None, default=None, help=rows_help)
    parser.add_argument("--png", type=str | None, default=None, help="plot (PNG)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out and --png files that exist")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")


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
    """The checkpoint's patching with the fields the user set replaced (None: no field set).

    A new config: the checkpoint's own (in memory and on disk) stays as it is."""
    from blt.checkpoint import BLT_KINDS
    from blt.eval.dial import flag, resolve_patching

    if not fields:
        return None
    if loaded.kind not in BLT_KINDS:
        raise ConfigError(f"--patching.* options apply to BLT checkpoints only, not to kind {loaded.kind!r}")
    return resolve_patching(loaded.model, fields, name=flag)


def load_scorer(path, args: Namespace, patching: dict):
    """The checkpoint at ``path`` and its scorer, under the patching fields given."""
    from blt.checkpoint import load
    from blt.eval.bpb import scorer_for

    loaded = load(path)
    return loaded, scorer_for(loaded, args.context, patching_override(loaded, patching))


def evaluate_checkpoint(path, args: Namespace, patching: dict):
    """Load ``path`` and score the corpus chosen by ``args`` (shared by ``bpb`` and ``compare``)."""
    from blt.eval.bpb import evaluate

    _, scorer = load_scorer(path, args, patching)
    return evaluate(scorer, documents(args), args.stride, args.batch_size)


def check_output(path: str | None, suffixes: tuple[str, ...], overwrite: bool, option: str) -> None:
    """Before any work: an output file has a suffix we write, and replaces a file only on request."""
    if path is None:
        return
    if Path(path).suffix not in suffixes:
        raise ConfigError(f"{option} {path}: the file name must end in {' or '.join(suffixes)}")
    if Path(path).is_dir():
        raise ConfigError(f"{option} {path} is a folder, not a file")
    if Path(path).exists() and not overwrite:
        raise ConfigError(f"{option} {path} already exists: pass --overwrite to replace it")


def check_blt(loaded, option: str) -> None:
    from blt.checkpoint import BLT_KINDS

    if loaded.kind not in BLT_KINDS:
        raise ConfigError(f"{option} applies to BLT checkpoints only, not to kind {loaded.kind!r}")


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
    from blt.eval.bpb import evaluate
    from blt.eval.dial import TARGETS, calibrate, check_targets, entropy_patching, scored_windows

    targets = {k: args[k] for k in TARGETS if args[k] is not None}
    patching = cli.overrides(args, "patching")
    check_targets(targets, patching)  # before the checkpoint loads
    loaded, scorer = load_scorer(args.checkpoint, args, patching)
    docs, dial = documents(args), None
    if targets:
        option = f"--{next(iter(targets))}"
        check_blt(loaded, option)
        entropy_patching(scorer, option)  # a scheme with a threshold, and a model that can run it
        docs = list(docs)  # read twice: calibrated on, then scored
        dial = calibrate(scorer, scored_windows(scorer, docs, args.stride, args.batch_size), **targets)
        scorer.patching = dial.patching
    result = evaluate(scorer, docs, args.stride, args.batch_size)
    if args.json:
        calibration = {} if dial is None else {"calibration": dial.to_dict()}
        print(json.dumps({"checkpoint": str(args.checkpoint), **result.to_dict(), **calibration}))
    else:
        print(("" if dial is None else f"{dial}\n") + format_result(result))


def model_names(paths: Sequence[str]) -> list[str]:
    """Short names of checkpoints: a run's name for ``run/model``, a folder's or a hub repo's name."""
    names = [Path(p).parent.name if Path(p).name == "model" else Path(p).name for p in paths]
    return names if len(set(names)) == len(names) else [str(p) for p in paths]


def cmd_docs(args: Namespace, given: Namespace) -> None:
    from blt.eval.bpb import document_scores, summarize
    from blt.eval.documents import ROW_SUFFIXES, correlations, document_rows, plot_documents, write_rows

    check_output(args.out, ROW_SUFFIXES, args.overwrite, "--out")
    check_output(args.png, (".png",), args.overwrite, "--png")
    docs = list(documents(args))
    rows, summaries = [], {}
    for path, name in zip(args.checkpoints, model_names(args.checkpoints)):
        _, scorer = load_scorer(path, args, {})
        scores = document_scores(scorer, docs, args.stride, args.batch_size, flops=True)
        summaries[name] = summarize(scorer, scores)
        rows += document_rows(name, scorer.unit, scores)
    rho = correlations(rows)
    if args.out:
        write_rows(rows, args.out)
    if args.png:
        plot_documents(rows, args.png, f"compute per document ({len(docs)} documents)")
    if args.json:
        report = {name: {**r.to_dict(), "spearman": _json_number(rho[name])} for name, r in summaries.items()}
        print(json.dumps({"models": report, "written": [p for p in (args.out, args.png) if p]}))
        return
    for name, result in summaries.items():
        mine = [r["flops_per_byte"] for r in rows if r["model"] == name]
        print(
            f"{name}: {result.n_documents} documents, {result.bits_per_byte:.4f} bits/byte, "
            f"{result.flops['spent_flops_per_byte']:.4g} FLOPs/byte spent (per document "
            f"{min(mine):.4g} to {max(mine):.4g}); Spearman(FLOPs/byte, bits/byte) = {rho[name]:.3f}"
        )
    for path in (args.out, args.png):
        if path:
            print(f"wrote {path}")


def _json_number(x: float) -> float | None:
    return None if math.isnan(x) else x


def cmd_sweep(args: Namespace, given: Namespace) -> None:
    from blt.eval.dial import (
        check_thresholds,
        entropy_patching,
        plot_sweep,
        scored_windows,
        sweep,
        sweep_thresholds,
    )
    from blt.eval.documents import ROW_SUFFIXES, write_rows

    check_output(args.out, ROW_SUFFIXES, args.overwrite, "--out")
    check_output(args.png, (".png",), args.overwrite, "--png")
    if args.thresholds is not None and args.patch_sizes is not None:
        raise ConfigError("--thresholds and --patch_sizes: give one of them, not both")
    loaded, scorer = load_scorer(args.checkpoint, args, cli.overrides(args, "patching"))
    check_blt(loaded, "blt-eval sweep")
    base = entropy_patching(scorer, "blt-eval sweep")
    if args.thresholds is not None:
        check_thresholds(args.thresholds, base)
    docs = list(documents(args))
    thresholds = args.thresholds
    if thresholds is None:
        thresholds = sweep_thresholds(
            scorer, scored_windows(scorer, docs, args.stride, args.batch_size), args.patch_sizes
        )
    points = sweep(scorer, docs, thresholds, args.stride, args.batch_size)
    rows = [dataclasses.asdict(p) for p in points]
    if args.out:
        write_rows(
            [{k: _json_number(v) if isinstance(v, float) else v for k, v in r.items()} for r in rows],
            args.out,
        )
    if args.png:
        plot_sweep(points, args.png, f"{model_names([args.checkpoint])[0]}: {base.scheme} thresholds")
    if args.json:
        rows = [{k: _json_number(v) if isinstance(v, float) else v for k, v in r.items()} for r in rows]
        print(json.dumps({"checkpoint": str(args.checkpoint), "points": rows}))
        return
    field = "relative threshold" if base.scheme == "relative" else "threshold"
    print(f"{field:>18}  bytes/patch  bits/byte  (stderr)  FLOPs/byte spent  (entropy model, global)")
    for p in points:
        se = "n/a" if math.isnan(p.stderr) else f"{p.stderr:.4f}"
        print(
            f"{p.threshold:>18.4f}  {p.mean_patch_size:>11.3f}  {p.bits_per_byte:>9.4f}  ({se})  "
            f"{p.flops_per_byte:>16.4g}  ({p.entropy_flops_per_byte:.3g}, {p.global_flops_per_byte:.3g})"
        )
    for path in (args.out, args.png):
        if path:
            print(f"wrote {path}")


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
    commands = {"bpb": cmd_bpb, "docs": cmd_docs, "sweep": cmd_sweep, "compare": cmd_compare}
    commands[args.command](args[args.command], given)


def main(argv: Sequence[str] | None = None) -> int:
    return cli.main("blt-eval", eval_command, argv)


if __name__ == "__main__":
    sys.exit(main())
