"""Causal self-attention kernels behind one small interface.

All BLT stacks attend causally, optionally within a sliding window of ``window`` positions and optionally only
within the same segment (document): the mask of :func:`blt.masks.attention_mask`. Positions are explicit so
the same call serves full sequences and chunks that continue other keys. (Decoding with a
:class:`blt.layers.KVCache` builds that mask once per forward and shares it between the layers.)

Back-ends: ``sdpa`` (PyTorch scaled_dot_product_attention; CPU and GPU, the default),
``flex`` (torch flex_attention, CUDA only) and ``xformers`` (memory-efficient attention, CUDA only).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from blt.attention_cuda import flex_causal_attention, xformers_causal_attention
from blt.masks import attention_mask

__all__ = ["BACKENDS", "attention_mask", "causal_attention"]

BACKENDS = ("sdpa", "flex", "xformers")


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
    gqa = k.shape[1] != q.shape[1]
    if backend != "sdpa":
        if gqa:
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
            v = v.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        if backend == "flex":
            return flex_causal_attention(q, k, v, q_pos, k_pos, window, q_seg, k_seg)
        return xformers_causal_attention(q, k, v, q_pos, k_pos, window, q_seg, k_seg)
    plain_causal = (
        window is None
        and q_seg is None
        and q.shape[2] == k.shape[2]
        and q_pos.dim() == 1
        and k_pos.dim() == 1
        and q_pos is k_pos  # the same tensor (self-attention): equal values would need a host read
    )
    if plain_causal:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout, enable_gqa=gqa)
    mask = attention_mask(q_pos, k_pos, window, q_seg, k_seg)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, enable_gqa=gqa)
