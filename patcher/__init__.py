"""Patching for the byte latent transformer: entropy model, schemes, calibration, streaming, pictures."""

from .calibrate import Calibration, calibrate_threshold
from .entropy_model import EntropyModel, entropy_from_logits
from .schemes import SCHEMES, lengths_from_starts, patch_lengths, patch_starts
from .streaming import StreamingPatcher

__all__ = [
    "SCHEMES",
    "Calibration",
    "EntropyModel",
    "StreamingPatcher",
    "calibrate_threshold",
    "entropy_from_logits",
    "lengths_from_starts",
    "patch_lengths",
    "patch_starts",
]
