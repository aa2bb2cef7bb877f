"""Training throughput: bytes/s and MFU of the tiny BLT, the BPE baseline and the entropy model.

    python bench/train_throughput.py [--config configs/tiny.yaml] [--data SOURCE] [--steps 8] [--warmup 2]
                                     [--section.key value ...] [--json]

Each model runs plain training steps (forward, cross-entropy, backward, AdamW) on real batches of the
corpus, on the CPU, with the shapes of the config file (``blt``, ``baseline``, ``entropy`` and ``data``
sections). MFU is the model's training FLOPs per byte (``blt.eval.flops``, 3x forward) times bytes/s,
divided by the fp32 matmul peak of this machine measured in the same run (the best of square matmuls).
The BLT patches statically with ``blt.patching.patch_size`` bytes so its global cost is fixed; the entropy
model that would pick patches is timed as its own row. All ratios printed come from this one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from blt.config import ConfigError, PatchingConfig
from blt.eval.flops import blt_flops_per_byte, entropy_flops_per_byte, tokenized_flops_per_byte
from blt.model import BLT
from blt.patcher import EntropyModel, patch_lengths
from blt.tokenizer import OFFSET, PAD_ID
from blt.training.callbacks import measured_peak

# The data pipeline, the BPE baseline (sentencepiece) and the config parser (jsonargparse) are imported
# where they are used: bench/gpu.py reuses the timing code here on machines installed without them.


@dataclass
class Job:
    """One model ready to train: its loss on a batch, the batches, and what a byte costs."""

    name: str
    model: torch.nn.Module
    loss_fn: object  # (model, batch) -> scalar loss
    batches: list
    bytes_per_step: float
    training_flops_per_byte: float
    unit_size: float  # bytes per patch (BLT), per token (baseline), 1 (entropy model)
    seconds_per_step: float = float("inf")  # best over the rounds

    @property
    def bytes_per_second(self) -> float:
        return self.bytes_per_step / self.seconds_per_step

    def mfu(self, peak: float) -> float:
        return self.training_flops_per_byte * self.bytes_per_second / peak


def time_steps(job: Job, opt: torch.optim.Optimizer, steps: int) -> float:
    """Mean seconds per optimizer step over ``steps`` steps."""
    batches = itertools.cycle(job.batches)
    device = next(job.model.parameters()).device
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda device: None
    sync(device)  # CUDA runs asynchronously: time the work, not its queueing
    start = time.perf_counter()
    for _ in range(steps):
        job.loss_fn(job.model, next(batches)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(device)
    return (time.perf_counter() - start) / steps


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=PAD_ID)


def causal_lm_loss(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    return lm_loss(model(batch[:, :-1]), batch[:, 1:])


def byte_batches(run, n: int) -> list[torch.Tensor]:
    from blt.data import PackedBatches

    loader = iter(PackedBatches(run.data, "train"))
    return [next(loader) for _ in range(n)]


def blt_job(run, batches) -> Job:
    config = dataclasses.replace(run.blt, entropy_model=None)
    static = PatchingConfig(scheme="static", patch_size=config.patching.patch_size)
    inputs = [(b[:, :-1], b[:, 1:], patch_lengths(b[:, :-1], static)) for b in batches]
    patches = sum(int((lengths > 0).sum()) for _, _, lengths in inputs)
    mean_patch = sum(x.numel() for x, _, _ in inputs) / patches

    def loss_fn(model, batch):
        ids, targets, lengths = batch
        return lm_loss(model(ids, patch_lengths=lengths).logits, targets)

    flops = blt_flops_per_byte(config, mean_patch, run.data.seq_len).training_flops_per_byte
    return Job("blt (static patches)", BLT(config), loss_fn, inputs, mean_bytes(batches), flops, mean_patch)


def entropy_job(run, batches) -> Job:
    flops = entropy_flops_per_byte(run.entropy, run.data.seq_len).training_flops_per_byte
    return Job(
        "entropy model", EntropyModel(run.entropy), causal_lm_loss, batches, mean_bytes(batches), flops, 1.0
    )


def baseline_job(run, n_batches) -> Job:
    from blt.baseline import BaselineLM, train_tokenizer
    from blt.data import iter_documents

    texts = itertools.islice(iter_documents(run.data, "train"), 2000)
    tokenizer = train_tokenizer(texts, run.baseline.vocab_size, run.baseline.tokenizer)
    model = BaselineLM(run.baseline, tokenizer)
    B, T = run.data.batch_size, run.data.seq_len
    stream: list[int] = []
    for doc in iter_documents(run.data, "train"):
        stream += tokenizer.encode(doc, add_bos=True, add_eos=True)
        if len(stream) > n_batches * B * T + 1:
            break
    if len(stream) <= n_batches * B * T + 1:
        raise ValueError(f"the corpus holds fewer than {n_batches} batches of {B} x {T} tokens")
    windows = torch.tensor([stream[i * T : i * T + T + 1] for i in range(n_batches * B)]).view(
        n_batches, B, T + 1
    )
    batches = list(windows)
    text_bytes = sum(len(tokenizer.decode(b[:, 1:])) for b in batches) / n_batches
    bytes_per_token = text_bytes / (B * T)
    count = tokenized_flops_per_byte(
        model.config, model.config.vocab_size, T * bytes_per_token, bytes_per_token
    )
    return Job(
        "bpe baseline",
        model,
        causal_lm_loss,
        batches,
        text_bytes,
        count.training_flops_per_byte,
        bytes_per_token,
    )


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def mean_bytes(batches: list[torch.Tensor]) -> float:
    """Bytes of text per batch (targets that are bytes, not BOS/EOS)."""
    return sum(int((b[:, 1:] >= OFFSET).sum()) for b in batches) / len(batches)


def parse_run(parser: argparse.ArgumentParser, argv, counts: tuple[str, ...]):
    """(args, the training config): the bench's own flags (``counts`` must be >= 1; ``--data``,
    ``--threads``, ``--config``), the rest read as training-command overrides of ``--config``."""
    args, overrides = parser.parse_known_args(argv)
    from blt.training.cli import load_config

    for name in counts:
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be >= 1, got {value}")
    if args.data is not None:
        overrides += ["--data.source", args.data]
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        run = load_config(["--config", str(Path(__file__).resolve().parent.parent / args.config), *overrides])
    except ConfigError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    return args, run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument(
        "--config", default="configs/tiny.yaml", help="YAML with blt, baseline, entropy, data"
    )
    parser.add_argument("--data", default=None, help="corpus (sets data.source)")
    parser.add_argument("--steps", type=int, default=4, help="timed optimizer steps per model and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all models; the best round counts")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args, run = parse_run(parser, argv, ("steps", "rounds", "threads"))
    torch.manual_seed(0)
    batches = byte_batches(run, 4)
    jobs = [blt_job(run, batches), baseline_job(run, 4), entropy_job(run, batches)]
    optimizers = [torch.optim.AdamW([p for p in j.model.parameters() if p.requires_grad]) for j in jobs]
    for job, opt in zip(jobs, optimizers):  # warm-up: allocations, optimizer state
        job.model.train()
        time_steps(job, opt, 1)
    # the machine is shared: interleave models and the peak over rounds and keep each one's best
    peak = 0.0
    for _ in range(args.rounds):
        peak = max(peak, measured_peak())
        for job, opt in zip(jobs, optimizers):
            job.seconds_per_step = min(job.seconds_per_step, time_steps(job, opt, args.steps))
    report(jobs, peak, args)


def report(rows: list[Job], peak: float, args) -> None:
    blt, baseline = rows[0], rows[1]
    ratios = {
        "blt_over_baseline_bytes_per_second": blt.bytes_per_second / baseline.bytes_per_second,
        "blt_over_baseline_training_flops_per_byte": blt.training_flops_per_byte
        / baseline.training_flops_per_byte,
    }
    if args.json:
        keys = ("name", "bytes_per_step", "seconds_per_step", "training_flops_per_byte", "unit_size")
        out = [
            {
                **{k: getattr(r, k) for k in keys},
                "params": n_params(r.model),
                "bytes_per_second": r.bytes_per_second,
                "mfu": r.mfu(peak),
            }
            for r in rows
        ]
        print(json.dumps({"peak_flops": peak, "threads": torch.get_num_threads(), "rows": out, **ratios}))
        return
    print(f"fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s ({torch.get_num_threads()} threads)")
    header = f"{'model':<22}{'params':>10}{'bytes/step':>12}{'s/step':>9}{'bytes/s':>10}"
    print(header + f"{'train FLOPs/B':>15}{'MFU':>8}")
    for r in rows:
        print(
            f"{r.name:<22}{n_params(r.model):>10,}{r.bytes_per_step:>12.0f}{r.seconds_per_step:>9.3f}"
            f"{r.bytes_per_second:>10.0f}{r.training_flops_per_byte:>15.3g}{r.mfu(peak):>8.1%}"
        )
    print(f"BLT mean patch size {blt.unit_size:.2f} bytes; baseline {baseline.unit_size:.2f} bytes per token")
    for k, v in ratios.items():
        print(f"{k.replace('_', ' ')}: {v:.2f}")


if __name__ == "__main__":
    main()
