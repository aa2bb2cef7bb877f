"""Kept for existing imports: loading a checkpoint of any kind now lives in :mod:`blt.checkpoint`."""

from blt.checkpoint import LoadedModel
from blt.checkpoint import load as load_model

__all__ = ["LoadedModel", "load_model"]
