"""Elastic patching: one BLT trained over a range of mean patch sizes, so it serves a range of budgets.

The blt command calibrates the entropy threshold once, before training, at a grid of mean patch sizes
spread over ``run.elastic_patch_size``. Each training step then draws a mean patch size uniformly from
the range and patches its batch at the threshold interpolated between the grid's. The draw depends on
``run.seed`` and the optimizer step alone (a fresh generator per step, no state carried), so a resumed
run draws exactly what an uninterrupted one does, on every rank; the micro-batches of one optimizer step
(``trainer.accumulate_grad_batches``) share its draw. Validation and the exported model use the model's
own patching, calibrated at ``run.target_patch_size`` (default: the middle of the range).
"""

from __future__ import annotations

import bisect
import dataclasses
import random
from dataclasses import dataclass
from typing import Any

import torch

from blt.config import PatchingConfig
from blt.patcher import calibrate_threshold

GRID_POINTS = 9  # calibrated sizes over the range; thresholds in between are interpolated


@dataclass
class ElasticPatching:
    """Thresholds calibrated at ``sizes`` (increasing) over ``patch_size_range``, and their draws."""

    patch_size_range: tuple[float, float]  # (min, max) mean patch size, positions per patch
    field: str  # the threshold field of the scheme: "threshold" or "relative_threshold"
    sizes: list[float]  # target mean patch sizes of the grid
    thresholds: list[float]  # the threshold calibrated at each size
    achieved: list[float]  # the mean patch size each threshold gives on the calibration sample

    @classmethod
    def calibrate(
        cls,
        ids: list[torch.Tensor],
        entropies: list[torch.Tensor],
        patch_size_range: tuple[float, float],
        patching: PatchingConfig,
        points: int = GRID_POINTS,
    ) -> ElasticPatching:
        """The grid on documents ``ids`` with their ``entropies`` (as :func:`calibrate_threshold` takes them)."""
        lo, hi = patch_size_range
        sizes = [lo + (hi - lo) * i / (points - 1) for i in range(points)] if hi > lo else [lo]
        calibrations = [calibrate_threshold(ids, entropies, size, patching=patching) for size in sizes]
        return cls(
            (lo, hi),
            calibrations[0].field,
            sizes,
            [c.threshold for c in calibrations],
            [c.mean_patch_size for c in calibrations],
        )

    def draw(self, seed: int, step: int) -> float:
        """The mean patch size of optimizer step ``step``: uniform over the range, a function of both."""
        lo, hi = self.patch_size_range
        return random.Random(f"elastic {seed} {step}").uniform(lo, hi)

    def threshold(self, size: float) -> float:
        """The threshold at mean patch size ``size``: linear between the grid's neighbouring sizes."""
        i = bisect.bisect_left(self.sizes, size)
        if i == 0 or len(self.sizes) == 1:
            return self.thresholds[0]
        if i == len(self.sizes):
            return self.thresholds[-1]
        s0, s1, t0, t1 = self.sizes[i - 1], self.sizes[i], self.thresholds[i - 1], self.thresholds[i]
        return t0 + (t1 - t0) * (size - s0) / (s1 - s0)

    def patching(self, size: float, base: PatchingConfig) -> PatchingConfig:
        """``base`` with the threshold of mean patch size ``size``."""
        return dataclasses.replace(base, **{self.field: self.threshold(size)})

    def to_dict(self) -> dict[str, Any]:
        """As checkpoints and summary.json hold it."""
        return {**dataclasses.asdict(self), "patch_size_range": list(self.patch_size_range)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ElasticPatching:
        return cls(**{**d, "patch_size_range": tuple(d["patch_size_range"])})


__all__ = ["GRID_POINTS", "ElasticPatching"]
