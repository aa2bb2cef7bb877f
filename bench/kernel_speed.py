"""Benchmark of the fused byte<->patch operations (blt.kernels) against dense / plain implementations.

On the CPU: the PyTorch paths (what CPU users run) vs the plain references at growing sequence lengths.
The references of the two patch cross-attentions are dense-mask implementations ([patches x bytes] scores)
and pooling is compared with a dense mask-matmul mean, so their cost grows quadratically; ours must not.
On CUDA: the Triton kernels vs the same references at BLT-1B shapes (local dim 1024, 16 heads, k=2, 6 hash
tables of 500002 rows), with time and peak memory.

    python bench/kernel_speed.py                      # CPU, small widths, T = 512 .. 8192
    python bench/kernel_speed.py --device cuda        # GPU, BLT-1B shapes, T = 2048 .. 8192
    python bench/kernel_speed.py --data /work/shared/corpora/jargon.txt   # real bytes instead of random ones
    python bench/kernel_speed.py --json               # one JSON object per row (what bench/gpu.py reads)

Patch lengths are drawn uniformly from 1..8 (mean 4.5 bytes, about the BLT paper's) with a fixed seed.
Times are the fastest of --reps runs (forward + backward, except the entropy: forward without gradients);
peak memory is what one run adds: CUDA allocator peak, or on the CPU the growth of the process's resident
set (Linux high-water mark, reset before the run).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from blt import kernels, patch_ops
from blt.patcher import entropy_from_logits

SHAPES = {  # per device: batch, local dim, heads, hash tables (n-gram sizes), rows per table, dtype
    "cpu": {
        "B": 1,
        "D": 128,
        "H": 4,
        "sizes": [3, 4, 5, 6, 7, 8],
        "hash_vocab": 8191,
        "dtype": torch.float32,
    },
    "cuda": {
        "B": 2,
        "D": 1024,
        "H": 16,
        "sizes": [3, 4, 5, 6, 7, 8],
        "hash_vocab": 500002,
        "dtype": torch.bfloat16,
    },
}
K_REP = 2
DEFAULT_LENGTHS = {"cpu": [512, 1024, 2048, 4096, 8192], "cuda": [2048, 4096, 8192]}
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def read_ids(path: str | None, B: int, T: int, g: torch.Generator) -> torch.Tensor:
    if path is None:
        return torch.randint(4, 260, (B, T), generator=g)
    data = Path(path).read_bytes()
    if len(data) < B * T:
        raise ValueError(f"{path} has {len(data)} bytes; need {B * T}")
    return torch.tensor(list(data[: B * T]), dtype=torch.long).view(B, T) + 4


def random_patch_ids(B: int, T: int, g: torch.Generator) -> tuple[torch.Tensor, int]:
    lengths = torch.randint(1, 9, (B, T), generator=g)  # more than enough patches; cut at T below
    ends = lengths.cumsum(1)
    n = int((ends < T).sum(1).max()) + 1
    lengths, ends = lengths[:, :n], ends[:, :n]
    lengths = torch.where(ends <= T, lengths, (T - (ends - lengths)).clamp(min=0))
    return patch_ops.patch_ids_from_lengths(lengths, T), n


def dense_mean_pool(h: torch.Tensor, patch_ids: torch.Tensor, num_patches: int, mode: str) -> torch.Tensor:
    """Mean pooling through a dense [B, P, T] membership mask (the quadratic way)."""
    mask = (torch.arange(num_patches, device=h.device)[None, :, None] == patch_ids[:, None, :]).to(h.dtype)
    return (mask @ h) / mask.sum(-1, keepdim=True).clamp(min=1)


def cases(shape: dict, B: int, T: int, device: str, ids: torch.Tensor, g: torch.Generator):
    """(name, ours, baseline, inputs, backward) for every operation at sequence length T."""
    D, H, dtype = shape["D"], shape["H"], shape["dtype"]
    Dh = D // H
    patch_ids, P = random_patch_ids(B, T, g)
    patch_ids, ids = patch_ids.to(device), ids.to(device)
    g_device = torch.Generator(device).manual_seed(T)  # BLT-1B hash tables are GBs: draw them on the device

    def leaf(*size):
        return torch.randn(*size, generator=g_device, device=device, dtype=dtype).requires_grad_()

    sizes, vocab = shape["sizes"], shape["hash_vocab"]
    hash_inputs = (ids, leaf(260, D), leaf(len(sizes) * vocab, D), sizes, 1, vocab)
    yield "hash_embedding", kernels.hash_embedding, patch_ops.hash_embedding, hash_inputs, True
    h = leaf(B, T, D)
    yield "patch_pool mean", kernels.patch_pool, dense_mean_pool, (h, patch_ids, P, "mean"), True
    enc = (leaf(B, H, P * K_REP, Dh), leaf(B, H, T, Dh), leaf(B, H, T, Dh), patch_ids, K_REP)
    yield "patch_query_attention", kernels.patch_query_attention, patch_ops.patch_query_attention, enc, True
    dec = (leaf(B, H, T, Dh), leaf(B, H, P * K_REP, Dh), leaf(B, H, P * K_REP, Dh), patch_ids, K_REP)
    yield "byte_query_attention", kernels.byte_query_attention, patch_ops.byte_query_attention, dec, True
    logits = torch.randn(B, T, 260, generator=g_device, device=device) * 3
    yield "entropy (no grad)", kernels.entropy_from_logits, entropy_from_logits, (logits,), False


def _proc_mb(key: str) -> float:
    return int(re.search(rf"{key}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024


def cpu_peak_mb(step: Callable) -> float:
    """Peak resident memory added by ``step`` (Linux: reset the high-water mark, run, read it back)."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    before = _proc_mb("VmRSS")
    step()
    return _proc_mb("VmHWM") - before


