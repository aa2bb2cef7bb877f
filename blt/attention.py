"""Causal self-attention kernels behind one small interface.

All BLT stacks attend causally, optionally within a sliding window of ``window`` positions (query i sees
keys j with ``i - window < j <= i``, the convention of the released BLT models) and optionally only within
the same segment (document). Positions are explicit so the same call serves full sequences, chunks that
continue a KV cache, and single decoding steps.

Back-ends: ``sdpa`` (PyTorch scaled_dot_product_attention; CPU and GPU, the default),
``flex`` (torch flex_attention, CUDA only) and ``xformers`` (memory-efficient attention, CUDA only).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BACKENDS = ("sdpa", "flex", "xformers")


def attention_mask(
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    window: int | None,
    q_seg: torch.Tensor | None = None,
    k_seg: torch.Tensor | None = None,
) -> torch.Tensor:
    """Boolean mask ``[B or 1, 1, Tq, Tk]``: True where query may attend key.

    q_pos: [Tq] or [B, Tq]; k_pos: [Tk] or [B, Tk]; q_seg/k_seg: optional [B, Tq] / [B, Tk] segment ids.
    """
    qp = q_pos.unsqueeze(-1)  # [.., Tq, 1]
    kp = k_pos.unsqueeze(-2)  # [.., 1, Tk]
    mask = kp <= qp
    if window is not None:
        mask = mask & (kp > qp - window)
    if q_seg is not None and k_seg is not None:
        mask = mask & (q_seg.unsqueeze(-1) == k_seg.unsqueeze(-2))
    if mask.dim() == 2:
        mask = mask.unsqueeze(0)
    return mask.unsqueeze(1)


def causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    window: int | None = None,
    q_seg: torch.Tensor | None = None,
    k_seg: torch.Tensor | None = None,
    backend: str = "sdpa",
    dropout: float = 0.0,
) -> torch.Tensor:
    """q: [B, H, Tq, D]; k, v: [B, Hkv, Tk, D] (Hkv divides H) -> [B, H, Tq, D]."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
    if backend != "sdpa" and not q.is_cuda:
        backend = "sdpa"  # flex and xformers kernels exist only on CUDA
    if k.shape[1] != q.shape[1]:
        rep = q.shape[1] // k.shape[1]
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
    if backend == "flex":
        from blt.attention_cuda import flex_causal_attention

        return flex_causal_attention(q, k, v, q_pos, k_pos, window, q_seg, k_seg)
    if backend == "xformers":
        from blt.attention_cuda import xformers_causal_attention

        return xformers_causal_attention(q, k, v, q_pos, k_pos, window, q_seg, k_seg)
    plain_causal = (
        window is None
        and q_seg is None
        and q.shape[2] == k.shape[2]
        and q_pos.dim() == 1
        and k_pos.dim() == 1
        and bool(torch.equal(q_pos, k_pos))
    )
    if plain_causal:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
    mask = attention_mask(q_pos, k_pos, window, q_seg, k_seg)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
