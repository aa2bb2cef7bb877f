"""blt: byte-level language models in the style of the Byte Latent Transformer.

``from blt import BLT`` gives the model; ``blt.patcher`` the entropy model and patching schemes,
``blt.kernels`` the fused byte<->patch operations, ``blt.eval`` FLOPs and bits-per-byte.
Submodules are imported on first use so ``import blt`` stays cheap.
"""

from importlib import import_module

__version__ = "0.1.0"

_LAZY = {
    "BLT": "blt.model",
    "BLTConfig": "blt.config",
    "EntropyModel": "blt.patcher.entropy_model",
    "encode": "blt.tokenizer",
    "decode": "blt.tokenizer",
    "decode_text": "blt.tokenizer",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'blt' has no attribute {name!r}")


__all__ = sorted(_LAZY)
