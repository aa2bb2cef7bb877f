"""blt: byte-level language models in the style of the Byte Latent Transformer.

``from blt import BLT`` gives the model; ``blt.patcher`` the entropy model and patching schemes,
``blt.kernels`` the fused byte<->patch operations, ``blt.eval`` FLOPs and bits-per-byte.
Submodules are imported on first use so ``import blt`` stays cheap.
"""

from importlib import import_module

__version__ = "0.1.0"


def lazy_getattr(module: str, lazy: dict[str, str]):
    """A module ``__getattr__`` (PEP 562) that imports ``lazy[name]`` the first time ``name`` is asked for;
    blt.eval uses it too (it lives here, not in a module of its own, so ``import blt`` loads nothing more)."""

    def __getattr__(name: str):
        if name in lazy:
            return getattr(import_module(lazy[name]), name)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__


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
