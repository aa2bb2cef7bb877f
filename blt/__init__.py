"""blt: byte-level language models in the style of the Byte Latent Transformer.

``from blt import BLT`` gives the model; ``blt.patcher`` the entropy model and patching schemes,
``blt.kernels`` the fused byte<->patch operations, ``blt.eval`` FLOPs and bits-per-byte.
Submodules are imported on first use so ``import blt`` stays cheap.
"""

from blt._lazy import lazy_getattr

__version__ = "0.1.0"

_LAZY = {
    "BLT": "blt.model",
    "BLTConfig": "blt.config",
    "EntropyModel": "blt.patcher.entropy_model",
    "encode": "blt.tokenizer",
    "decode": "blt.tokenizer",
    "decode_text": "blt.tokenizer",
}
__getattr__ = lazy_getattr("blt", _LAZY)


__all__ = sorted(_LAZY)
