"""Summary statistics of one document's patches (what ``blt-patch`` prints)."""

from __future__ import annotations

import torch


def patch_statistics(lengths: torch.Tensor) -> dict[str, float]:
    """Statistics of the byte patches of one document: lengths [P] (BOS patch and padding already removed)."""
    lengths = lengths[lengths > 0].float()
    if lengths.numel() == 0:
        raise ValueError("empty input: no bytes to compute patch statistics for")
    n_bytes = lengths.sum().item()
    q = torch.quantile(lengths, torch.tensor([0.5, 0.9, 0.99]))
    return {
        "bytes": n_bytes,
        "patches": float(lengths.numel()),
        "mean": n_bytes / lengths.numel(),
        "p50": q[0].item(),
        "p90": q[1].item(),
        "p99": q[2].item(),
        "max": lengths.max().item(),
        "patches_per_kb": lengths.numel() * 1024 / n_bytes,
        "share_bytes_in_length_1": (lengths == 1).sum().item() / n_bytes,
    }


def format_statistics(stats: dict[str, float]) -> str:
    return "\n".join(
        [
            f"bytes                       {stats['bytes']:.0f}",
            f"patches                     {stats['patches']:.0f}",
            f"mean patch length           {stats['mean']:.3f}",
            f"patch length p50/p90/p99    {stats['p50']:.1f} / {stats['p90']:.1f} / {stats['p99']:.1f}",
            f"longest patch               {stats['max']:.0f}",
            f"patches per KB (1024 bytes) {stats['patches_per_kb']:.1f}",
            f"bytes in patches of 1 byte  {100 * stats['share_bytes_in_length_1']:.1f}%",
        ]
    )
