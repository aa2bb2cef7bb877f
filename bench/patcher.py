"""Entropy throughput of an entropy model on the CPU: batched vs streaming, bytes/s and ratios from one run.

    python bench/patcher.py [--text_file FILE] [--config configs/tiny.yaml | --model DIR | --entropy.dim 64 ...]
                            [--batch 8] [--seq_len 1024] [--stream_bytes 1024] [--repeats 3] [--threads N]

batched:    ``EntropyModel.entropies`` on [batch, seq_len] windows of the text (one pass per window).
streaming:  ``StreamingPatcher.push``, one byte at a time with the windowed KV cache, 1 row and ``batch``
            rows in lockstep (batched generation). Per-byte time of the first and the last quarter of the
            stream shows the cost does not grow with the prefix once the cache is full (O(window)).
The weights are random unless --model is given: throughput does not depend on them. The random model is the
``entropy`` section (of a ``--config`` run file, or ``--entropy.*`` flags) with a default width of 64.
"""

from __future__ import annotations

import os
import random
import sys
import time

import torch
from jsonargparse import Namespace

from blt import cli
from blt.config import EntropyModelConfig, PatchingConfig
from blt.patcher import EntropyModel, StreamingPatcher
from blt.tokenizer import encode

WORDS = ["the", "of", "and", "to", "in", "is", "that", "it", "was", "for", "on", "are", "as", "with", "his", "they", "be", "at", "one", "have", "this", "from", "or", "had", "by"]


def load_text(path: str | None, n_bytes: int) -> bytes:
    if path is not None:
        if not os.path.isfile(path):
            raise ValueError(f"--text_file: file not found: {path}")
        with open(path, "rb") as f:
            data = f.read(n_bytes)
        if len(data) < n_bytes:
            raise ValueError(f"{path} has {len(data)} bytes, the benchmark needs {n_bytes}")
        return data
    rng = random.Random(0)
    text = " ".join(rng.choice(WORDS) for _ in range(n_bytes // 2))
    return text.encode()[:n_bytes]


def build_model(args: Namespace) -> EntropyModel:
    if args.model:
        return EntropyModel.from_pretrained(args.model)
    torch.manual_seed(0)
    return EntropyModel(cli.section(args, "entropy", EntropyModelConfig)).eval()


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


def build_parser():
    p = cli.new_parser("bench/patcher.py", __doc__.split("\n")[0])
    p.add_argument("--text_file", type=str, default=None, help="text file to read bytes from (default: generated English-like text)")
    p.add_argument("--model", type=str, default=None, help="entropy model directory instead of a random model")
    p.add_argument("--batch", type=int, default=8, help="rows of the batched pass and of lockstep streaming")
    p.add_argument("--seq_len", type=int, default=1024, help="bytes per row of the batched pass")
    p.add_argument("--stream_bytes", type=int, default=1024, help="bytes pushed one at a time")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats of the batched pass (the best counts)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    cli.add_section(p, "entropy", EntropyModelConfig, help="shape of the random entropy model")
    p.set_defaults({"entropy.dim": 64})
    cli.add_unread_sections(p, [s for s in cli.RUN_SECTIONS if s != "entropy"])
    return p


def bench(argv) -> None:
    args = cli.parse(build_parser(), argv)
    if min(args.batch, args.seq_len, args.repeats) < 1 or args.stream_bytes < 4:
        raise ValueError("--batch, --seq_len and --repeats must be >= 1 and --stream_bytes >= 4 (quarters of the stream)")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = build_model(args)
    c = model.config
    n_params = sum(t.numel() for t in model.parameters())
    print(f"entropy model: dim {c.dim}, {c.n_layers} layers, {c.n_heads} heads, window {c.window}, "
          f"{n_params / 1e6:.2f}M params; torch threads {torch.get_num_threads()}")

    data = load_text(args.text_file, args.batch * args.seq_len)
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
    sys.exit(cli.main("bench/patcher.py", bench))
