"""The BLT byte vocabulary: byte ``b`` is id ``b + 4``; ids 0-3 are special.

The layout matches the released BLT models so checkpoints interoperate:
0 = BOE / padding, 1 = BOS, 2 = EOS, 3 = BPE delimiter, 4..259 = bytes 0..255.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from blt.validation import checks_values

BOE_ID = PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
BPE_ID = 3
OFFSET = 4
VOCAB_SIZE = 256 + OFFSET


def encode(text: str | bytes, add_bos: bool = True, add_eos: bool = False) -> list[int]:
    """Ids of ``text`` (str is UTF-8 encoded; bytes are used as they are)."""
    if isinstance(text, str):
        data = text.encode("utf-8")
    elif isinstance(text, (bytes, bytearray, memoryview)):
        data = bytes(text)
    else:
        raise TypeError(f"encode takes str or bytes, got {type(text).__name__}")
    ids = (np.frombuffer(data, dtype=np.uint8).astype(np.int64) + OFFSET).tolist()
    return ([BOS_ID] if add_bos else []) + ids + ([EOS_ID] if add_eos else [])


def _flat(ids: torch.Tensor | np.ndarray | Iterable[int]) -> np.ndarray:
    """``ids`` as a flat integer array; floats, bools and other non-integer values are a ValueError."""
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu()
        if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
            raise ValueError(f"ids must be integers, got a tensor of dtype {ids.dtype}")
        return ids.numpy().reshape(-1)
    arr = np.asarray(ids if isinstance(ids, np.ndarray) else list(ids)).reshape(-1)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"ids must be integers, got values of dtype {arr.dtype}")
    return arr


def check_ids(ids: torch.Tensor | np.ndarray | Iterable[int], vocab_size: int = VOCAB_SIZE) -> None:
    """Raise ValueError for non-integer ids or naming the first id outside ``0..vocab_size-1``."""
    arr = _flat(ids)
    bad = np.flatnonzero((arr < 0) | (arr >= vocab_size))
    if bad.size:
        raise ValueError(
            f"id {int(arr[bad[0]])} at flat position {int(bad[0])} is outside the byte vocabulary 0..{vocab_size - 1}"
        )


def decode(ids: torch.Tensor | Iterable[int]) -> bytes:
    """The bytes behind ``ids``; special ids (BOS, EOS, padding, delimiter) are dropped."""
    arr = _flat(ids)
    check_ids(arr)
    return (arr[arr >= OFFSET] - OFFSET).astype(np.uint8).tobytes()


def decode_text(ids: torch.Tensor | Iterable[int], errors: str = "replace") -> str:
    """Text behind ``ids``; bytes that are not valid UTF-8 are handled by ``errors`` (default: replaced)."""
    return decode(ids).decode("utf-8", errors=errors)


def check_id_batch(ids: torch.Tensor, vocab_size: int = VOCAB_SIZE, check: bool | None = None) -> None:
    """Clear errors for a model input a user can get wrong: not [B, T], not integers, empty, ids out of range.

    The range is checked as ``check`` says (:func:`blt.validation.checks_values`: by default on the CPU only).
    """
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
        raise ValueError(f"ids must be a [batch, time] tensor, got {getattr(ids, 'shape', type(ids).__name__)}")
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ValueError(f"ids must be an integer tensor, got dtype {ids.dtype}")
    if ids.numel() == 0:
        raise ValueError(f"empty input: ids has shape {tuple(ids.shape)}; need at least one id per row")
    if checks_values(check, ids):
        check_ids(ids, vocab_size)
