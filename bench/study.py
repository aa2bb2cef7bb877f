"""The comparison study at tiny scale: BLT patchings against a BPE baseline at equal training FLOPs.

    python bench/study.py --data /work/shared/corpora/kjv.txt [--config configs/tiny.yaml] [--out runs/study]
                          [--baseline-steps 200 | --budget FLOPS] [--entropy-steps 300]
                          [--patch-sizes 3,6] [--static 4] [--eval-documents 40] [--threads N] [--dry-run]
                          [--section.key value ...]

1. Train the entropy model (``python train.py entropy``).
2. Calibrate one entropy threshold per target mean patch size (``--patch-sizes``) on training windows, and
   measure the mean patch size of the static and space schemes on the same windows.
3. Give every model the same training FLOPs: the budget (``--budget``, or what ``--baseline-steps`` steps of
   the baseline cost) divided by each model's training FLOPs per step (``blt.eval.flops``, 3x forward,
   entropy model excluded as in the paper) sets its ``--trainer.max_steps``. Then train the BLT with
   entropy patching at each threshold, with static and with space patching, and the BPE baseline.
4. ``blt-eval compare`` re-scores every exported model on the same validation documents, with a context
   of ``data.seq_len`` positions (bytes for BLT, tokens for the baseline: what each saw in training), and
   writes the table and plots to ``<out>/comparison``.

As in the paper's comparison, the baseline gets the shape of the BLT's global transformer (width, depth,
heads); ``--baseline.dim`` etc. override that. The corpus is cut into documents of at most 8 KB with 5%
held out for validation (``--data.max_doc_bytes``, ``--data.val_fraction``). Every command is printed and
appended to ``<out>/commands.txt``. Nothing in the package reads ``--data``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

from blt.checkpoint import CheckpointError
from blt.config import ConfigError, PatchingConfig
from blt.data import PackedBatches
from blt.eval.flops import blt_flops_per_byte, tokenized_flops_per_byte
from blt.patcher import EntropyModel, calibrate_threshold, patch_lengths
from blt.training.cli import load_config
from blt.training.config import MODELS, READS

ROOT = Path(__file__).resolve().parent.parent


def run(cmd: list[str], log: Path, dry_run: bool, env: dict[str, str] | None = None) -> None:
    """Run ``cmd`` (logged to ``log`` as the exact command line) from the repository root."""
    line = shlex.join(cmd)
    print(f"\n$ {line}", flush=True)
    with open(log, "a") as f:
        f.write(line + "\n")
    if not dry_run:
        start = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT, env=env)
        print(f"({time.perf_counter() - start:.0f} s)", flush=True)


def training_windows(config, max_bytes: int = 65536) -> torch.Tensor:
    """The first training windows in corpus order, [N, seq_len] ids, about ``max_bytes`` of them."""
    packed = PackedBatches(config.data, "train", shuffle=False)
    n = min(len(packed), math.ceil(max_bytes / (config.data.batch_size * config.data.seq_len)))
    return torch.cat([packed.batch_at(i)[:, :-1] for i in range(n)])


@torch.no_grad()
def entropy_patchings(
    entropy_dir: Path, rows: torch.Tensor, sizes: list[float]
) -> dict[float, tuple[PatchingConfig, float]]:
    """target size -> (entropy patching calibrated on ``rows``, its mean patch size on them)."""
    entropies = EntropyModel.from_pretrained(entropy_dir).entropies(rows)
    out = {}
    for size in sizes:
        cal = calibrate_threshold(list(rows), list(entropies), target_patch_size=size)
        print(f"entropy patching: {cal}")
        out[size] = (PatchingConfig(scheme="entropy", threshold=cal.threshold), cal.mean_patch_size)
    return out


@torch.no_grad()
def patchings(
    entropy_dir: Path, config, sizes: list[float], static: int
) -> dict[str, tuple[PatchingConfig, float]]:
    """name -> (patching, mean patch size on training windows) for every BLT of the study."""
    rows = training_windows(config)
    out = {f"blt-entropy-p{size:g}": job for size, job in entropy_patchings(entropy_dir, rows, sizes).items()}
    for name, patching in (
        (f"blt-static{static}", PatchingConfig(scheme="static", patch_size=static)),
        ("blt-space", PatchingConfig(scheme="space")),
    ):
        out[name] = (patching, rows.numel() / int((patch_lengths(rows, patching) > 0).sum()))
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


def patching_flags(patching: PatchingConfig, entropy_dir: Path) -> list[str]:
    """``train.py blt`` flags for a BLT patched as ``patching`` by the study's entropy model."""
    flags = ["--blt.patching.scheme", patching.scheme, "--run.target_patch_size", "null"]
    if patching.scheme == "entropy":
        flags += ["--blt.patching.threshold", repr(patching.threshold)]
    if patching.scheme == "static":
        flags += ["--blt.patching.patch_size", str(patching.patch_size)]
    return [*flags, "--entropy_checkpoint", str(entropy_dir)]


