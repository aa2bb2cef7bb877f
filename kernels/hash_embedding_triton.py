"""Triton kernels of the hash n-gram embedding (forward and backward); see :mod:`blt.kernels.hash_embedding`.

One program owns a block of bytes and a block of embedding columns. It loads the byte rows, then for every
hash function rolls the hash through the n-gram sizes (one int64 multiply-add per size, wrapping exactly as
the reference's int64 tensors do) and adds each table's row the moment its size is reached. The backward
kernel walks the same hashes and atomically adds the output gradient into the byte and hash tables.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from blt.patch_ops import HASH_PRIMES


@triton.jit
def _rolled_row(ids_ptr, rows, t, rmask, h, prime, n):
    """Extend the (n-1)-gram hashes ``h`` of positions ``rows`` to n-grams (id 0 before the start)."""
    back = t - (n - 1)
    older = tl.load(ids_ptr + rows - (n - 1), mask=rmask & (back >= 0), other=0)
    return older + prime * h


@triton.jit
def _floor_mod(h, m):
    r = h % m  # Triton's % truncates toward zero; the reference's remainder is a floor modulo
    return tl.where(r < 0, r + m, r)


@triton.jit
def _hash_embedding_fwd(
    ids_ptr,
    byte_w_ptr,
    hash_w_ptr,
    primes_ptr,
    sizes_ptr,
    out_ptr,
    N,
    T,
    D,
    n_functions,
    n_sizes,
    hash_vocab,
    MAX_N: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)  # flat byte index b * T + t
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    rmask, cmask = rows < N, cols < D
    mask = rmask[:, None] & cmask[None, :]
    t = rows % T
    ids = tl.load(ids_ptr + rows, mask=rmask, other=0)
    acc = tl.load(byte_w_ptr + ids[:, None] * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    for f in range(n_functions):
        prime = tl.load(primes_ptr + f)
        h = tl.zeros([BLOCK_T], dtype=tl.int64)
        for n in range(1, MAX_N + 1):
            h = _rolled_row(ids_ptr, rows, t, rmask, h, prime, n)
            for s in range(n_sizes):
                if tl.load(sizes_ptr + s) == n:
                    row = _floor_mod(h, hash_vocab) + (f * n_sizes + s) * hash_vocab
                    acc += tl.load(hash_w_ptr + row[:, None] * D + cols[None, :], mask=mask, other=0.0).to(
                        tl.float32
                    )
    tl.store(out_ptr + rows[:, None] * D + cols[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _hash_embedding_bwd(
    ids_ptr,
    grad_ptr,
    grad_byte_ptr,
    grad_hash_ptr,
    primes_ptr,
    sizes_ptr,
    N,
    T,
    D,
    n_functions,
    n_sizes,
    hash_vocab,
    MAX_N: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BYTE_GRAD: tl.constexpr,
    HASH_GRAD: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    rmask, cmask = rows < N, cols < D
    mask = rmask[:, None] & cmask[None, :]
    t = rows % T
    ids = tl.load(ids_ptr + rows, mask=rmask, other=0)
    g = tl.load(grad_ptr + rows[:, None] * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if BYTE_GRAD:
        tl.atomic_add(grad_byte_ptr + ids[:, None] * D + cols[None, :], g, mask=mask)
    if HASH_GRAD:
        for f in range(n_functions):
            prime = tl.load(primes_ptr + f)
            h = tl.zeros([BLOCK_T], dtype=tl.int64)
            for n in range(1, MAX_N + 1):
                h = _rolled_row(ids_ptr, rows, t, rmask, h, prime, n)
                for s in range(n_sizes):
                    if tl.load(sizes_ptr + s) == n:
                        row = _floor_mod(h, hash_vocab) + (f * n_sizes + s) * hash_vocab
                        tl.atomic_add(grad_hash_ptr + row[:, None] * D + cols[None, :], g, mask=mask)


def _launch_shape(N: int, D: int) -> tuple[tuple[int, int], int, int]:
    block_t, block_d = 32, min(128, triton.next_power_of_2(D))
    return (triton.cdiv(N, block_t), triton.cdiv(D, block_d)), block_t, block_d


class _TritonHashEmbedding(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ids, byte_weight, hash_weight, ngram_sizes, n_functions, hash_vocab):
        B, T = ids.shape
        D = byte_weight.shape[1]
        ids = ids.long().contiguous()
        device = ids.device
        primes = torch.tensor(
            [HASH_PRIMES[f % len(HASH_PRIMES)] for f in range(n_functions)] or [0], device=device
        )
        sizes = torch.tensor(list(ngram_sizes) or [0], dtype=torch.long, device=device)
        spec = (n_functions if ngram_sizes else 0, len(ngram_sizes), hash_vocab)
        max_n = max(ngram_sizes, default=1)
        dtype = torch.promote_types(byte_weight.dtype, hash_weight.dtype)
        out = torch.empty(B, T, D, dtype=dtype, device=device)
        grid, block_t, block_d = _launch_shape(B * T, D)
        _hash_embedding_fwd[grid](
            ids,
            byte_weight.contiguous(),
            hash_weight.contiguous(),
            primes,
            sizes,
            out,
            B * T,
            T,
            D,
            *spec,
            MAX_N=max_n,
            BLOCK_T=block_t,
            BLOCK_D=block_d,
        )
        ctx.save_for_backward(ids, primes, sizes)
        ctx.spec, ctx.max_n = spec, max_n
        ctx.weights = (byte_weight.shape, byte_weight.dtype, hash_weight.shape, hash_weight.dtype)
        return out

    @staticmethod
    def backward(ctx, grad):
        ids, primes, sizes = ctx.saved_tensors
        byte_shape, byte_dtype, hash_shape, hash_dtype = ctx.weights
        B, T = ids.shape
        D = byte_shape[1]
        need_byte, need_hash = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        # atomics accumulate in float32 whatever the table dtype
        grad_byte = torch.zeros(byte_shape if need_byte else (1,), dtype=torch.float32, device=ids.device)
        grad_hash = torch.zeros(hash_shape if need_hash else (1,), dtype=torch.float32, device=ids.device)
        grid, block_t, block_d = _launch_shape(B * T, D)
        _hash_embedding_bwd[grid](
            ids,
            grad.contiguous(),
            grad_byte,
            grad_hash,
            primes,
            sizes,
            B * T,
            T,
            D,
            *ctx.spec,
            MAX_N=ctx.max_n,
            BLOCK_T=block_t,
            BLOCK_D=block_d,
            BYTE_GRAD=need_byte,
            HASH_GRAD=need_hash,
        )
        return (
            None,
            grad_byte.to(byte_dtype) if need_byte else None,
            grad_hash.to(hash_dtype) if need_hash else None,
            None,
            None,
            None,
        )


def triton_hash_embedding(
    ids, byte_weight, hash_weight, ngram_sizes, n_functions, hash_vocab
) -> torch.Tensor:
    """ids [B, T] -> [B, T, D]; inputs already validated by :func:`blt.kernels.hash_embedding`."""
    return _TritonHashEmbedding.apply(ids, byte_weight, hash_weight, ngram_sizes, n_functions, hash_vocab)
