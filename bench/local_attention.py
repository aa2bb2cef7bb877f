"""Peak memory and time of the local encoder's forward + backward over long byte contexts: windowed attention
chunk by chunk (``chunked``, the path long inputs take now) vs one SDPA call with the dense [T, T] mask
(``dense``, the path before; forced here by raising ``blt.attention.CHUNKED_FROM``), and on CUDA also flex
attention with the shape's block mask (``flex``).

    python bench/local_attention.py [--lengths 4096 8192 16384 24576] [--window 512] [--dim 256]
                                    [--heads 4] [--layers 1] [--device cpu] [--paths dense chunked] [--json]

Every (length, path) runs in a fresh subprocess, so that one's memory cannot hide in another's: it builds a
LocalEncoder (the released 1B encoder's layout: hash n-grams 3..8, one layer, 512-byte window; the width is
``--dim``, and its hash tables have 1000 rows, since their size has nothing to do with attention), runs one
short warm-up step, then one forward + backward of one row of T random bytes. CPU peak: the process's
high-water RSS (VmHWM, reset through /proc/self/clear_refs just before the measured step) minus its RSS at
that moment, so weights, inputs and the allocator's cache from the warm-up are not counted; CUDA peak:
``torch.cuda.max_memory_allocated`` above the memory allocated before the step. One thread on the CPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
PATHS = {"cpu": ("dense", "chunked"), "cuda": ("dense", "chunked", "flex")}


def status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_rss() -> None:
    """Make VmHWM the current RSS (Linux: writing 5 to clear_refs resets the high-water mark)."""
    Path("/proc/self/clear_refs").write_text("5")


def encoder(args):
    from blt.config import LocalEncoderConfig
    from blt.model import LocalEncoder

    config = LocalEncoderConfig(
        dim=args.dim,
        n_heads=args.heads,
        n_layers=args.layers,
        ffn_dim=None,
        window=args.window,
        max_seq_len=max(args.lengths),
        hash_ngram_sizes=[3, 4, 5, 6, 7, 8],
        hash_vocab=1000,
        hash_functions=1,
    )
    return LocalEncoder(config, vocab_size=260, k_rep=2, backend="flex" if args.path == "flex" else "sdpa")


def step(model, T: int, device) -> None:
    ids = torch.randint(4, 260, (1, T), generator=torch.Generator().manual_seed(T)).to(device)
    h = model(ids)
    h.float().square().mean().backward()
    model.zero_grad(set_to_none=True)


def worker(args) -> None:
    """One (length, path): prints {"peak_mib", "seconds"} as JSON."""
    import blt.attention as attention

    torch.set_num_threads(1)
    torch.manual_seed(0)
    device = torch.device(args.device)
    warm_up = attention.CHUNKED_FROM * attention.window_chunk(args.window)  # chunked, where chunks are on
    if args.path == "dense":
        attention.CHUNKED_FROM = 1 << 40  # every input takes the one-mask path, as before
    model = encoder(args).to(device)
    T = args.lengths[0]
    step(model, min(T, warm_up), device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        reset_peak_rss()
        before = status_kib("VmRSS") * 1024
    start = time.perf_counter()
    step(model, T, device)
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if cuda else status_kib("VmHWM") * 1024
    print(json.dumps({"peak_mib": (peak - before) / 2**20, "seconds": seconds}))


def run(args, T: int, path: str) -> dict:
    command = [sys.executable, __file__, "--worker", "--path", path, "--lengths", str(T)]
    for name in ("window", "dim", "heads", "layers", "device"):
        command += [f"--{name}", str(getattr(args, name))]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        return {"T": T, "path": path, "error": done.stderr.strip().splitlines()[-1:]}
    return {"T": T, "path": path, **json.loads(done.stdout.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384, 24576])
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--paths", nargs="+", help="a subset of dense, chunked (and flex on CUDA)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--path", default="chunked", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    paths = args.paths or PATHS["cuda" if args.device.startswith("cuda") else "cpu"]
    rows = [run(args, T, path) for T in args.lengths for path in paths]
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(
        f"local encoder fwd+bwd, 1 row, dim {args.dim}, {args.heads} heads, {args.layers} layer(s), "
        f"window {args.window}, {args.device}"
    )
    print(f"{'T':>6} {'path':>8} {'peak MiB':>9} {'MiB/kB':>7} {'seconds':>8}")
    for r in rows:
        if "error" in r:
            print(f"{r['T']:>6} {r['path']:>8}  failed: {r['error']}")
            continue
        per_kb = r["peak_mib"] / (r["T"] / 1024)
        print(f"{r['T']:>6} {r['path']:>8} {r['peak_mib']:>9.0f} {per_kb:>7.1f} {r['seconds']:>8.2f}")
    by = {(r["T"], r["path"]): r for r in rows if "error" not in r}
    for T in args.lengths:
        dense, chunked = by.get((T, "dense")), by.get((T, "chunked"))
        if dense and chunked:
            print(
                f"T={T}: dense / chunked peak {dense['peak_mib'] / chunked['peak_mib']:.1f}x, "
                f"time {dense['seconds'] / chunked['seconds']:.1f}x"
            )


if __name__ == "__main__":
    main()
