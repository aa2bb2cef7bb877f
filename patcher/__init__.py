"""Patching for the byte latent transformer: entropy model, schemes, calibration, streaming, pictures."""

from .calibrate import Calibration, calibrate_threshold
from .entropy_model import EntropyModel, entropy_from_logits
from .schemes import SCHEMES, decide_starts, lengths_from_starts, patch_lengths
from .streaming import StreamingPatcher

__all__ = [
    "SCHEMES",
    "Calibration",
    "EntropyModel",
    "StreamingPatcher",
    "calibrate_threshold",
    "decide_starts",
    "entropy_from_logits",
    "lengths_from_starts",
    "patch_lengths",
]