def measure(fn: Callable, inputs: tuple, backward: bool, reps: int, device: str) -> tuple[float, float]:
    """Fastest of ``reps`` runs of forward (+ backward) in ms (the minimum is the least disturbed by other
    processes on a shared machine) and the peak memory it adds in MB."""

    def step():
        if backward:
            out = fn(*inputs)
            out.float().square().mean().backward()
        else:
            with torch.no_grad():
                fn(*inputs)
        for x in inputs:
            if isinstance(x, torch.Tensor):
                x.grad = None

    step()  # warm-up (Triton compilation, allocator)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = cpu_peak_mb(step)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return min(times), peak


def measure_rows(
    device: str, lengths: list[int], reps: int, baseline_max: int, data: str | None = None
) -> Iterator[dict]:
    """One row per operation and sequence length: times in ms and peak memory in MB, ours and the
    baseline's (None past ``baseline_max``). bench/gpu.py takes the rows as they come."""
    shape = SHAPES[device]
    for T in lengths:
        g = torch.Generator().manual_seed(T)
        ids = read_ids(data, shape["B"], T, g)
        for name, ours, baseline, inputs, backward in cases(shape, shape["B"], T, device, ids, g):
            ours_ms, ours_mb = measure(ours, inputs, backward, reps, device)
            row = {"operation": name, "T": T, "ours_ms": ours_ms, "ours_peak_mb": ours_mb}
            row.update(baseline_ms=None, baseline_peak_mb=None, speedup=None)
            if baseline_max >= T:  # the quadratic baselines are skipped past --baseline-max
                base_ms, base_mb = measure(baseline, inputs, backward, reps, device)
                row.update(baseline_ms=base_ms, baseline_peak_mb=base_mb, speedup=base_ms / ours_ms)
            yield row


def table_row(row: dict) -> str:
    base = ["-", "-", "-"]
    if row["baseline_ms"] is not None:
        base = [f"{row['baseline_ms']:.1f}", f"{row['speedup']:.1f}x", f"{row['baseline_peak_mb']:.0f}"]
    cells = [row["operation"], str(row["T"]), f"{row['ours_ms']:.1f}", base[0], base[1]]
    return "| " + " | ".join([*cells, f"{row['ours_peak_mb']:.0f}", base[2]]) + " |"


TABLE_HEADER = (
    "| operation | T | ours ms | baseline ms | baseline / ours | ours peak MB | baseline peak MB |\n"
    "|---|---|---|---|---|---|---|"
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--lengths", type=int, nargs="+", help="sequence lengths (default: by device)")
    parser.add_argument(
        "--baseline-max", type=int, help="longest T for the quadratic baselines (default: by device)"
    )
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads (1: steadier on a shared machine)"
    )
    parser.add_argument("--data", help="a text file whose bytes are used as ids (default: random bytes)")
    parser.add_argument("--json", action="store_true", help="one JSON object per row instead of the table")
    args = parser.parse_args(argv)
    if args.reps < 1 or args.threads < 1 or any(T < 1 for T in args.lengths or []):
        parser.error("--reps, --threads and every --lengths value must be >= 1")
    if args.data is not None and not Path(args.data).is_file():
        parser.error(f"--data: file not found: {args.data}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here (the Triton kernels need one)")
    shape = SHAPES[args.device]
    prepare_memory_accounting()
    lengths = args.lengths or DEFAULT_LENGTHS[args.device]
    baseline_max = args.baseline_max or (4096 if args.device == "cpu" else 8192)
    torch.set_num_threads(args.threads)
    if not args.json:
        print(
            f"device={args.device} B={shape['B']} D={shape['D']} H={shape['H']} k_rep={K_REP} "
            f"dtype={shape['dtype']} threads={torch.get_num_threads()}"
        )
        print(TABLE_HEADER)
    for row in measure_rows(args.device, lengths, args.reps, baseline_max, args.data):
        print(json.dumps(row) if args.json else table_row(row), flush=True)


def prepare_memory_accounting() -> None:
    """glibc keeps freed blocks below a moving threshold in its heap, which hides later peaks from the RSS
    high-water mark: a fixed threshold makes every large tensor its own mapping."""
    ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 1 << 16)


if __name__ == "__main__":
    main()
