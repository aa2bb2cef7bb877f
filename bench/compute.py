"""Does compute follow difficulty? FLOPs spent per document against bits per byte, BLT vs BPE, mixed text.

    python bench/compute.py --blt runs/tiny-blt --baseline runs/tiny-baseline --out runs/compute
                            [--corpora /work/shared/corpora] [--per_source 30] [--doc_bytes 2048]
                            [--sweep_documents 32] [--dry_run]

1. Build a mixed corpus in ``<out>/corpus``: ``--per_source`` documents of about ``--doc_bytes`` bytes (cut at
   line breaks, at evenly spaced places; named ``<i>-<source>.txt`` so the sources interleave in scoring
   order) from each of four sources: English prose (the King James Bible),
   two dictionaries (the Devil's Dictionary and the Jargon File) from ``--corpora``, and Python code (the
   validation split of the built-in ``stdlib`` corpus as ``configs/tiny.yaml`` splits it, so the README's
   tiny models, trained on the rest of it, never saw these files).
2. ``blt-eval docs`` scores every document with both models: bits per byte and forward FLOPs per byte spent
   from the actual patches (BLT, entropy model included) or tokens (BPE), rows in ``<out>/docs.csv``, the
   plot in ``<out>/docs.png``, Spearman's correlation per model.
3. Per source and overall: mean bits per byte and FLOPs per byte, the spread of FLOPs per byte over
   documents, Spearman's correlation of each model's FLOPs per byte with its own bits per byte and with the
   other model's (one shared notion of difficulty), and the change of log FLOPs per byte per bit of
   difficulty (least squares); printed as Markdown.
4. ``blt-eval sweep`` of the BLT over thresholds (its default patch sizes) on the first
   ``--sweep_documents`` documents, all sources alike (``<out>/sweep.csv``, ``<out>/sweep.png``; 0: none).

Every command is printed and appended to ``<out>/commands.txt``. Nothing in the package reads ``--corpora``.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

from blt.data import DataConfig, iter_documents
from blt.eval.documents import spearman

ROOT = Path(__file__).resolve().parent.parent
from study import run  # noqa: E402  the same logged command runner (bench/ scripts sit side by side)

SOURCES = {"prose-kjv": "kjv.txt", "dict-devil": "devil.txt", "dict-jargon": "jargon.txt"}



def pieces(text: bytes, n: int, size: int) -> list[bytes]:
    """``n`` pieces of about ``size`` bytes at evenly spaced places, each from a line start to a line end."""
    out = []
    for i in range(n):
        start = text.find(b"\n", i * len(text) // n) + 1
        end = text.find(b"\n", start + size)
        piece = text[start : len(text) if end < 0 else end + 1]
        if len(piece) >= size // 2:  # the tail of a short file is not a document of this size
            out.append(piece)
    return out


def build_corpus(folder: Path, corpora: Path, per_source: int, size: int) -> dict[str, int]:
    """Write the mixed corpus (``<i>-<source>.txt``, sorted = scoring order); documents per source."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.txt"):  # documents of an earlier run of this script
        old.unlink()
    texts = {name: (corpora / file).read_bytes() for name, file in SOURCES.items()}
    # code: stdlib documents of configs/tiny.yaml's validation split (1% by content hash), joined
    val = iter_documents(DataConfig(source="stdlib", val_fraction=0.01), "val")
    texts["code-stdlib"] = b"".join(d if d.endswith(b"\n") else d + b"\n" for d in val)
    counts = {}
    for name, text in sorted(texts.items()):
        docs = pieces(text, per_source, size)
        for i, doc in enumerate(docs):
            (folder / f"{i:03d}-{name}.txt").write_bytes(doc)
        counts[name] = len(docs)
    return counts


