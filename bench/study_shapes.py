"""Where BLT saves inference FLOPs: global transformers of growing size against BPE baselines of their shape.

    python bench/study_shapes.py --data /work/shared/corpora/kjv.txt [--out runs/study-shapes]
                                 [--quick | --flops-only] [--shapes g64x2,...] [--budget FLOPS]
                                 [--patch-size 6] [--bytes-per-token 4.0] [--vocab N] [--entropy-steps N]
                                 [--val-points N] [--eval-documents N] [--threads N] [--dry-run]
                                 [--section.key value ...]

The BLT paper's inference saving needs the global transformer to dominate the FLOPs per byte: it runs once
per patch, so its cost falls with the patch size, while the local encoder and decoder run on every byte.
``configs/tiny.yaml``'s local models (width 64, one layer each) stay fixed and the global transformer grows
(``SHAPES``: width 64 to 512, two layers, heads of 32), so global : local FLOPs per byte goes from about 0.1
to 4.7-6 at patch sizes 8-6. Each BLT meets a BPE baseline with its global's shape (width, depth, heads, as
in the paper) and a vocabulary giving about ``--bytes-per-token`` bytes per token (Llama 2's is 3.7). With
both output projections counted (the paper's accounting), a small baseline's 8192-way head is most of its
FLOPs, so the table also compares the models without their heads: the mechanism the paper relies on.

1. Vocabulary: a tokenizer per candidate size (``VOCABS``, seconds each) on the training split; the one whose
   bytes per token on the validation split is closest to ``--bytes-per-token`` is the baselines' (``--vocab``
   fixes it instead).
2. Analytic table (``blt.eval.flops``, context ``data.seq_len`` positions): global and local FLOPs per byte,
   their ratio and the baseline's FLOPs per byte for every shape at patch sizes 6 and 8, and where, along
   global width at the shapes' depth, the BLT's inference FLOPs per byte fall below the baseline's.
   ``--flops-only`` stops here.
3. One entropy model (``python train.py entropy``), one threshold calibrated for ``--patch-size`` on training
   windows, shared by every BLT: only the global shape changes.
4. Equal training FLOPs: every model gets ``--budget`` (3x forward, entropy model excluded, as in the paper)
   in steps of the same bytes per batch: ``data.batch_size`` windows of ``data.seq_len`` bytes for the BLT,
   ``data.batch_size / bytes_per_token`` windows of ``data.seq_len`` tokens for the baseline.
5. ``blt-eval compare`` re-scores every model on the same validation documents (``<out>/comparison``), and
   ``<out>/shapes.md`` pairs each BLT with its baseline: bits per byte, inference FLOPs per byte, the
   shape's global : local ratio at the measured patch size, and the ratio where the saving starts.

``--quick`` (minutes): a small budget, a short entropy model, the first and the dominant shape, two
validations, few documents. ``--shapes`` picks the shapes trained (the table has all). Finished runs
(``summary.json`` written) are kept when the study is run again; unfinished ones are trained again. Every
command is printed and appended to ``<out>/commands.txt``. Nothing in the package reads ``--data``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from blt.baseline import train_tokenizer
from blt.data import iter_documents
from blt.eval.flops import blt_flops_per_byte, tokenized_flops_per_byte
from blt.training.cli import load_config

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))  # bench/ scripts sit side by side, also when imported by the tests
from study import (  # noqa: E402
    baseline_step_flops,
    blt_step_flops,
    compare_command,
    entropy_patchings,
    for_command,
    patching_flags,
    run,
    run_main,
    schedule,
    training_windows,
)

HEAD_DIM = 32  # configs/tiny.yaml's global heads (128 / 4); FLOPs do not depend on it


@dataclass(frozen=True)
class Shape:
    """A global transformer's shape (the baseline of the pair gets the same)."""

    name: str
    dim: int
    n_layers: int

    @property
    def n_heads(self) -> int:
        return self.dim // HEAD_DIM

    def flags(self, section: str) -> list[str]:
        fields = {"dim": self.dim, "n_layers": self.n_layers, "n_heads": self.n_heads}
        return [arg for key, value in fields.items() for arg in (f"--{section}.{key}", str(value))]


