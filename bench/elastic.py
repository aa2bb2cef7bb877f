"""Elastic patching at equal training FLOPs: one BLT over a range of patch sizes against fixed-threshold BLTs.

    python bench/elastic.py --data /work/shared/corpora/kjv.txt [--quick] [--out runs/elastic]
                            [--config configs/tiny.yaml] [--range 3,6] [--budgets 3,4.5,6]
                            [--steps N] [--entropy-steps N] [--eval-documents N] [--threads N]
                            [--section.key value ...]

1. Train one entropy model (``train.py entropy``); every BLT patches with it (``--entropy_checkpoint``).
2. Calibrate one entropy threshold per budget (a target mean patch size, ``--budgets``) on training windows.
3. Give every BLT the training FLOPs of ``--steps`` steps of the fixed model at the middle budget
   (``blt.eval.flops``, 3x forward, entropy model excluded): each fixed model trains at its budget's
   threshold for budget / (its FLOPs per step) steps; the elastic model (``--run.elastic_patch_size``
   ``--range``) for budget / (its FLOPs per step averaged over the range, sizes drawn uniformly) steps.
4. Score every model at every budget's threshold on the same validation documents (``blt-eval bpb``'s
   rules, windows of ``data.seq_len`` positions, the patching overridden as ``--patching.threshold``
   does): bits/byte, mean patch size and forward FLOPs per byte spent (entropy model included).

``--quick`` is a smoke run of a few minutes; the default full mode takes well under an hour on a 2-core
CPU. Every training command is printed and appended to ``<out>/commands.txt``; the table is printed as
Markdown and written to ``<out>/elastic.md`` and ``<out>/elastic.json``. Nothing in the package reads
``--data``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import torch

from blt.checkpoint import load as load_model
from blt.config import PatchingConfig
from blt.data import iter_documents
from blt.eval.bpb import evaluate, scorer_for
from blt.eval.flops import blt_flops_per_byte
from blt.patcher import EntropyModel, calibrate_threshold
from blt.training.cli import load_config

ROOT = Path(__file__).resolve().parent.parent
from study import for_command, run, schedule, study_overrides, training_windows  # noqa: E402

QUICK = {"steps": 40, "entropy_steps": 60, "eval_documents": 4}
FULL = {"steps": 300, "entropy_steps": 200, "eval_documents": 31}


def numbers(text: str, name: str, parser) -> list[float]:
    try:
        values = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--{name} must be comma-separated numbers, got {text!r}")
    if not values or not all(v >= 1 for v in values):
        parser.error(f"--{name} must be numbers >= 1 (bytes per patch), got {text!r}")
    return values


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--data", required=True, help="corpus for training and evaluation (data.source)")
    parser.add_argument("--config", default="configs/tiny.yaml", help="YAML with the model and data sections")
    parser.add_argument("--out", default="runs/elastic", help="folder for the runs and the table")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few minutes")
    parser.add_argument("--range", default="3,6", help="min,max mean patch size of the elastic model")
    parser.add_argument("--budgets", default="3,4.5,6", help="mean patch sizes of the fixed models")
    parser.add_argument("--steps", type=int, default=None, help="budget: steps of the middle fixed model")
    parser.add_argument("--entropy-steps", type=int, default=None, help="steps of the entropy model")
    parser.add_argument("--eval-documents", type=int, default=None, help="validation documents scored")
    parser.add_argument("--val-points", type=int, default=2, help="validations per run")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every command")
    args, user = parser.parse_known_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("steps", "entropy_steps", "eval_documents", "val_points", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    args.range = numbers(args.range, "range", parser)
    if len(args.range) != 2 or args.range[0] > args.range[1]:
        parser.error(f"--range must be min,max with min <= max, got {args.range}")
    args.budgets = sorted(numbers(args.budgets, "budgets", parser))
    if Path(args.data).exists():
        args.data = str(Path(args.data).resolve())
    args.config = str(Path(args.config).resolve())
    return args, user


def step_flops(config, mean_patch: float) -> float:
    """Training FLOPs of one step of batch_size x seq_len bytes at mean patch size ``mean_patch``."""
    per_byte = blt_flops_per_byte(config.blt, mean_patch, config.data.seq_len).training_flops_per_byte
    return per_byte * config.data.batch_size * config.data.seq_len


def elastic_step_flops(config, lo: float, hi: float, points: int = 101) -> float:
    """Expected FLOPs of a step whose mean patch size is drawn uniformly from [lo, hi]."""
    sizes = [lo + (hi - lo) * i / (points - 1) for i in range(points)]
    return sum(step_flops(config, s) for s in sizes) / points


@torch.no_grad()
def thresholds(entropy_dir: Path, config, sizes: list[float]) -> dict[float, tuple[float, float]]:
    """size -> (threshold, mean patch size it gives on training windows)."""
    rows = training_windows(config)
    entropies = EntropyModel.from_pretrained(entropy_dir).entropies(rows)
    out = {}
    for size in sizes:
        cal = calibrate_threshold(list(rows), list(entropies), target_patch_size=size)
        print(f"budget {size:g}: {cal}", flush=True)
        out[size] = (cal.threshold, cal.mean_patch_size)
    return out


@torch.no_grad()
def score(run_dir: Path, config, threshold: float, documents: list[bytes]) -> dict:
    """Bits/byte of the run's model with every window patched at ``threshold``."""
    patching = PatchingConfig(scheme="entropy", threshold=threshold)
    scorer = scorer_for(load_model(run_dir / "model"), context=config.data.seq_len, patching=patching)
    result = evaluate(scorer, documents)
    return {
        "bits_per_byte": result.bits_per_byte,
        "stderr": result.stderr,
        "mean_patch_size": result.bytes_per_unit,
        "spent_flops_per_byte": result.flops["spent_flops_per_byte"],
        "bytes": result.n_bytes,
    }


