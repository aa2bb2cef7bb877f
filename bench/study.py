"""The comparison study at tiny scale: BLT patchings against a BPE baseline at equal training FLOPs.

    python bench/study.py --data /work/shared/corpora/kjv.txt [--config configs/tiny.yaml] [--out runs/study]
                          [--baseline-steps 400 | --budget FLOPS] [--entropy-steps 300]
                          [--patch-sizes 3,5] [--static 4] [--eval-documents 40] [--dry-run]

1. Train the entropy model (``python train.py entropy``).
2. Calibrate one entropy threshold per target mean patch size (``--patch-sizes``) on training text, and
   measure the mean patch size of the static and space schemes on the same text.
3. Give every model the same training FLOPs: the budget (``--budget``, or what ``--baseline-steps`` steps of
   the baseline cost) divided by each model's training FLOPs per step (``blt.eval.flops``, 3x forward,
   entropy model excluded as in the paper) sets its ``--trainer.max_steps``. Then train the BLT with
   entropy patching at each threshold, with static and with space patching, and the BPE baseline.
4. ``blt-eval compare`` re-scores every exported model on the same validation documents, with a context
   of ``data.seq_len`` positions (bytes for BLT, tokens for the baseline: what each saw in training), and
   writes the table and plots to ``<out>/comparison``.

The corpus is cut into documents of at most 8 KB with 5% held out for validation (override with
``--data.max_doc_bytes`` and ``--data.val_fraction``). Every command is printed and appended to
``<out>/commands.txt``. Nothing in the package reads ``--data``.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch
from blt.eval.flops import blt_flops_per_byte, tokenized_flops_per_byte
from blt.patcher import EntropyModel, calibrate_threshold, patch_lengths

from blt.config import PatchingConfig
from blt.data import iter_documents
from blt.tokenizer import encode
from blt.training.config import load_run_config

ROOT = Path(__file__).resolve().parent.parent


def run(cmd: list[str], log: Path, dry_run: bool) -> None:
    line = shlex.join(cmd)
    print(f"\n$ {line}", flush=True)
    with open(log, "a") as f:
        f.write(line + "\n")
    if not dry_run:
        start = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT)
        print(f"({time.perf_counter() - start:.0f} s)", flush=True)


def sample_ids(config, max_bytes: int = 65536) -> list[torch.Tensor]:
    """Training documents as BOS + byte ids (cut to ``seq_len`` ids, as the model sees them), ~max_bytes."""
    docs, total = [], 0
    for doc in iter_documents(config.data, "train"):
        ids = encode(doc)[: config.data.seq_len]
        docs.append(torch.tensor(ids))
        total += len(ids)
        if total >= max_bytes:
            break
    return docs


@torch.no_grad()
def patchings(
    entropy_dir: Path, config, patch_sizes: list[float], static: int
) -> dict[str, tuple[PatchingConfig, float]]:
    """name -> (patching, mean patch size on training text) for every BLT of the study."""
    model = EntropyModel.from_pretrained(entropy_dir)
    docs = sample_ids(config)
    entropies = [model.entropies(d[None])[0] for d in docs]
    out = {}
    for size in patch_sizes:
        cal = calibrate_threshold(docs, entropies, target_patch_size=size)
        print(f"entropy patching: {cal}")
        out[f"blt-entropy-p{size:g}"] = (
            PatchingConfig(scheme="entropy", threshold=cal.threshold),
            cal.mean_patch_size,
        )
    for name, patching in (
        (f"blt-static{static}", PatchingConfig(scheme="static", patch_size=static)),
        ("blt-space", PatchingConfig(scheme="space")),
    ):
        n_patches = sum(int((patch_lengths(d[None], patching) > 0).sum()) for d in docs)
        out[name] = (patching, sum(d.numel() for d in docs) / n_patches)
    return out


def blt_step_flops(config, patching: PatchingConfig, mean_patch: float) -> float:
    blt = dataclasses.replace(config.blt, patching=patching)
    per_byte = blt_flops_per_byte(blt, mean_patch, config.data.seq_len).training_flops_per_byte
    return per_byte * config.data.batch_size * config.data.seq_len


def baseline_step_flops(config) -> float:
    """Per step: batch_size x seq_len tokens, each over a context of seq_len tokens."""
    per_token = tokenized_flops_per_byte(
        config.baseline, config.baseline.vocab_size, config.data.seq_len, 1.0
    )
    return per_token.training_flops_per_byte * config.data.batch_size * config.data.seq_len


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--data", required=True, help="corpus for training and evaluation (data.source)")
    parser.add_argument(
        "--config", default="configs/tiny.yaml", help="YAML with the model, data and optim sections"
    )
    parser.add_argument("--out", default="runs/study", help="folder for the runs and the comparison")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--budget", type=float, default=None, help="training FLOPs per model")
    budget.add_argument("--baseline-steps", type=int, default=400, help="budget = this many baseline steps")
    parser.add_argument("--entropy-steps", type=int, default=300, help="steps of the entropy model")
    parser.add_argument("--patch-sizes", default="3,5", help="target mean patch sizes of the entropy runs")
    parser.add_argument("--static", type=int, default=4, help="patch size of the static-patching run")
    parser.add_argument("--val-points", type=int, default=5, help="validations per run (the curves)")
    parser.add_argument(
        "--eval-documents", type=int, default=40, help="validation documents the comparison scores"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the commands and budgets, train nothing"
    )
    args, overrides = parser.parse_known_args(argv)
    if args.static <= 0:
        parser.error(f"--static must be > 0, got {args.static}")
    # many documents of modest size, so the validation split has enough of them for a standard error
    overrides = ["--data.val_fraction", "0.05", "--data.max_doc_bytes", "8192", *overrides, "--data.source", args.data]
    config = load_run_config(ROOT / args.config, overrides)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "commands.txt"
    train = [sys.executable, "train.py"]
    common = [
        "--config",
        args.config,
        *overrides,
        "--trainer.output_dir",
        str(out),
        "--trainer.sample_bytes",
        "0",
    ]

    entropy_dir = out / "entropy" / "model"
    if not (entropy_dir / "config.json").is_file():
        run(
            [
                *train,
                "entropy",
                *common,
                "--trainer.name",
                "entropy",
                "--trainer.max_steps",
                str(args.entropy_steps),
            ],
            log,
            args.dry_run,
        )
    sizes = [float(s) for s in args.patch_sizes.split(",") if s]
    if args.dry_run and not entropy_dir.is_dir():
        print("dry run: no entropy model yet, so no calibrated thresholds")
        return
    jobs = patchings(entropy_dir, config, sizes, args.static)
    budget = args.budget or args.baseline_steps * baseline_step_flops(config)
    print(f"\ntraining budget per model: {budget:.3g} FLOPs")

    runs = []
    for name, (patching, mean_patch) in jobs.items():
        steps = max(1, round(budget / blt_step_flops(config, patching, mean_patch)))
        print(f"{name}: mean patch size {mean_patch:.2f} on training text -> {steps} steps")
        flags = [
            "--blt.patching.scheme",
            patching.scheme,
            "--blt.patching.threshold",
            repr(patching.threshold),
            "--blt.patching.patch_size",
            str(patching.patch_size),
        ]
        run(
            [
                *train,
                "blt",
                *common,
                "--entropy_checkpoint",
                str(entropy_dir),
                *flags,
                "--trainer.name",
                name,
                *schedule(steps, args.val_points),
            ],
            log,
            args.dry_run,
        )
        runs.append(out / name)
    steps = max(1, round(budget / baseline_step_flops(config)))
    print(f"bpe: {steps} steps")
    run(
        [*train, "baseline", *common, "--trainer.name", "bpe", *schedule(steps, args.val_points)],
        log,
        args.dry_run,
    )
    runs.append(out / "bpe")

    compare = [
        sys.executable,
        "-m",
        "blt.eval.cli",
        "compare",
        *map(str, runs),
        "--out",
        str(out / "comparison"),
        "--data",
        args.data,
        "--context",
        str(config.data.seq_len),
        "--max-documents",
        str(args.eval_documents),
    ]
    compare += list(
        itertools.chain.from_iterable(
            (f"--data.{k}", str(getattr(config.data, k)))
            for k in ("val_fraction", "max_doc_bytes", "max_bytes")
            if getattr(config.data, k) is not None
        )
    )
    run(compare, log, args.dry_run)


def schedule(steps: int, val_points: int) -> list[str]:
    """max_steps, with validation (the curve points) and checkpoints spread over the run."""
    every = max(1, steps // val_points)
    return [
        "--trainer.max_steps",
        str(steps),
        "--trainer.val_every",
        str(every),
        "--trainer.checkpoint_every",
        str(max(every, steps)),
    ]


if __name__ == "__main__":
    main()
