"""The files of a model directory: ``config.json`` + ``model.safetensors`` (or an index + shards).

Writes go through a temporary file and a rename, so a crash never leaves half a file. Weights in a pickle
file (``.bin``/``.pt``) are read only with ``torch.load(weights_only=True)``, which executes no code. What
the JSON means (which model, which layout) is for ``blt.checkpoint.kinds`` to say; this module only reads
and writes.
"""

from __future__ import annotations

import json
import os
import re
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
RUN_MODEL = "model"  # a training run directory exports its model into this folder


class CheckpointError(ValueError):
    """A checkpoint that is missing, of the wrong kind, or does not fit its model."""


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder and rename, so a crash leaves no half file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's files are private (0600); a model or report is not
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it, so set it straight back
    os.umask(mask)
    return mask


def write_checkpoint(
    directory: str | Path,
    state: dict[str, torch.Tensor],
    config: dict[str, Any],
    metadata: dict[str, str],
    files: dict[str, bytes] | None = None,
) -> Path:
    """Write ``state`` as model.safetensors, ``config`` as config.json and ``files`` (name -> bytes) beside."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # safetensors refuses tensors that share storage; clone so tied or sliced weights save cleanly
    state = {k: v.detach().contiguous().clone() for k, v in state.items()}
    for name, data in (files or {}).items():
        atomic_write(directory / name, lambda tmp, data=data: Path(tmp).write_bytes(data))
    drop_stale_index(directory)
    atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata=metadata))
    text = json.dumps(config, indent=2)
    atomic_write(directory / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text))
    return directory


def drop_stale_index(directory: Path) -> None:
    """Remove a shard index left by an earlier, sharded checkpoint: readers prefer it over the new file."""
    (directory / INDEX_NAME).unlink(missing_ok=True)


def model_directory(path: str | Path) -> Path:
    """The checkpoint directory behind ``path``: itself, or ``path/model`` for a training run directory."""
    path = Path(path)
    if not (path / CONFIG_NAME).is_file() and (path / RUN_MODEL / CONFIG_NAME).is_file():
        return path / RUN_MODEL
    return path


def read_config(directory: str | Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a checkpoint directory, with clear errors for what is missing."""
    directory = Path(directory)
    if not directory.exists():
        raise CheckpointError(f"checkpoint path does not exist: {directory}")
    if not directory.is_dir():
        raise CheckpointError(
            f"checkpoint must be a directory with {CONFIG_NAME} and {WEIGHTS_NAME}: {directory}"
        )
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(
            f"no {CONFIG_NAME} in checkpoint directory {directory} (nor in {directory / RUN_MODEL}, "
            "as in a training run directory)"
        )
    return read_json_object(path)


def read_json_object(path: Path, error: type[ValueError] = CheckpointError) -> dict[str, Any]:
    """The JSON object in ``path``; bad JSON, or a value other than an object, raises ``error`` naming
    the file (checkpoints raise CheckpointError, run directories a plain ValueError)."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise error(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise error(f"{path} must hold a JSON object, not {type(data).__name__}")
    return data


def _safetensor_files(directory: Path) -> list[Path]:
    """The safetensors file, or the shards a ``model.safetensors.index.json`` names (released 7B-size layout)."""
    index = directory / INDEX_NAME
    if not index.is_file():
        return [directory / WEIGHTS_NAME] if (directory / WEIGHTS_NAME).is_file() else []
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (json.JSONDecodeError, KeyError, AttributeError, TypeError) as e:
        raise CheckpointError(
            f"{index} is not a valid safetensors index (needs a 'weight_map'): {e}"
        ) from None
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
            return {k: v for k, v in read_pickle(path).items() if keep is None or keep(k)}
    raise CheckpointError(f"no {WEIGHTS_NAME} (or {INDEX_NAME}) in checkpoint directory {directory}")


def read_pickle(path: Path) -> dict[str, torch.Tensor]:
    """A plain state dict from a pickle file, possibly under ``"model"``; only tensors are ever unpickled."""
    if not path.is_file():
        raise CheckpointError(f"missing {path.name} in {path.parent}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - whatever failed, the file is refused
        # torch's own message advises weights_only=False, which would run the file's code: never repeat it
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"it references {found[1]}, which unpickling would import and run" if found else "it cannot be read as tensors"
        raise CheckpointError(
            f"refusing {path}: it is not a plain state dict of tensors ({what}); it was not executed. Pickle "
            "files are read only as tensors: re-save it as a state dict or as safetensors"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors (directly or under 'model')")
    return state


def load_state(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    source: str = "checkpoint",
    name: Callable[[str], str] | None = None,
    label: Callable[[str], str] | None = None,
) -> None:
    """Load ``state`` strictly, where ``name(key)`` is the name of the module's ``key`` in ``state`` (by
    default the same). The first missing, unexpected or mis-shaped tensor is named as ``state`` names it,
    or as ``label(name)`` says when ``state`` was renamed from the files' names."""
    own = module.state_dict()
    names = {key: key if name is None else name(key) for key in own}
    shown = label or (lambda n: n)
    for key, tensor in own.items():
        theirs = names[key]
        if theirs not in state:
            raise CheckpointError(
                f"{source}: missing tensor '{shown(theirs)}' (expected shape {tuple(tensor.shape)})"
            )
        if tuple(state[theirs].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{source}: tensor '{shown(theirs)}' has shape {tuple(state[theirs].shape)}, "
                f"the config needs {tuple(tensor.shape)}"
            )
    known = set(names.values())
    extra = [k for k in state if k not in known]
    if extra:
        raise CheckpointError(f"{source}: unexpected tensor '{extra[0]}' that the config has no place for")
    module.load_state_dict({key: state[theirs] for key, theirs in names.items()}, strict=True)
