"""Load any model checkpoint this package knows, whatever its kind.

A checkpoint directory holds ``config.json`` + weights (see ``blt.checkpoint``). Its kind decides the class:

- ``"blt"`` (ours) and ``"hf-blt"`` (a transformers ``BltForCausalLM`` directory) -> ``blt.model.BLT``;
- ``"blt-entropy"`` -> ``blt.patcher.EntropyModel`` (a byte-level causal LM);
- ``"blt-baseline"`` -> ``blt.baseline.BaselineLM`` (tokenized BPE model, tokenizer inside the directory).

A training run directory (``summary.json`` + ``model/``) may be given in place of its ``model/`` folder.
Model classes are imported only for the kind being loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from blt.checkpoint import CheckpointError, checkpoint_kind, model_directory, read_config
from blt.hub import resolve

# kind -> (module, class) that loads it
LOADERS = {
    "blt": ("blt.model", "BLT"),
    "hf-blt": ("blt.model", "BLT"),
    "blt-entropy": ("blt.patcher", "EntropyModel"),
    "blt-baseline": ("blt.baseline", "BaselineLM"),
}


@dataclass
class LoadedModel:
    kind: str  # one of LOADERS
    model: nn.Module  # in eval mode
    directory: Path


def load_model(path: str | Path) -> LoadedModel:
    """Load the checkpoint at ``path``; an unknown kind is a :class:`CheckpointError` naming it."""
    from importlib import import_module

    directory = model_directory(resolve(path))  # a hub id -> its local snapshot (blt.hub)
    kind = checkpoint_kind(read_config(directory))
    if kind not in LOADERS:
        raise CheckpointError(
            f"checkpoint {directory} has kind {kind!r}, which blt-eval cannot load "
            f"(known kinds: {', '.join(LOADERS)})"
        )
    module_name, class_name = LOADERS[kind]
    model = getattr(import_module(module_name), class_name).from_pretrained(directory)
    return LoadedModel(kind, model.eval(), directory)
