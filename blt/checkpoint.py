"""Pretrained-model directories: ``config.json`` + ``model.safetensors``, never pickle.

Every model this package saves (entropy model, BLT, BPE baseline) writes the same two files; the JSON names
the model ``kind`` so a loader can refuse a checkpoint of another kind with a clear message. Weights in a
pickle file (``.bin``/``.pt``) are read only with ``torch.load(weights_only=True)``, which executes no code.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
PICKLE_NAMES = ("pytorch_model.bin", "model.bin", "model.pt", "model.pth")


class CheckpointError(ValueError):
    """A checkpoint that is missing, of the wrong kind, or does not fit its model."""


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder and rename, so a crash leaves no half file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_pretrained(directory: str | Path, module: nn.Module, kind: str, config: dict[str, Any]) -> Path:
    """Write ``module``'s weights and ``{"kind": kind, "config": config}`` to ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # safetensors refuses tensors that share storage; clone so tied or sliced weights save cleanly
    state = {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}
    drop_stale_index(directory)
    atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"kind": kind}))
    text = json.dumps({"kind": kind, "config": config}, indent=2)
    atomic_write(directory / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text))
    return directory


def drop_stale_index(directory: Path) -> None:
    """Remove a shard index left by an earlier, sharded checkpoint: readers prefer it over the new file."""
    (directory / INDEX_NAME).unlink(missing_ok=True)


def model_directory(path: str | Path) -> Path:
    """The checkpoint directory behind ``path``: itself, or ``path/model`` for a training run directory."""
    path = Path(path)
    if not (path / CONFIG_NAME).is_file() and (path / "model" / CONFIG_NAME).is_file():
        return path / "model"
    return path


def read_config(directory: str | Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a checkpoint directory, with clear errors for what is missing."""
    directory = Path(directory)
    if not directory.exists():
        raise CheckpointError(f"checkpoint path does not exist: {directory}")
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint must be a directory with {CONFIG_NAME} and {WEIGHTS_NAME}: {directory}")
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"no {CONFIG_NAME} in checkpoint directory {directory}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def checkpoint_kind(config: dict[str, Any]) -> str:
    """``kind`` of one of our checkpoints, ``"hf-blt"`` for a transformers BLT, else ``"unknown"``."""
    if "kind" in config:
        return str(config["kind"])
    if config.get("model_type") == "blt":
        return "hf-blt"
    return "unknown"


def typed_config(directory: str | Path, data: dict[str, Any], kind: str, config_cls: type, what: str) -> Any:
    """The config dataclass of one of our checkpoints, after checking it is of ``kind`` (``what`` names it)."""
    from blt.config import ConfigError, from_dict

    found = checkpoint_kind(data)
    if found != kind:
        raise CheckpointError(f"{directory} holds a checkpoint of kind {found!r}, not {what} ({kind!r})")
    if not isinstance(data.get("config"), dict):
        raise CheckpointError(f"{directory}: config.json has no 'config' section")
    try:
        return from_dict(config_cls, data["config"])
    except ConfigError as e:
        raise CheckpointError(f"{directory}: bad {what} config: {e}") from None


def _safetensor_files(directory: Path) -> list[Path]:
    """The safetensors file, or the shards a ``model.safetensors.index.json`` names (released 7B-size layout)."""
    index = directory / INDEX_NAME
    if not index.is_file():
        return [directory / WEIGHTS_NAME] if (directory / WEIGHTS_NAME).is_file() else []
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (json.JSONDecodeError, KeyError, AttributeError, TypeError) as e:
        raise CheckpointError(f"{index} is not a valid safetensors index (needs a 'weight_map'): {e}") from None
    missing = [name for name in shards if not (directory / name).is_file()]
    if missing:
        raise CheckpointError(f"{directory}: weight shard {missing[0]} named in {INDEX_NAME} is missing")
    return [directory / name for name in shards]


def read_weights(directory: str | Path, keep: Callable[[str], bool] | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint: safetensors (one file or index + shards) if present, else a pickle file read
    with ``weights_only=True``. ``keep(name)`` selects tensors; safetensors never loads the others."""
    directory = Path(directory)
    files = _safetensor_files(directory)
    if files:
        state = {}
        for path in files:
            try:
                with safe_open(path, framework="pt") as f:
                    state.update({k: f.get_tensor(k) for k in f.keys() if keep is None or keep(k)})  # noqa: SIM118
            except (SafetensorError, OSError) as e:
                raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from None
        return state
    for name in PICKLE_NAMES:
        path = directory / name
        if path.is_file():
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # noqa: BLE001 - any unpickling failure means we refuse the file
                raise CheckpointError(
                    f"refusing {path}: it is not a plain tensor checkpoint; it was not loaded and nothing in it "
                    "was executed"
                ) from None
            if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
                raise CheckpointError(f"{path} does not hold a flat dict of tensors")
            return {k: v for k, v in state.items() if keep is None or keep(k)}
    raise CheckpointError(f"no {WEIGHTS_NAME} (or {INDEX_NAME}) in checkpoint directory {directory}")


def load_state(module: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load ``state`` strictly; the first missing, unexpected or mis-shaped key is named in the error."""
    own = module.state_dict()
    for key, tensor in own.items():
        if key not in state:
            raise CheckpointError(f"{source}: missing tensor '{key}' (expected shape {tuple(tensor.shape)})")
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{source}: tensor '{key}' has shape {tuple(state[key].shape)}, the config needs {tuple(tensor.shape)}"
            )
    extra = [k for k in state if k not in own]
    if extra:
        raise CheckpointError(f"{source}: unexpected tensor '{extra[0]}' that the config has no place for")
    module.load_state_dict(state, strict=True)
