"""Entropy throughput of an entropy model on the CPU: batched vs streaming, bytes/s and ratios from one run.

    python bench/patcher.py [--data FILE] [--config configs/tiny.yaml | --model DIR | --dim 64 ...]
                            [--batch 8] [--seq-len 1024] [--stream-bytes 1024] [--repeats 3] [--threads N]

batched:    ``EntropyModel.entropies`` on [batch, seq_len] windows of the text (one pass per window).
streaming:  ``StreamingPatcher.push``, one byte at a time with the windowed KV cache, 1 row and ``batch``
            rows in lockstep (batched generation). Per-byte time of the first and the last quarter of the
            stream shows the cost does not grow with the prefix once the cache is full (O(window)).
The weights are random unless --model is given: throughput does not depend on them.
"""

from __future__ import annotations

import argparse
import os
import random
import time

import torch

from blt.config import EntropyModelConfig, PatchingConfig, from_dict, load_yaml
from blt.patcher import EntropyModel, StreamingPatcher
from blt.tokenizer import encode

WORDS = ["the", "of", "and", "to", "in", "is", "that", "it", "was", "for", "on", "are", "as", "with", "his", "they", "be", "at", "one", "have", "this", "from", "or", "had", "by"]


def load_text(path: str | None, n_bytes: int) -> bytes:
    if path is not None:
        if not os.path.isfile(path):
            raise SystemExit(f"--data: file not found: {path}")
        with open(path, "rb") as f:
            data = f.read(n_bytes)
        if len(data) < n_bytes:
            raise SystemExit(f"{path} has {len(data)} bytes, the benchmark needs {n_bytes}")
        return data
    rng = random.Random(0)
    text = " ".join(rng.choice(WORDS) for _ in range(n_bytes // 2))
    return text.encode()[:n_bytes]


def build_model(args: argparse.Namespace) -> EntropyModel:
    if args.model:
        return EntropyModel.from_pretrained(args.model)
    if args.config:
        section = load_yaml(args.config).get("entropy")
        if not isinstance(section, dict):
            raise SystemExit(f"{args.config} has no `entropy` section")
        config = from_dict(EntropyModelConfig, section, prefix="entropy.")
    else:
        config = EntropyModelConfig(dim=args.dim, n_layers=args.layers, n_heads=args.heads, window=args.window,
                                    max_seq_len=max(args.seq_len, args.stream_bytes))
    torch.manual_seed(0)
    return EntropyModel(config).eval()


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def stream(model: EntropyModel, ids: torch.Tensor) -> list[float]:
    """Seconds per pushed byte column of ids [B, T]."""
    patcher = StreamingPatcher(PatchingConfig(), model, batch_size=ids.shape[0])
    times = []
    for t in range(ids.shape[1]):
        start = time.perf_counter()
        patcher.push(ids[:, t])
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", help="text file to read bytes from (default: generated English-like text)")
    p.add_argument("--config", help="YAML file whose `entropy` section shapes the model")
    p.add_argument("--model", help="entropy model directory instead of a random model")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--stream-bytes", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args()
    if min(args.batch, args.seq_len, args.repeats) < 1 or args.stream_bytes < 4:
        p.error("--batch, --seq-len and --repeats must be >= 1 and --stream-bytes >= 4 (quarters of the stream)")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = build_model(args)
    c = model.config
    n_params = sum(t.numel() for t in model.parameters())
    print(f"entropy model: dim {c.dim}, {c.n_layers} layers, {c.n_heads} heads, window {c.window}, "
          f"{n_params / 1e6:.2f}M params; torch threads {torch.get_num_threads()}")

    data = load_text(args.data, args.batch * args.seq_len)
    rows = [encode(data[i * args.seq_len:(i + 1) * args.seq_len])[: args.seq_len] for i in range(args.batch)]
    ids = torch.tensor(rows)  # [batch, seq_len]
    seconds = best_time(lambda: model.entropies(ids), args.repeats)
    batched = ids.numel() / seconds

    one = torch.tensor([encode(data[: args.stream_bytes])[: args.stream_bytes]])
    many = ids[:, : args.stream_bytes]
    stream(model, one[:, :64])  # warm-up
    times_one = stream(model, one)
    times_many = stream(model, many)
    streaming_one = one.numel() / sum(times_one)
    streaming_many = many.numel() / sum(times_many)
    q = len(times_one) // 4
    first, last = sum(times_one[:q]) / q, sum(times_one[-q:]) / q

    print(f"batched    [{args.batch} x {args.seq_len}]          {batched:12,.0f} bytes/s")
    print(f"streaming  1 row, {args.stream_bytes} bytes        {streaming_one:12,.0f} bytes/s")
    print(f"streaming  {args.batch} rows in lockstep          {streaming_many:12,.0f} bytes/s")
    print(f"batched / streaming (1 row)            {batched / streaming_one:12.1f}x")
    print(f"batched / streaming ({args.batch} rows)           {batched / streaming_many:12.1f}x")
    print(f"streaming per byte: first quarter {first * 1e3:.3f} ms, last quarter {last * 1e3:.3f} ms "
          f"(ratio {last / first:.2f})")


if __name__ == "__main__":
    main()