# global width 1x, 2x, 4x, 8x the local models' 64; g128x2 is configs/tiny.yaml's own global transformer
SHAPES = (Shape("g64x2", 64, 2), Shape("g128x2", 128, 2), Shape("g256x2", 256, 2), Shape("g512x2", 512, 2))
DOMINANT = "g512x2"  # global >= 4x local FLOPs per byte at patch sizes 6-8
ANALYTIC_PATCH_SIZES = (6.0, 8.0)
BYTES_PER_TOKEN = 4.0  # the baselines' target; the paper's range is about 3.5-4.5
VOCABS = (1024, 2048, 4096, 8192, 16384)
BUDGET, QUICK_BUDGET = 1e12, 1.5e11  # training FLOPs per model
SWEEP_WIDTHS = range(32, 1025, 32)  # global widths searched for the crossover


@dataclass(frozen=True)
class ShapeFlops:
    """Inference FLOPs per byte of one shape's BLT (split global / local) and of its baseline."""

    shape: Shape
    patch_size: float
    global_flops: float  # global transformer and its input projection
    local_flops: float  # encoder, decoder, their cross-attentions and the byte head
    baseline_flops: float
    heads: tuple[float, float] = (0.0, 0.0)  # output projections of the BLT (260 ids) and the baseline

    @property
    def body_saving(self) -> float:
        """:attr:`saving` without either output projection (a small baseline's head is most of its cost)."""
        return (self.baseline_flops - self.heads[1]) / (self.blt_flops - self.heads[0])

    @property
    def blt_flops(self) -> float:
        return self.global_flops + self.local_flops

    @property
    def ratio(self) -> float:
        return self.global_flops / self.local_flops

    @property
    def saving(self) -> float:
        """Baseline FLOPs per byte / BLT FLOPs per byte: above 1 the BLT is cheaper."""
        return self.baseline_flops / self.blt_flops


def shaped(config, shape: Shape, vocab: int | None = None):
    """``config`` with ``shape`` as its global transformer and baseline (and the baseline's vocabulary)."""
    glob = dataclasses.replace(
        config.blt.global_transformer, dim=shape.dim, n_layers=shape.n_layers, n_heads=shape.n_heads
    )
    baseline = dataclasses.replace(
        config.baseline,
        dim=shape.dim,
        n_layers=shape.n_layers,
        n_heads=shape.n_heads,
        vocab_size=vocab or config.baseline.vocab_size,
    )
    return dataclasses.replace(
        config, blt=dataclasses.replace(config.blt, global_transformer=glob), baseline=baseline
    )


def shape_flops(config, shape: Shape, patch_size: float, bytes_per_token: float, vocab: int) -> ShapeFlops:
    """FLOPs per byte over a context of ``data.seq_len`` positions (bytes, or tokens of the baseline)."""
    cfg, n = shaped(config, shape, vocab), config.data.seq_len
    parts = blt_flops_per_byte(cfg.blt, patch_size, n).parts
    glob = sum(v for k, v in parts.items() if k.startswith("global."))
    base = tokenized_flops_per_byte(cfg.baseline, vocab, n * bytes_per_token, bytes_per_token)
    heads = (parts["decoder.output"], base.parts["output"])
    local = sum(parts.values()) - glob
    return ShapeFlops(shape, patch_size, glob, local, base.inference_flops_per_byte, heads)


def crossover(points: list[tuple[float, float]]) -> float | None:
    """The ``x`` where ``y`` first crosses 1 going up, interpolated in log-log between the points (x, y).

    None when ``y`` never crosses; the first ``x`` when it starts at or above 1.
    """
    points = sorted(points)
    if not points or points[0][1] >= 1:
        return points[0][0] if points else None
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if y0 < 1 <= y1:
            t = -math.log(y0) / (math.log(y1) - math.log(y0))
            return math.exp(math.log(x0) + t * (math.log(x1) - math.log(x0)))
    return None


