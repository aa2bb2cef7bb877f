"""Causal self-attention kernels behind one small interface.

All BLT stacks attend causally, optionally within a sliding window of ``window`` positions and optionally only
within the same segment (document): the mask of :func:`blt.masks.attention_mask`. Positions are explicit so
the same call serves full sequences and chunks that continue other keys. (Decoding with a
:class:`blt.layers.KVCache` builds that mask once per forward and shares it between the layers.)

Back-ends: ``sdpa`` (PyTorch scaled_dot_product_attention; CPU and GPU, the default),
``flex`` (torch flex_attention, CUDA only) and ``xformers`` (memory-efficient attention, CUDA only).

A windowed stack attending within its own input (``consecutive``: positions step by one, restarting at
segment starts) needs no [T, T] mask: query i sees at most keys i - window + 1 .. i. Long inputs then run
in chunks of queries that each see only their window of keys (:func:`chunked_window_attention`, any device),
or through flex_attention with a block-sparse mask built from the shape alone (CUDA), in memory linear in T.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from blt.attention_cuda import flex_causal_attention, flex_window_attention, xformers_causal_attention
from blt.masks import attention_mask

__all__ = ["BACKENDS", "attention_mask", "causal_attention", "chunked_window_attention", "window_chunk"]

BACKENDS = ("sdpa", "flex", "xformers")
# Queries per chunk is at least this, so that small windows do not make many tiny chunks; and inputs run in
# chunks only from CHUNKED_FROM chunks on: shorter ones cost little with one mask (at 2 chunks of 512 the one
# call is still faster on the CPU, at 3 the chunks are), and tiny models keep their one SDPA call.
MIN_CHUNK = 256
CHUNKED_FROM = 3


def window_chunk(window: int) -> int:
    """Queries per chunk of :func:`chunked_window_attention`: a chunk of C queries computes C + window - 1
    keys each, so C near the window keeps the waste at about 2x while the chunks stay few."""
    return max(window, MIN_CHUNK)


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
    consecutive: bool = False,
) -> torch.Tensor:
    """q: [B, H, Tq, D]; k, v: [B, Hkv, Tk, D] (Hkv divides H) -> [B, H, Tq, D].

    ``consecutive``: the caller's word that q and k come from one sequence whose positions step by one from
    each element to the next (within each segment, where segments are given, and then q_seg is k_seg), so
    that index order is position order; windowed attention may then skip the dense mask.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
    if backend == "flex" and dropout > 0:  # on every device, so the CPU fallback behaves as CUDA would
        raise ValueError(
            f"the flex attention backend has no attention dropout (got dropout {dropout}): train with "
            "backend 'sdpa' or 'xformers', or with dropout 0"
        )
    if backend != "sdpa" and not q.is_cuda:
        backend = "sdpa"  # flex and xformers kernels exist only on CUDA
    gqa = k.shape[1] != q.shape[1]
    local = consecutive and window is not None and q.shape[2] == k.shape[2]
    if local and backend == "flex":
        return flex_window_attention(q, k, v, window, q_seg)
    if backend != "sdpa":
        if gqa:  # the group size read once: after k is repeated, k.shape[1] no longer tells it
            group = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        if backend == "flex":
            return flex_causal_attention(q, k, v, q_pos, k_pos, window, q_seg, k_seg)
        return xformers_causal_attention(q, k, v, q_pos, k_pos, window, q_seg, k_seg, dropout)
    if local and q.shape[2] >= CHUNKED_FROM * window_chunk(window):
        return chunked_window_attention(q, k, v, window, q_seg, dropout)
    plain_causal = (
        window is None
        and q_seg is None
        and q.shape[2] == k.shape[2]
        and (consecutive or (q_pos.dim() == 1 and k_pos.dim() == 1))
        and (consecutive or q_pos is k_pos)  # the same tensor (self-attention): equal values would need a host read
    )
    if plain_causal:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout, enable_gqa=gqa)
    mask = attention_mask(q_pos, k_pos, window, q_seg, k_seg)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, enable_gqa=gqa)


def chunked_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int,
    segments: torch.Tensor | None = None,
    dropout: float = 0.0,
    chunk: int | None = None,
) -> torch.Tensor:
    """Sliding-window causal self-attention, chunk by chunk: q [B, H, T, D], k, v [B, Hkv, T, D] -> [B, H, T, D].

    Query i sees keys i - window < j <= i (of its own segment, with ``segments`` [B, T]): the mask of
    :func:`attention_mask` for positions that step by one. The T queries split into n chunks of C
    (``chunk``, default :func:`window_chunk`; the last one padded), and chunk c attends keys
    c * C - window + 1 .. c * C + C - 1, unfolded from k and v with window - 1 padding keys in front: one
    SDPA call over B * n rows of C queries and C + window - 1 keys, with a mask of that size.
    """
    B, H, T, D = q.shape
    C = window_chunk(window) if chunk is None else chunk
    n = -(-T // C)
    pad, W = n * C - T, C + window - 1  # tail padding; keys per chunk

    def chunk_keys(x):  # [B, h, T, D] -> [B * n, h, W, D]: chunk c gets keys c * C - window + 1 ...
        x = F.pad(x, (0, 0, window - 1, pad)).unfold(2, W, C)  # [B, h, n, D, W]
        return x.permute(0, 2, 1, 4, 3).reshape(B * n, x.shape[1], W, D)

    queries = F.pad(q, (0, 0, 0, pad)).view(B, H, n, C, D).transpose(1, 2).reshape(B * n, H, C, D)
    mask = window_chunk_mask(n, C, window, q.device, segments, pad)  # [B * n or n, 1, C, W]
    if segments is None and B > 1:
        mask = mask.expand(B, -1, -1, -1, -1).reshape(B * n, 1, C, W)
    y = F.scaled_dot_product_attention(
        queries, chunk_keys(k), chunk_keys(v), attn_mask=mask, dropout_p=dropout, enable_gqa=k.shape[1] != H
    )  # [B * n, H, C, D]
    return y.view(B, n, H, C, D).transpose(1, 2).reshape(B, H, n * C, D)[:, :, :T]


def window_chunk_mask(n, C, window, device, segments=None, pad=0) -> torch.Tensor:
    """The mask of :func:`chunked_window_attention`: [n, 1, C, W] (no segments) or [B * n, 1, C, W].

    Query r of chunk c sits at c * C + r, key m of its window at c * C - window + 1 + m: it is seen when
    r <= m <= r + window - 1 and it is no padding in front of the sequence (only chunk 0 has such keys).
    """
    W = C + window - 1
    r = torch.arange(C, device=device).unsqueeze(1)  # [C, 1]
    m = torch.arange(W, device=device)  # [W]
    first = torch.arange(n, device=device).view(n, 1, 1) * C - window + 1  # [n, 1, 1] chunk's first key
    mask = (m >= r) & (m < r + window) & (first + m >= 0)  # [n, C, W]
    if segments is None:
        return mask.unsqueeze(1)
    B = segments.shape[0]
    # padding keys get no segment of their own: the front ones are masked above, the tail ones only meet
    # the tail's padding queries, whose outputs are dropped (each sees itself, so none is all -inf)
    q_seg = F.pad(segments, (0, pad)).view(B, n, C, 1)
    k_seg = F.pad(segments, (window - 1, pad)).unfold(1, W, C).view(B, n, 1, W)
    return (mask & (q_seg == k_seg)).view(B * n, 1, C, W)