def schedule(steps: int, val_points: int) -> list[str]:
    """max_steps, with validations (the curve's points) spread over the run and one checkpoint at the end."""
    every = max(1, steps // val_points)
    return [
        "--trainer.max_steps",
        str(steps),
        "--trainer.val_check_interval",
        str(every),
        "--run.checkpoint_every",
        str(steps),
    ]


def for_command(command: str, args: list[str]) -> list[str]:
    """``args`` without the options of model sections ``command`` does not read (train.py refuses them)."""
    out, skip = [], False
    for arg in args:
        if skip:  # the value of a dropped option
            skip = False
            continue
        section = arg[2:].split("=")[0].split(".")[0] if arg.startswith("--") else None
        if section in MODELS and section not in READS[command]:
            skip = "=" not in arg
            continue
        out.append(arg)
    return out


def study_overrides(args, user: list[str]) -> list[str]:
    """Defaults of the study, then the user's overrides (later ones win), then the corpus."""
    defaults = ["--data.val_fraction", "0.05", "--data.max_doc_bytes", "8192"]
    glob = load_config(["--config", str(ROOT / args.config), *user]).blt.global_transformer
    shape = ["--baseline.dim", str(glob.dim), "--baseline.n_layers", str(glob.n_layers)]
    shape += ["--baseline.n_heads", str(glob.n_heads)]
    return [*defaults, *shape, *user, "--data.source", args.data]


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--data", required=True, help="corpus for training and evaluation (data.source)")
    parser.add_argument(
        "--config", default="configs/tiny.yaml", help="YAML with the model, data and optim sections"
    )
    parser.add_argument("--out", default="runs/study", help="folder for the runs and the comparison")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--budget", type=float, default=None, help="training FLOPs per model")
    budget.add_argument("--baseline-steps", type=int, default=200, help="budget = this many baseline steps")
    parser.add_argument("--entropy-steps", type=int, default=300, help="steps of the entropy model")
    parser.add_argument("--patch-sizes", default="3,6", help="target mean patch sizes of the entropy runs")
    parser.add_argument("--static", type=int, default=4, help="patch size of the static-patching run")
    parser.add_argument("--val-points", type=int, default=5, help="validations per run (the curves)")
    parser.add_argument(
        "--eval-documents", type=int, default=40, help="validation documents the comparison scores"
    )
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of every command")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the commands and budgets, train nothing"
    )
    args, user = parser.parse_known_args(argv)
    for name in ("static", "baseline_steps", "entropy_steps", "val_points", "eval_documents", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.budget is not None and not args.budget > 0:
        parser.error(f"--budget must be > 0, got {args.budget}")
    # checked now, not after the entropy model has trained
    try:
        args.patch_sizes = [float(s) for s in args.patch_sizes.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--patch-sizes must be comma-separated numbers, got {args.patch_sizes!r}")
    if not all(size >= 1 for size in args.patch_sizes):
        parser.error(f"--patch-sizes must all be >= 1 (bytes per patch), got {args.patch_sizes}")
    if Path(args.data).exists():  # the commands run in the repository root, not in the caller's folder
        args.data = str(Path(args.data).resolve())
    return args, user


def main(argv: list[str] | None = None) -> None:
    args, user = parse_args(argv)
    overrides = study_overrides(args, user)
    config = load_config(["--config", str(ROOT / args.config), *overrides])
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "commands.txt"
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}))
    train = [sys.executable, "train.py"]
    common = [
        "--config",
        args.config,
        *overrides,
        "--run.output_dir",
        str(out),
        "--run.sample_bytes",
        "0",
    ]

    entropy_dir = out / "entropy" / "model"
    if not (entropy_dir / "config.json").is_file():
        steps = ["--run.name", "entropy", "--trainer.max_steps", str(args.entropy_steps)]
        run([*train, "entropy", *for_command("entropy", common), *steps], log, args.dry_run, env)
    if not entropy_dir.is_dir():
        print("dry run: no entropy model yet, so no calibrated thresholds and budgets")
        return
    jobs = patchings(entropy_dir, config, args.patch_sizes, args.static)
    budget = args.budget or args.baseline_steps * baseline_step_flops(config)
    print(f"\ntraining budget per model: {budget:.3g} FLOPs")

    runs = []
    for name, (patching, mean_patch) in jobs.items():
        steps = max(1, round(budget / blt_step_flops(config, patching, mean_patch)))
        print(f"{name}: mean patch size {mean_patch:.2f} on training windows -> {steps} steps")
        flags = [*patching_flags(patching, entropy_dir), "--run.name", name]
        run(
            [*train, "blt", *for_command("blt", common), *flags, *schedule(steps, args.val_points)],
            log,
            args.dry_run,
            env,
        )
        runs.append(out / name)
    steps = max(1, round(budget / baseline_step_flops(config)))
    print(f"bpe: {steps} steps")
    run(
        [
            *train,
            "baseline",
            *for_command("baseline", common),
            "--run.name",
            "bpe",
            *schedule(steps, args.val_points),
        ],
        log,
        args.dry_run,
        env,
    )
    runs.append(out / "bpe")

    run(compare_command(runs, out / "comparison", config, args.eval_documents), log, args.dry_run, env)


def compare_command(runs: list[Path], folder: Path, config, documents: int) -> list[str]:
    """``blt-eval compare`` of ``runs`` on the validation documents of ``config.data``, into ``folder``."""
    compare = [sys.executable, "-m", "blt.eval.cli", "compare", *map(str, runs), "--out", str(folder)]
    compare += ["--overwrite"]  # the study's own report, redone with its runs
    compare += ["--data.source", config.data.source, "--context", str(config.data.seq_len)]
    compare += ["--max_documents", str(documents)]
    for key in ("val_fraction", "max_doc_bytes", "max_bytes", "cache_dir"):
        if getattr(config.data, key) is not None:
            compare += [f"--data.{key}", str(getattr(config.data, key))]
    return compare


def run_main(main) -> None:
    """Run a study's ``main``, its failures one line (the command that failed, or the bad input)."""
    try:
        main()
    except subprocess.CalledProcessError as e:
        sys.exit(f"study stopped: a command failed with exit code {e.returncode}: {shlex.join(e.cmd)}")
    except (ConfigError, CheckpointError, ValueError, FileNotFoundError) as e:
        sys.exit(f"study: error: {e}")


if __name__ == "__main__":
    run_main(main)