def sweep_crossover(
    config, depth: int, patch_size: float, bytes_per_token: float, vocab: int, heads: bool = True
) -> tuple[float, float] | None:
    """(global width, global : local ratio) where the BLT becomes cheaper than its baseline, or None.

    ``heads=False`` compares the models without their output projections (:attr:`ShapeFlops.body_saving`).
    """
    flops = [
        shape_flops(config, Shape(f"g{w}", w, depth), patch_size, bytes_per_token, vocab)
        for w in SWEEP_WIDTHS
    ]
    saving = [f.saving if heads else f.body_saving for f in flops]
    width = crossover([(f.shape.dim, s) for f, s in zip(flops, saving)])
    ratio = crossover([(f.ratio, s) for f, s in zip(flops, saving)])
    return None if width is None or ratio is None else (width, ratio)


def analytic_table(config, bytes_per_token: float, vocab: int) -> str:
    """Markdown: every shape at the analytic patch sizes, then the crossover along global width."""
    lines = [
        f"Analytic inference FLOPs per byte (context {config.data.seq_len} positions; baseline: "
        f"{vocab}-piece BPE at {bytes_per_token:g} bytes/token, the global's shape):",
        "",
        "| shape | patch | global FLOPs/byte | local FLOPs/byte | global : local | BLT | BPE | BPE ÷ BLT "
        "| BPE ÷ BLT without heads |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for shape in SHAPES:
        for p in ANALYTIC_PATCH_SIZES:
            f = shape_flops(config, shape, p, bytes_per_token, vocab)
            lines.append(
                f"| {shape.name} | {p:g} | {f.global_flops:.3g} | {f.local_flops:.3g} | {f.ratio:.2f} | "
                f"{f.blt_flops:.3g} | {f.baseline_flops:.3g} | {f.saving:.2f}x | {f.body_saving:.2f}x |"
            )
    depth = SHAPES[0].n_layers
    lines.append("")
    for p in ANALYTIC_PATCH_SIZES:
        for heads, what in ((True, ""), (False, " (without output projections)")):
            found = sweep_crossover(config, depth, p, bytes_per_token, vocab, heads)
            where = (
                f"global width {found[0]:.0f}, global : local {found[1]:.2f}"
                if found
                else f"no global width in {SWEEP_WIDTHS.start}-{SWEEP_WIDTHS.stop - 1}"
            )
            lines.append(f"- patch size {p:g}, {depth} global layers{what}: the BLT is cheaper from {where}")
    return "\n".join(lines) + "\n"


def choose_vocab(config, target: float) -> tuple[int, list[tuple[int, float]]]:
    """The vocabulary of ``VOCABS`` whose bytes per token on the validation split is closest to ``target``."""
    val = list(iter_documents(config.data, "val"))
    measured = []
    for size in VOCABS:
        tokenizer = train_tokenizer(iter_documents(config.data, "train"), size, config.baseline.tokenizer)
        measured.append((size, tokenizer.bytes_per_token(val)))
    best = min(measured, key=lambda m: abs(m[1] - target))[0]
    return best, measured


def pair_table(rows: list[dict], config, vocab: int) -> str:
    """Markdown over the re-scored runs (``comparison.json``): each shape's BLT against its baseline."""
    by_name = {r["name"]: r for r in rows}
    lines = [
        "| shape | global : local (measured patch) | BLT bits/byte | BPE bits/byte | BLT - BPE | BLT FLOPs/byte "
        "| BPE FLOPs/byte | BPE ÷ BLT | patch / token bytes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    points = []
    for shape in SHAPES:
        blt, bpe = by_name.get(f"blt-{shape.name}"), by_name.get(f"bpe-{shape.name}")
        if blt is None or bpe is None:
            continue
        ratio = shape_flops(config, shape, blt["unit_size"], bpe["unit_size"], vocab).ratio
        saving = bpe["inference_flops_per_byte"] / blt["inference_flops_per_byte"]
        diff = blt["bpb"] - bpe["bpb"]
        points.append((ratio, saving, diff))
        lines.append(
            f"| {shape.name} | {ratio:.2f} | {blt['bpb']:.4f} ± {blt['stderr'] or 0:.4f} | "
            f"{bpe['bpb']:.4f} ± {bpe['stderr'] or 0:.4f} | {diff:+.4f} | "
            f"{blt['inference_flops_per_byte']:.3g} | {bpe['inference_flops_per_byte']:.3g} | {saving:.2f}x | "
            f"{blt['unit_size']:.2f} / {bpe['unit_size']:.2f} |"
        )
    at = crossover([(r, s) for r, s, _ in points])
    cheaper = ", ".join(f"{d:+.4f}" for r, s, d in sorted(points) if s >= 1)
    lines.append("")
    if at is None:
        lines.append("- measured: the BLT is not cheaper than its baseline at any trained shape")
    elif at == min(points)[0]:  # no crossing between trained shapes to interpolate
        lines.append(
            f"- measured: the BLT is cheaper at every trained shape (from global : local {at:.2f}); "
            f"BLT - BPE bits/byte = {cheaper}"
        )
    else:
        lines.append(
            f"- measured: the BLT's inference FLOPs per byte fall below the baseline's from global : local "
            f"{at:.2f}; where it is cheaper, BLT - BPE bits/byte = {cheaper}"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--data", default="stdlib", help="corpus for training and evaluation (data.source)")
    parser.add_argument(
        "--config", default="configs/tiny.yaml", help="YAML with the model, data and optim sections"
    )
    parser.add_argument("--out", default="runs/study-shapes", help="folder for the runs and the comparison")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small budget, short runs: minutes")
    mode.add_argument("--flops-only", action="store_true", help="the analytic table only: seconds")
    parser.add_argument("--budget", type=float, default=None, help="training FLOPs per model")
    parser.add_argument(
        "--patch-size", type=float, default=6.0, help="target mean patch size of the entropy patching"
    )
    parser.add_argument(
        "--bytes-per-token", type=float, default=BYTES_PER_TOKEN, help="the baselines' target bytes per token"
    )
    parser.add_argument("--vocab", type=int, default=None, help="the baselines' vocabulary (default: chosen)")
    parser.add_argument(
        "--shapes", default=None, help="the shapes trained, comma-separated (default: all; --quick: two)"
    )
    parser.add_argument("--entropy-steps", type=int, default=None, help="steps of the entropy model")
    parser.add_argument("--val-points", type=int, default=None, help="validations per run (the curves)")
    parser.add_argument("--eval-documents", type=int, default=None, help="validation documents scored")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of every command")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the commands and budgets, train nothing"
    )
    args, user = parser.parse_known_args(argv)
    quick = {"budget": QUICK_BUDGET, "entropy_steps": 60, "val_points": 2, "eval_documents": 6}
    quick["shapes"] = f"{SHAPES[0].name},{DOMINANT}"  # the ends of the series
    full = {"budget": BUDGET, "entropy_steps": 150, "val_points": 2, "eval_documents": 16}
    full["shapes"] = ",".join(s.name for s in SHAPES)
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("entropy_steps", "val_points", "eval_documents", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if not args.budget > 0:
        parser.error(f"--budget must be > 0, got {args.budget}")
    if not args.patch_size >= 1:
        parser.error(f"--patch-size must be >= 1 (bytes per patch), got {args.patch_size}")
    if not args.bytes_per_token >= 1:
        parser.error(f"--bytes-per-token must be >= 1, got {args.bytes_per_token}")
    if args.vocab is not None and args.vocab <= 260:
        parser.error(f"--vocab must exceed 260 (256 byte pieces + 4 special ids), got {args.vocab}")
    known = {s.name: s for s in SHAPES}
    names = [name.strip() for name in args.shapes.split(",") if name.strip()]
    if not names or any(name not in known for name in names):
        parser.error(f"--shapes must be names among {', '.join(known)}, got {args.shapes!r}")
    args.shapes = [known[name] for name in names]
    if Path(args.data).exists():  # the commands run in the repository root, not in the caller's folder
        args.data = str(Path(args.data).resolve())
    return args, user


def study_config(args, user: list[str]):
    """The study's defaults, then the user's overrides (later ones win), then the corpus."""
    defaults = ["--data.val_fraction", "0.05", "--data.max_doc_bytes", "8192"]
    overrides = [*defaults, *user, "--data.source", args.data]
    return overrides, load_config(["--config", str(ROOT / args.config), *overrides])


def baseline_batch(config, args) -> int:
    """Windows per baseline batch: about the BLT's bytes per batch, at the target bytes per token."""
    return max(1, round(config.data.batch_size / args.bytes_per_token))


def pair_runs(shape: Shape, config, vocab: int, patching, mean_patch: float, entropy_dir: Path, args):
    """(run name, train.py command, steps, flags) of the shape's BLT and baseline, ``args.budget`` FLOPs each."""
    cfg, batch = shaped(config, shape, vocab), baseline_batch(config, args)
    base = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, batch_size=batch))
    blt_steps = max(1, round(args.budget / blt_step_flops(cfg, patching, mean_patch)))
    base_steps = max(1, round(args.budget / baseline_step_flops(base)))
    blt_flags = [*shape.flags("blt.global_transformer"), *patching_flags(patching, entropy_dir)]
    base_flags = [*shape.flags("baseline"), "--baseline.vocab_size", str(vocab)]
    base_flags += ["--data.batch_size", str(batch)]
    return [
        (f"blt-{shape.name}", "blt", blt_steps, blt_flags),
        (f"bpe-{shape.name}", "baseline", base_steps, base_flags),
    ]


def steps_flags(steps: int, args, config) -> list[str]:
    """The schedule; at most a fifth of the run warms up (the largest shapes get few steps)."""
    warmup = min(config.optim.warmup_steps, steps // 5)
    return [*schedule(steps, args.val_points), "--optim.warmup_steps", str(warmup)]


def train_once(cmd: list[str], run_dir: Path, log: Path, args, env) -> None:
    """Train unless ``run_dir`` holds a finished run; an unfinished one starts again."""
    if (run_dir / "summary.json").is_file():
        print(f"\n{run_dir.name}: finished earlier, kept")
        return
    run([*cmd, *(["--overwrite"] if run_dir.exists() else [])], log, args.dry_run, env)


def main(argv: list[str] | None = None) -> None:
    args, user = parse_args(argv)
    overrides, config = study_config(args, user)
    if args.vocab is None:
        vocab, measured = choose_vocab(config, args.bytes_per_token)
        for size, bpt in measured:
            print(f"{size}-piece BPE: {bpt:.3f} bytes/token on the validation split")
    else:
        vocab = args.vocab
    print(f"baselines: {vocab}-piece BPE\n")
    print(analytic_table(config, args.bytes_per_token, vocab))
    if args.flops_only:
        return

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "commands.txt"
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}))
    common = ["--config", args.config, *overrides, "--run.output_dir", str(out), "--run.sample_bytes", "0"]
    common += ["--run.score_val_split", "false"]  # step 5 scores every model alike
    train = [sys.executable, "train.py"]

    entropy_dir = out / "entropy" / "model"
    steps = ["--run.name", "entropy", "--trainer.max_steps", str(args.entropy_steps)]
    train_once([*train, "entropy", *for_command("entropy", common), *steps], out / "entropy", log, args, env)
    if not entropy_dir.is_dir():
        print("dry run: no entropy model yet, so no calibrated threshold and budgets")
        return
    patching, mean_patch = entropy_patchings(entropy_dir, training_windows(config), [args.patch_size])[
        args.patch_size
    ]
    batch = baseline_batch(config, args)
    print(f"\ntraining budget per model: {args.budget:.3g} FLOPs; baseline batches of {batch} windows")

    runs = []
    for shape in args.shapes:
        for name, command, steps, flags in pair_runs(
            shape, config, vocab, patching, mean_patch, entropy_dir, args
        ):
            print(
                f"{name}: {steps} steps"
                + (f", patches of {mean_patch:.2f} bytes" if command == "blt" else "")
            )
            cmd = [*train, command, *for_command(command, common), *flags, "--run.name", name]
            train_once([*cmd, *steps_flags(steps, args, config)], out / name, log, args, env)
            runs.append(out / name)

    folder = out / "comparison"
    run(compare_command(runs, folder, config, args.eval_documents), log, args.dry_run, env)
    if args.dry_run:
        return
    rows = json.loads((folder / "comparison.json").read_text())
    table = pair_table(rows, config, vocab)
    (out / "shapes.md").write_text(analytic_table(config, args.bytes_per_token, vocab) + "\n" + table)
    print("\n" + table)


if __name__ == "__main__":
    run_main(main)
