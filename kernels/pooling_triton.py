"""Triton kernels of patch pooling (forward and backward); see :mod:`blt.kernels.pooling`.

One program per (patch, block of columns) walks the patch's bytes through :class:`PatchLayout`. Max pooling
also counts how many bytes reach the maximum, so the backward pass can split the gradient evenly among ties
as ``scatter_reduce`` does. Every byte belongs to at most one patch, so the backward writes are plain stores.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from blt.kernels.layout import patch_layout


@triton.jit
def _patch_bytes(order_ptr, h_ptr, b, T, D, start, i, count, cols, cmask, other, BLOCK_L: tl.constexpr):
    """Positions [BLOCK_L], their validity and states [BLOCK_L, BLOCK_D] (float32) of bytes i.. of a patch."""
    offs = i + tl.arange(0, BLOCK_L)
    lmask = offs < count
    pos = tl.load(order_ptr + b * T + start + offs, mask=lmask, other=0)
    mask = lmask[:, None] & cmask[None, :]
    x = tl.load(h_ptr + (b * T + pos)[:, None] * D + cols[None, :], mask=mask, other=other).to(tl.float32)
    return pos, mask, x


# fmt: off
@triton.jit
def _pool_fwd(h_ptr, order_ptr, starts_ptr, counts_ptr, out_ptr, ties_ptr, T, P, D,
              IS_MAX: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    # fmt: on
    bp = tl.program_id(0)  # b * P + p
    b = bp // P
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    start, count = tl.load(starts_ptr + bp), tl.load(counts_ptr + bp)
    if IS_MAX:
        acc = tl.full([BLOCK_D], float("-inf"), tl.float32)
        ties = tl.zeros([BLOCK_D], dtype=tl.float32)
        for i in range(0, count, BLOCK_L):
            _, mask, x = _patch_bytes(
                order_ptr, h_ptr, b, T, D, start, i, count, cols, cmask, float("-inf"), BLOCK_L
            )
            block_max = tl.max(x, 0)
            hits = tl.sum(tl.where(mask & (x == block_max[None, :]), 1.0, 0.0), 0)
            ties = tl.where(block_max > acc, hits, tl.where(block_max == acc, ties + hits, ties))
            acc = tl.maximum(acc, block_max)
        acc = tl.where(count > 0, acc, 0.0)
        tl.store(ties_ptr + bp * D + cols, ties, mask=cmask)
    else:
        acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        for i in range(0, count, BLOCK_L):
            _, _, x = _patch_bytes(order_ptr, h_ptr, b, T, D, start, i, count, cols, cmask, 0.0, BLOCK_L)
            acc += tl.sum(x, 0)
        acc = acc / tl.maximum(count, 1).to(tl.float32)
    tl.store(out_ptr + bp * D + cols, acc.to(out_ptr.dtype.element_ty), mask=cmask)


# fmt: off
@triton.jit
def _pool_bwd(h_ptr, out_ptr, ties_ptr, grad_out_ptr, order_ptr, starts_ptr, counts_ptr, grad_h_ptr, T, P, D,
              IS_MAX: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    # fmt: on
    bp = tl.program_id(0)
    b = bp // P
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    start, count = tl.load(starts_ptr + bp), tl.load(counts_ptr + bp)
    g = tl.load(grad_out_ptr + bp * D + cols, mask=cmask, other=0.0).to(tl.float32)
    if IS_MAX:
        best = tl.load(out_ptr + bp * D + cols, mask=cmask, other=0.0).to(tl.float32)
        share = g / tl.maximum(tl.load(ties_ptr + bp * D + cols, mask=cmask, other=1.0), 1.0)
    else:
        share = g / tl.maximum(count, 1).to(tl.float32)
    for i in range(0, count, BLOCK_L):
        pos, mask, x = _patch_bytes(order_ptr, h_ptr, b, T, D, start, i, count, cols, cmask, 0.0, BLOCK_L)
        if IS_MAX:
            dx = tl.where(x == best[None, :], share[None, :], 0.0)
        else:
            dx = tl.zeros([BLOCK_L, BLOCK_D], dtype=tl.float32) + share[None, :]
        tl.store(
            grad_h_ptr + (b * T + pos)[:, None] * D + cols[None, :],
            dx.to(grad_h_ptr.dtype.element_ty),
            mask=mask,
        )


def _launch(B: int, P: int, D: int) -> tuple[tuple[int, int], dict[str, int]]:
    """Grid (one program per patch and column block) and block sizes."""
    block_d = min(128, triton.next_power_of_2(D))
    return (B * P, triton.cdiv(D, block_d)), {"BLOCK_L": 32, "BLOCK_D": block_d}


class _TritonPatchPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, patch_ids, num_patches, mode):
        B, T, D = h.shape
        ctx.mode = mode
        h = h.contiguous()
        layout = patch_layout(patch_ids, num_patches)
        out = torch.empty(B, num_patches, D, dtype=h.dtype, device=h.device)
        ties = torch.empty(B, num_patches, D, dtype=torch.float32, device=h.device) if mode == "max" else out
        grid, blocks = _launch(B, num_patches, D)
        if B * num_patches:
            _pool_fwd[grid](h, *layout, out, ties, T, num_patches, D, IS_MAX=mode == "max", **blocks)
        ctx.save_for_backward(h, out, ties, *layout)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        h, out, ties, *layout = ctx.saved_tensors
        B, T, D = h.shape
        P = out.shape[1]
        grad_h = torch.zeros_like(h)
        grid, blocks = _launch(B, P, D)
        if B * P:
            grads = (grad_out.contiguous(), *layout, grad_h)
            _pool_bwd[grid](h, out, ties, *grads, T, P, D, IS_MAX=ctx.mode == "max", **blocks)
        return grad_h, None, None, None


def triton_patch_pool(h: torch.Tensor, patch_ids: torch.Tensor, num_patches: int, mode: str) -> torch.Tensor:
    """h [B, T, D] -> [B, num_patches, D]; inputs already validated by :func:`blt.kernels.patch_pool`."""
    return _TritonPatchPool.apply(h, patch_ids, num_patches, mode)
