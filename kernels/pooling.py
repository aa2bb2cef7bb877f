"""Patch pooling: max or mean of the byte states of each patch.

The reference (:func:`blt.patch_ops.patch_pool`) is already a segment operation (``scatter_reduce`` over
the byte axis: linear in the bytes, no [patches x bytes] mask), so it is also the PyTorch path here, but for
the max over a single patch without gradients (a decoding step), which is a masked max; CUDA tensors get the
Triton kernel, whose max backward splits the gradient evenly among tied maxima exactly as ``scatter_reduce``
does.
"""

from __future__ import annotations

import torch

from blt import patch_ops
from blt.kernels.dispatch import choose
from blt.kernels.layout import check_patch_ids


def patch_pool(
    h: torch.Tensor, patch_ids: torch.Tensor, num_patches: int, mode: str = "max", *, impl: str | None = None
) -> torch.Tensor:
    """h [B, T, D], patch_ids [B, T] -> [B, num_patches, D]; an empty patch gives 0, out-of-range ids are
    ignored (see :func:`blt.patch_ops.patch_pool`)."""
    if mode not in ("max", "mean"):
        raise ValueError(f"patch_pool mode must be 'max' or 'mean', got {mode!r}")
    if h.dim() != 3:
        raise ValueError(f"h must be [B, T, D], got shape {tuple(h.shape)}")
    check_patch_ids(patch_ids, h.shape[0], h.shape[1], h.device)
    if num_patches < 0:
        raise ValueError(f"num_patches must be >= 0, got {num_patches}")
    if choose("patch_pool", h, impl) == "triton":
        from blt.kernels.pooling_triton import triton_patch_pool

        return triton_patch_pool(h, patch_ids, num_patches, mode)
    if num_patches == 1 and mode == "max" and not (torch.is_grad_enabled() and h.requires_grad):
        # decoding closes one patch per row: a masked max, no scatter
        inside = (patch_ids == 0).unsqueeze(-1)  # [B, T, 1]
        out = h.masked_fill(~inside, float("-inf")).amax(dim=1, keepdim=True)
        return out.masked_fill(~inside.any(dim=1, keepdim=True), 0.0)  # a patch without bytes gives 0
    return patch_ops.patch_pool(h, patch_ids, num_patches, mode)
