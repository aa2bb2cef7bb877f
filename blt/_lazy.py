"""Module attributes imported on first use (PEP 562), so ``import blt`` and ``import blt.eval`` stay cheap.

Imports nothing of blt: both package ``__init__`` files use it without an import cycle.
"""

from importlib import import_module


def lazy_getattr(module: str, lazy: dict[str, str]):
    """A module ``__getattr__`` that imports ``lazy[name]`` the first time ``name`` is asked for."""

    def __getattr__(name: str):
        if name in lazy:
            return getattr(import_module(lazy[name]), name)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
