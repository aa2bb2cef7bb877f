"""Models to and from directories: the one loader and saver behind every ``from_pretrained``/``save_pretrained``.

Every loader takes a model directory or a training run directory (which stands for its ``model/``) and
returns the model in eval mode. :func:`load` reads whatever kind a directory holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from blt.checkpoint import hf
from blt.checkpoint.files import CheckpointError, load_state, write_checkpoint
from blt.checkpoint.kinds import KINDS, checkpoint_kind, directory_of, locate, model_class, read_any_config
from blt.config import ConfigError, to_dict

FORMATS = ("blt", "hf")  # our layout, transformers'


def load_pretrained(path: str | Path, kind: str, build: Callable[[Any, Path], nn.Module]) -> nn.Module:
    """The ``kind`` model at ``path``: ``build(config, directory)`` makes it, then its tensors are loaded."""
    directory, data, source = locate(path, kind)
    config = source.config(directory, data)
    try:
        model = build(config, directory)
    except ConfigError as e:  # e.g. an entropy model whose vocab_size is not 260
        raise CheckpointError(f"{directory}: bad {KINDS[kind].what} config: {e}") from None
    state, name = source.tensors(directory)
    load_state(model, state, str(directory), name, source.label)
    return model.eval()


def save_pretrained(
    directory: str | Path,
    module: nn.Module,
    kind: str,
    config: dict[str, Any] | None = None,
    format: str = "blt",
    files: dict[str, bytes] | None = None,
) -> Path:
    """Write ``module`` to ``directory``: ``{"kind": kind, "config": config}`` (default: the module's own
    config) + its weights, or with ``format="hf"`` a BLT in the transformers layout. ``files`` (name ->
    bytes) are written beside, e.g. a tokenizer."""
    if format not in FORMATS:
        raise ValueError(f"unknown checkpoint format {format!r}; choose 'blt' or 'hf'")
    if format == "hf":
        if kind != "blt":
            raise ValueError(f"the transformers layout holds a BLT only, not {kind!r}")
        return hf.save_blt(module, directory)
    config = to_dict(module.config) if config is None else config
    meta = {"kind": kind, "config": config}
    return write_checkpoint(directory, module.state_dict(), meta, metadata={"kind": kind}, files=files)


@dataclass
class LoadedModel:
    kind: str  # one of KINDS
    model: nn.Module  # in eval mode
    directory: Path


def load(path: str | Path) -> LoadedModel:
    """Whatever model the checkpoint at ``path`` holds; an unknown kind is a :class:`CheckpointError`."""
    directory = directory_of(path)
    kind = checkpoint_kind(read_any_config(directory))
    if kind not in KINDS:
        raise CheckpointError(
            f"checkpoint {directory} has kind {kind!r}, which no model class loads "
            f"(known kinds: {', '.join(KINDS)})"
        )
    return LoadedModel(kind, model_class(kind).from_pretrained(directory), directory)
