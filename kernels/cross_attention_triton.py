"""Triton kernels of the patch cross-attentions, forward and backward; see blt.kernels.cross_attention.

Both directions run one program per (batch row, head, patch) over :class:`PatchLayout`, so a program only
ever touches its patch's bytes and its patch's k_rep rows: the work is linear in the bytes.

- patch -> bytes (encoder): flash-attention style online softmax of the k_rep queries over the patch's bytes
  in blocks; the log-sum-exp per query is kept for the backward pass, which recomputes the probabilities;
- byte -> patch (decoder): each byte's softmax over the k_rep rows is complete in registers.

Every byte belongs to at most one patch, so gradients of byte rows (encoder dk/dv, decoder dq) and of patch
rows are each written by exactly one program: plain stores, no atomics, deterministic.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from blt.kernels.layout import patch_layout


@triton.jit
def _rows(ptr, rows, d, rmask, dmask, Dh):
    """Rows ``rows`` [N] of a [*, Dh] matrix as float32 [N, BLOCK_DH] (0 where masked)."""
    return tl.load(ptr + rows[:, None] * Dh + d[None, :], mask=rmask[:, None] & dmask[None, :], other=0.0).to(
        tl.float32
    )


@triton.jit
def _store_rows(ptr, rows, d, rmask, dmask, Dh, x):
    """Store x [N, BLOCK_DH] into rows ``rows`` of a [*, Dh] matrix, in the matrix's dtype."""
    mask = rmask[:, None] & dmask[None, :]
    tl.store(ptr + rows[:, None] * Dh + d[None, :], x.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _patch_run(order_ptr, b, T, start, i, count, BLOCK_L: tl.constexpr):
    """Positions and validity of bytes i .. i + BLOCK_L of a patch's run."""
    offs = i + tl.arange(0, BLOCK_L)
    lmask = offs < count
    return tl.load(order_ptr + b * T + start + offs, mask=lmask, other=0), lmask


@triton.jit
def _program(starts_ptr, counts_ptr, H, P, Dh, k_rep, BLOCK_K: tl.constexpr, BLOCK_DH: tl.constexpr):
    """Where a program (batch row, head, patch) starts: its (b, h) row bh, batch row b, head columns d,
    the masks of its k_rep patch rows and of d, those rows' indices, and its patch's byte start and count."""
    bh, p = tl.program_id(0) // P, tl.program_id(0) % P  # one flat grid: no 65535 limit on P
    b = bh // H
    j, d = tl.arange(0, BLOCK_K), tl.arange(0, BLOCK_DH)
    start, count = tl.load(starts_ptr + b * P + p), tl.load(counts_ptr + b * P + p)
    return bh, b, d, j < k_rep, d < Dh, bh * P * k_rep + p * k_rep + j, start, count


# fmt: off
@triton.jit
def _patch_query_fwd(q_ptr, k_ptr, v_ptr, order_ptr, starts_ptr, counts_ptr, out_ptr, lse_ptr,
                     H, T, P, Dh, k_rep, scale,
                     BLOCK_K: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_DH: tl.constexpr):
    # fmt: on
    bh, b, d, jmask, dmask, qrows, start, count = _program(
        starts_ptr, counts_ptr, H, P, Dh, k_rep, BLOCK_K, BLOCK_DH
    )
    q = _rows(q_ptr, qrows, d, jmask, dmask, Dh) * scale  # [BK, BD]
    m = tl.full([BLOCK_K], float("-inf"), tl.float32)
    denom = tl.zeros([BLOCK_K], dtype=tl.float32)
    acc = tl.zeros([BLOCK_K, BLOCK_DH], dtype=tl.float32)
    for i in range(0, count, BLOCK_L):
        pos, lmask = _patch_run(order_ptr, b, T, start, i, count, BLOCK_L)
        k = _rows(k_ptr, bh * T + pos, d, lmask, dmask, Dh)  # [BL, BD]
        v = _rows(v_ptr, bh * T + pos, d, lmask, dmask, Dh)
        s = tl.sum(q[:, None, :] * k[None, :, :], 2)  # [BK, BL]
        s = tl.where(lmask[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        alpha = tl.exp(m - m_new)
        w = tl.exp(s - m_new[:, None])
        denom = denom * alpha + tl.sum(w, 1)
        acc = acc * alpha[:, None] + tl.sum(w[:, :, None] * v[None, :, :], 1)
        m = m_new
    nonempty = denom > 0
    out = tl.where(nonempty[:, None], acc / tl.where(nonempty, denom, 1.0)[:, None], 0.0)
    _store_rows(out_ptr, qrows, d, jmask, dmask, Dh, out)
    tl.store(lse_ptr + qrows, tl.where(nonempty, m + tl.log(tl.where(nonempty, denom, 1.0)), 0.0), mask=jmask)


# fmt: off
@triton.jit
def _patch_query_bwd(q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, grad_out_ptr, order_ptr, starts_ptr, counts_ptr,
                     dq_ptr, dk_ptr, dv_ptr,
                     H, T, P, Dh, k_rep, scale,
                     BLOCK_K: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_DH: tl.constexpr):
    # fmt: on
    bh, b, d, jmask, dmask, qrows, start, count = _program(
        starts_ptr, counts_ptr, H, P, Dh, k_rep, BLOCK_K, BLOCK_DH
    )
    q = _rows(q_ptr, qrows, d, jmask, dmask, Dh) * scale
    do = _rows(grad_out_ptr, qrows, d, jmask, dmask, Dh)
    delta = tl.sum(do * _rows(out_ptr, qrows, d, jmask, dmask, Dh), 1)  # [BK]
    lse = tl.load(lse_ptr + qrows, mask=jmask, other=0.0)
    dq = tl.zeros([BLOCK_K, BLOCK_DH], dtype=tl.float32)
    for i in range(0, count, BLOCK_L):
        pos, lmask = _patch_run(order_ptr, b, T, start, i, count, BLOCK_L)
        k = _rows(k_ptr, bh * T + pos, d, lmask, dmask, Dh)
        v = _rows(v_ptr, bh * T + pos, d, lmask, dmask, Dh)
        s = tl.sum(q[:, None, :] * k[None, :, :], 2)
        w = tl.where(jmask[:, None] & lmask[None, :], tl.exp(s - lse[:, None]), 0.0)  # [BK, BL]
        dv = tl.sum(w[:, :, None] * do[:, None, :], 0)  # [BL, BD]
        ds = w * (tl.sum(do[:, None, :] * v[None, :, :], 2) - delta[:, None])
        dq += tl.sum(ds[:, :, None] * k[None, :, :], 1)
        dk = tl.sum(ds[:, :, None] * q[:, None, :], 0)  # q already carries the scale
        _store_rows(dk_ptr, bh * T + pos, d, lmask, dmask, Dh, dk)
        _store_rows(dv_ptr, bh * T + pos, d, lmask, dmask, Dh, dv)
    _store_rows(dq_ptr, qrows, d, jmask, dmask, Dh, dq * scale)


@triton.jit
def _byte_query_probs(q, k, jmask):
    """Softmax over the k_rep patch rows: q [BL, BD] (scaled), k [BK, BD] -> probabilities [BL, BK]."""
    s = tl.sum(q[:, None, :] * k[None, :, :], 2)
    s = tl.where(jmask[None, :], s, float("-inf"))
    w = tl.exp(s - tl.max(s, 1)[:, None])
    return w / tl.sum(w, 1)[:, None]


# fmt: off
@triton.jit
def _byte_query_fwd(q_ptr, k_ptr, v_ptr, order_ptr, starts_ptr, counts_ptr, out_ptr,
                    H, T, P, Dh, k_rep, scale,
                    BLOCK_K: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_DH: tl.constexpr):
    # fmt: on
    bh, b, d, jmask, dmask, krows, start, count = _program(
        starts_ptr, counts_ptr, H, P, Dh, k_rep, BLOCK_K, BLOCK_DH
    )
    k = _rows(k_ptr, krows, d, jmask, dmask, Dh)  # [BK, BD]
    v = _rows(v_ptr, krows, d, jmask, dmask, Dh)
    for i in range(0, count, BLOCK_L):
        pos, lmask = _patch_run(order_ptr, b, T, start, i, count, BLOCK_L)
        q = _rows(q_ptr, bh * T + pos, d, lmask, dmask, Dh) * scale  # [BL, BD]
        w = _byte_query_probs(q, k, jmask)
        out = tl.sum(w[:, :, None] * v[None, :, :], 1)  # [BL, BD]
        _store_rows(out_ptr, bh * T + pos, d, lmask, dmask, Dh, out)


# fmt: off
@triton.jit
def _byte_query_bwd(q_ptr, k_ptr, v_ptr, grad_out_ptr, order_ptr, starts_ptr, counts_ptr,
                    dq_ptr, dk_ptr, dv_ptr,
                    H, T, P, Dh, k_rep, scale,
                    BLOCK_K: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_DH: tl.constexpr):
    # fmt: on
    bh, b, d, jmask, dmask, krows, start, count = _program(
        starts_ptr, counts_ptr, H, P, Dh, k_rep, BLOCK_K, BLOCK_DH
    )
    k = _rows(k_ptr, krows, d, jmask, dmask, Dh)
    v = _rows(v_ptr, krows, d, jmask, dmask, Dh)
    dk = tl.zeros([BLOCK_K, BLOCK_DH], dtype=tl.float32)
    dv = tl.zeros([BLOCK_K, BLOCK_DH], dtype=tl.float32)
    for i in range(0, count, BLOCK_L):
        pos, lmask = _patch_run(order_ptr, b, T, start, i, count, BLOCK_L)
        q = _rows(q_ptr, bh * T + pos, d, lmask, dmask, Dh)
        do = _rows(grad_out_ptr, bh * T + pos, d, lmask, dmask, Dh)
        w = tl.where(lmask[:, None], _byte_query_probs(q * scale, k, jmask), 0.0)  # [BL, BK]
        dv += tl.sum(w[:, :, None] * do[:, None, :], 0)
        dw = tl.sum(do[:, None, :] * v[None, :, :], 2)  # [BL, BK]
        ds = w * (dw - tl.sum(w * dw, 1)[:, None])
        dq = tl.sum(ds[:, :, None] * k[None, :, :], 1) * scale
        _store_rows(dq_ptr, bh * T + pos, d, lmask, dmask, Dh, dq)
        dk += tl.sum(ds[:, :, None] * q[:, None, :], 0)
    _store_rows(dk_ptr, krows, d, jmask, dmask, Dh, dk * scale)
    _store_rows(dv_ptr, krows, d, jmask, dmask, Dh, dv)


def _meta(k_rep: int, Dh: int) -> dict[str, int]:
    return {"BLOCK_K": triton.next_power_of_2(k_rep), "BLOCK_L": 16, "BLOCK_DH": triton.next_power_of_2(Dh)}


class _PatchQueryAttention(torch.autograd.Function):
    """q [B, H, P*k_rep, Dh] over k, v [B, H, T, Dh]."""

    @staticmethod
    def forward(ctx, q, k, v, patch_ids, k_rep):
        B, H, PK, Dh = q.shape
        T, P = k.shape[2], PK // k_rep
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        layout = patch_layout(patch_ids, P)
        out = torch.empty_like(q)
        lse = torch.empty(B, H, PK, dtype=torch.float32, device=q.device)
        args = (H, T, P, Dh, k_rep, 1.0 / math.sqrt(Dh))
        if B * H * P:
            _patch_query_fwd[(B * H * P,)](q, k, v, *layout, out, lse, *args, **_meta(k_rep, Dh))
        ctx.save_for_backward(q, k, v, out, lse, *layout)
        ctx.args = args
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse, *layout = ctx.saved_tensors
        B, H, _, Dh = q.shape
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        _, _, P, _, k_rep, _ = ctx.args
        if B * H * P:
            _patch_query_bwd[(B * H * P,)](
                q, k, v, out, lse, grad_out.contiguous(), *layout, dq, dk, dv, *ctx.args, **_meta(k_rep, Dh)
            )
        return dq, dk, dv, None, None


class _ByteQueryAttention(torch.autograd.Function):
    """q [B, H, T, Dh] over k, v [B, H, P*k_rep, Dh]."""

    @staticmethod
    def forward(ctx, q, k, v, patch_ids, k_rep):
        B, H, T, Dh = q.shape
        P = k.shape[2] // k_rep
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        layout = patch_layout(patch_ids, P)
        out = torch.zeros_like(q)  # bytes of no patch stay 0
        args = (H, T, P, Dh, k_rep, 1.0 / math.sqrt(Dh))
        if B * H * P:
            _byte_query_fwd[(B * H * P,)](q, k, v, *layout, out, *args, **_meta(k_rep, Dh))
        ctx.save_for_backward(q, k, v, *layout)
        ctx.args = args
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, *layout = ctx.saved_tensors
        B, H, _, Dh = q.shape
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        _, _, P, _, k_rep, _ = ctx.args
        if B * H * P:
            _byte_query_bwd[(B * H * P,)](
                q, k, v, grad_out.contiguous(), *layout, dq, dk, dv, *ctx.args, **_meta(k_rep, Dh)
            )
        return dq, dk, dv, None, None


def triton_patch_query_attention(q, k, v, patch_ids, k_rep) -> torch.Tensor:
    """Inputs already validated by :func:`blt.kernels.patch_query_attention`."""
    return _PatchQueryAttention.apply(q, k, v, patch_ids, k_rep)


def triton_byte_query_attention(q, k, v, patch_ids, k_rep) -> torch.Tensor:
    """Inputs already validated by :func:`blt.kernels.byte_query_attention`."""
    return _ByteQueryAttention.apply(q, k, v, patch_ids, k_rep)
