"""Pretrained-model directories: ``config.json`` + ``model.safetensors``, never pickle.

- ``files``: the files of a directory (reading, atomic writing, shards, pickle refusal, run directories);
- ``kinds``: what a directory holds (its kind), which class loads it, how a class reads each kind;
- ``hf``: the transformers BLT layout (config both ways, tensor names, its bundled patcher);
- ``original``: the original facebookresearch/blt release layout (``{"args": ...}``, original tensor names,
  ``entropy_model/params.json`` + ``consolidated.pth``), read as published;
- ``hub``: Hugging Face hub ids (``owner/name[@revision]``) resolved to a local snapshot;
- ``pretrained``: the loader and saver behind every model's ``from_pretrained``/``save_pretrained``,
  and :func:`load` for a directory of any kind.

Every model this package saves (entropy model, BLT, BPE baseline) writes the same two files; the JSON names
the model ``kind`` so a loader can refuse a checkpoint of another kind with a clear message.
"""

from blt.checkpoint.files import (
    CONFIG_NAME,
    INDEX_NAME,
    PICKLE_NAMES,
    WEIGHTS_NAME,
    CheckpointError,
    atomic_write,
    drop_stale_index,
    load_state,
    model_directory,
    read_config,
    read_pickle,
    read_weights,
    write_checkpoint,
)
from blt.checkpoint.kinds import (
    BLT_KINDS,
    ENTROPY_KINDS,
    KINDS,
    SOURCES,
    checkpoint_kind,
    directory_of,
    entropy_vocab_size,
    kind_of,
    model_class,
    peek_config,
    typed_config,
)
from blt.checkpoint.pretrained import LoadedModel, load, load_pretrained, save_pretrained

__all__ = [
    "BLT_KINDS",
    "ENTROPY_KINDS",
    "CONFIG_NAME",
    "INDEX_NAME",
    "KINDS",
    "PICKLE_NAMES",
    "SOURCES",
    "WEIGHTS_NAME",
    "CheckpointError",
    "LoadedModel",
    "atomic_write",
    "checkpoint_kind",
    "directory_of",
    "drop_stale_index",
    "entropy_vocab_size",
    "kind_of",
    "load",
    "load_pretrained",
    "load_state",
    "model_class",
    "model_directory",
    "peek_config",
    "read_config",
    "read_pickle",
    "read_weights",
    "save_pretrained",
    "typed_config",
    "write_checkpoint",
]
