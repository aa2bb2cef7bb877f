"""Which bytes belong to which patch, in the form the per-patch kernels walk.

Patch ids from patch lengths are non-decreasing, but the operations accept any assignment of bytes to
patches, so the layout sorts the byte positions by patch (stable, so a patch's bytes stay in order) and
records where each patch's run starts and how long it is. A kernel program for patch ``p`` of row ``b``
then visits ``order[b, starts[b, p] : starts[b, p] + counts[b, p]]``: work is linear in the bytes and no
[patches x bytes] mask exists anywhere.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class PatchLayout(NamedTuple):
    order: torch.Tensor  # [B, T] byte positions sorted by patch id
    starts: torch.Tensor  # [B, P] offset into ``order`` of each patch's first byte
    counts: torch.Tensor  # [B, P] bytes per patch (0 for an empty patch)


def check_patch_ids(patch_ids: torch.Tensor, batch: int, seq_len: int, device: torch.device) -> None:
    """Clear errors for patch ids the operations cannot take (ids out of range are allowed: ignored)."""
    if patch_ids.device != device:
        raise ValueError(f"patch_ids are on {patch_ids.device} but the states on {device}")
    if patch_ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"patch_ids must be an integer tensor, got {patch_ids.dtype}")
    if tuple(patch_ids.shape) != (batch, seq_len):
        raise ValueError(
            f"patch_ids has shape {tuple(patch_ids.shape)}, expected [B, T] = [{batch}, {seq_len}]"
        )


def patch_layout(patch_ids: torch.Tensor, num_patches: int) -> PatchLayout:
    """patch_ids: [B, T] -> :class:`PatchLayout` over ``num_patches`` patches.

    Bytes whose id is outside 0..num_patches-1 belong to no patch (as in :mod:`blt.patch_ops`): they are
    sorted behind every patch's run and no patch visits them.
    """
    valid = (patch_ids >= 0) & (patch_ids < num_patches)
    ids = torch.where(valid, patch_ids.long(), num_patches)
    counts = torch.zeros(ids.shape[0], num_patches + 1, dtype=torch.long, device=ids.device)
    counts.scatter_add_(1, ids, torch.ones_like(ids))
    counts = counts[:, :num_patches]
    starts = counts.cumsum(1) - counts
    order = torch.argsort(ids, dim=1, stable=True)
    return PatchLayout(order.contiguous(), starts.contiguous(), counts.contiguous())
