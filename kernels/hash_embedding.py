"""Hash n-gram embedding without the [B, T, n_tables] row indices or a [B, T, n_tables, D] gather.

The reference (:func:`blt.patch_ops.hash_embedding`) builds every table's row indices first and keeps them
for the backward pass. Here the hashes are rolled on the fly: for one hash function, the hash of the n-gram
ending at t extends the (n-1)-gram's hash by one older id,

    H_n(t) = ids[t - n + 1] + prime * H_(n-1)(t),      H_0 = 0,

so all n-gram sizes of a function cost one multiply-add per size and byte, and each table's rows are added
into the output as soon as they are known. The backward pass recomputes the hashes (cheap integer work) and
accumulates the output gradient into the table rows, so only ``ids`` is saved.

A short input without gradients (a decoding step: the newest id and the ids its n-grams reach back to) is
bound by the number of ops, not by memory: it gets every table's hash as one product of its id windows with
the powers of the primes, and one gather for all tables. Both ways give bit-identical embeddings.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from blt import patch_ops
from blt.kernels.dispatch import choose
from blt.patch_ops import HASH_PRIMES, wrap_int64
from blt.validation import checks_values

SHORT_POSITIONS = 64  # inputs of at most this many positions (and no gradient) take the short path


def table_rows(
    ids: torch.Tensor, ngram_sizes: list[int], n_functions: int, hash_vocab: int
) -> Iterator[torch.Tensor]:
    """Row indices [B, T] into the concatenated table, one table at a time (each table exactly once)."""
    ids = ids.long()
    sizes = list(ngram_sizes)
    for f in range(n_functions):
        prime = HASH_PRIMES[f % len(HASH_PRIMES)]
        h = torch.zeros_like(ids)
        for n in range(1, max(sizes, default=0) + 1):
            shift = min(n - 1, ids.shape[1])
            older = F.pad(ids[:, : ids.shape[1] - shift], (shift, 0))  # ids[t - n + 1], id 0 before the start
            h = older + prime * h  # int64 wraps exactly like the reference's products
            for i, size in enumerate(sizes):
                if size == n:
                    yield torch.remainder(h, hash_vocab) + (f * len(sizes) + i) * hash_vocab


def _coefficients(ngram_sizes: tuple[int, ...], n_functions: int, hash_vocab: int, device: torch.device):
    """Powers [N, n_tables] such that window @ powers is every table's hash, N = the longest n-gram, where
    window column c holds ids[t - N + 1 + c]; and each table's first row in the concatenated table.
    Made once per spec and device in eager code; compiled code traces them into constants once (dynamo
    would ignore a cache and warn that it does)."""
    if torch.compiler.is_compiling():
        return _make_coefficients(ngram_sizes, n_functions, hash_vocab, device)
    return _cached_coefficients(ngram_sizes, n_functions, hash_vocab, device)


def _make_coefficients(ngram_sizes: tuple[int, ...], n_functions: int, hash_vocab: int, device: torch.device):
    N = max(ngram_sizes)
    powers = [
        [wrap_int64(prime ** (c - N + n)) if c >= N - n else 0 for c in range(N)]
        for prime in (HASH_PRIMES[f % len(HASH_PRIMES)] for f in range(n_functions))
        for n in ngram_sizes
    ]
    offsets = torch.arange(len(powers), device=device) * hash_vocab
    return torch.tensor(powers, dtype=torch.long, device=device).T.contiguous(), offsets


_cached_coefficients = functools.cache(_make_coefficients)


def _short_embedding(ids, byte_weight, hash_weight, ngram_sizes, n_functions, hash_vocab) -> torch.Tensor:
    """The forward of a short input: products [B, T, N, n_tables] and one [B, T, n_tables, D] gather."""
    powers, offsets = _coefficients(ngram_sizes, n_functions, hash_vocab, ids.device)
    windows = F.pad(ids.long(), (powers.shape[0] - 1, 0)).unfold(1, powers.shape[0], 1)  # [B, T, N]
    hashes = (windows.unsqueeze(-1) * powers).sum(2)  # [B, T, n_tables], wrapping like the reference
    rows = F.embedding(torch.remainder(hashes, hash_vocab) + offsets, hash_weight)  # [B, T, n_tables, D]
    x = F.embedding(ids, byte_weight).to(torch.promote_types(byte_weight.dtype, hash_weight.dtype))
    for i in range(rows.shape[2]):  # table by table, in the reference's order of additions
        x = x + rows[:, :, i]
    return x


class _HashEmbedding(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ids, byte_weight, hash_weight, ngram_sizes, n_functions, hash_vocab):
        ctx.save_for_backward(ids)
        ctx.spec = (ngram_sizes, n_functions, hash_vocab)
        ctx.weights = (byte_weight.shape, byte_weight.dtype, hash_weight.shape, hash_weight.dtype)
        dtype = torch.promote_types(byte_weight.dtype, hash_weight.dtype)
        x = F.embedding(ids, byte_weight).to(dtype)  # [B, T, D]
        for rows in table_rows(ids, ngram_sizes, n_functions, hash_vocab):
            x += F.embedding(rows, hash_weight)
        return x

    @staticmethod
    def backward(ctx, grad):
        (ids,) = ctx.saved_tensors
        byte_shape, byte_dtype, hash_shape, hash_dtype = ctx.weights
        g = grad.reshape(-1, grad.shape[-1])  # [B*T, D]
        grad_byte = grad_hash = None
        if ctx.needs_input_grad[1]:
            grad_byte = g.new_zeros(byte_shape).index_add_(0, ids.reshape(-1), g).to(byte_dtype)
        if ctx.needs_input_grad[2]:
            grad_hash = g.new_zeros(hash_shape)
            for rows in table_rows(ids, *ctx.spec):
                grad_hash.index_add_(0, rows.reshape(-1), g)
            grad_hash = grad_hash.to(hash_dtype)
        return None, grad_byte, grad_hash, None, None, None


def check_hash_inputs(ids, byte_weight, hash_weight, ngram_sizes, n_functions, hash_vocab) -> None:
    if ids.dim() != 2 or ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"ids must be an integer tensor [B, T], got {ids.dtype} of shape {tuple(ids.shape)}")
    if ids.device != byte_weight.device or hash_weight.device != byte_weight.device:
        raise ValueError(
            f"ids ({ids.device}), byte_weight ({byte_weight.device}) and hash_weight ({hash_weight.device}) "
            "must be on one device"
        )
    if ids.numel() and checks_values(None, ids):  # a host read: on the CPU only, never a device sync
        low, high = torch.stack(torch.aminmax(ids)).tolist()  # one sync
        if low < 0 or high >= byte_weight.shape[0]:
            bad = low if low < 0 else high
            raise ValueError(f"id {bad} is outside the byte embedding's 0..{byte_weight.shape[0] - 1}")
    if min(ngram_sizes, default=1) < 1 or n_functions < 0 or hash_vocab < 1:
        raise ValueError(
            f"bad hash spec: ngram_sizes={ngram_sizes}, n_functions={n_functions}, hash_vocab={hash_vocab}"
        )
    n_rows = n_functions * len(ngram_sizes) * hash_vocab
    if n_rows and tuple(hash_weight.shape) != (n_rows, byte_weight.shape[1]):
        raise ValueError(
            f"hash_weight has shape {tuple(hash_weight.shape)}, expected [n_tables * hash_vocab, D] = "
            f"[{n_rows}, {byte_weight.shape[1]}]"
        )


def hash_embedding(
    ids: torch.Tensor,
    byte_weight: torch.Tensor,
    hash_weight: torch.Tensor,
    ngram_sizes: list[int],
    n_functions: int,
    hash_vocab: int,
    *,
    impl: str | None = None,
) -> torch.Tensor:
    """Byte embedding plus the sum of its hash n-gram embeddings: ids [B, T] -> [B, T, D].

    Same semantics as :func:`blt.patch_ops.hash_embedding`; ``impl`` picks the implementation
    (see :mod:`blt.kernels.dispatch`).
    """
    path = choose("hash_embedding", byte_weight, impl)
    if path == "reference":
        return patch_ops.hash_embedding(ids, byte_weight, hash_weight, ngram_sizes, n_functions, hash_vocab)
    check_hash_inputs(ids, byte_weight, hash_weight, ngram_sizes, n_functions, hash_vocab)
    spec = (tuple(ngram_sizes), n_functions, hash_vocab)
    if path == "triton":
        from blt.kernels.hash_embedding_triton import triton_hash_embedding

        return triton_hash_embedding(ids, byte_weight, hash_weight, *spec)
    needs_grad = torch.is_grad_enabled() and (byte_weight.requires_grad or hash_weight.requires_grad)
    if ids.numel() <= SHORT_POSITIONS and spec[0] and spec[1] and not needs_grad:
        return _short_embedding(ids, byte_weight, hash_weight, *spec)
    return _HashEmbedding.apply(ids, byte_weight, hash_weight, *spec)
