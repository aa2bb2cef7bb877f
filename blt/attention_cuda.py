"""CUDA attention back-ends behind :func:`blt.attention.causal_attention`: flex_attention and xformers.

Both compute exactly the mask of :func:`blt.masks.attention_mask` (causal by position, optional sliding
window, optional segments). On the CPU :func:`blt.attention.causal_attention` uses SDPA instead; the tests
check the masks there and run flex_attention's forward compiled for the CPU (it has no CPU backward).
flex_attention runs compiled (uncompiled it is a reference that materialises every score).

A windowed stack over its own input (positions stepping by one) gets a block mask from the shape alone
(:func:`window_block_mask`, cached per shape): the blocks of the band j <= i < j + window, those wholly
inside it marked full, so that the cost and the memory grow linearly with T.

xformers takes structured masks: bottom-right causal (queries continuing a KV cache) and block-diagonal
(packed segments without a window, one block per run of equal segment ids). Segment runs assume positions that step by one
inside each run, which is how packed rows are built; other inputs get a dense bias with the same mask.
"""

from __future__ import annotations

import functools

import torch

from blt.masks import attention_mask


def flex_mask_mod(
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    window: int | None,
    q_seg: torch.Tensor | None,
    k_seg: torch.Tensor | None,
    batch: int,
):
    """The flex_attention ``mask_mod(b, h, q_idx, kv_idx)`` of our mask (positions [T] or [B, T])."""
    qp = q_pos.expand(batch, -1) if q_pos.dim() == 1 else q_pos  # [B, Tq]
    kp = k_pos.expand(batch, -1) if k_pos.dim() == 1 else k_pos  # [B, Tk]

    def mask_mod(b, h, q_idx, kv_idx):
        q, k = qp[b, q_idx], kp[b, kv_idx]
        allowed = k <= q
        if window is not None:
            allowed = allowed & (k > q - window)
        if q_seg is not None and k_seg is not None:
            allowed = allowed & (q_seg[b, q_idx] == k_seg[b, kv_idx])
        return allowed

    return mask_mod


def flex_causal_attention(q, k, v, q_pos, k_pos, window=None, q_seg=None, k_seg=None) -> torch.Tensor:
    """q, k, v: [B, H, T, D] (CUDA) -> [B, H, Tq, D]."""
    from torch.nn.attention.flex_attention import create_block_mask

    B, _, Tq, _ = q.shape
    mask_mod = flex_mask_mod(q_pos, k_pos, window, q_seg, k_seg, B)
    block_mask = create_block_mask(mask_mod, B, None, Tq, k.shape[2], device=q.device)
    return flex()(q, k, v, block_mask=block_mask)


def flex():
    """flex_attention compiled once (inside a compiled graph, the plain function: it is traced there)."""
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention if torch.compiler.is_compiling() else _compiled_flex()


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention)


def window_mask_mod(window: int, segments: torch.Tensor | None = None):
    """``mask_mod`` of the band j <= i < j + window by index (and within a segment, segments [B, T])."""

    def mask_mod(b, h, q_idx, kv_idx):
        allowed = (kv_idx <= q_idx) & (q_idx - kv_idx < window)
        if segments is not None:
            allowed = allowed & (segments[b, q_idx] == segments[b, kv_idx])
        return allowed

    return mask_mod


