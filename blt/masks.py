"""The attention mask every BLT stack uses, shared by the attention back-ends and the KV cache.

Query i sees key j when ``j <= i`` and, with a sliding window of ``window`` positions, ``i - window < j``
(the convention of the released BLT models); with segment ids, only keys of its own segment (document).
"""

from __future__ import annotations

import torch


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
