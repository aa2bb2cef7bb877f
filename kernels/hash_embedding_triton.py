"""Triton kernels of the hash n-gram embedding (forward and backward); see :mod:`blt.kernels.hash_embedding`.

One program owns a block of bytes and a block of embedding columns. It loads the byte rows, then for every
hash table (one per hash function and n-gram size) rolls the hash through sizes 1..n (one int64 multiply-add
per size, wrapping exactly as the reference's int64 tensors do) and adds that table's row. Each table rolls
its own hash: the few int64 loads this repeats are small beside the [BLOCK_T, BLOCK_D] row loads. The
backward kernel walks the same hashes and atomically adds the output gradient into the byte and hash tables.
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
def _hash_row(ids_ptr, primes_ptr, sizes_ptr, rows, t, rmask, k, n_sizes, hash_vocab):
    """Row of table k = f * n_sizes + s for the n-grams ending at ``rows``: hash function f over size s.
    Forward and backward walk the tables in the same order, so one helper keeps their hashes the same."""
    prime, n_max = tl.load(primes_ptr + k // n_sizes), tl.load(sizes_ptr + k % n_sizes)
    h = tl.zeros(rows.shape, dtype=tl.int64)
    for n in range(1, n_max + 1):
        h = _rolled_row(ids_ptr, rows, t, rmask, h, prime, n)
    return _floor_mod(h, hash_vocab) + k * hash_vocab


@triton.jit
def _byte_block(ids_ptr, N, T, D, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's byte rows (flat index b * T + t), columns, masks, positions t and byte ids."""
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    rmask, cmask = rows < N, cols < D
    ids = tl.load(ids_ptr + rows, mask=rmask, other=0)
    return rows, cols, rmask, rmask[:, None] & cmask[None, :], rows % T, ids


# fmt: off
@triton.jit
def _hash_embedding_fwd(ids_ptr, byte_w_ptr, hash_w_ptr, primes_ptr, sizes_ptr, out_ptr,
                        N, T, D, n_functions, n_sizes, hash_vocab,
                        BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    # fmt: on
    rows, cols, rmask, mask, t, ids = _byte_block(ids_ptr, N, T, D, BLOCK_T, BLOCK_D)
    acc = tl.load(byte_w_ptr + ids[:, None] * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    for k in range(n_functions * n_sizes):
        row = _hash_row(ids_ptr, primes_ptr, sizes_ptr, rows, t, rmask, k, n_sizes, hash_vocab)
        acc += tl.load(hash_w_ptr + row[:, None] * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + rows[:, None] * D + cols[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)


# fmt: off
@triton.jit
def _hash_embedding_bwd(ids_ptr, grad_ptr, grad_byte_ptr, grad_hash_ptr, primes_ptr, sizes_ptr,
                        N, T, D, n_functions, n_sizes, hash_vocab,
                        BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
                        BYTE_GRAD: tl.constexpr, HASH_GRAD: tl.constexpr):
    # fmt: on
    rows, cols, rmask, mask, t, ids = _byte_block(ids_ptr, N, T, D, BLOCK_T, BLOCK_D)
    g = tl.load(grad_ptr + rows[:, None] * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if BYTE_GRAD:
        tl.atomic_add(grad_byte_ptr + ids[:, None] * D + cols[None, :], g, mask=mask)
    if HASH_GRAD:
        for k in range(n_functions * n_sizes):
            row = _hash_row(ids_ptr, primes_ptr, sizes_ptr, rows, t, rmask, k, n_sizes, hash_vocab)
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
        dtype = torch.promote_types(byte_weight.dtype, hash_weight.dtype)
        out = torch.empty(B, T, D, dtype=dtype, device=device)
        grid, block_t, block_d = _launch_shape(B * T, D)
        w = (byte_weight.contiguous(), hash_weight.contiguous())
        sizes_spec = (B * T, T, D, *spec)
        _hash_embedding_fwd[grid](ids, *w, primes, sizes, out, *sizes_spec, BLOCK_T=block_t, BLOCK_D=block_d)
        ctx.save_for_backward(ids, primes, sizes)
        ctx.spec = spec
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
        grads = (grad.contiguous(), grad_byte, grad_hash)
        _hash_embedding_bwd[grid](
            ids, *grads, primes, sizes, B * T, T, D, *ctx.spec,
            BLOCK_T=block_t, BLOCK_D=block_d, BYTE_GRAD=need_byte, HASH_GRAD=need_hash,
        )  # fmt: skip
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
