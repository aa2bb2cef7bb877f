"""Patch cross-attention in both directions with cost linear in the number of bytes.

The reference (:mod:`blt.patch_ops`) scores every query against every key and masks: a [P*k x T] score
matrix per head, quadratic in the sequence length. Each query here only meets the keys it may see:

- patch -> bytes (encoder): every byte gathers the k_rep query rows of its own patch and scores against them
  ([B, H, T] scores per query slot); the softmax over a patch's bytes is a segment softmax (scatter max,
  scatter sum) and the weighted values are scatter-added into their patch;
- byte -> patch (decoder): every byte gathers the k_rep key/value rows of its patch ([B, H, T, k_rep, Dh])
  and takes an ordinary softmax over those k_rep scores.

Both compute in float32 and return the input dtype, like the reference. A patch without bytes gives 0, and a
byte whose patch id is out of range contributes nothing (encoder) or gives 0 (decoder). With a single patch
(decoding: the open patch being closed, the latest patch a new byte reads) either direction is one masked
SDPA call, which is what a decoding step runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from blt import patch_ops
from blt.kernels.dispatch import choose
from blt.kernels.layout import check_patch_ids


def _segment_softmax_pool(s: torch.Tensor, v: torch.Tensor, seg: torch.Tensor, n_seg: int) -> torch.Tensor:
    """sum over t in segment p of softmax_p(s)[t] * v[t]: s [B, H, T], v [B, H, T, Dh], seg [B, H, T]
    with values in [0, n_seg] (n_seg = scratch) -> [B, H, n_seg, Dh]."""
    B, H, T, Dh = v.shape
    m = s.new_full((B, H, n_seg + 1), float("-inf")).scatter_reduce(2, seg, s.detach(), "amax")
    e = torch.exp(s - m.gather(2, seg))  # the max shift only steadies exp: no gradient through it
    z = s.new_zeros(B, H, n_seg + 1).scatter_add(2, seg, e)
    w = e / z.gather(2, seg)
    index = seg.unsqueeze(-1).expand(B, H, T, Dh)
    return v.new_zeros(B, H, n_seg + 1, Dh).scatter_add(2, index, w.unsqueeze(-1) * v)[:, :, :n_seg]


def _patch_query_torch(q, k, v, patch_ids, k_rep):
    B, H, PK, Dh = q.shape
    T, P = k.shape[2], PK // k_rep
    valid = (patch_ids >= 0) & (patch_ids < P)
    if P == 1:  # every query row sees every byte of the patch
        qf, kf, vf = q.float(), k.float(), v.float()
        out = F.scaled_dot_product_attention(qf, kf, vf, attn_mask=valid[:, None, None, :])
        return torch.where(valid.any(-1)[:, None, None, None], out, 0.0).to(q.dtype)  # no bytes: 0, not NaN
    seg = torch.where(valid, patch_ids.long(), P)[:, None, :].expand(B, H, T)  # [B, H, T], P = no patch
    qf, kf, vf = q.float(), k.float() / math.sqrt(Dh), v.float()
    qp = torch.cat([qf.view(B, H, P, k_rep, Dh), qf.new_zeros(B, H, 1, k_rep, Dh)], dim=2)  # scratch patch
    index = seg.unsqueeze(-1).expand(B, H, T, Dh)
    outs = []
    for j in range(k_rep):  # one query slot at a time keeps every intermediate at [B, H, T, Dh]
        qt = qp[:, :, :, j].gather(2, index)  # [B, H, T, Dh]: the query that sees byte t
        s = (qt * kf).sum(-1)  # [B, H, T]
        outs.append(_segment_softmax_pool(s, vf, seg, P))
    return torch.stack(outs, dim=3).reshape(B, H, PK, Dh).to(q.dtype)


def _byte_query_torch(q, k, v, patch_ids, k_rep):
    B, H, T, Dh = q.shape
    P = k.shape[2] // k_rep
    valid = (patch_ids >= 0) & (patch_ids < P)
    if P == 1:  # every byte of the patch sees all its rows
        return patch_ops.one_patch_attention(q, k, v) * valid[:, None, :, None]
    index = torch.where(valid, patch_ids.long(), 0)[:, None, :, None].expand(B, H, T, k_rep * Dh)
    kt = k.float().reshape(B, H, P, k_rep * Dh).gather(2, index).view(B, H, T, k_rep, Dh)
    vt = v.float().reshape(B, H, P, k_rep * Dh).gather(2, index).view(B, H, T, k_rep, Dh)
    s = torch.einsum("bhtd,bhtjd->bhtj", q.float(), kt) / math.sqrt(Dh)  # [B, H, T, k_rep]
    out = torch.einsum("bhtj,bhtjd->bhtd", torch.softmax(s, dim=-1), vt)
    return (out * valid[:, None, :, None]).to(q.dtype)


MAX_TRITON_ROWS = 4096  # k_rep * head_dim (both rounded up to powers of two) one Triton program holds


def _too_big(k_rep: int, head_dim: int) -> str | None:
    """Why the Triton kernels cannot take this shape (None if they can)."""
    size = (1 << max(0, k_rep - 1).bit_length()) * (1 << max(0, head_dim - 1).bit_length())
    if size > MAX_TRITON_ROWS:
        return f"k_rep={k_rep} x head_dim={head_dim} exceeds the Triton kernel's {MAX_TRITON_ROWS} elements"
    return None


def _check(q, k, v, patch_ids, k_rep, patches_query: bool) -> None:
    if k_rep < 1:
        raise ValueError(f"k_rep must be >= 1, got {k_rep}")
    if (
        q.dim() != 4
        or k.shape != v.shape
        or k.dim() != 4
        or q.shape[:2] != k.shape[:2]
        or q.shape[3] != k.shape[3]
    ):
        raise ValueError(
            f"expected q [B, H, Tq, Dh] and k, v [B, H, Tk, Dh] of one shape; got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    patches, byte_states = (q, k) if patches_query else (k, q)
    if patches.shape[2] % k_rep:
        raise ValueError(f"{patches.shape[2]} patch rows are not a multiple of k_rep={k_rep}")
    check_patch_ids(patch_ids, byte_states.shape[0], byte_states.shape[2], q.device)


def patch_query_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    patch_ids: torch.Tensor,
    k_rep: int,
    *,
    impl: str | None = None,
) -> torch.Tensor:
    """Patches attend to their own bytes (local encoder); see :func:`blt.patch_ops.patch_query_attention`.

    q [B, H, P*k_rep, Dh]; k, v [B, H, T, Dh]; patch_ids [B, T] -> [B, H, P*k_rep, Dh].
    """
    path = choose("patch_query_attention", q, impl, _too_big(k_rep, q.shape[-1]))
    if path == "reference":
        return patch_ops.patch_query_attention(q, k, v, patch_ids, k_rep)
    _check(q, k, v, patch_ids, k_rep, patches_query=True)
    if path == "triton":
        from blt.kernels.cross_attention_triton import triton_patch_query_attention

        return triton_patch_query_attention(q, k, v, patch_ids, k_rep)
    return _patch_query_torch(q, k, v, patch_ids, k_rep)


def byte_query_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    patch_ids: torch.Tensor,
    k_rep: int,
    *,
    impl: str | None = None,
) -> torch.Tensor:
    """Bytes attend to the k_rep rows of their patch (local decoder); see
    :func:`blt.patch_ops.byte_query_attention`.

    q [B, H, T, Dh]; k, v [B, H, P*k_rep, Dh]; patch_ids [B, T] -> [B, H, T, Dh].
    """
    path = choose("byte_query_attention", q, impl, _too_big(k_rep, q.shape[-1]))
    if path == "reference":
        return patch_ops.byte_query_attention(q, k, v, patch_ids, k_rep)
    _check(q, k, v, patch_ids, k_rep, patches_query=False)
    if path == "triton":
        from blt.kernels.cross_attention_triton import triton_byte_query_attention

        return triton_byte_query_attention(q, k, v, patch_ids, k_rep)
    return _byte_query_torch(q, k, v, patch_ids, k_rep)