def table(results: dict, budgets: list[float], cal: dict) -> str:
    head = " | ".join(f"p={b:g} (thr {cal[b][0]:.3f})" for b in budgets)
    lines = [f"| model | training FLOPs | steps | {head} |", "|---|---|---|" + "---|" * len(budgets)]
    for name, r in results.items():
        cells = [
            f"{r['scores'][str(b)]['bits_per_byte']:.4f} ({r['scores'][str(b)]['mean_patch_size']:.2f} B/patch, "
            f"{r['scores'][str(b)]['spent_flops_per_byte']:.3g} F/B)"
            for b in budgets
        ]
        lines.append(f"| {name} | {r['training_flops']:.3g} | {r['steps']} | " + " | ".join(cells) + " |")
    fixed = {b: results[f"fixed-p{b:g}"]["scores"][str(b)]["bits_per_byte"] for b in budgets}
    gaps = [results["elastic"]["scores"][str(b)]["bits_per_byte"] - fixed[b] for b in budgets]
    lines.append("")
    lines.append(
        "elastic - fixed at the fixed model's own budget: "
        + ", ".join(f"p={b:g}: {g:+.4f}" for b, g in zip(budgets, gaps))
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args, user = parse_args(argv)
    # the runs' own validation is only their curve: the table scores the exported models
    overrides = study_overrides(args, ["--trainer.limit_val_batches", "2", *user])
    config = load_config(["--config", args.config, *overrides])
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "commands.txt"
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    train = [sys.executable, "train.py"]
    common = ["--config", args.config, *overrides, "--run.output_dir", str(out), "--run.sample_bytes", "0"]
    common += ["--run.score_val_split", "false"]  # scored here, at every budget

    entropy_dir = out / "entropy" / "model"
    if not (entropy_dir / "config.json").is_file():
        steps = ["--run.name", "entropy", "--trainer.max_steps", str(args.entropy_steps)]
        run([*train, "entropy", *for_command("entropy", common), *steps], log, False, env)
    cal = thresholds(entropy_dir, config, args.budgets)
    middle = args.budgets[len(args.budgets) // 2]
    budget = args.steps * step_flops(config, cal[middle][1])
    print(f"\ntraining budget per model: {budget:.3g} FLOPs", flush=True)

    lo, hi = args.range
    jobs = {
        "elastic": (
            budget / elastic_step_flops(config, lo, hi),
            ["--run.elastic_patch_size", f"[{lo}, {hi}]", "--run.target_patch_size", "null"],
        )
    }
    for b in args.budgets:
        flags = ["--run.target_patch_size", "null", "--blt.patching.threshold", repr(cal[b][0])]
        jobs[f"fixed-p{b:g}"] = (budget / step_flops(config, cal[b][1]), flags)
    for name, (steps, flags) in jobs.items():
        steps = max(1, round(steps))
        if not (out / name / "summary.json").is_file():
            cmd = [*train, "blt", *for_command("blt", common), "--blt.patching.scheme", "entropy", *flags]
            cmd += ["--entropy_checkpoint", str(entropy_dir), "--run.name", name, "--overwrite"]
            run([*cmd, *schedule(steps, args.val_points)], log, False, env)

    torch.set_num_threads(args.threads)
    documents = list(iter_documents(config.data, "val"))[: args.eval_documents]
    results = {}
    for name in jobs:
        summary = json.loads((out / name / "summary.json").read_text())
        scores = {str(b): score(out / name, config, cal[b][0], documents) for b in args.budgets}
        results[name] = {
            "steps": summary["steps"],
            "training_flops": summary["training_flops"],
            "scores": scores,
        }
        if "elastic" in summary:
            results[name]["elastic"] = summary["elastic"]
        print(name, {b: round(s["bits_per_byte"], 4) for b, s in scores.items()}, flush=True)
    text = table(results, args.budgets, cal)
    print("\n" + text)
    (out / "elastic.md").write_text(text + "\n")
    meta = {"budget_flops": budget, "thresholds": {str(b): cal[b] for b in args.budgets}, "range": args.range}
    (out / "elastic.json").write_text(json.dumps({**meta, "results": results}, indent=2))


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as e:
        sys.exit(f"elastic: a command failed with exit code {e.returncode}: {shlex.join(e.cmd)}")