def window_blocks(T: int, window: int, block: int, device, full: bool):
    """Which key blocks every query block of the band j <= i < j + window touches, [1, 1, nb] counts and
    [1, 1, nb, nb] block indices (int32, the ones used first); with ``full``, (partial, full) separately,
    a full block lying wholly inside the band (its mask is not evaluated), else (all, None)."""
    nb = -(-T // block)
    first = torch.arange(nb, device=device) * block  # first index of each block
    last = first + block - 1  # of a whole block: the ragged last one is only ever partial
    qf, ql, kf, kl = first[:, None], last[:, None], first[None, :], last[None, :]
    touched = (kf <= ql) & (kl > qf - window)  # some (i, j) of the blocks in the band
    inside = (kl <= qf) & (kf > ql - window) if full else torch.zeros_like(touched)  # every (i, j) in it

    def ordered(blocks):  # [nb, nb] bool -> counts [1, 1, nb], indices [1, 1, nb, nb]
        counts = blocks.sum(-1, dtype=torch.int32)
        indices = torch.argsort(blocks.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
        return counts[None, None], indices[None, None]

    partial = ordered(touched & ~inside)
    return (partial, ordered(inside)) if full else (partial, None)


@functools.lru_cache(maxsize=16)
def _cached_block_mask(T: int, window: int, device: torch.device, segmented: bool, block: int):
    return _block_mask(T, window, device, segmented, block)


def _block_mask(T, window, device, segmented, block):
    from torch.nn.attention.flex_attention import BlockMask

    partial, full = window_blocks(T, window, block, device, full=not segmented)
    full = (None, None) if full is None else full
    return BlockMask.from_kv_blocks(
        *partial, *full, BLOCK_SIZE=block, mask_mod=window_mask_mod(window), seq_lengths=(T, T)
    )


def window_block_mask(T: int, window: int, device, segments: torch.Tensor | None = None, block: int = 128):
    """The flex_attention BlockMask of sliding-window self-attention over T positions stepping by one.

    Its blocks depend on the shape alone and are built once per (T, window, device, segments or not); with
    segments [B, T], every block of the band is partial and the mask_mod compares segment ids too.
    """
    from torch.nn.attention.flex_attention import BlockMask

    device = torch.device(device)
    build = _block_mask if torch.compiler.is_compiling() else _cached_block_mask
    shape = build(T, window, device, segments is not None, block)
    if segments is None:
        return shape
    return BlockMask(
        shape.seq_lengths,
        shape.kv_num_blocks,
        shape.kv_indices,
        None,
        None,
        shape.q_num_blocks,
        shape.q_indices,
        None,
        None,
        BLOCK_SIZE=shape.BLOCK_SIZE,
        mask_mod=window_mask_mod(window, segments),
    )


def flex_window_attention(q, k, v, window: int, segments=None) -> torch.Tensor:
    """Sliding-window causal self-attention over positions stepping by one (within segments [B, T]):
    q [B, H, T, D], k, v [B, Hkv, T, D] (CUDA) -> [B, H, T, D]."""
    block_mask = window_block_mask(q.shape[2], window, q.device, segments)
    return flex()(q, k, v, block_mask=block_mask, enable_gqa=k.shape[1] != q.shape[1])


def _runs(segments: torch.Tensor) -> list[int]:
    """Lengths of the runs of equal ids in each row of segments [B, T], rows concatenated."""
    out = []
    for row in segments.tolist():
        start = 0
        for i in range(1, len(row) + 1):
            if i == len(row) or row[i] != row[i - 1]:
                out.append(i - start)
                start = i
    return out


def xformers_bias(q_pos, k_pos, window, q_seg, k_seg, batch: int, dtype=torch.float32):
    """(attn_bias, flatten) for xformers: a mask class where one fits, else a dense additive bias.

    ``flatten`` says the batch must be folded into one sequence (block-diagonal masks work that way).
    """
    from xformers.ops import fmha

    Tq, Tk = q_pos.shape[-1], k_pos.shape[-1]
    one_d = q_pos.dim() == 1 and k_pos.dim() == 1
    if q_seg is None and one_d and Tq <= Tk:
        # self-attention over one positions tensor needs no host read: without a cache 1-D positions are
        # Transformer.begin's 0..T-1; else a chunk continuing a cache: contiguous positions, queries aligned
        # with the last keys
        aligned = q_pos is k_pos
        if not aligned:
            expected = torch.arange(int(k_pos[0]), int(k_pos[0]) + Tk, device=k_pos.device)
            aligned = torch.equal(k_pos, expected) and torch.equal(q_pos, k_pos[Tk - Tq :])
        if aligned:
            if window is None:
                return fmha.attn_bias.LowerTriangularFromBottomRightMask(), False
            return fmha.attn_bias.LowerTriangularFromBottomRightLocalAttentionMask(window), False
    same = (
        q_seg is not None and Tq == Tk and torch.equal(q_seg, k_seg) and (one_d or torch.equal(q_pos, k_pos))
    )
    if same and window is None:
        return fmha.attn_bias.BlockDiagonalCausalMask.from_seqlens(_runs(q_seg)), True
    dense = attention_mask(q_pos, k_pos, window, q_seg, k_seg).expand(batch, 1, Tq, Tk)
    # xformers wants the bias rows 8-aligned in memory: allocate padded keys, then slice them off
    padded = torch.zeros(batch, 1, Tq, -(-Tk // 8) * 8, dtype=dtype, device=dense.device)
    return padded[..., :Tk].masked_fill(~dense, float("-inf")), False


def xformers_causal_attention(
    q, k, v, q_pos, k_pos, window=None, q_seg=None, k_seg=None, dropout: float = 0.0
) -> torch.Tensor:
    """q, k, v: [B, H, T, D] (CUDA) -> [B, H, Tq, D] via xformers' memory-efficient attention."""
    from xformers.ops import memory_efficient_attention

    B, H, Tq, D = q.shape
    bias, flatten = xformers_bias(q_pos, k_pos, window, q_seg, k_seg, B, q.dtype)
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # xformers layout [B, T, H, D]
    if flatten:
        q, k, v = (x.reshape(1, -1, H, D) for x in (q, k, v))
    elif isinstance(bias, torch.Tensor):
        bias = bias.expand(B, H, Tq, k.shape[1])
    out = memory_efficient_attention(q, k, v, attn_bias=bias, p=dropout)
    return out.reshape(B, Tq, H, D).transpose(1, 2)
