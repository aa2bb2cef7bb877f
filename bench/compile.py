"""Eager vs compiled training steps of the tiny BLT (what ``--run.compile true`` runs), in one run.

    python bench/compile.py [--config configs/tiny.yaml] [--data SOURCE] [--steps 4] [--rounds 3]
                            [--warmup 4] [--threads N] [--section.key value ...] [--json]

A step is the BLT training step of ``blt.training.modules.BLTTask``: patch lengths from the bundled entropy
model (eager: ``BLT.compute_patches`` stays outside the compiled region), the forward with them
(``check=False``), cross-entropy, backward and AdamW. The entropy model is random and its threshold is
calibrated to ``run.target_patch_size`` on the batches, so the number of patches changes from batch to batch
as in training. Both models start from the same weights; the compiled one is ``model.compile()``, the call
the LightningModule makes (inductor). Compile time is what the compiled model's warm-up steps (one per batch:
the first compiles, a new patch count recompiles once with a symbolic one) take beyond as many eager steps.
Steps/s are the best of ``--rounds`` interleaved rounds of ``--steps`` steps after the warm-up.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time

import torch
from train_throughput import (  # bench/ side by side
    Job,
    byte_batches,
    lm_loss,
    mean_bytes,
    parse_run,
    time_steps,
)

from blt.eval.flops import blt_flops_per_byte
from blt.model import BLT
from blt.patcher import calibrate_threshold


def training_loss(model: BLT, batch: torch.Tensor) -> torch.Tensor:
    """BLTTask.score's forward and loss on one [B, T + 1] batch."""
    ids, targets = batch[:, :-1], batch[:, 1:]
    lengths, next_starts = model.compute_patches(ids)
    return lm_loss(model(ids, lengths, next_starts, check=False).logits, targets)


def calibrated_blt(run, batches: list[torch.Tensor]) -> tuple[BLT, float]:
    """The config's BLT with its random entropy model's threshold at ``run.target_patch_size``; and the
    mean patch size it gives on ``batches``."""
    model = BLT(dataclasses.replace(run.blt, entropy_model=run.entropy))  # as the pipeline bundles it
    rows = [row for b in batches for row in b[:, :-1]]
    entropies = [e for b in batches for e in model.patcher.entropies(b[:, :-1])]
    calibration = calibrate_threshold(rows, entropies, run.run.target_patch_size, run.blt.patching)
    model.config.patching = calibration.patching(run.blt.patching)
    return model, calibration.mean_patch_size


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--config", default="configs/tiny.yaml", help="YAML with blt, data, run sections")
    parser.add_argument("--data", default=None, help="corpus (sets data.source)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per model and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best round counts")
    parser.add_argument("--warmup", type=int, default=4, help="batches (warm-up steps, one each)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args, run = parse_run(parser, argv, ("steps", "rounds", "warmup", "threads"))
    torch.manual_seed(0)
    batches = byte_batches(run, args.warmup)
    model, patch_size = calibrated_blt(run, batches)
    flops = blt_flops_per_byte(model.config, patch_size, run.data.seq_len).training_flops_per_byte
    jobs = []
    for name in ("eager", "compiled"):
        copy_ = copy.deepcopy(model).train()
        if name == "compiled":
            copy_.compile()
        jobs.append(Job(name, copy_, training_loss, batches, mean_bytes(batches), flops, patch_size))
    optimizers = [torch.optim.AdamW([p for p in j.model.parameters() if p.requires_grad]) for j in jobs]

    # warm-up, one step per batch: allocations and optimizer state, and the compiled model's compilations;
    # the first losses agree (the weights still do)
    first_losses, warmup = [], []
    for job, opt in zip(jobs, optimizers):
        start = time.perf_counter()
        for i, batch in enumerate(batches):
            loss = training_loss(job.model, batch)
            if i == 0:
                first_losses.append(loss.item())
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        warmup.append(time.perf_counter() - start)
    for _ in range(args.rounds):
        for job, opt in zip(jobs, optimizers):
            job.seconds_per_step = min(job.seconds_per_step, time_steps(job, opt, args.steps))
    eager, compiled = jobs
    result = {
        "threads": torch.get_num_threads(),
        "batch": [run.data.batch_size, run.data.seq_len],
        "mean_patch_size": patch_size,
        "eager_steps_per_second": 1 / eager.seconds_per_step,
        "compiled_steps_per_second": 1 / compiled.seconds_per_step,
        "speedup": eager.seconds_per_step / compiled.seconds_per_step,
        "compile_seconds": warmup[1] - warmup[0],
        "warmup_seconds": dict(zip(("eager", "compiled"), warmup)),
        "first_loss": dict(zip(("eager", "compiled"), first_losses)),
        "recompiles": torch._dynamo.utils.counters["stats"]["unique_graphs"],
        "graph_breaks": sum(torch._dynamo.utils.counters["graph_break"].values()),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"BLT training step, batch {run.data.batch_size} x {run.data.seq_len}, mean patch {patch_size:.2f}, "
          f"{result['threads']} threads")  # fmt: skip
    for job in jobs:
        print(f"{job.name:<10}{1 / job.seconds_per_step:>8.2f} steps/s{job.bytes_per_second:>10.0f} bytes/s")
    print(f"compiled / eager: {result['speedup']:.2f}x; compile time {result['compile_seconds']:.1f} s "
          f"({result['recompiles']} graphs, {result['graph_breaks']} graph breaks)")  # fmt: skip
    print(f"first loss: eager {first_losses[0]:.6f}, compiled {first_losses[1]:.6f}")


if __name__ == "__main__":
    main()
