"""Triton kernels of the softmax entropy and the boundary decision; see :mod:`blt.kernels.entropy`.

One program holds a block of rows of logits in registers, computes the entropy (and, for patching, whether
it exceeds the threshold) and writes one float (and one flag) per row: the probabilities never reach memory.
The backward kernel recomputes them from the logits.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _row_softmax(x_ptr, rows, cols, N, V):
    """Shifted logits x, probabilities p [BLOCK_R, BLOCK_V] and entropy [BLOCK_R] (float32)."""
    mask = (rows < N)[:, None] & (cols < V)[None, :]
    x = tl.load(x_ptr + rows[:, None] * V + cols[None, :], mask=mask, other=float("-inf")).to(tl.float32)
    top = tl.max(x, 1)
    x = x - tl.where(top == float("-inf"), 0.0, top)[:, None]  # rows past N are all -inf: keep them NaN-free
    e = tl.exp(x)
    z = tl.sum(e, 1)
    p = e / tl.where(z > 0, z, 1.0)[:, None]
    x = tl.where(p > 0, x, 0.0)  # ids of probability 0 (logit -inf) contribute nothing
    mean = tl.sum(p * x, 1)
    return x, p, mean, tl.log(tl.where(z > 0, z, 1.0)) - mean


@triton.jit
def _entropy_fwd(
    x_ptr,
    h_ptr,
    above_ptr,
    N,
    V,
    threshold,
    BOUNDARY: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    _, _, _, h = _row_softmax(x_ptr, rows, tl.arange(0, BLOCK_V), N, V)
    tl.store(h_ptr + rows, h, mask=rows < N)
    if BOUNDARY:
        tl.store(above_ptr + rows, (h > threshold).to(tl.int8), mask=rows < N)


@triton.jit
def _entropy_bwd(x_ptr, grad_ptr, dx_ptr, N, V, BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_V)
    x, p, mean, _ = _row_softmax(x_ptr, rows, cols, N, V)
    g = tl.load(grad_ptr + rows, mask=rows < N, other=0.0).to(tl.float32)
    dx = -g[:, None] * p * (x - mean[:, None])
    mask = (rows < N)[:, None] & (cols < V)[None, :]
    tl.store(dx_ptr + rows[:, None] * V + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=mask)


def _meta(V: int) -> dict[str, int]:
    block_v = triton.next_power_of_2(V)
    return {"BLOCK_R": max(1, min(16, 8192 // block_v)), "BLOCK_V": block_v}  # about 8K logits per program


class _TritonEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, threshold):
        V = logits.shape[-1]
        rows = logits.reshape(-1, V).contiguous()
        N = rows.shape[0]
        h = torch.empty(N, dtype=torch.float32, device=logits.device)
        above = torch.empty(N if threshold is not None else 1, dtype=torch.int8, device=logits.device)
        meta = _meta(V)
        if N:
            _entropy_fwd[(triton.cdiv(N, meta["BLOCK_R"]),)](
                rows,
                h,
                above,
                N,
                V,
                0.0 if threshold is None else threshold,
                BOUNDARY=threshold is not None,
                **meta,
            )
        ctx.save_for_backward(rows)
        ctx.shape = logits.shape
        ctx.mark_non_differentiable(above)
        return h.view(logits.shape[:-1]), above.view(
            logits.shape[:-1]
        ).bool() if threshold is not None else above

    @staticmethod
    def backward(ctx, grad, _):
        (rows,) = ctx.saved_tensors
        N, V = rows.shape
        dx = torch.empty_like(rows)
        meta = _meta(V)
        if N:
            _entropy_bwd[(triton.cdiv(N, meta["BLOCK_R"]),)](rows, grad.contiguous(), dx, N, V, **meta)
        return dx.view(ctx.shape), None


def triton_entropy(logits: torch.Tensor, threshold: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [..., V] -> (entropy [...] float32, H > threshold [...] bool; placeholder without threshold)."""
    return _TritonEntropy.apply(logits, threshold)
