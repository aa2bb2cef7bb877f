"""Checkpoint kinds: what a directory holds, which class loads it, and how a class reads each kind.

``config.json`` names the ``kind`` of our checkpoints (``"blt"``, ``"blt-entropy"``, ``"blt-baseline"``);
a transformers BLT (``"model_type": "blt"``) is kind ``"hf-blt"``. A class may read more than its own kind:
an entropy model also comes out of a BLT that bundles one, in either layout. ``SOURCES`` says, for every
(kind a class saves, kind found) pair, how to read the config and where the class's tensors are.

Model classes are named by their dotted path and imported only when :func:`model_class` is called, so the
model modules can import this package without a cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

import torch

from blt.checkpoint import hf, hub, original
from blt.checkpoint.files import CheckpointError, model_directory, read_config, read_weights
from blt.config import BaselineConfig, BLTConfig, ConfigError, EntropyModelConfig, from_dict

Tensors = tuple[dict[str, torch.Tensor], Callable[[str], str] | None]  # tensors, our key -> their name


@dataclass(frozen=True)
class Kind:
    model: str  # dotted name of the class that loads it
    what: str  # for messages: "entropy model"
    config: type | None = None  # the config section's dataclass, for our own kinds


KINDS = {
    "blt": Kind("blt.model.BLT", "BLT", BLTConfig),
    "hf-blt": Kind("blt.model.BLT", "transformers BLT"),
    original.BLT_KIND: Kind("blt.model.BLT", "BLT in the original release layout"),
    "blt-entropy": Kind("blt.patcher.entropy_model.EntropyModel", "entropy model", EntropyModelConfig),
    original.ENTROPY_KIND: Kind("blt.patcher.entropy_model.EntropyModel", "entropy model in the original layout"),
    "blt-baseline": Kind("blt.baseline.BaselineLM", "BPE baseline", BaselineConfig),
}
BLT_KINDS = tuple(k for k, v in KINDS.items() if v.model == KINDS["blt"].model)  # what BLT.from_pretrained reads
ENTROPY_KINDS = tuple(k for k, v in KINDS.items() if v.model == KINDS["blt-entropy"].model)


def article(what: str) -> str:
    return f"{'an' if what[0] in 'aeiou' else 'a'} {what}"


def checkpoint_kind(config: dict[str, Any]) -> str:
    """``kind`` of one of our checkpoints, ``"hf-blt"`` for a transformers BLT, ``"blt-original"`` /
    ``"blt-entropy-original"`` for the original release layout, else ``"unknown"``."""
    found = original.kind(config)
    if found is not None:
        return found
    if "kind" in config:
        return str(config["kind"])
    if config.get("model_type") == "blt":
        return "hf-blt"
    return "unknown"


def directory_of(path: str | Path) -> Path:
    """The model directory behind ``path``: a hub id's snapshot, a run directory's ``model/``, or itself."""
    return model_directory(hub.resolve(path))


def read_any_config(directory: Path) -> dict[str, Any]:
    """config.json, or the original layout's config (an entropy_model/ folder alone has only params.json)."""
    found = original.read_config(directory)
    return found if found is not None else read_config(directory)


def kind_of(path: str | Path) -> str:
    """The kind of the checkpoint at ``path`` (a model directory, a training run directory or a hub id)."""
    return checkpoint_kind(read_any_config(directory_of(path)))


def model_class(kind: str) -> type:
    """The class that loads checkpoints of ``kind`` (imported now)."""
    if kind not in KINDS:
        raise CheckpointError(
            f"no model class loads checkpoints of kind {kind!r} (known kinds: {', '.join(KINDS)})"
        )
    module, _, name = KINDS[kind].model.rpartition(".")
    return getattr(import_module(module), name)


def typed_config(directory: Path, data: dict[str, Any], kind: str) -> Any:
    """The config dataclass of one of our checkpoints of ``kind`` (its ``config`` section)."""
    what = KINDS[kind].what
    if not isinstance(data.get("config"), dict):
        raise CheckpointError(f"{directory}: config.json has no 'config' section")
    try:
        return from_dict(KINDS[kind].config, data["config"])
    except ConfigError as e:
        raise CheckpointError(f"{directory}: bad {what} config: {e}") from None


# ----------------------------------------------------------------------------------------------------------
# readers: how a class reads a directory of each kind it accepts


@dataclass(frozen=True)
class Source:
    config: Callable[[Path, dict[str, Any]], Any]  # directory, its config.json -> typed config
    tensors: Callable[[Path], Tensors]
    label: Callable[[str], str] | None = None  # our tensor name -> the files' name, for messages


def own(kind: str) -> Source:
    """A checkpoint of the class's own kind: its config section and every tensor under our names."""
    config = lambda directory, data: typed_config(directory, data, kind)
    return Source(config, lambda directory: (read_weights(directory), None))


def bundled_patcher_config(directory: Path, data: dict[str, Any]) -> EntropyModelConfig:
    config = typed_config(directory, data, "blt")
    if config.entropy_model is None:
        raise CheckpointError(
            f"{directory}: this BLT bundles no entropy model (its config.entropy_model is null)"
        )
    return config.entropy_model


def bundled_patcher_tensors(directory: Path) -> Tensors:
    state = read_weights(directory, keep=lambda name: name.startswith(hf.OUR_PATCHER))
    return state, lambda key: hf.OUR_PATCHER + key


# (kind the class saves, kind found in the directory) -> how to read it
SOURCES = {
    ("blt", "blt"): own("blt"),
    ("blt", "hf-blt"): Source(hf.read_blt_config, hf.read_blt_tensors),
    ("blt-entropy", "blt-entropy"): own("blt-entropy"),
    ("blt-entropy", "blt"): Source(bundled_patcher_config, bundled_patcher_tensors),
    ("blt-entropy", "hf-blt"): Source(hf.read_patcher_config, hf.read_patcher_tensors),
    ("blt", original.BLT_KIND): Source(original.read_blt_config, original.read_blt_tensors, original.label),
    ("blt-entropy", original.ENTROPY_KIND): Source(
        original.read_entropy_config, original.read_entropy_tensors, original.label
    ),
    ("blt-entropy", original.BLT_KIND): Source(
        original.read_entropy_config, original.read_entropy_tensors, original.label
    ),
    ("blt-baseline", "blt-baseline"): own("blt-baseline"),
}


def locate(path: str | Path, want: str) -> tuple[Path, dict[str, Any], Source]:
    """The model directory behind ``path``, its config.json and how to read a ``want`` model from it."""
    directory = directory_of(path)
    data = read_any_config(directory)
    found = checkpoint_kind(data)
    source = SOURCES.get((want, found))
    if source is None:
        accepted = ", ".join(repr(f) for w, f in SOURCES if w == want)
        raise CheckpointError(
            f"{directory} holds a checkpoint of kind {found!r}, not {article(KINDS[want].what)} "
            f"(kinds it loads from: {accepted})"
        )
    return directory, data, source


def peek_config(path: str | Path, want: str) -> Any:
    """The config of the ``want`` model that ``path`` holds, read from config.json alone (no tensor)."""
    directory, data, source = locate(path, want)
    return source.config(directory, data)


def entropy_vocab_size(path: str | Path) -> int:
    """The vocabulary of the entropy model at ``path`` (any directory EntropyModel.from_pretrained loads)."""
    return peek_config(path, "blt-entropy").vocab_size
