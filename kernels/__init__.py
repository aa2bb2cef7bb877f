"""Fused byte<->patch operations of the BLT: Triton kernels on CUDA, linear-cost PyTorch paths elsewhere.

Each function has the signature and semantics of its plain reference in :mod:`blt.patch_ops` plus a keyword
``impl`` (``"auto"``, ``"torch"``, ``"triton"``, ``"reference"``); without it the environment variable
``BLT_KERNELS`` decides (see :mod:`blt.kernels.dispatch`). Triton is imported only when a Triton kernel is
about to run.
"""

from blt.kernels.cross_attention import byte_query_attention, patch_query_attention
from blt.kernels.dispatch import MODES, kernel_mode
from blt.kernels.entropy import entropy_from_logits, entropy_patch_starts
from blt.kernels.hash_embedding import hash_embedding
from blt.kernels.pooling import patch_pool

__all__ = [
    "MODES",
    "byte_query_attention",
    "entropy_from_logits",
    "entropy_patch_starts",
    "hash_embedding",
    "kernel_mode",
    "patch_pool",
    "patch_query_attention",
]
