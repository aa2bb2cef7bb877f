"""Threshold calibration: the entropy threshold that gives a target mean patch size on a sample of text.

The mean patch size (positions per patch, BOS patch included, as the global transformer sees it) never
decreases as the threshold rises, so bisection finds the threshold where it crosses the target. Entropies
do not depend on the threshold, so they are computed once and every bisection step is a cheap mask.

A target share of compute becomes a target patch size first: :func:`patch_size_for_global_share` finds the
mean patch size at which the global transformer does a given share of a BLT's FLOPs per byte.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from blt.config import BLTConfig, ConfigError, PatchingConfig

from .schemes import ENTROPY_SCHEMES, decide_starts

ITERATIONS = 60


@dataclass
class Calibration:
    threshold: float  # the calibrated value of the scheme's threshold field
    field: str  # "threshold" or "relative_threshold"
    mean_patch_size: float  # achieved on the sample
    target_patch_size: float

    def patching(self, base: PatchingConfig) -> PatchingConfig:
        """``base`` with the calibrated threshold filled in."""
        return dataclasses.replace(base, **{self.field: self.threshold})

    def __str__(self) -> str:
        return (
            f"{self.field} = {self.threshold:.6f} gives mean patch size {self.mean_patch_size:.3f} "
            f"(target {self.target_patch_size:.3f})"
        )


def pad_documents(docs: list[torch.Tensor], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D tensors -> right-padded [B, Tmax] and a validity mask [B, Tmax]."""
    out = torch.zeros(len(docs), max(d.numel() for d in docs), dtype=dtype)
    valid = torch.zeros(out.shape, dtype=torch.bool)
    for i, d in enumerate(docs):
        out[i, : d.numel()] = d
        valid[i, : d.numel()] = True
    return out, valid


def mean_patch_size(ids: torch.Tensor, entropies: torch.Tensor, valid: torch.Tensor, patching: PatchingConfig) -> float:
    """Positions per patch over the valid part of right-padded rows (rules are causal: padding never counts)."""
    starts = decide_starts(ids, patching, entropies)[:, :-1]
    return valid.sum().item() / (starts & valid).sum().item()


def global_share(config: BLTConfig, mean_patch_size: float) -> float:
    """Share of a BLT's forward FLOPs per byte spent in the global transformer (entropy model excluded)."""
    from blt.eval.flops import blt_flops_per_byte

    parts = blt_flops_per_byte(config, mean_patch_size).parts
    return sum(v for k, v in parts.items() if k.startswith("global.")) / sum(parts.values())


def patch_size_for_global_share(config: BLTConfig, share: float, max_patch_size: float = 1e4) -> float:
    """Mean patch size at which the global transformer does ``share`` of the BLT's FLOPs per byte.

    The global share falls as patches grow (the global model runs once per patch, the local ones per byte).
    """
    if math.isnan(share) or not 0 < share < 1:
        raise ValueError(f"global compute share must be in (0, 1), got {share}")
    most = global_share(config, 1.0)
    if share > most:
        raise ValueError(f"global compute share {share} is out of reach: one byte per patch gives {most:.4f}")
    lo, hi = 0.0, math.log(max_patch_size)  # bisection on log patch size
    for _ in range(ITERATIONS):
        mid = (lo + hi) / 2
        if global_share(config, math.exp(mid)) > share:
            lo = mid
        else:
            hi = mid
    return math.exp((lo + hi) / 2)


def calibrate_threshold(
    ids: list[torch.Tensor],
    entropies: list[torch.Tensor],
    target_patch_size: float,
    patching: PatchingConfig | None = None,
) -> Calibration:
    """Threshold that makes the mean patch size of ``ids`` (documents, 1-D each) closest to the target.

    ``target_patch_size`` is in positions per patch (:func:`patch_size_for_global_share` turns a target share
    of compute into one). ``patching`` (default: entropy scheme) picks the scheme and fixes its other fields;
    the entropy and combined schemes calibrate ``threshold``, the relative scheme ``relative_threshold``.
    """
    patching = patching or PatchingConfig()
    if patching.scheme not in ENTROPY_SCHEMES:
        raise ConfigError(f"only entropy schemes {list(ENTROPY_SCHEMES)} have a threshold; got {patching.scheme!r}")
    if not math.isfinite(target_patch_size) or target_patch_size < 1:
        raise ValueError(f"target_patch_size must be a finite number >= 1 (positions per patch), got {target_patch_size}")
    if not ids or len(ids) != len(entropies):
        raise ValueError(f"need the same positive number of id and entropy documents, got {len(ids)} and {len(entropies)}")
    for n, (i, e) in enumerate(zip(ids, entropies)):
        # a [1, T] row would pass as a document; a [B, T] batch would silently become one long document
        if i.dim() != 1 or e.shape != i.shape or i.numel() == 0:
            raise ValueError(
                f"document {n}: ids and entropies must be non-empty 1-D tensors of one length "
                f"(one row per document), got shapes {tuple(i.shape)} and {tuple(e.shape)}"
            )
        if not torch.isfinite(e).all():
            raise ValueError(f"document {n}: entropies must be finite, got NaN or inf")
    ids_b, valid = pad_documents(ids, torch.long)
    ent_b, _ = pad_documents(entropies, torch.float32)

    field = "relative_threshold" if patching.scheme == "relative" else "threshold"
    if field == "threshold":
        lo, hi = 0.0, ent_b[valid].max().item() + 1.0
    else:
        diffs = ent_b[:, 1:] - ent_b[:, :-1]
        lo, hi = diffs.min().item() - 1.0, diffs.max().item() + 1.0

    def mean_at(value: float) -> float:
        return mean_patch_size(ids_b, ent_b, valid, dataclasses.replace(patching, **{field: value}))

    for _ in range(ITERATIONS):  # invariant: mean_at(lo) <= target, or lo is the lowest allowed value
        mid = (lo + hi) / 2
        if mean_at(mid) <= target_patch_size:
            lo = mid
        else:
            hi = mid
    best = min((lo, hi), key=lambda v: abs(mean_at(v) - target_patch_size))
    return Calibration(best, field, mean_at(best), target_patch_size)