def read_rows(path: Path, sources: list[str]) -> list[dict]:
    """The rows of ``blt-eval docs``, each with the source of its document (documents in sorted order)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["source"] = sources[int(r["document"])]
        for key in ("bits_per_byte", "flops_per_byte", "bytes_per_unit", "global_flops_per_byte"):
            r[key] = float(r[key])
    return rows


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys on xs."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def summary(rows: list[dict], models: list[str]) -> str:
    """Markdown tables: per model and source, and the correlations."""
    sources = sorted({r["source"] for r in rows})
    lines = [
        "| model | source | documents | bits/byte | FLOPs/byte spent | bytes per patch/token |",
        "|---|---|---|---|---|---|",
    ]
    for model in models:
        for source in [*sources, "all"]:
            mine = [r for r in rows if r["model"] == model and source in ("all", r["source"])]
            n = len(mine)
            bpb = sum(r["bits_per_byte"] for r in mine) / n
            flops = sum(r["flops_per_byte"] for r in mine) / n
            unit = sum(r["bytes_per_unit"] for r in mine) / n
            lines.append(f"| {model} | {source} | {n} | {bpb:.3f} | {flops:.4g} | {unit:.2f} |")
    lines += [
        "",
        "| model | Spearman(FLOPs/byte, own bits/byte) | Spearman(FLOPs/byte, other's bits/byte) "
        "| within sources (mean) | FLOPs/byte min-max | d log(FLOPs/byte) / d bits/byte "
        "| global FLOPs/byte min-max |",
        "|---|---|---|---|---|---|---|",
    ]
    for model in models:
        other = next(m for m in models if m != model)
        mine = sorted((r for r in rows if r["model"] == model), key=lambda r: r["document"])
        theirs = sorted((r for r in rows if r["model"] == other), key=lambda r: r["document"])
        flops = [r["flops_per_byte"] for r in mine]
        own = spearman(flops, [r["bits_per_byte"] for r in mine])
        cross = spearman(flops, [r["bits_per_byte"] for r in theirs])
        within = [
            spearman(
                [r["flops_per_byte"] for r in mine if r["source"] == s],
                [r["bits_per_byte"] for r in mine if r["source"] == s],
            )
            for s in sources
        ]
        grow = slope([r["bits_per_byte"] for r in mine], [math.log(f) for f in flops])
        part = [r["global_flops_per_byte"] for r in mine]  # the part that follows the patches (BLT)
        part = f"{min(part):.3g} - {max(part):.3g} ({max(part) / min(part):.1f}x)" if min(part) > 0 else "-"
        lines.append(
            f"| {model} | {own:.3f} | {cross:.3f} | {sum(within) / len(within):.3f} "
            f"({', '.join(f'{w:.2f}' for w in within)}) | {min(flops):.4g} - {max(flops):.4g} "
            f"({max(flops) / min(flops):.2f}x) | {grow:+.3f} ({math.exp(grow) - 1:+.1%} per bit/byte) | {part} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--blt", required=True, help="the BLT: a run directory or model directory")
    parser.add_argument("--baseline", required=True, help="the BPE baseline: a run or model directory")
    parser.add_argument("--out", default="runs/compute", help="folder for the corpus, rows, plots")
    parser.add_argument("--corpora", default="/work/shared/corpora", help="kjv.txt, devil.txt, jargon.txt")
    parser.add_argument("--per_source", type=int, default=30, help="documents per source")
    parser.add_argument("--doc_bytes", type=int, default=2048, help="about this many bytes per document")
    parser.add_argument(
        "--sweep_documents", type=int, default=32, help="documents of the sweep (0: no sweep)"
    )
    parser.add_argument("--batch_size", type=int, default=8, help="windows per forward pass")
    parser.add_argument("--dry_run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)
    if args.per_source < 2 or args.doc_bytes < 64:
        parser.error("--per_source must be >= 2 and --doc_bytes >= 64")
    for name in SOURCES.values():
        if not (Path(args.corpora) / name).is_file():
            parser.error(f"--corpora {args.corpora} has no {name}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "commands.txt"
    corpus = out / "corpus"
    counts = build_corpus(corpus, Path(args.corpora), args.per_source, args.doc_bytes)
    files = sorted(p.name for p in corpus.iterdir())
    total = sum(p.stat().st_size for p in corpus.iterdir())
    print(f"corpus: {len(files)} documents, {total:,} bytes in {corpus} ({counts})")
    sources = [name.split("-", 1)[1].removesuffix(".txt") for name in files]
    data = ["--data.source", str(corpus), "--split", "all", "--batch_size", str(args.batch_size)]
    cli = [sys.executable, "-m", "blt.eval.cli"]
    rows, plot = out / "docs.csv", out / "docs.png"
    run(
        [*cli, "docs", args.blt, args.baseline, *data, "--out", str(rows), "--png", str(plot), "--overwrite"],
        log,
        args.dry_run,
    )
    if args.sweep_documents:
        sweep = ["--max_documents", str(args.sweep_documents), "--out", str(out / "sweep.csv")]
        sweep += ["--png", str(out / "sweep.png"), "--overwrite"]
        run([*cli, "sweep", "--checkpoint", args.blt, *data, *sweep], log, args.dry_run)
    if args.dry_run:
        return
    table = read_rows(rows, sources)
    models = list(dict.fromkeys(r["model"] for r in table))
    report = summary(table, models)
    (out / "summary.md").write_text(report)
    print("\n" + report)


if __name__ == "__main__":
    main()
